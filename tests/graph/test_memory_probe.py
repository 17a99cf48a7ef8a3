"""The load probe's memory (graph/shapes.py's probe runs, graph/loading/probe.py's sessions; issue 26).

mvitv2_base_cls (a 210 MB file) peaked at 4.5 GB in ``cv.load``, where its own forward pass at batch 2 needs about
0.3 GB: the probe reads every tensor through a ``Shape`` node whose output is a graph output, and onnxruntime's
default order runs such leaf nodes after everything else, so every tensor of the run was alive at once. The checks
here are deterministic: the order the probe's session runs its nodes in (onnxruntime's profile), the nodes the probe
adds, and the weights its sessions read in place instead of copying.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_cnnviz.graph import held, shapes
from onnx_cnnviz.graph.loading.probe import lending, pruned_to, quiet_options, quiet_session
from tests.tiny_models import gap_classifier, make_model

pytestmark = pytest.mark.quick


def _chain(length: int = 6) -> onnx.ModelProto:
    nodes, last = [], "x"
    for i in range(length):
        nodes.append(helper.make_node("Relu", [last], [f"t{i}"], name=f"relu{i}"))
        last = f"t{i}"
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                      [helper.make_tensor_value_info(last, TensorProto.FLOAT, None)], [])


def test_the_probe_runs_each_shape_wrapper_right_after_its_tensor(tmp_path):
    model = _chain()
    names = [f"t{i}" for i in range(6)]
    wrapped = shapes._outputs_shapes_only(model, names, {n: np.dtype(np.float32) for n in names})
    options = quiet_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "probe")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run([wrapped[n][0] for n in names], {"x": np.zeros((2, 4), np.float32)})
    events = json.loads(open(session.end_profiling()).read())
    ran = [e["name"][:-len("_kernel_time")] for e in events
           if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    shape_of = {n.name: n.input[0] for n in model.graph.node if n.op_type == "Shape"}
    producer = {n.name: n.output[0] for n in model.graph.node if n.op_type == "Relu"}
    # relu0, Shape(t0), relu1, Shape(t1), ...: each tensor is freed once the next node has read it. onnxruntime's
    # default order ran relu0 .. relu5 first and every Shape after them, all six tensors alive at once.
    assert [shape_of.get(n) or producer[n] for n in ran] == [t for n in names for t in (n, n)]


def test_a_known_dtype_needs_only_the_shape_node():
    model = _chain(3)
    wrapped = shapes._outputs_shapes_only(model, ["t0", "t1", "t2"], {"t0": np.dtype(np.float32)})
    assert wrapped["t0"][1] is None and wrapped["t1"][1] is not None
    assert [n.op_type for n in model.graph.node] == ["Relu", "Shape", "Relu", "Shape", "Reshape", "Slice", "Relu",
                                                    "Shape", "Reshape", "Slice"]
    assert len(model.graph.output) == 5  # three shapes, two empty slices


def test_probe_results_keep_their_dtypes():
    model = gap_classifier(size=8)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch.Clear()
    batch.dim_param = "N"
    model.graph.node.append(helper.make_node("Shape", ["logits"], ["logits_shape"], name="shape"))
    one, two = shapes.probe_runs(model, ["relu1", "logits_shape"], "x", (3, 8, 8), shapes_only=["relu1"])
    assert one[0].shape == (1, 4, 8, 8) and two[0].shape == (2, 4, 8, 8) and one[0].dtype == np.float32
    np.testing.assert_array_equal(two[1], [2, 5])  # an integer tensor read whole


def test_pruned_models_borrow_the_weights_they_read():
    rng = np.random.default_rng(0)
    big = numpy_helper.from_array(rng.standard_normal((64, 3, 3, 3)).astype(np.float32) * 0.1, "w_big")  # 6.9 KiB
    model = make_model([helper.make_node("Conv", ["x", "w_big"], ["y"], pads=[1, 1, 1, 1]),
                        helper.make_node("Relu", ["y"], ["z"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                       [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [big])
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = quiet_session(pruned_to(model, ["z"], "x")).run(["z"], {"x": x})[0]
    before = held.held_bytes()
    import onnx_cnnviz.graph.loading.probe as probe

    original = probe.LEND_MIN_BYTES
    probe.LEND_MIN_BYTES = 1024
    try:
        with lending() as lend:
            pruned = pruned_to(model, ["z"], "x", lend)
            again = pruned_to(model, ["y"], "x", lend)
            tensor = next(t for t in pruned.graph.initializer if t.name == "w_big")
            assert held.is_held(tensor) and not tensor.raw_data  # the model carries a placeholder, not the data
            assert held.key_of(tensor) == held.key_of(next(t for t in again.graph.initializer))  # lent once
            assert held.held_bytes() == before + 64 * 27 * 4
            session = quiet_session(pruned)
        np.testing.assert_array_equal(session.run(["z"], {"x": x})[0], expected)  # the session keeps what it read
        assert held.held_bytes() == before  # the loan ends with the block
    finally:
        probe.LEND_MIN_BYTES = original
