"""Backward rules of pooling and reductions.

* MaxPool routes each output gradient to the input element that won its window, using the forward node's own
  ``Indices`` output (added to the forward node) and ``ScatterElements(reduction="add")`` -- overlapping windows
  (3x3 stride 2) can pick the same element twice, and both contributions must add up. This equals torch's
  ``max_pool2d_with_indices_backward`` exactly, ties included.
* AveragePool spreads ``g / count`` uniformly over each window: a depthwise ``ConvTranspose`` with a kernel of ones,
  ``count`` being the number of elements the forward averaged (it varies at the borders when padding is excluded or
  the last window is partial in ``ceil_mode``).
* Global pools and reductions broadcast ``g`` back over the reduced axes (divided by the count for means; masked to
  the arg-max for max reductions).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ...padding import window_geometry
from . import register
from .conv import transpose_pads


@register("MaxPool")
def max_pool(ctx, node, dys):
    if ctx.attr("storage_order", 0) != 0:
        ctx.unsupported("MaxPool with storage_order=1 (column-major indices)")
    b, g, x = ctx.b, dys[0], node.input[0]
    indices = ctx.forward_output(1, "maxpool_indices")
    # Indices are flat offsets into the whole input tensor (batch and channel included).
    flat_size = b.op("Reshape", [b.op("Size", [x]), b.ints([1])])
    zeros = b.op("ConstantOfShape", [flat_size], value=_zero_tensor())
    flat = b.op("ScatterElements", [zeros, b.op("Reshape", [indices, b.ints([-1])]),
                                    b.op("Reshape", [g, b.ints([-1])])], hint="maxpool_scatter",
                axis=0, reduction="add")
    return [b.op("Reshape", [flat, b.shape(x)], hint="maxpool_grad")]


def _zero_tensor():
    from onnx import TensorProto, helper

    return helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])


def avg_pool_counts(in_spatial, out_spatial, kernel, strides, dilations, begins, ends, include_pad):
    """How many elements each output position averaged, per axis; the product over axes is the divisor."""
    per_axis = []
    for size, out, k, s, d, pb, pe in zip(in_spatial, out_spatial, kernel, strides, dilations, begins, ends):
        lo, hi = (-pb, size + pe) if include_pad else (0, size)
        counts = []
        for o in range(out):
            start = o * s - pb
            counts.append(sum(1 for j in range(k) if lo <= start + j * d < hi))
        per_axis.append(np.array(counts, dtype=np.float32))
    grid = per_axis[0]
    for axis_counts in per_axis[1:]:
        grid = np.multiply.outer(grid, axis_counts)
    return grid


@register("AveragePool")
def average_pool(ctx, node, dys):
    b, g, x = ctx.b, dys[0], node.input[0]
    x_shape = ctx.static_shape(x)
    out_spatial = list(ctx.static_shape(node.output[0])[2:])
    in_spatial = list(x_shape[2:])
    kernel = list(ctx.attr("kernel_shape"))
    strides, dilations, begins, ends = window_geometry(node, in_spatial, kernel)
    counts = avg_pool_counts(in_spatial, out_spatial, kernel, strides, dilations, begins, ends,
                             bool(ctx.attr("count_include_pad", 0)))
    channels = x_shape[1]
    if np.all(counts == counts.flat[0]):
        kernel_w = np.full((channels, 1, *kernel), 1.0 / counts.flat[0], dtype=np.float32)
        scaled = g
    else:
        kernel_w = np.ones((channels, 1, *kernel), dtype=np.float32)
        scaled = b.op("Mul", [g, b.const((1.0 / counts)[None, None], hint="avgpool_inv_count")])
    attrs = transpose_pads(in_spatial, out_spatial, kernel, strides, dilations, begins)
    weight = b.const(kernel_w, hint="avgpool_ones")
    return [b.op("ConvTranspose", [scaled, weight], hint="avgpool_grad", group=channels, **attrs)]


@register("GlobalAveragePool")
def global_average_pool(ctx, node, dys):
    """dx = expand(g) / (H * W)."""
    b, x = ctx.b, node.input[0]
    area = float(np.prod(ctx.static_shape(x)[2:]))
    return [b.op("Expand", [b.op("Mul", [dys[0], b.const(1.0 / area)]), b.shape(x)], hint="gap_grad")]


@register("GlobalMaxPool")
def global_max_pool(ctx, node, dys):
    """dx = g where x equals the channel maximum (ties, rare in float maps, each receive g)."""
    b, x = ctx.b, node.input[0]
    mask = b.op("Equal", [x, node.output[0]])
    return [b.op("Where", [mask, dys[0], b.const(0.0)], hint="gmp_grad")]


def reduce_axes(ctx, node) -> list[int] | None:
    """The reduced axes (normalised to be non-negative); None means the node is an identity."""
    rank = len(ctx.shape(node.input[0]))
    axes = ctx.attr("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in ctx.constant(node.input[1], "the reduction axes").reshape(-1)]
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return None
        axes = list(range(rank))
    return sorted(a + rank if a < 0 else a for a in axes)


def _broadcast_back(ctx, node, g, axes):
    b = ctx.b
    if not ctx.attr("keepdims", 1):
        g = b.op("Unsqueeze", [g, b.ints(axes)])
    return b.op("Expand", [g, b.shape(node.input[0])])


@register("ReduceSum")
def reduce_sum(ctx, node, dys):
    axes = reduce_axes(ctx, node)
    if axes is None:
        return [dys[0], None]
    return [_broadcast_back(ctx, node, dys[0], axes), None]


@register("ReduceMean")
def reduce_mean(ctx, node, dys):
    axes = reduce_axes(ctx, node)
    if axes is None:
        return [dys[0], None]
    b = ctx.b
    shape = ctx.shape(node.input[0])
    reduced = [shape[a] for a in axes]
    if all(d is not None for d in reduced):
        scaled = b.op("Mul", [dys[0], b.const(1.0 / float(np.prod(reduced)))])
    else:
        # A mean over the batch (a filter computed from the whole batch, say): the count is known at run time only,
        # as size(x) / size(y).
        count = b.op("Cast", [b.op("Div", [b.op("Size", [node.input[0]]), b.op("Size", [node.output[0]])])],
                     to=TensorProto.FLOAT, hint="reduce_mean_count")
        scaled = b.op("Div", [dys[0], count])
    return [_broadcast_back(ctx, node, scaled, axes), None]


def _reduce_select(ctx, node, dys):
    """ReduceMax/ReduceMin: g goes to the elements equal to the extreme."""
    b = ctx.b
    axes = reduce_axes(ctx, node)
    if axes is None:
        return [dys[0], None]
    y = node.output[0]
    if not ctx.attr("keepdims", 1):
        y = b.op("Unsqueeze", [y, b.ints(axes)])
    mask = b.op("Equal", [node.input[0], y])
    return [b.op("Where", [mask, _broadcast_back(ctx, node, dys[0], axes), b.const(0.0)], hint="reduce_sel_grad"),
            None]


register("ReduceMax")(_reduce_select)
register("ReduceMin")(_reduce_select)


# --- norms: contractions of a tensor with itself -----------------------------------------------------------------
# ReduceSumSquare(x) = einsum("...i,...i->...", x, x) over the reduced axes, and ReduceL2 its square root (SwinV2's
# cosine attention normalises queries and keys with it: torch's F.normalize exports as ReduceL2 -> Clip -> Div).

@register("ReduceSumSquare")
def reduce_sum_square(ctx, node, dys):
    """y = sum x^2: dx = 2 g x (over no axes, with ``noop_with_empty_axes``, y = x^2 elementwise: the same)."""
    b = ctx.b
    axes = reduce_axes(ctx, node)
    g = dys[0] if axes is None else _broadcast_back(ctx, node, dys[0], axes)
    return [b.op("Mul", [g, b.op("Mul", [node.input[0], b.const(2.0)])], hint="sum_square_grad"), None]


@register("ReduceL2")
def reduce_l2(ctx, node, dys):
    """y = sqrt(sum x^2): dx = g x / y, and 0 where y = 0 (torch's subgradient of the norm at 0). Over no axes
    (``noop_with_empty_axes``) y = |x|: dx = g sign(x)."""
    b = ctx.b
    x, y = node.input[0], node.output[0]
    axes = reduce_axes(ctx, node)
    if axes is None:
        return [b.op("Mul", [dys[0], b.op("Sign", [x])], hint="l2_grad"), None]
    norm = y if ctx.attr("keepdims", 1) else b.op("Unsqueeze", [y, b.ints(axes)])
    zero = b.op("Equal", [norm, b.const(0.0)])
    safe = b.op("Where", [zero, b.const(1.0), norm])
    ratio = b.op("Where", [zero, b.const(0.0), b.op("Div", [x, safe])])
    return [b.op("Mul", [_broadcast_back(ctx, node, dys[0], axes), ratio], hint="l2_grad"), None]
