"""The backward pass of a spatially local seed on windows (graph/local_backward.py): the layer's gradient equals the
whole graph's (``Model.vjp``, which never windows) for seeds in the middle, at the corners (windows clamped inside
the map), far apart in one row (one large window), absent in a row; the run is found through convolutions (dilated
too), normalisation and activations, and stops before a strided convolution or a constant with spatial extent."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.graph import local_backward
from tests.tiny_models import make_model, save

H = W = 24


def local_head(variant: str = "plain"):
    """x (N, 3, H, W) -> Conv 3x3 -> Relu "layer" (N, 4, H, W) -> Conv 3x3 -> Sigmoid*x (SiLU) -> Conv 3x3
    dilation 2 -> BatchNormalization -> Relu -> Conv 1x1 "front" (N, 3, H, W) -> Reshape "out" (N, 3, H * W).
    ``variant``: "strided" (the dilated conv at stride 2, then a Resize back), "spatial" (a constant (1, 4, H, W)
    added after the first conv), "skip" (the layer's values also concatenated to the output: the rest of the path
    reads the run at two tensors)."""
    rng = np.random.default_rng(0)
    arrays = {"w0": rng.standard_normal((4, 3, 3, 3)), "w1": rng.standard_normal((4, 4, 3, 3)) * 0.5,
              "w2": rng.standard_normal((4, 4, 3, 3)) * 0.5, "w3": rng.standard_normal((3, 4, 1, 1)),
              "scale": rng.random(4) + 0.5, "bias": rng.standard_normal(4), "mean": rng.standard_normal(4),
              "var": rng.random(4) + 0.5, "spatial": rng.standard_normal((1, 4, H, W))}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items()]
    inits += [numpy_helper.from_array(np.array([0, 3, H * W], np.int64), "flat"),
              numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "twice"),
              numpy_helper.from_array(np.array([0, 3, 1, H * W], np.int64), "flat4"),
              numpy_helper.from_array(np.array([0, 4, H * W], np.int64), "flat_layer")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1] * 4),
             helper.make_node("Relu", ["c0"], ["layer"]),
             helper.make_node("Conv", ["layer", "w1"], ["c1"], pads=[1] * 4)]
    if variant == "spatial":
        nodes.append(helper.make_node("Add", ["c1", "spatial"], ["c1s"]))
    src = "c1s" if variant == "spatial" else "c1"
    nodes += [helper.make_node("Sigmoid", [src], ["s1"]),
              helper.make_node("Mul", [src, "s1"], ["a1"])]
    if variant == "strided":
        nodes += [helper.make_node("Conv", ["a1", "w2"], ["c2s"], pads=[1] * 4, strides=[2, 2]),
                  helper.make_node("Resize", ["c2s", "", "twice"], ["c2"], mode="nearest")]
    else:
        nodes.append(helper.make_node("Conv", ["a1", "w2"], ["c2"], pads=[2] * 4, dilations=[2, 2]))
    nodes += [helper.make_node("BatchNormalization", ["c2", "scale", "bias", "mean", "var"], ["b2"]),
              helper.make_node("Relu", ["b2"], ["a2"]),
              helper.make_node("Conv", ["a2", "w3"], ["front"])]
    if variant == "skip":
        nodes += [helper.make_node("Reshape", ["front", "flat"], ["f3"]),
                  helper.make_node("Reshape", ["layer", "flat_layer"], ["l3"]),
                  helper.make_node("Concat", ["f3", "l3"], ["out"], axis=1)]
        channels = 7
    else:
        nodes.append(helper.make_node("Reshape", ["front", "flat"], ["out"]))
        channels = 3
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, H, W])],
                      [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", channels, H * W])], inits,
                      opset=18)


def _load(tmp_path, variant="plain"):
    return cv.load(save(local_head(variant), tmp_path / f"{variant}.onnx"), device="cpu", task="segmenter",
                   input_size=(H, W))


def test_the_local_run_and_its_span_are_found(tmp_path):
    m = _load(tmp_path)
    spec = m.spec()
    run = local_backward.plan(spec.model, spec.info, "out", "layer")
    assert run.frontier == "front" and run.span == 2 + 4 + 0  # 3x3, 3x3 at dilation 2, 1x1
    assert [n.op_type for n in run.nodes] == ["Conv", "Sigmoid", "Mul", "Conv", "BatchNormalization", "Relu", "Conv"]


@pytest.mark.parametrize("variant, frontier", [("strided", "a1"), ("spatial", "c1"), ("skip", None)])
def test_the_run_stops_before_a_node_a_window_would_change(tmp_path, variant, frontier):
    """A strided convolution, or a constant with spatial extent, ends the run; a layer the rest of the path also
    reads directly has none."""
    m = _load(tmp_path, variant)
    spec = m.spec()
    run = local_backward.plan(spec.model, spec.info, "out", "layer")
    assert (run and run.frontier) == frontier
    if run:
        assert run.span == 2


@pytest.mark.parametrize("variant, rule", [("plain", "vanilla"), ("plain", "guided"), ("strided", "vanilla"),
                                           ("spatial", "guided"), ("skip", "vanilla")])
def test_windowed_gradients_equal_the_whole_graph(tmp_path, monkeypatch, variant, rule):
    m = _load(tmp_path, variant)
    sizes = _record_windows(monkeypatch)
    channels = 7 if variant == "skip" else 3
    x = np.random.default_rng(1).standard_normal((6, 3, H, W)).astype(np.float32)
    seed = np.zeros((6, channels, H, W), np.float32)
    seed[0, 1, 5, 6] = 1.0  # the middle
    seed[1, 0, 0, 0] = 1.0  # a corner: the window is clamped inside the map
    seed[2, 2, H - 1, W - 1] = -2.0  # the other corner
    seed[3, 1, 2, 3] = 1.0
    seed[3, 0, 9, 10] = 0.5  # two positions far apart in one row
    seed[5, 2, 7, 1] = 1.0  # row 4: no seed at all
    if variant == "skip":
        seed[5, 5, 3, 3] = 1.0  # on the layer's own values: the rest of the path reads the run at two tensors
    targets = [cv.OutputWeights("out", s.reshape(-1)) for s in seed]
    got = m.run(x, outputs=["layer"], wrt=["layer"], targets=targets, rule=rule).grads["layer"]
    want = m.vjp(x, "out", seed.reshape(6, channels, H * W), wrt=["layer"], rule=rule).grads["layer"]
    assert np.abs(want).max() > 0 and not np.any(want[4])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if variant == "plain":  # one window size for the rows: as large as row 3's two positions need
        assert sizes == [(H, W)]  # 8 + 12 rounded up to a multiple of 8
        one = m.run(x[:1], outputs=["layer"], wrt=["layer"], targets=targets[:1], rule=rule).grads["layer"]
        np.testing.assert_allclose(one, want[:1], rtol=1e-5, atol=1e-6)
        assert sizes[-1] == (13, 13)  # a point seed: 1 + 2 * 6
    else:
        assert (sizes == []) == (variant == "skip")


def _record_windows(monkeypatch) -> list:
    sizes = []
    real = local_backward.windows

    def recorded(support, span):
        out = real(support, span)
        sizes.append(out[0])
        return out

    monkeypatch.setattr(local_backward, "windows", recorded)
    return sizes


def test_windows_are_small_for_a_point_seed_and_lie_inside_the_map():
    support = np.zeros((3, 40, 40), bool)
    support[0, 20, 20] = True
    support[1, 0, 39] = True
    support[2, 38, 1] = True
    (hc, wc), origins = local_backward.windows(support, 4)
    assert (hc, wc) == (9, 9)  # 1 + 2 * 4
    np.testing.assert_array_equal(origins, [[16, 16], [0, 31], [31, 0]])
    support[0, 20, 21] = True  # 2 wide: 2 + 8, rounded up to a multiple of 8; 1 high: 1 + 8
    assert local_backward.windows(support, 4)[0] == (9, 16)
    assert local_backward.windows(support, 30)[0] == (40, 40)  # larger than the map: the whole map


def test_grad_cam_of_two_point_targets_uses_the_window(tmp_path, monkeypatch):
    """Through a method (``Model.run`` as Grad-CAM calls it), the image shared by two targets."""
    m = _load(tmp_path)
    sizes = _record_windows(monkeypatch)
    x = np.random.default_rng(2).standard_normal((1, 3, H, W)).astype(np.float32)
    seed = np.zeros((2, 3, H * W), np.float32)
    seed[0, 0, 0] = seed[1, 2, H * W - 1] = 1.0
    targets = [cv.OutputWeights("out", s.reshape(-1)) for s in seed]
    maps = cv.grad_cam(m, np.repeat(x, 2, 0), targets=targets, layer="layer", upsample=False, normalize=False)
    assert sizes == [(13, 13)]  # span 6 on each side of a point, the windows clamped inside the map
    monkeypatch.setattr(cv.Model, "_local_run", lambda *args: None)
    whole = cv.grad_cam(m, np.repeat(x, 2, 0), targets=targets, layer="layer", upsample=False, normalize=False)
    assert np.abs(whole).max() > 0
    np.testing.assert_allclose(maps, whole, rtol=1e-5, atol=1e-7)
