"""Weights computed in the graph: timm's weight-standardised convolutions (NF-ResNet, NFNet, BiT) and dynamic filters.

timm's ``ScaledStdConv2d`` / ``StdConv2d`` standardise their kernels at run time (a BatchNormalization in training
mode over the stored weight, then a Reshape), so the Conv's weight is a computed tensor whose shape ONNX shape
inference often cannot tell. The input gradient needs only the weight's value (ConvTranspose of, or Conv with the
flipped, run-time weight; its shape read from the Conv's channels and ``kernel_shape``), and the incremental
occlusion planner only its shape. A weight computed from the image itself (a dynamic filter) needs the gradient
through the weight too, else part of the image's gradient would be silently lost.

References: central finite differences for the one-node rules (the harness of tests/graph/test_rules.py), torch
autograd with the ReLU / max-pool pattern pinned to the ONNX forward's (tests/reference.py) for the input gradients of
the timm models, pytorch-grad-cam for Grad-CAM, and a brute-force occlusion made of plain ``m.scores`` calls.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from onnx import helper

import onnx_cnnviz as cv
from onnx_cnnviz.errors import UnsupportedOpError
from onnx_cnnviz.graph import occlusion_incremental as oi
from onnx_cnnviz.graph.loading import weights
from onnx_cnnviz.graph.occlusion import window_positions

from tests.conftest import CACHE, rel_err
from tests.exporting import export_torchscript
from tests.graph.test_occlusion_incremental import _compare
from tests.graph.test_rules import CONV_CASES, Case, _w, check, gradient_graph, node, rand
from tests.methods.test_cam import _close, reference_maps
from tests.reference import onnx_kink_pattern, pinned

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

SIZE = 64
TARGETS = [1, 7]
WINDOW, STRIDE = (16, 16), (8, 8)


# --------------------------------------------------------------------------------------------------------------------
# One-node rules against finite differences
# --------------------------------------------------------------------------------------------------------------------

def _conv_case(name: str, weight: str):
    """Case ``name`` of test_rules' CONV_CASES with its weight ``computed`` from constants (``Mul(W_raw, gain)``,
    its shape hidden as the loader sees timm's standardised kernels: every dim unknown) or fed as a graph ``input``
    that is differentiated along with the bias (a dynamic filter)."""
    x_shape, w_shape, attrs = CONV_CASES[name]
    attrs = dict(attrs)
    attrs.pop("bias", None)
    x = rand(x_shape)
    if weight == "computed":
        attrs.setdefault("kernel_shape", list(w_shape[2:]))  # what every exporter writes
        nodes = [helper.make_node("Mul", ["W_raw", "gain"], ["W"], name="standardise"),
                 node("Conv", ["X", "W", "B"], **attrs)]
        inits = {"W_raw": _w(w_shape), "gain": np.array(1.7), "B": np.arange(w_shape[0], dtype=np.float64)}
        return Case(nodes, {"X": x}, inits, shape_fixes={"W": (None,) * len(w_shape)})
    inputs = {"X": x, "W": _w(w_shape), "B": np.linspace(-1.0, 1.0, w_shape[0])}
    return Case([node("Conv", ["X", "W", "B"], **attrs)], inputs, wrt=("X", "W", "B"),
                dims={"W": list(w_shape), "B": [w_shape[0]]})


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv_with_computed_weight_of_unknown_shape(name):
    check(_conv_case(name, "computed"))


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv_dynamic_filter_gradients(name):
    """dX, dW and dB of a Conv whose weight and bias are inputs: strides, dilations, groups, pads, auto_pad, 1-D and
    3-D."""
    check(_conv_case(name, "input"))


def test_conv_flips_a_computed_weight_in_the_graph():
    """Stride 1 keeps the fast plain-Conv emission when the weight is computed: flipped by a reversing Slice."""
    gg = gradient_graph(_conv_case("groups", "computed"))
    ops = {n.op_type for n in gg.model.graph.node if n.name.startswith("cnnviz/conv_")}
    assert "ConvTranspose" not in ops and {"Conv", "Slice", "Transpose"} <= ops


def test_conv_without_kernel_shape_or_weight_shape_is_refused():
    case = _conv_case("plain_fast_path", "computed")
    del case.nodes[1].attribute[:]
    case.nodes[1].attribute.extend([helper.make_attribute("pads", [1, 1, 1, 1])])
    with pytest.raises(UnsupportedOpError, match=r"'Conv_node' \(op_type Conv\).*its weight 'W' is computed at run "
                                                 r"time, its shape is unknown.*kernel_shape"):
        gradient_graph(case)


def test_conv_transpose_bias_gradient_and_refused_weight_gradient():
    x, w = rand((2, 3, 3, 3)), _w((3, 2, 3, 3))
    bias_case = Case([node("ConvTranspose", ["X", "W", "B"], strides=[2, 2], pads=[1, 1, 1, 1])],
                     {"X": x, "B": np.linspace(-1.0, 1.0, 2)}, {"W": w}, wrt=("X", "B"), dims={"B": [2]})
    check(bias_case)
    weight_case = Case([node("ConvTranspose", ["X", "W"], strides=[2, 2])], {"X": x, "W": w}, wrt=("X", "W"),
                       dims={"W": list(w.shape)})
    with pytest.raises(UnsupportedOpError, match=r"'ConvTranspose_node'.*its weight 'W' is computed from the image"):
        gradient_graph(weight_case)


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_dense_layer_with_computed_weight_of_unknown_shape(op):
    attrs = {"transB": 1} if op == "Gemm" else {}
    w_shape = (5, 4) if op == "Gemm" else (4, 5)
    x = rand((2, 4)) if op == "Gemm" else rand((2, 3, 4))
    nodes = [helper.make_node("Mul", ["W_raw", "gain"], ["W"], name="standardise"), node(op, ["X", "W"], **attrs)]
    check(Case(nodes, {"X": x}, {"W_raw": _w(w_shape), "gain": np.array(0.8)}, shape_fixes={"W": (None, None)}))


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean_over_the_batch(keepdims):
    """A mean over the batch (a filter computed from the whole batch) divides by a count known at run time only."""
    check(Case([node("ReduceMean", ["X"], axes=[0, 2], keepdims=keepdims)], {"X": rand((2, 3, 4, 5))}))


# --------------------------------------------------------------------------------------------------------------------
# timm's weight-standardised networks, end to end
# --------------------------------------------------------------------------------------------------------------------

def _bit():
    """BiT (Kolesnikov et al. 2020) as timm builds resnetv2_50x1_bit -- StdConv2d (eps 1e-8), GroupNorm, pre-activation
    bottlenecks, the 'fixed' stem of a zero Pad then MaxPool -- with one block per stage instead of (3, 4, 6, 3)."""
    from timm.layers import StdConv2d
    from timm.models.resnetv2 import ResNetV2

    return ResNetV2(layers=[1, 1, 1, 1], stem_type="fixed", conv_layer=partial(StdConv2d, eps=1e-8), num_classes=10)


# name -> (builder, the module pytorch-grad-cam targets, the ONNX tensor of its output: the model's default layer)
MODELS = {
    "nf_resnet26": (lambda: timm.create_model("nf_resnet26", pretrained=False, num_classes=10),
                    lambda t: t.final_act, "/final_act/Relu_output_0"),
    "test_nfnet": (lambda: timm.create_model("test_nfnet", pretrained=False, num_classes=10),
                   lambda t: t.final_act, "/final_act/Mul_output_0"),
    # pre-activation: the last map is the final GroupNorm + ReLU (timm's forward_features ends there)
    "bit_resnetv2": (_bit, lambda t: t.norm, "/norm/act/Relu_output_0"),
}


@pytest.fixture(scope="module")
def timm_model():
    """name -> (torch model, cnnviz Model, x (2, 3, 64, 64)); exported once (cached under .cache/tests), loaded once
    per module."""
    made = {}

    def get(name):
        if name not in made:
            torch.manual_seed(0)
            model = MODELS[name][0]().eval()
            for module in model.modules():
                if hasattr(module, "inplace"):
                    module.inplace = False
            path = CACHE / f"timm_{name}_{SIZE}.onnx"
            if not path.exists():
                export_torchscript(model, torch.zeros(1, 3, SIZE, SIZE), path)
            x = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
            # The kernels left computed in the graph (loading folds them: graph/loading/weights.py), so that the
            # rules' run-time-weight paths stay tested on real models.
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(weights, "FOLD_COMPUTED_WEIGHTS", False)
                made[name] = (model, cv.load(path, device="cpu"), x)
        return made[name]

    return get


def _computed_conv_weights(m) -> int:
    graph = m.spec().model.graph
    inits = {t.name for t in graph.initializer}
    return sum(1 for n in graph.node if n.op_type == "Conv" and n.input[1] not in inits)


def torch_input_grad(model, x, targets, pattern) -> np.ndarray:
    xt = torch.from_numpy(x).clone().requires_grad_(True)
    with pinned(model, pattern) as stats:
        out = model(xt)
    out[torch.arange(len(targets)), torch.as_tensor(targets)].sum().backward()
    assert stats["relu_flips"] <= 1e-4 * max(stats["relu_units"], 1), stats
    return xt.grad.numpy()


@pytest.mark.parametrize("name", list(MODELS))
def test_input_gradients_equal_torch_autograd(timm_model, name):
    model, m, x = timm_model(name)
    assert _computed_conv_weights(m) >= 15  # the standardised kernels are computed in the graph, not folded
    ours = cv.gradients(m, x, targets=TARGETS)
    ref = torch_input_grad(model, x, TARGETS, onnx_kink_pattern(m, x))
    for i in range(len(x)):
        assert rel_err(ours[i], ref[i]) < 1e-4, f"{name} image {i}: {rel_err(ours[i], ref[i]):.2e}"


@pytest.mark.parametrize("name", list(MODELS))
def test_scores_and_grad_cam_at_the_default_layer_equal_torch(timm_model, name):
    """The forward and Grad-CAM at the default layer against pytorch-grad-cam.

    BiT's stem is ``Pad(0) -> MaxPool``: onnxruntime 1.31's Pad_Fusion folds that Pad into the MaxPool's pads, which
    pad with -inf, not 0 -- scores 4% off torch's in every forward-only session -- unless the runtime disables it
    (onnx_cnnviz.runtime)."""
    model, m, x = timm_model(name)
    module, layer = MODELS[name][1], MODELS[name][2]
    assert m.default_layer == layer
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert rel_err(m.scores(x), expected) < 1e-4
    ours = cv.grad_cam(m, x, TARGETS)
    ref = reference_maps(model, [module(model)], x, TARGETS, methods=("grad_cam",))["grad_cam"]
    assert _close(ours, ref) <= 1e-3


def brute_force_occlusion(m, x, targets, window, stride) -> np.ndarray:
    """Each window filled with 0 in its own copy of the image, scored by ``m.scores``; each pixel gets the mean score
    drop of the windows covering it (captum's Occlusion)."""
    n, _, h, w = x.shape
    positions = window_positions((h, w), window, stride)
    maps = np.zeros((n, h, w))
    counts = np.zeros((h, w))
    for top, left in positions:
        counts[top:top + window[0], left:left + window[1]] += 1
    for i in range(n):
        copies = np.repeat(x[i:i + 1], len(positions), axis=0)
        for copy, (top, left) in zip(copies, positions):
            copy[:, top:top + window[0], left:left + window[1]] = 0.0
        drops = m.scores(x[i:i + 1])[0, targets[i]] - m.scores(copies)[:, targets[i]]
        for drop, (top, left) in zip(drops, positions):
            maps[i, top:top + window[0], left:left + window[1]] += drop
    return maps / counts


@pytest.mark.parametrize("name", list(MODELS))
def test_occlusion_equals_brute_force(timm_model, name):
    _, m, x = timm_model(name)
    ours = cv.occlusion(m, x, TARGETS, window=WINDOW, stride=STRIDE)
    ref = brute_force_occlusion(m, x, TARGETS, WINDOW, STRIDE)
    for i in range(len(x)):
        assert rel_err(ours[i], ref[i]) < 1e-4, f"{name} image {i}: {rel_err(ours[i], ref[i]):.2e}"


def test_incremental_occlusion_plans_with_computed_weights(timm_model):
    """The planner reads the computed kernels' shapes from the Conv nodes (shape inference left them unknown): they
    are the shapes the kernels have at run time, every convolution is costed, the computed ones run on boxes, and
    the box graph equals the full one."""
    _, m, x = timm_model("nf_resnet26")
    spec = m.spec(x.shape[2:])
    graph = spec.model.graph
    inits = {t.name: t for t in graph.initializer}
    computed = [n for n in graph.node if n.op_type == "Conv" and n.input[1] not in inits]
    assert any(spec.info[n.input[1]].shape is None or None in spec.info[n.input[1]].shape for n in computed)
    values = m.run(x[:1], outputs=[n.input[1] for n in computed]).outputs
    for conv in computed:
        assert oi.conv_weight_shape(conv, spec.info, inits) == values[conv.input[1]].shape
    the_plan = oi.plan(spec.model, spec.info, m.input_name, m.score_name, WINDOW, STRIDE, 1.0)
    boxed = [graph.node[i] for i in the_plan.incremental if graph.node[i].op_type == "Conv"]
    assert boxed and all(n.input[1] not in inits for n in boxed)
    assert the_plan.cost_fraction > 0.1
    _compare(m, x[:1], WINDOW, STRIDE, 1.0)


# --------------------------------------------------------------------------------------------------------------------
# A filter computed from the image
# --------------------------------------------------------------------------------------------------------------------

class DynamicFilter(torch.nn.Module):
    """A convolution whose grouped, strided kernel and bias are generated from the image's own pooled features (a
    dynamic filter network in miniature): the image's gradient flows through the kernel as well as the input."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.kernel = torch.nn.Linear(8, 8 * 4 * 3 * 3)
        self.bias = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        f = torch.tanh(self.stem(x))
        code = f.mean(dim=(2, 3)).mean(dim=0, keepdim=True)  # (1, 8): one filter for the batch
        w = self.kernel(code).reshape(8, 4, 3, 3)
        y = torch.nn.functional.conv2d(f, w, self.bias(code).reshape(8), stride=2, padding=1, groups=2)
        return self.head(torch.tanh(y).mean(dim=(2, 3)))


def test_dynamic_filter_gradient_equals_torch_autograd():
    torch.manual_seed(0)
    model = DynamicFilter().eval()
    path = export_torchscript(model, torch.zeros(1, 3, 32, 32), CACHE / "dynamic_filter_32.onnx")
    m = cv.load(path, device="cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = model(xt)
    out[torch.arange(2), torch.as_tensor(TARGETS)].sum().backward()
    assert rel_err(cv.gradients(m, x, targets=TARGETS), xt.grad.numpy()) < 1e-4
    # Without the path through the kernel the gradient is measurably different: the test would see it dropped.
    with torch.no_grad():
        w = model.kernel(torch.tanh(model.stem(xt)).mean(dim=(2, 3)).mean(dim=0, keepdim=True))
    xt2 = torch.from_numpy(x).requires_grad_(True)
    f = torch.tanh(model.stem(xt2))
    b = model.bias(f.mean(dim=(2, 3)).mean(dim=0, keepdim=True)).detach().reshape(8)
    y = torch.nn.functional.conv2d(f, w.reshape(8, 4, 3, 3), b, stride=2, padding=1, groups=2)
    model.head(torch.tanh(y).mean(dim=(2, 3)))[torch.arange(2), torch.as_tensor(TARGETS)].sum().backward()
    assert rel_err(xt2.grad.numpy(), xt.grad.numpy()) > 1e-3
