"""Incremental occlusion: recomputing only the boxes a window changes gives the same scores as the full graph.

Every comparison runs both graphs on the same positions, including windows cut by the border, and asks for the same
class scores up to float summation order (1e-5 of the largest score).
"""
from __future__ import annotations

import importlib
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.graph import held
from onnx_cnnviz.graph import occlusion_incremental as oi
from onnx_cnnviz.graph.occlusion import BASELINE, IMAGE, OUTPUT, POSITIONS, WINDOW, occlusion_graph, window_positions
from onnx_cnnviz.methods.occlusion import incremental_plan

from ..methods.test_cam import KITTEN_BOX

pytest.importorskip("torch")


def _session(model: onnx.ModelProto):
    return held.session(model, ort.SessionOptions(), ["CPUExecutionProvider"])


def _compare(m: cv.Model, x: np.ndarray, window, stride, max_box_fraction=None, fill=(0.5, -1.0, 0.25),
             require_change=True):
    """Scores of every window position from the incremental graph and from the full one; returns the plan."""
    hw = x.shape[2:]
    spec = m.spec(hw)
    the_plan = oi.plan(spec.model, spec.info, m.input_name, m.score_name, window, stride, max_box_fraction)
    assert the_plan.incremental, the_plan.reason
    built = oi.incremental_occlusion_graph(spec.model, spec.info, m.input_name, m.score_name, window, stride,
                                           the_plan=the_plan)
    onnx.checker.check_model(built.model, full_check=True)
    fill = np.asarray(fill[:x.shape[1]], dtype=np.float32)
    positions = window_positions(hw, window, stride)
    clean = m.run(x, outputs=[o for o in built.originals if o != m.input_name])
    feeds = {o: x if o == m.input_name else clean.outputs[o] for o in built.originals}
    ours = _session(built.model).run([OUTPUT], {POSITIONS: positions, BASELINE: fill, **feeds})[0]
    plain = _session(occlusion_graph(spec.model, m.input_name, m.score_name)).run(
        [OUTPUT], {IMAGE: x, POSITIONS: positions, WINDOW: np.asarray(window, dtype=np.int64), BASELINE: fill})[0]
    scale = np.abs(plain).max()
    assert scale > 0
    assert np.abs(ours - plain).max() <= 1e-5 * scale + 1e-7, f"max diff {np.abs(ours - plain).max():.2e}"
    # The windows do change the scores: the test would notice pasting nothing. (Some architectures' random
    # initialisations are nearly dead; for those only the graph and the equality are checked.)
    if require_change:
        assert np.abs(plain - clean.scores).max() > 1e-3 * scale, "the windows barely change the scores"
    return the_plan


@pytest.mark.parametrize("name,window,stride,fraction,changes", [
    ("resnet18", (16, 16), (8, 8), None, True),
    ("resnet18", (28, 20), (16, 12), 1.0, True),   # the last windows reach past the border; boxes as large as allowed
    ("mobilenet_v2", (16, 16), (8, 8), 1.0, True),
    ("squeezenet1_1", (24, 24), (8, 8), 1.0, True),  # ceil-mode max pooling
    ("densenet121", (16, 16), (8, 8), 0.7, True),  # concatenation of paths with different boxes, average pooling
    ("regnet_x_400mf", (32, 16), (16, 8), 1.0, True),  # grouped convolutions
    ("shufflenet_v2_x1_0", (16, 16), (8, 8), 1.0, False),  # channel shuffle: shape arithmetic in the full part
])
def test_equals_full_graph_on_torchvision(loaded_batch, name, window, stride, fraction, changes):
    _, m, x = loaded_batch(name, 1, seed=4)
    the_plan = _compare(m, x, window, stride, fraction, require_change=changes)
    assert the_plan.frontier


def test_box_geometry_resnet18(loaded_batch):
    """conv1 (7x7, stride 2, pad 3) and the max pool (3x3, stride 2, pad 1) on a 16-pixel window at 0, by hand:
    conv1 outputs ceil((0 + 3 - 6) / 2) = -1 .. floor((15 + 3) / 2) = 9; the pool -1 .. floor((9 + 1) / 2) = 5."""
    _, m, x = loaded_batch("resnet18", 1, seed=4)
    the_plan = incremental_plan(m, x.shape[2:], (16, 16), (8, 8))
    graph = m.spec(x.shape[2:]).model.graph
    conv1 = next(n for n in graph.node if n.op_type == "Conv")
    pool = next(n for n in graph.node if n.op_type == "MaxPool")
    assert the_plan.boxes[conv1.output[0]] == (oi.Axis(-1, 11, 2),) * 2
    assert the_plan.boxes[pool.output[0]] == (oi.Axis(-1, 7, 4),) * 2
    # Every box sits on a grid that divides the window stride.
    assert all(8 % axis.jump == 0 for box in the_plan.boxes.values() for axis in box)
    assert the_plan.worthwhile and the_plan.cost_fraction < 0.9


def test_method_matches_full_occlusion(loaded_batch):
    _, m, x = loaded_batch("resnet18", 2, seed=5)
    assert incremental_plan(m, x.shape[2:], (16, 16), (8, 8)).worthwhile
    for mode in ("score", "probability"):
        fast = cv.occlusion(m, x, [1, 2], window=16, stride=8, baseline="mean", mode=mode)
        full = cv.occlusion(m, x, [1, 2], window=16, stride=8, baseline="mean", mode=mode, incremental=False)
        assert np.abs(fast - full).max() <= 1e-4 * np.abs(full).max(), mode
    top1 = cv.occlusion(m, x, None, window=16, stride=8)
    np.testing.assert_allclose(top1, cv.occlusion(m, x, m.scores(x).argmax(1), window=16, stride=8), rtol=0,
                               atol=1e-6 * np.abs(top1).max())


# --- hand-made graphs for the ops torchvision does not use -----------------------------------------------------------
def _conv(name, x, c_in, c_out, rng, **attrs):
    k = attrs.pop("kernel", 3)
    w = numpy_helper.from_array((rng.standard_normal((c_out, c_in // attrs.get("group", 1), k, k)) * 0.3)
                                .astype(np.float32), name + "_w")
    b = numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32) * 0.1, name + "_b")
    return helper.make_node("Conv", [x, w.name, b.name], [name], name=name, **attrs), [w, b]


def _local_model(size=40) -> onnx.ModelProto:
    """SAME_UPPER padding, dilation, asymmetric pads, a strided 1x1 conv that skips the box's edge lines, a Concat of
    paths with different boxes, a per-channel Mul, an AveragePool that excludes its padding (not a fixed-pad pool:
    the boxes end there), then global pooling and a Gemm."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def add(node_inits):
        node, ws = node_inits
        nodes.append(node)
        inits.extend(ws)
        return node.output[0]

    a = add(_conv("same", "x", 3, 8, rng, auto_pad="SAME_UPPER", strides=[2, 2]))
    nodes.append(helper.make_node("Relu", [a], ["a_relu"]))
    d = add(_conv("dilated", "a_relu", 8, 8, rng, dilations=[2, 2], pads=[2, 1, 2, 3]))
    s = add(_conv("strided1x1", "a_relu", 8, 8, rng, kernel=1, strides=[2, 2]))
    nodes.append(helper.make_node("MaxPool", [d], ["d_pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Concat", ["d_pool", s], ["cat"], axis=1))
    scale = numpy_helper.from_array(rng.standard_normal((1, 16, 1, 1)).astype(np.float32), "scale")
    inits.append(scale)
    nodes.append(helper.make_node("Mul", ["cat", "scale"], ["scaled"]))
    g = add(_conv("grouped", "scaled", 16, 16, rng, group=4, pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("LeakyRelu", [g], ["g_act"], alpha=0.1))
    nodes.append(helper.make_node("AveragePool", ["g_act"], ["avg"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                  count_include_pad=0))
    nodes.append(helper.make_node("GlobalAveragePool", ["avg"], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    fc = numpy_helper.from_array(rng.standard_normal((5, 16)).astype(np.float32), "fc_w")
    inits.append(fc)
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w"], ["logits"], transB=1))
    graph = helper.make_graph(nodes, "local", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size,
                                                                                                       size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("window,stride", [((8, 8), (4, 4)), ((12, 6), (8, 4)), ((5, 7), (4, 4))])
def test_equals_full_graph_on_unusual_ops(tmp_path, window, stride):
    path = tmp_path / "local.onnx"
    onnx.save(_local_model(), str(path))
    m = cv.load(path, device="cpu")
    x = np.random.default_rng(1).standard_normal((1, 3, 40, 40)).astype(np.float32)
    the_plan = _compare(m, x, window, stride, max_box_fraction=1.0)
    # Everything up to the AveragePool that leaves out its padding runs on boxes; that pool reads full maps.
    assert the_plan.frontier == ["g_act"]


def test_window_stride_off_the_grid(tmp_path):
    """A window stride of 3 fits no map after a stride-2 layer: only the layers before it can run on boxes."""
    path = tmp_path / "local.onnx"
    onnx.save(_local_model(), str(path))
    m = cv.load(path, device="cpu")
    x = np.random.default_rng(2).standard_normal((1, 3, 40, 40)).astype(np.float32)
    spec = m.spec((40, 40))
    the_plan = oi.plan(spec.model, spec.info, m.input_name, m.score_name, (6, 6), (3, 3), 1.0)
    assert not the_plan.incremental and "not a local op" in the_plan.reason
    assert not the_plan.worthwhile
    full = cv.occlusion(m, x, 0, window=6, stride=3, incremental=False)
    np.testing.assert_array_equal(cv.occlusion(m, x, 0, window=6, stride=3), full)


def test_same_padded_average_pool_excluding_padding_reads_full_maps():
    """SAME_UPPER puts an odd padding pixel at the end only: an AveragePool that leaves out its padding divides by
    fewer pixels there, so it must not run on boxes even though its begin padding is zero."""
    rng = np.random.default_rng(0)
    conv, ws = _conv("c1", "x", 3, 4, rng, pads=[1, 1, 1, 1])
    w2 = numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "c2_w")
    fc = numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc_w")
    nodes = [conv,
             helper.make_node("AveragePool", ["c1"], ["avg"], kernel_shape=[2, 2], strides=[2, 2],
                              auto_pad="SAME_UPPER", count_include_pad=0),
             helper.make_node("Conv", ["avg", "c2_w"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c2"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "fc_w"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "same_avg",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 21, 21])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], [*ws, w2, fc])
    m = cv.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), device="cpu")
    x = rng.standard_normal((1, 3, 21, 21)).astype(np.float32)
    the_plan = _compare(m, x, (4, 4), (2, 2), max_box_fraction=1.0)
    assert the_plan.frontier == ["c1"]


def test_graph_is_standard_onnx(loaded_batch):
    _, m, x = loaded_batch("resnet18", 1, seed=4)
    spec = m.spec(x.shape[2:])
    built = oi.incremental_occlusion_graph(spec.model, spec.info, m.input_name, m.score_name, (16, 16), (8, 8))
    onnx.checker.check_model(built.model, full_check=True)
    assert {n.domain for n in built.model.graph.node} <= {"", "ai.onnx"}
    names = [i.name for i in built.model.graph.input]
    assert names[:2] == [POSITIONS, BASELINE] and names[2:] == built.originals and m.input_name in built.originals
    assert [o.name for o in built.model.graph.output] == [OUTPUT]


def test_falls_back_to_the_full_graph_with_a_warning(loaded_batch, monkeypatch):
    """If the rewrite fails on some model, occlusion still answers (through the full graph) and says so once."""
    _, m, x = loaded_batch("resnet18", 1, seed=6)
    assert incremental_plan(m, x.shape[2:], (16, 16), (16, 16)).worthwhile
    expected = cv.occlusion(m, x, 3, window=16, stride=16, incremental=False)

    def broken(*args, **kwargs):
        raise ValueError("an op the rewrite did not expect")

    monkeypatch.setattr(oi, "incremental_occlusion_graph", broken)
    with pytest.warns(RuntimeWarning, match="an op the rewrite did not expect"):
        got = cv.occlusion(m, x, 3, window=16, stride=16)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failure is remembered: no second build, no second warning
        cv.occlusion(m, x, 3, window=16, stride=16)


def test_real_squeezenet_kitten(squeezenet_path, kitten_x):
    """Real ImageNet weights (the shared SqueezeNet): the incremental map equals the full one, and the score drops
    most where the kitten is (occluding it costs class 281 its evidence)."""
    m = cv.load(squeezenet_path, device="cpu")
    plan_ = incremental_plan(m, (224, 224), (32, 32), (16, 16))
    assert plan_.worthwhile, plan_.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the full graph
        fast = cv.occlusion(m, kitten_x, 281, window=32, stride=16)
    full = cv.occlusion(m, kitten_x, 281, window=32, stride=16, incremental=False)
    assert np.abs(fast - full).max() <= 1e-4 * np.abs(full).max()
    y, x = np.unravel_index(full[0].argmax(), full[0].shape)
    assert KITTEN_BOX[0] <= x < KITTEN_BOX[2] and KITTEN_BOX[1] <= y < KITTEN_BOX[3]


@pytest.mark.parametrize("stride", [1, 2])
def test_dense_strides_pick_the_full_graph(loaded_batch, monkeypatch, stride):
    """At stride 1 no map after ResNet-18's stride-2 conv1 sits on the windows' grid, and at stride 2 only conv1 and
    its ReLU do: the incremental graph would recompute almost everything and paste a 64-channel map at half the
    image's size per window (measured 1.26-1.28x the full graph's time per window at stride 2, window 16, 224 px). The
    plan says so, and :func:`onnx_cnnviz.occlusion` never builds the incremental session."""
    occlusion_method = importlib.import_module("onnx_cnnviz.methods.occlusion")  # not the function of that name
    _, m, x = loaded_batch("resnet18", 1, seed=4)
    the_plan = incremental_plan(m, x.shape[2:], (16, 16), (stride, stride))
    assert not the_plan.worthwhile and the_plan.cost_fraction > 1.0 - oi.MIN_SAVING, the_plan
    assert len(the_plan.incremental) <= 2  # nothing past conv1 and its ReLU

    class Picked(Exception):
        pass

    def picks(which):
        def session(*args, **kwargs):
            raise Picked(which)
        return session
    # Which session occlusion asks for is the choice; stopping there spares the thousands of windows.
    monkeypatch.setattr(occlusion_method, "incremental_session", picks("incremental"))
    monkeypatch.setattr(occlusion_method, "occlusion_session", picks("full"))
    with pytest.raises(Picked, match="full"):
        cv.occlusion(m, x, 0, window=16, stride=stride)
    with pytest.raises(Picked, match="incremental"):  # where it is worthwhile, the same call picks the other
        cv.occlusion(m, x, 0, window=16, stride=8)


def test_boxes_covering_the_map_are_not_worthwhile(loaded_batch):
    """Boxes allowed to cover whole maps (fraction 1.0) at a stride whose windows overlap almost entirely: the
    estimate counts the recomputed convolutions at their full size plus the glue, so it is not below a forward."""
    _, m, x = loaded_batch("resnet18", 1, seed=4)
    spec = m.spec(x.shape[2:])
    the_plan = oi.plan(spec.model, spec.info, m.input_name, m.score_name, (96, 96), (8, 8), 1.0)
    assert the_plan.incremental
    assert the_plan.cost_fraction > 1.0 - oi.MIN_SAVING and not the_plan.worthwhile
