"""Loading as named passes (graph/loading/): each pass's record on a model where it changes something and on one where
it does not, the order they run in, and ``cnnviz inspect`` showing them (text and ``--json``).

The models are hand-made variations of tests/tiny_models.py's ``gap_classifier`` (x (1, 3, 8, 8) -> Conv -> Relu ->
GlobalAveragePool -> Flatten -> Gemm 'logits'), each made to need exactly the pass under test.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.graph import held
from onnx_cnnviz.graph.loading import PassRecord, normalise_passes, read_pass
from tests.graph.test_subgraphs import if_model
from tests.tiny_models import gap_classifier, make_model, save

pytestmark = pytest.mark.quick

ORDER = ["read", "hold", "order", "constants", "ifs", "opset", "float32", "inputs", "score", "layout", "batch",
         "shapes"]


def passes(model, **kwargs) -> dict[str, PassRecord]:
    m = cv.load(model, device="cpu", **kwargs)
    assert [r.name for r in m.load_passes] == ORDER
    return {r.name: r for r in m.load_passes}


def dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_param = "batch"
    return model


def scores_equal(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    """The two models, loaded, give the same scores: the passes change the graph, never what it computes."""
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(cv.load(a, device="cpu").scores(x), cv.load(b, device="cpu").scores(x),
                               rtol=1e-3, atol=1e-4)


def test_a_plain_model_changes_nothing_but_its_declared_batch():
    got = passes(gap_classifier())
    assert [name for name, r in got.items() if r.changed] == ["batch"]
    for record in got.values():
        assert isinstance(record.summary, str) and record.summary
        assert json.loads(json.dumps(record.to_dict()))["pass"] == record.name  # JSON-ready
    assert got["read"].details["nodes"] == 5 and got["read"].details["weights"] == 4
    assert got["order"].summary == "the nodes are already in topological order"
    assert got["shapes"].details["probed"] == 0 and got["shapes"].details["size"] == [8, 8]


def test_read_names_the_external_data_it_read(tmp_path):
    model = gap_classifier()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    _, (read, hold) = read_pass(path)
    # the details name files absolutely (--json documents do), the summary as the file names them
    assert not read.changed and read.details["external_files"] == [str(tmp_path / "m.data")]
    assert "m.data" in read.summary
    assert read.details["source"] == str(path) and read.summary.startswith("'m.onnx': 5 nodes, 4 weights")
    _, (read, _) = read_pass(model)
    assert read.details["external_files"] == [] and read.summary.startswith("the ModelProto given")


def test_hold_says_which_weights_it_held(monkeypatch):
    assert not passes(gap_classifier())["hold"].changed
    monkeypatch.setattr(held, "HOLD_ABOVE_BYTES", 0)
    monkeypatch.setattr(held, "HOLD_MIN_BYTES", 64)  # w1 (432 bytes) and fc_w (80 bytes); b1 and fc_b stay
    record = passes(gap_classifier())["hold"]
    assert record.changed and record.details["held"] == 2 and record.details["held_bytes"] == 432 + 80
    assert record.summary.startswith("2 weights (512 bytes) held beside the graph")


def test_order_counts_the_nodes_it_moved():
    model = gap_classifier()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    record = passes(model)["order"]
    assert record.changed and record.details["moved"] == 4  # of 5 reversed, the middle one keeps its place
    scores_equal(model, gap_classifier())


def test_constants_counts_constant_nodes_and_weight_inputs():
    model = gap_classifier()
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    model.graph.node.insert(0, helper.make_node("Constant", [], ["w1"], value=w1, name="w1_const"))
    model.graph.initializer.remove(w1)
    for tensor in model.graph.initializer:  # IR < 4 lists every weight as a graph input too
        model.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    record = passes(model)["constants"]
    assert record.changed and record.details == {"constants_to_weights": 1, "weight_inputs_dropped": 3}
    scores_equal(model, gap_classifier())


def test_ifs_folds_a_constant_condition_and_shapes_one_on_shape_arithmetic():
    constant = passes(if_model("initializer"))
    assert constant["ifs"].changed and constant["ifs"].details["folded"] == 1
    assert not constant["shapes"].changed
    shaped = passes(if_model("shape"))  # Shape(x)[2] == 4: known once the size is fixed
    assert not shaped["ifs"].changed
    assert shaped["shapes"].changed and shaped["shapes"].details["ifs_folded"] == 1


def test_opset_upgrades_an_old_model():
    old = gap_classifier()
    old.opset_import[0].version = 11
    record = passes(old)["opset"]
    assert record.changed and record.details["opset"] == 11 and record.details["upgraded_to"] == 17
    assert record.summary.startswith("opset 11 upgraded to 17")
    assert not passes(gap_classifier())["opset"].changed
    scores_equal(old, gap_classifier())


def test_float32_counts_what_it_converted():
    model = gap_classifier()
    for i, tensor in enumerate(model.graph.initializer):
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16),
                                                                    tensor.name))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    record = passes(model)["float32"]
    assert record.changed and record.details["converted"] == 6  # 4 weights, the input and the output
    assert not passes(gap_classifier())["float32"].changed


def test_inputs_names_the_inputs_the_score_does_not_need():
    model = gap_classifier()
    model.graph.input.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, [1]))
    model.graph.node.append(helper.make_node("Identity", ["unused"], ["echo"], name="echo"))
    model.graph.output.append(helper.make_tensor_value_info("echo", TensorProto.FLOAT, [1]))
    record = passes(model, output="logits")["inputs"]
    assert record.changed and record.details["dropped"] == ["unused"] and "unused" in record.summary
    assert not passes(gap_classifier())["inputs"].changed


def test_score_says_a_final_softmax_is_skipped():
    model = gap_classifier()
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"))
    model.graph.output[0].name = "probs"
    record = passes(model)["score"]
    assert record.changed and record.details["softmax_skipped"] == "Softmax" and record.details["tensor"] == "logits"
    assert not passes(gap_classifier())["score"].changed


def test_layout_puts_a_transpose_in_front_of_a_channels_last_input():
    plain = gap_classifier()
    nodes = [helper.make_node("Transpose", ["pixels"], ["x"], perm=[0, 3, 1, 2], name="to_nchw")] + \
        list(plain.graph.node)
    model = make_model(nodes, [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 8, 8, 3])],
                       list(plain.graph.output), list(plain.graph.initializer))
    record = passes(model)["layout"]
    assert record.changed and record.details["layout"] == "NHWC" and record.details["input"] == "pixels"
    assert "Transpose" in record.summary
    assert not passes(plain)["layout"].changed


def test_batch_rewrites_a_reshape_to_batch_one_and_leaves_a_symbolic_batch_alone():
    model = gap_classifier()
    flat = next(n for n in model.graph.node if n.op_type == "Flatten")
    flat.op_type, flat.input[:] = "Reshape", ["pool", "to_rows"]  # TorchScript's [1, -1]
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "to_rows"))
    record = passes(model)["batch"]
    assert record.changed and record.details["was_static"] and record.details["reshapes_rewritten"] == 1
    assert not record.details["one_at_a_time"] and "1 Reshape of [1, ...] made to follow the batch" in record.summary
    assert cv.load(model, device="cpu").static_batch is False
    scores_equal(model, gap_classifier())
    record = passes(dynamic_batch(gap_classifier()))["batch"]
    assert not record.changed and record.summary == "the batch is already symbolic: batches"


def test_batch_says_when_images_run_one_at_a_time():
    """A graph that bakes batch 1 into a Reshape no rewrite reaches: the pooled (N, 4, 1, 1) reshaped to [4, -1] and
    multiplied transposed runs at batch 2, mixing the images' channels: Model's check finds batch 2 wrong."""
    model = gap_classifier()
    flat = next(n for n in model.graph.node if n.op_type == "Flatten")
    flat.op_type, flat.input[:] = "Reshape", ["pool", "to_rows"]
    model.graph.initializer.append(numpy_helper.from_array(np.array([4, -1], dtype=np.int64), "to_rows"))
    fc = next(n for n in model.graph.node if n.op_type == "Gemm")
    del fc.attribute[:]
    fc.attribute.extend([helper.make_attribute("transA", 1), helper.make_attribute("transB", 1)])
    m = cv.load(model, device="cpu")
    record = {r.name: r for r in m.load_passes}["batch"]
    assert m.static_batch and record.changed and record.details["one_at_a_time"]
    assert "images run one at a time" in record.summary and record.details["why"]


def test_normalise_passes_edit_nothing_they_are_given():
    model = if_model("initializer")
    before = model.SerializeToString()
    normal, records = normalise_passes(model)
    assert model.SerializeToString() == before
    assert [r.name for r in records] == ["order", "constants", "ifs", "opset", "float32"]
    assert not any(n.op_type == "If" for n in normal.graph.node)


def test_inspect_lists_the_passes(tmp_path):
    from tests.cli import invoke

    model = gap_classifier()
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"))
    model.graph.output[0].name = "probs"
    path = save(model, tmp_path / "m.onnx")
    shown = invoke("inspect", path, "--preprocess", "none").stdout
    assert "loading      12 passes, 2 changed the graph (*):" in shown
    lines = {line.split()[1] if line.startswith("  *") else line.split()[0]: line
             for line in shown.splitlines() if line.startswith("    ") or line.startswith("  *")}
    for name in ORDER:
        assert name in lines, (name, shown)
    assert lines["score"].startswith("  * score") and "Softmax" in lines["score"]
    assert lines["order"].startswith("    order") and "already in topological order" in lines["order"]
    info = json.loads(invoke("--json", "inspect", path, "--preprocess", "none").stdout)
    assert [p["pass"] for p in info["loading"]] == ORDER
    score = next(p for p in info["loading"] if p["pass"] == "score")
    assert score["changed"] and score["details"]["softmax_skipped"] == "Softmax"
