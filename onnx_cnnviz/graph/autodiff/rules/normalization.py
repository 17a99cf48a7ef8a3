"""Backward rules of normalisation layers in inference form.

BatchNormalization (inference): ``y = s (x - m) / sqrt(v + eps) + b`` is affine per channel, so
``dx = g * s / sqrt(v + eps)``.

LayerNormalization / InstanceNormalization normalise with statistics of the sample itself; with
``xhat = (x - mean) * r``, ``r = 1/sqrt(var + eps)``, ``gs = g * scale`` over the ``n`` normalised elements:
``dx = r * (gs - mean(gs) - xhat * mean(gs * xhat))``  (Ba et al. 2016; the standard layer-norm backward).
"""
from __future__ import annotations

import numpy as np

from . import register


@register("BatchNormalization")
def batch_norm(ctx, node, dys):
    if ctx.attr("training_mode", 0):
        ctx.unsupported("BatchNormalization in training mode (export the model in eval mode)")
    if any(ctx.wants(i) for i in range(1, len(node.input))):
        ctx.unsupported("a gradient for BatchNormalization parameters was asked for")
    b = ctx.b
    rank = len(ctx.shape(node.input[0]))
    eps = ctx.attr("epsilon", 1e-5)
    scale, var = ctx.value(node.input[1]), ctx.value(node.input[4])
    bshape = [-1] + [1] * (rank - 2)
    if scale is not None and var is not None:
        factor = (scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
        factor_name = b.const(factor.reshape(bshape), hint="bn_factor")
    else:
        std = b.op("Sqrt", [b.op("Add", [node.input[4], b.const(eps)])])
        factor_name = b.op("Reshape", [b.op("Div", [node.input[1], std]), b.ints(bshape)])
    return [b.op("Mul", [dys[0], factor_name], hint="bn_grad")] + [None] * (len(node.input) - 1)


def _normalised_backward(ctx, g, xhat, inv_std, scale, axes, count):
    b = ctx.b
    gs = b.op("Mul", [g, scale]) if scale is not None else g
    inv_n = b.const(1.0 / count)
    mean_gs = b.op("Mul", [b.reduce_sum(gs, axes), inv_n])
    mean_gsx = b.op("Mul", [b.reduce_sum(b.op("Mul", [gs, xhat]), axes), inv_n])
    inner = b.op("Sub", [b.op("Sub", [gs, mean_gs]), b.op("Mul", [xhat, mean_gsx])])
    return b.op("Mul", [inv_std, inner], hint="norm_grad")


@register("LayerNormalization")
def layer_norm(ctx, node, dys):
    if any(ctx.wants(i) for i in range(1, len(node.input))):
        ctx.unsupported("a gradient for LayerNormalization scale or bias was asked for")
    b, x = ctx.b, node.input[0]
    shape = ctx.shape(x)
    rank = len(shape)
    axis = ctx.attr("axis", -1)
    axis = axis + rank if axis < 0 else axis
    axes = list(range(axis, rank))
    if any(d is None for d in shape[axis:]):  # the leading axes may follow the batch (attention's (L, N, E))
        ctx.unsupported(f"the normalised axes {shape[axis:]} of its input are not all static")
    count = float(np.prod(shape[axis:]))
    # The forward node can hand out its own statistics (optional outputs Mean and InvStdDev).
    mean = ctx.forward_output(1, "ln_mean")
    inv_std = ctx.forward_output(2, "ln_inv_std")
    xhat = b.op("Mul", [b.op("Sub", [x, mean]), inv_std])
    dx = _normalised_backward(ctx, dys[0], xhat, inv_std, node.input[1], axes, count)
    return [dx] + [None] * (len(node.input) - 1)


@register("InstanceNormalization")
def instance_norm(ctx, node, dys):
    if any(ctx.wants(i) for i in (1, 2)):
        ctx.unsupported("a gradient for InstanceNormalization scale or bias was asked for")
    b, x = ctx.b, node.input[0]
    shape = ctx.static_shape(x)
    rank = len(shape)
    axes = list(range(2, rank))
    count = float(np.prod(shape[2:]))
    eps = ctx.attr("epsilon", 1e-5)
    inv_n = b.const(1.0 / count)
    mean = b.op("Mul", [b.reduce_sum(x, axes), inv_n])
    centred = b.op("Sub", [x, mean])
    var = b.op("Mul", [b.reduce_sum(b.op("Mul", [centred, centred]), axes), inv_n])
    inv_std = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(eps)])])])
    xhat = b.op("Mul", [centred, inv_std])
    scale = b.op("Reshape", [node.input[1], b.ints([-1] + [1] * (rank - 2))])
    return [_normalised_backward(ctx, dys[0], xhat, inv_std, scale, axes, count), None, None]
