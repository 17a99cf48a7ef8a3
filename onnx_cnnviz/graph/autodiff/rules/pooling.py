"""Backward rules of pooling and reductions.

* MaxPool routes each output gradient to the input element that won its window, using the forward node's own
  ``Indices`` output (added to the forward node) and ``ScatterElements(reduction="add")`` -- overlapping windows
  (3x3 stride 2) can pick the same element twice, and both contributions must add up. This equals torch's
  ``max_pool2d_with_indices_backward`` exactly, ties included.
* AveragePool spreads ``g / count`` uniformly over each window: a depthwise ``ConvTranspose`` with a kernel of ones,
  ``count`` being the number of elements the forward averaged (it varies at the borders when padding is excluded or
  the last window is partial in ``ceil_mode``). The kernel of ones covers only the taps that ever read the input,
  so a nominal window larger than its input (a 1280x1280 ``ceil_mode`` pooler over 7x7) costs what the input does.
* Global pools and reductions broadcast ``g`` back over the reduced axes (divided by the count for means; masked to
  the arg-max for max reductions).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ...padding import window_geometry
from . import register
from ._common import blocked


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


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _taps_in_range(start: int, k: int, d: int, lo: int, hi: int) -> int:
    """How many of the taps ``start + j d`` (``0 <= j < k``) fall in ``[lo, hi)``: closed form, so a nominal kernel
    of thousands (Hugging Face EfficientNet's 1280) costs nothing."""
    first = max(0, _ceil_div(lo - start, d))
    last = min(k - 1, (hi - 1 - start) // d)
    return max(0, last - first + 1)


def avg_pool_counts(in_spatial, out_spatial, kernel, strides, dilations, begins, ends, include_pad):
    """How many elements each output position averaged, per axis; the product over axes is the divisor."""
    per_axis = []
    for size, out, k, s, d, pb, pe in zip(in_spatial, out_spatial, kernel, strides, dilations, begins, ends):
        lo, hi = (-pb, size + pe) if include_pad else (0, size)
        per_axis.append(np.array([_taps_in_range(o * s - pb, k, d, lo, hi) for o in range(out)], dtype=np.float32))
    grid = per_axis[0]
    for axis_counts in per_axis[1:]:
        grid = np.multiply.outer(grid, axis_counts)
    return grid


def _tap_reaches_input(j: int, size: int, out: int, s: int, d: int, pb: int) -> bool:
    """Whether tap ``j`` of the window lands on a real input element (not padding, not past the end) for some
    output position ``o``: the smallest ``o`` with ``o s - pb + j d >= 0`` is in range and still before the end."""
    c = j * d - pb
    o = max(0, _ceil_div(-c, s))
    return o < out and o * s + c <= size - 1


def live_taps(size: int, out: int, k: int, s: int, d: int, pb: int) -> tuple[int, int]:
    """``(first, last)``: the window's taps that ever read the input along one axis. The others read only padding or
    the void past a ``ceil_mode`` end, so their gradient is dropped anyway; a kernel larger than its input (Hugging
    Face EfficientNet's 1280x1280 ``ceil_mode`` pooler over a 7x7 map) shrinks to at most the input's size."""
    # Taps past these bounds land beyond the input for every o (left: even the last window; right: even the first).
    first = max(0, _ceil_div(pb - (out - 1) * s, d))
    last = min(k - 1, (size - 1 + pb) // d)
    while first <= last and not _tap_reaches_input(first, size, out, s, d, pb):
        first += 1
    while last >= first and not _tap_reaches_input(last, size, out, s, d, pb):
        last -= 1
    return first, last


@register("AveragePool")
def average_pool(ctx, node, dys):
    """Y[o] = sum_j X[o s - p + j d] / count[o] (Lin et al. 2013 style average pooling; ONNX AveragePool):
    dX = ConvTranspose(dY / count, ones) -- a depthwise transposed convolution with a kernel of ones.

    The kernel is clipped to the taps that ever read the input (:func:`live_taps`), so the constant it costs grows
    with the input it applies to, never with the nominal ``kernel_shape``; a window that covers the whole input once
    (a global pool written as AveragePool) is differentiated as one: ``dX = expand(dY / count)``.
    """
    b, g, x = ctx.b, dys[0], node.input[0]
    x_shape = ctx.static_shape(x)
    out_spatial = list(ctx.static_shape(node.output[0])[2:])
    in_spatial = list(x_shape[2:])
    kernel = list(ctx.attr("kernel_shape"))
    strides, dilations, begins, ends = window_geometry(node, in_spatial, kernel)
    counts = avg_pool_counts(in_spatial, out_spatial, kernel, strides, dilations, begins, ends,
                             bool(ctx.attr("count_include_pad", 0)))
    uniform = bool(np.all(counts == counts.flat[0]))
    live = [live_taps(size, o, k, s, d, pb)
            for size, o, k, s, d, pb in zip(in_spatial, out_spatial, kernel, strides, dilations, begins)]
    if any(first > last for first, last in live) or not counts.all():
        ctx.unsupported("a pooling window reads no input element (every window lies in the padding)")
    whole = all(o == 1 and d == 1 and last - first + 1 == size
                for o, d, (first, last), size in zip(out_spatial, dilations, live, in_spatial))
    if whole:  # one window over the whole input: every element got dY / count
        scaled = b.op("Mul", [g, b.const(1.0 / float(counts.flat[0]))])
        return [b.op("Expand", [scaled, b.shape(x)], hint="avgpool_global_grad")]
    channels = x_shape[1]
    clipped = [last - first + 1 for first, last in live]
    if uniform:
        kernel_w = np.full((channels, 1, *clipped), 1.0 / counts.flat[0], dtype=np.float32)
        scaled = g
    else:
        kernel_w = np.ones((channels, 1, *clipped), dtype=np.float32)
        scaled = b.op("Mul", [g, b.const((1.0 / counts)[None, None], hint="avgpool_inv_count")])
    # Unpadded, the transposed convolution writes positions first d - pb ... (o - 1) s - pb + last d along each axis:
    # crop what falls outside the input (pads) and extend with zeros where the windows never reached (Pad).
    crop_begin, crop_end, grow_begin, grow_end = [], [], [], []
    for size, o, s, d, pb, (first, last) in zip(in_spatial, out_spatial, strides, dilations, begins, live):
        lo = first * d - pb
        hi = (o - 1) * s - pb + last * d
        crop_begin.append(max(-lo, 0))
        grow_begin.append(max(lo, 0))
        crop_end.append(max(hi - (size - 1), 0))
        grow_end.append(max((size - 1) - hi, 0))
    weight = b.const(kernel_w, hint="avgpool_ones")
    dx = b.op("ConvTranspose", [scaled, weight], hint="avgpool_grad", group=channels, strides=list(strides),
              dilations=list(dilations), pads=crop_begin + crop_end, kernel_shape=clipped)
    if any(grow_begin) or any(grow_end):
        dx = b.op("Pad", [dx, b.ints([0, 0, *grow_begin, 0, 0, *grow_end])], hint="avgpool_grad_pad")
    return [dx]


@register("GlobalAveragePool")
def global_average_pool(ctx, node, dys):
    """dx = expand(g) / (H * W), in the blocked layout where it can be (:func:`blocked`: the ReLU masks and residual
    sums after it stay in onnxruntime's NCHWc layout)."""
    b, x = ctx.b, node.input[0]
    area = float(np.prod(ctx.static_shape(x)[2:]))
    spread = b.op("Expand", [b.op("Mul", [dys[0], b.const(1.0 / area)]), b.shape(x)], hint="gap_grad")
    return [blocked(ctx, spread, x)]


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
    """ReduceMax/ReduceMin: ``dx = g * mask / count`` with ``mask = (x == y)`` and ``count`` the number of elements
    tied for the extreme in each reduced group -- torch's ``amax``/``amin`` backward (and TensorFlow's
    ``reduce_max``): exact ties share ``g`` evenly instead of each receiving all of it.

    The mask is the forward run's own decision: it compares the same ``x`` and ``y`` that this session computed, so
    the gradient is that of the function the session evaluated, whichever element a near-tie made win (another
    framework's float32 kernels may crown the other one; tests pin the reference to this choice, as for MaxPool).
    """
    b = ctx.b
    axes = reduce_axes(ctx, node)
    if axes is None:
        return [dys[0], None]
    y, g = node.output[0], dys[0]
    if not ctx.attr("keepdims", 1):
        y, g = (b.op("Unsqueeze", [t, b.ints(axes)]) for t in (y, g))
    mask = b.op("Cast", [b.op("Equal", [node.input[0], y])], to=TensorProto.FLOAT, hint="reduce_sel_mask")
    count = b.reduce_sum(mask, axes, keepdims=True, hint="reduce_sel_ties")
    share = b.op("Div", [mask, count], hint="reduce_sel_share")
    return [b.op("Mul", [g, share], hint="reduce_sel_grad"), None]  # g broadcasts back over the reduced axes


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
