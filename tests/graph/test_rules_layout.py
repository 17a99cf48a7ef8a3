"""The backward graph stays in onnxruntime's blocked (NCHWc) layout (issue 25: saliency and guided backprop toward
2x a forward).

The rules emit their gradients so that onnxruntime's CPU layout transformer can keep the backward pass blocked: a
global pool's gradient and a strided convolution's (``ConvTranspose``) pass through an identity ``AveragePool``
(``rules._common.blocked``), so the residual sums are fused into the backward convolutions and no layout conversion is
left around them; guided backprop's ``Relu`` comes first, so it is fused into the convolution that produced its input.
These tests read onnxruntime's optimised graph (node types, never a time) and check the values are those of the
plain formulation.
"""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.runtime import DISABLED_OPTIMIZERS, Session

from tests.tiny_models import CLASSES, make_model

C = 16  # a multiple of every NCHWc block size (8 with AVX2, 16 with AVX-512)


def residual_net(seed: int = 0) -> onnx.ModelProto:
    """x (1, 3, 16, 16) -> conv+relu -> [conv+relu -> conv -> + skip -> relu] -> strided conv+relu (8x8), with a
    strided 1x1 shortcut -> + -> relu -> global average pool -> Gemm: ResNet's pattern at toy size."""
    rng = np.random.default_rng(seed)
    shapes = {"w0": (C, 3, 3, 3), "w1": (C, C, 3, 3), "w2": (C, C, 3, 3), "w3": (2 * C, C, 3, 3),
              "w4": (2 * C, 2 * C, 3, 3), "wd": (2 * C, C, 1, 1), "fc_w": (CLASSES, 2 * C)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32), n)
             for n, s in shapes.items()]
    inits.append(numpy_helper.from_array(rng.standard_normal(CLASSES).astype(np.float32), "fc_b"))
    same = dict(pads=[1, 1, 1, 1])
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], **same), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], **same), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], **same), helper.make_node("Add", ["c2", "r0"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], strides=[2, 2], **same),
             helper.make_node("Relu", ["c3"], ["r3"]), helper.make_node("Conv", ["r3", "w4"], ["c4"], **same),
             helper.make_node("Conv", ["r2", "wd"], ["d"], strides=[2, 2]),
             helper.make_node("Add", ["c4", "d"], ["a2"]),
             helper.make_node("Relu", ["a2"], ["r4"]), helper.make_node("GlobalAveragePool", ["r4"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)


def optimised_ops(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    """Node types of onnxruntime's optimised CPU graph, with the session options our sessions use (blocked nodes
    counted under their domain too)."""
    options = Session._options(1)
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=DISABLED_OPTIMIZERS)
    nodes = onnx.load(str(tmp_path / "optimised.onnx")).graph.node
    return collections.Counter([n.op_type for n in nodes] + [n.domain for n in nodes])


@pytest.fixture
def blocked_layout(tmp_path):
    """Skip where onnxruntime has no blocked layout (its NCHWc kernels are x86 only)."""
    if "com.microsoft.nchwc" not in optimised_ops(residual_net(), tmp_path):
        pytest.skip("onnxruntime's CPU provider has no NCHWc layout on this machine")


@pytest.mark.parametrize("rule", ["vanilla", "guided"])
def test_backward_pass_stays_blocked(rule, tmp_path, blocked_layout):
    m = cv.load(residual_net(), device="cpu")
    ops = optimised_ops(m.build_graph(wrt=[m.input_name], target_mode="top1", rule=rule), tmp_path)
    # The sum at the first block's output is fused into the backward convolution that produces one of its inputs;
    # the one at r2 adds the two strided convolutions' gradients (ConvTranspose, then the layout pool), which no
    # convolution produces: it stays, blocked.
    assert ops["Sum"] + ops["Add"] == 1, ops
    # Conversions: into the blocked layout for the forward's first conv, the gradient of the pool and of each of the
    # two strided convolutions (ConvTranspose); out of it for the score and the input gradient, before each
    # ConvTranspose, and for the first conv's gradient, whose input is unblocked (3 channels). Before the blocked
    # gradients, every ReLU mask and residual sum of the backward pass added its own.
    assert ops["ReorderOutput"] <= 5, ops
    if rule == "guided":  # every Relu of g fused into the backward Conv that produced g, but the ConvTranspose's
        assert ops["Relu"] <= 2, ops


@pytest.mark.parametrize("rule", ["vanilla", "guided"])
def test_gradient_equals_the_plain_chain_rule(rule):
    """The input gradient, written out in numpy with the unfused formulation, matches the graph's."""
    model = residual_net(seed=3)
    m = cv.load(model, device="cpu")
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got = cv.gradients(m, x, targets=[2], rule=rule)
    want = reference_gradient(model, x, target=2, guided=rule == "guided")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def _conv(x, w, stride=1, pad=0):
    n, c, h, wd = x.shape
    m, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, m, oh, ow), np.float64)
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            out += np.einsum("nchw,mc->nmhw", patch, w[:, :, i, j])
    return out


def _conv_input_grad(g, w, x_shape, stride=1, pad=0):
    """The adjoint of :func:`_conv`: scatter each output's gradient back over the taps that produced it."""
    n, c, h, wd = x_shape
    m, _, k, _ = w.shape
    oh, ow = g.shape[2:]
    dxp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad), np.float64)
    for i in range(k):
        for j in range(k):
            tap = np.einsum("nmhw,mc->nchw", g, w[:, :, i, j])
            dxp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += tap
    return dxp[:, :, pad:pad + h, pad:pad + wd]


def reference_gradient(model, x, target, guided):
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    r0 = relu(_conv(x, w["w0"], pad=1))
    r1 = relu(_conv(r0, w["w1"], pad=1))
    r2 = relu(_conv(r1, w["w2"], pad=1) + r0)
    r3 = relu(_conv(r2, w["w3"], 2, 1))
    r4 = relu(_conv(r3, w["w4"], pad=1) + _conv(r2, w["wd"], 2))

    def back_relu(g, y):
        return g * (y > 0) * ((g > 0) if guided else 1)

    g4 = back_relu(np.broadcast_to(w["fc_w"][target][None, :, None, None] / 64.0, r4.shape), r4)
    g3 = back_relu(_conv_input_grad(g4, w["w4"], r3.shape, pad=1), r3)
    g2 = back_relu(_conv_input_grad(g3, w["w3"], r2.shape, 2, 1) + _conv_input_grad(g4, w["wd"], r2.shape, 2), r2)
    g1 = back_relu(_conv_input_grad(g2, w["w2"], r1.shape, pad=1), r1)
    g0 = back_relu(_conv_input_grad(g1, w["w1"], r0.shape, pad=1) + g2, r0)
    return _conv_input_grad(g0, w["w0"], x.shape, pad=1).astype(np.float32)


def test_blocked_identity_keeps_every_float():
    """The layout pool is an exact identity: infinities, NaN and subnormals come back unchanged."""
    values = np.array([-np.inf, np.inf, np.nan, 1e-45, -3.5, 0.0, 7.25, -1e-40], np.float32)
    x = np.tile(values, C * 2).reshape(1, C, 4, 4)
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[1, 1])
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 4, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 4, 4])], [])
    options = Session._options(1)
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x)


def test_no_layout_pool_where_weights_are_held(monkeypatch):
    """A model whose weights are held (graph/held.py) runs without the NCHWc transformer, so its gradient graph gets
    no layout pools (each would be one more pass for nothing), and its gradient is the same."""
    from onnx_cnnviz.graph import held

    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    plain = cv.load(residual_net(seed=4), device="cpu")
    assert any(n.op_type == "AveragePool" for n in plain.build_graph(wrt=[plain.input_name]).graph.node)
    want = cv.gradients(plain, x, targets=[1])
    monkeypatch.setattr(held, "HOLD_ABOVE_BYTES", 0)
    monkeypatch.setattr(held, "HOLD_MIN_BYTES", 1024)
    m = cv.load(residual_net(seed=4), device="cpu")
    assert any(held.is_held(t) for t in m.graph_proto.graph.initializer)
    assert not any(n.op_type == "AveragePool" for n in m.build_graph(wrt=[m.input_name]).graph.node)
    np.testing.assert_allclose(cv.gradients(m, x, targets=[1]), want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
