"""Backward rules of activation functions. ``y`` is the forward output, ``x`` the input, ``g`` = dL/dy.

Masks are taken from the output where the output determines them (ReLU, Clip): onnxruntime can then still fuse
Conv+ReLU in the forward pass, because the pre-activation tensor is not needed by the backward graph.
"""
from __future__ import annotations

import math

from . import register
from ._common import times_function_of_input


# 2**126 lifts the smallest normal float32 (2**-126) to 1; larger values saturate at Clip's upper bound.
_MASK_GAIN = 2.0 ** 126


def relu_mask(ctx, y: str) -> str:
    """The float mask (y > 0) of a ReLU output y >= 0, as ``Clip(y * 2**126, 0, 1)``.

    Equal to (y > 0) for every y except subnormal activations (0 < y < 2**-126), which pass a fraction of the gradient.
    It is built from Mul and Clip rather than Greater + Where because onnxruntime keeps Mul/Clip in its blocked
    (NCHWc) convolution layout, so no layout conversion is inserted around each ReLU of the forward pass: the
    input-gradient graph of ResNet-50 runs about 8% faster.
    """
    b = ctx.b
    return b.op("Clip", [b.op("Mul", [y, b.const(_MASK_GAIN)]), b.const(0.0), b.const(1.0)], hint="relu_mask")


def relu_vanilla(ctx, node, dys):
    """ReLU: dx = g * (x > 0); the derivative at the kink x == 0 is 0, as in torch."""
    return [ctx.b.op("Mul", [dys[0], relu_mask(ctx, node.output[0])], hint="relu_grad")]


def relu_guided(ctx, node, dys):
    """Guided backpropagation (Springenberg et al. 2015): dx = g * (x > 0) * (g > 0)."""
    masked = ctx.b.op("Mul", [dys[0], relu_mask(ctx, node.output[0])], hint="relu_grad")
    return [ctx.b.op("Relu", [masked], hint="guided_relu_grad")]


def relu_deconvnet(ctx, node, dys):
    """Deconvnet (Zeiler & Fergus 2014): dx = g * (g > 0), ignoring the forward activation."""
    return [ctx.b.op("Relu", [dys[0]], hint="deconv_relu_grad")]


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


@register("Clip")
def clip(ctx, node, dys):
    """Clip (ReLU6 and friends): dx = g * (min < x < max), strict as torch's hardtanh backward."""
    b, g, y = ctx.b, dys[0], node.output[0]
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
