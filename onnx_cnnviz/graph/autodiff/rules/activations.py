"""Backward rules of activation functions. ``y`` is the forward output, ``x`` the input, ``g`` = dL/dy.

Masks are taken from the output where the output determines them (ReLU, Clip): onnxruntime can then still fuse
Conv+ReLU in the forward pass, because the pre-activation tensor is not needed by the backward graph.

Rectifiers (ReLU, ReLU6 = ``Clip(0, 6)``, LeakyReLU, PReLU) also have a guided and a deconvnet rule, made from their
vanilla rule by :func:`guided` and :func:`deconvnet` (the table of which op is a rectifier is
:data:`onnx_cnnviz.graph.autodiff.rules.RECTIFIERS`).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ...ops import node_attr
from . import register
from ._common import times_function_of_input


# 2**126 lifts the smallest normal float32 (2**-126) to 1; larger values saturate at the upper bound 1.
_MASK_GAIN = 2.0 ** 126


def relu_mask(ctx, y: str) -> str:
    """The float mask (y > 0) of a ReLU output y >= 0, as ``HardSigmoid(y; alpha=2**126, beta=0)``, that is
    ``min(max(2**126 y, 0), 1)``.

    Equal to (y > 0) for every y except subnormal activations (0 < y < 2**-126), which pass a fraction of the gradient.
    One HardSigmoid rather than Greater + Where (or Mul + Clip) because onnxruntime runs HardSigmoid, and the Mul of
    two same-shaped tensors that applies the mask, in its blocked (NCHWc) convolution layout, where a Mul by a
    scalar, Clip, Where and Sign all leave it: with the gradients' shapes declared (engine.py), the backward pass of a
    ReLU network stays blocked between its convolutions instead of being converted back to NCHW around each of them
    (ResNet-50: 95 conversions to NCHW left 42, those around the strided convolutions' ConvTranspose). One pass over
    the map instead of two, too. Measured gain on two loaded cores: small, the input-gradient graph of ResNet-50 went
    from 2.39x to 2.35x a forward at batch 1 and 2.48x to 2.46x at batch 8 (process CPU time, interleaved).
    """
    return ctx.b.op("HardSigmoid", [y], hint="relu_mask", alpha=_MASK_GAIN, beta=0.0)


def relu_vanilla(ctx, node, dys):
    """ReLU: dx = g * (x > 0); the derivative at the kink x == 0 is 0, as in torch."""
    return [ctx.b.op("Mul", [dys[0], relu_mask(ctx, node.output[0])], hint="relu_grad")]


def relu_guided(ctx, node, dys):
    """Guided backpropagation (Springenberg et al. 2015): dx = g * (x > 0) * (g > 0), computed as
    ``relu(g) * mask``.

    The same values as ``relu(g * mask)`` (the mask is never negative, so the product keeps g's sign), but with the
    ``Relu`` first it reads ``g`` straight from the backward convolution that produced it, and onnxruntime fuses it
    into that convolution as its activation (NCHWc ``Conv`` with ``activation=Relu``): the guided pass then costs
    what the vanilla one does instead of one more pass over every feature map.
    """
    positive = ctx.b.op("Relu", [dys[0]], hint="guided_positive")
    return [ctx.b.op("Mul", [positive, relu_mask(ctx, node.output[0])], hint="guided_relu_grad")]


def relu_deconvnet(ctx, node, dys):
    """Deconvnet (Zeiler & Fergus 2014): dx = g * (g > 0), ignoring the forward activation."""
    return [ctx.b.op("Relu", [dys[0]], hint="deconv_relu_grad")]


def guided(vanilla: Callable, is_rectifier: Callable | None = None) -> Callable:
    """The guided-backpropagation rule of a rectifier whose true rule is ``vanilla``:

        dx = vanilla(relu(g)) = g * f'(x) * (g > 0)

    Springenberg et al. 2015 (Fig. 1) define guided backpropagation through a ReLU as the true gradient
    with the negative part of the backward signal removed: ``R_l = (f_l > 0) * (R_{l+1} > 0) * R_{l+1}``. For any
    rectifier we keep the same two factors: the rectifier's own derivative ``f'(x)`` (its forward mask) and the
    positive part of the incoming signal. So

    * ReLU6 = Clip(0, 6): ``dx = g * (0 < x < 6) * (g > 0)`` (the forward mask includes the upper saturation,
      because that is the true derivative there: a saturated unit does not respond to its input);
    * Clip(0, max) in general: ``g * (0 < x < max) * (g > 0)``; Clip(0) with no upper bound is the ReLU rule;
    * LeakyReLU: ``dx = g * (x > 0 ? 1 : alpha) * (g > 0)``; PReLU the same with its slope in place of alpha.
      With alpha = 0 this is exactly Springenberg's ReLU rule.

    ``is_rectifier(node, value)``, when given, picks the nodes of the op type that are rectifiers (Clip: lower bound
    0); the others get ``vanilla``. captum's ``GuidedBackprop`` (and pytorch-grad-cam's ``GuidedBackpropReLUModel``)
    override ``nn.ReLU`` modules only: through ReLU6, LeakyReLU and PReLU modules (and any functional ReLU) they
    pass the true gradient, so on networks built from nn.ReLU they equal this rule set and elsewhere they do not.
    (Written for any rectifier, captum's ``relu(g * f'(x))`` equals ours whenever ``f'(x) >= 0``: every rectifier
    here except a PReLU with a negative learned slope, where ours keeps the sign of the slope.)
    """
    def rule(ctx, node, dys):
        if is_rectifier is not None and not is_rectifier(node, ctx.value):
            return vanilla(ctx, node, dys)
        positive = ctx.b.op("Relu", [dys[0]], hint="guided_positive")
        return vanilla(ctx, node, [positive, *dys[1:]])

    rule.__name__ = f"{vanilla.__name__}_guided"
    rule.__doc__ = f"Guided backpropagation through {vanilla.__name__}: dx = {vanilla.__name__}(relu(g))."
    return rule


def deconvnet(vanilla: Callable, is_rectifier: Callable | None = None) -> Callable:
    """The deconvnet rule of a rectifier: ``dx = g * (g > 0)``, whatever the forward input was.

    Zeiler & Fergus 2014 (Sec. 2.1, "Rectification") pass the reconstruction through a ReLU so that it stays a valid
    (non-negative) feature map; the forward activation plays no part (Springenberg et al. 2015, Fig. 1:
    ``R_l = (R_{l+1} > 0) * R_{l+1}``). We apply exactly that to every rectifier:

    * ReLU6 = Clip(0, 6): ``dx = g * (g > 0)``. The upper saturation (x >= 6) is ignored like the lower one: the
      deconvnet uses no forward mask at all, and saturation is a property of the forward input. Clipping the signal
      itself at 6 (applying ReLU6 to g) would not do either: the backward signal has the arbitrary scale of the
      score's seed, so such a clip would make the map depend on that scale; ``relu`` is positively homogeneous.
    * LeakyReLU / PReLU: ``dx = g * (g > 0)`` too (not ``leaky(g)``): the deconvnet's backward non-linearity is the
      rectification of the signal, and the negative slope, like the forward mask, belongs to the forward unit.

    captum's ``Deconvolution`` overrides ``nn.ReLU`` modules only (the true gradient through ReLU6, LeakyReLU,
    PReLU); on networks built from nn.ReLU it equals this rule set. Clip nodes with another lower bound
    (``is_rectifier`` false) get ``vanilla``. A gradient for Clip's bounds or PReLU's slope is never given.
    """
    def rule(ctx, node, dys):
        if is_rectifier is not None and not is_rectifier(node, ctx.value):
            return vanilla(ctx, node, dys)
        for i in sorted(ctx.wanted):
            if i > 0:
                ctx.unsupported(f"a gradient for input {i} ('{node.input[i]}') was asked for; the deconvnet rule "
                                "passes the signal to the rectified input only")
        return [ctx.b.op("Relu", [dys[0]], hint="deconv_grad")] + [None] * (len(node.input) - 1)

    rule.__name__ = f"{vanilla.__name__}_deconvnet"
    rule.__doc__ = f"Deconvnet rule of {vanilla.__name__}: dx = relu(g), ignoring the forward input."
    return rule


@register("LeakyRelu")
def leaky_relu(ctx, node, dys):
    """dx = g if x > 0 else alpha * g."""
    b, g = ctx.b, dys[0]
    alpha = ctx.attr("alpha", 0.01)
    mask = b.op("Greater", [node.input[0], b.const(0.0)])
    return [b.op("Where", [mask, g, b.op("Mul", [g, b.const(alpha)])], hint="leaky_relu_grad")]


@register("PRelu")
def prelu(ctx, node, dys):
    """dx = g if x > 0 else slope * g (slope broadcast); the slope itself is a weight and gets no gradient."""
    b, g = ctx.b, dys[0]
    mask = b.op("Greater", [node.input[0], b.const(0.0)])
    if ctx.wants(1):
        ctx.unsupported("a gradient for the PRelu slope was asked for (slopes are weights)")
    return [b.op("Where", [mask, g, b.op("Mul", [g, node.input[1]])], hint="prelu_grad"), None]


def clip_lower_bound(node, value: Callable):
    """The constant lower bound of a Clip node (input 1 from opset 11, attribute ``min`` before), or None when it
    has none or it is computed at run time. ``value(name)`` gives the constant value of a tensor or None."""
    if len(node.input) > 1 and node.input[1]:
        bound = value(node.input[1])
    else:
        bound = node_attr(node, "min")
    if bound is None:
        return None
    bound = np.asarray(bound)
    return float(bound.reshape(-1)[0]) if bound.size == 1 else None


def clip_is_rectifier(node, value: Callable) -> bool:
    """A Clip is a rectifier (ReLU6, ReLU-n, or a ReLU written as Clip) when its lower bound is the constant 0;
    with any other lower bound, none, or one computed at run time it is an ordinary saturating function."""
    return clip_lower_bound(node, value) == 0.0


# Upper bounds that :func:`below_mask` handles exactly: the gap below such a bound (at least bound * 2**-24) times
# _BELOW_GAIN is at least 1, and _BELOW_GAIN * bound stays far below float32's largest value.
_BELOW_GAIN = 2.0 ** 100
_BELOW_RANGE = (2.0 ** -60, 2.0 ** 20)


def below_mask(ctx, y: str, bound: float) -> str:
    """The float mask (y < bound) of a Clip output y <= bound, as ``HardSigmoid(y; alpha=-2**100,
    beta=2**100 bound)``, that is ``min(max(2**100 (bound - y), 0), 1)``: exactly 0 at the bound and 1 below it
    (the products by a power of two are exact, and any float below the bound lies at least ``bound * 2**-24``
    under it). A blocked-layout (NCHWc) op in onnxruntime, as :func:`relu_mask` is, where Less and Where are not.
    """
    return ctx.b.op("HardSigmoid", [y], hint="clip_below_mask", alpha=-_BELOW_GAIN, beta=_BELOW_GAIN * bound)


def _bound(ctx, node, index: int, attr: str):
    """A Clip bound's constant value (input ``index`` from opset 11, attribute ``attr`` before), or None when it is
    absent or computed at run time."""
    if len(node.input) > index and node.input[index]:
        value = ctx.value(node.input[index])
        return None if value is None or np.asarray(value).size != 1 else float(np.asarray(value).reshape(-1)[0])
    value = ctx.attr(attr)
    return None if value is None else float(value)


@register("Clip")
def clip(ctx, node, dys):
    """Clip (ReLU6 and friends): dx = g * (min < x < max), strict as torch's hardtanh backward.

    A rectifying Clip (constant lower bound 0, constant upper bound in a wide range or none: ReLU6, ReLU written as
    Clip) multiplies ``g`` by :func:`relu_mask` and :func:`below_mask`, which onnxruntime keeps in its blocked layout
    between the backward convolutions (MobileNetV2's ReLU6 everywhere); any other bounds take Greater/Less masks.
    """
    b, g, y = ctx.b, dys[0], node.output[0]
    has_hi = (len(node.input) > 2 and node.input[2]) or ctx.attr("max") is not None
    lo, hi = _bound(ctx, node, 1, "min"), _bound(ctx, node, 2, "max")
    if lo == 0.0 and (not has_hi or (hi is not None and _BELOW_RANGE[0] <= hi <= _BELOW_RANGE[1])):
        dx = b.op("Mul", [g, relu_mask(ctx, y)], hint="clip_grad")
        if has_hi:
            dx = b.op("Mul", [dx, below_mask(ctx, y, hi)], hint="clip_grad")
        return [dx, None, None]
    bounds = []
    lo = node.input[1] if len(node.input) > 1 and node.input[1] else None
    hi = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if lo is None and ctx.attr("min") is not None:
        lo = b.const(ctx.attr("min"))
    if hi is None and ctx.attr("max") is not None:
        hi = b.const(ctx.attr("max"))
    # y equals x strictly inside the bounds and equals a bound outside, so the mask can read y.
    if lo is not None:
        bounds.append(b.op("Greater", [y, lo]))
    if hi is not None:
        bounds.append(b.op("Less", [y, hi]))
    if not bounds:
        return [g, None, None]
    mask = bounds[0] if len(bounds) == 1 else b.op("And", bounds)
    return [b.op("Where", [mask, g, b.const(0.0)], hint="clip_grad"), None, None]


@register("Sigmoid")
def sigmoid(ctx, node, dys):
    """dx = g * y * (1 - y)."""
    b, y = ctx.b, node.output[0]
    dy_dx = b.op("Mul", [y, b.op("Sub", [b.const(1.0), y])])
    return [b.op("Mul", [dys[0], dy_dx], hint="sigmoid_grad")]


@register("Tanh")
def tanh(ctx, node, dys):
    """dx = g * (1 - y^2)."""
    b, y = ctx.b, node.output[0]
    return [b.op("Mul", [dys[0], b.op("Sub", [b.const(1.0), b.op("Mul", [y, y])])], hint="tanh_grad")]


@register("HardSigmoid")
def hard_sigmoid(ctx, node, dys):
    """y = max(0, min(1, alpha x + beta)); dx = g * alpha where 0 < alpha x + beta < 1."""
    b, x = ctx.b, node.input[0]
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    z = b.op("Add", [b.op("Mul", [x, b.const(alpha)]), b.const(beta)])
    inside = b.op("And", [b.op("Greater", [z, b.const(0.0)]), b.op("Less", [z, b.const(1.0)])])
    scaled = b.op("Mul", [dys[0], b.const(alpha)])
    return [b.op("Where", [inside, scaled, b.const(0.0)], hint="hardsigmoid_grad")]


@register("HardSwish")
def hard_swish(ctx, node, dys):
    """y = x * clip(x/6 + 1/2, 0, 1); dy/dx = 0 for x < -3, x/3 + 1/2 for -3 <= x <= 3, 1 for x > 3 (torch)."""
    b, x = ctx.b, node.input[0]
    middle = b.op("Add", [b.op("Div", [x, b.const(3.0)]), b.const(0.5)])
    upper = b.op("Where", [b.op("Greater", [x, b.const(3.0)]), b.const(1.0), middle])
    slope = b.op("Where", [b.op("Less", [x, b.const(-3.0)]), b.const(0.0), upper])
    return [b.op("Mul", [dys[0], slope], hint="hardswish_grad")]


@register("Erf")
def erf(ctx, node, dys):
    """d erf(x)/dx = 2/sqrt(pi) * exp(-x^2)."""
    b, x = ctx.b, node.input[0]
    e = b.op("Exp", [b.op("Neg", [b.op("Mul", [x, x])])])
    return [b.op("Mul", [dys[0], b.op("Mul", [e, b.const(2.0 / math.sqrt(math.pi))])], hint="erf_grad")]


@register("Gelu")
def gelu(ctx, node, dys):
    """Gelu (opset 20). exact: dy/dx = Phi(x) + x phi(x);
    tanh: y = x/2 (1 + tanh(u)), u = sqrt(2/pi)(x + 0.044715 x^3),
    dy/dx = (1 + tanh u)/2 + x/2 (1 - tanh^2 u) sqrt(2/pi)(1 + 3*0.044715 x^2)."""
    b, x = ctx.b, node.input[0]
    if ctx.attr("approximate", "none") == "tanh":
        k = math.sqrt(2.0 / math.pi)
        x2 = b.op("Mul", [x, x])
        u = b.op("Mul", [b.op("Mul", [x, b.op("Add", [b.const(1.0), b.op("Mul", [x2, b.const(0.044715)])])]),
                         b.const(k)])
        t = b.op("Tanh", [u])
        first = b.op("Mul", [b.op("Add", [b.const(1.0), t]), b.const(0.5)])
        du = b.op("Mul", [b.op("Add", [b.const(1.0), b.op("Mul", [x2, b.const(3 * 0.044715)])]), b.const(k)])
        second = b.op("Mul", [b.op("Mul", [b.op("Mul", [x, b.const(0.5)]),
                                           b.op("Sub", [b.const(1.0), b.op("Mul", [t, t])])]), du])
        slope = b.op("Add", [first, second])
    else:
        cdf = b.op("Mul", [b.op("Add", [b.const(1.0), b.op("Erf", [b.op("Mul", [x, b.const(1 / math.sqrt(2))])])]),
                           b.const(0.5)])
        pdf = b.op("Mul", [b.op("Exp", [b.op("Mul", [b.op("Mul", [x, x]), b.const(-0.5)])]),
                           b.const(1 / math.sqrt(2 * math.pi))])
        slope = b.op("Add", [cdf, b.op("Mul", [x, pdf])])
    return [b.op("Mul", [dys[0], slope], hint="gelu_grad")]


@register("Elu")
def elu(ctx, node, dys):
    """dx = g for x > 0, g * (y + alpha) otherwise."""
    b, x, y = ctx.b, node.input[0], node.output[0]
    alpha = ctx.attr("alpha", 1.0)
    neg = b.op("Mul", [dys[0], b.op("Add", [y, b.const(alpha)])])
    return [b.op("Where", [b.op("Greater", [x, b.const(0.0)]), dys[0], neg], hint="elu_grad")]


@register("Softplus")
def softplus(ctx, node, dys):
    """dx = g * sigmoid(x)."""
    return times_function_of_input(ctx, node, dys, "Sigmoid", "softplus_grad")


@register("Mish")
def mish(ctx, node, dys):
    """y = x tanh(softplus(x)); dy/dx = tanh(sp) + x * sigmoid(x) * (1 - tanh(sp)^2)."""
    b, x = ctx.b, node.input[0]
    t = b.op("Tanh", [b.op("Softplus", [x])])
    second = b.op("Mul", [b.op("Mul", [x, b.op("Sigmoid", [x])]), b.op("Sub", [b.const(1.0), b.op("Mul", [t, t])])])
    return [b.op("Mul", [dys[0], b.op("Add", [t, second])], hint="mish_grad")]


@register("Softmax")
def softmax(ctx, node, dys):
    """dx = y * (g - sum(g * y, axis))."""
    b, y = ctx.b, node.output[0]
    axis = _axis(ctx, node)
    s = b.reduce_sum(b.op("Mul", [dys[0], y]), [axis], keepdims=True)
    return [b.op("Mul", [y, b.op("Sub", [dys[0], s])], hint="softmax_grad")]


@register("LogSoftmax")
def log_softmax(ctx, node, dys):
    """dx = g - exp(y) * sum(g, axis)."""
    b, y = ctx.b, node.output[0]
    axis = _axis(ctx, node)
    s = b.reduce_sum(dys[0], [axis], keepdims=True)
    return [b.op("Sub", [dys[0], b.op("Mul", [b.op("Exp", [y]), s])], hint="logsoftmax_grad")]


def _axis(ctx, node) -> int:
    rank = len(ctx.shape(node.input[0]))
    axis = ctx.attr("axis", -1)
    return axis + rank if axis < 0 else axis
