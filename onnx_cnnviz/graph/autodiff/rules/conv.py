"""Backward rules of convolutions.

For ``Y = conv(X, W) + B`` with strides s, dilations d and pads (b, e) per spatial axis, ``dX`` is the transposed
convolution of ``dY`` with the same ``W``. Two emissions compute it:

* stride 1: a plain ``Conv`` of ``dY`` with the spatially flipped, in/out-swapped kernel and pads
  ``(k-1)d - b, (k-1)d - e`` -- onnxruntime's Conv kernels are much faster than its ConvTranspose. A constant ``W``
  is flipped here; a ``W`` computed in the graph (timm's weight-standardised ``StdConv2d`` / ``ScaledStdConv2d`` of
  BiT, NF-ResNet and NFNet compute theirs from the stored weights at run time) is flipped by Reshape, Transpose and a
  reversing Slice in the graph, which onnxruntime folds when the weight depends on constants only;
* otherwise ``ConvTranspose(dY, W)`` with pads and ``output_padding`` chosen so the result has X's exact size
  (the rows a strided forward never read get zero gradient).

The input gradient needs only the weight's *value* and its shape, which is read from the Conv itself when shape
inference could not tell it: ``(M, C / group, *kernel_shape)`` with ``M`` the output's and ``C`` the input's
channels.

A weight or bias computed from the image (a dynamic filter) needs its own gradient, or the gradient of the image
through it would be silently lost:

    dB[m] = sum_{n, o} dY[n, m, o]
    dW[m, c, k] = sum_{n, o} dY[n, m, o] X_pad[n, g(m) C_g + c, o s + k d]

``dW`` is itself one convolution (the standard trick of convolution backward kernels): with the batch moved into the
channels, ``X'[c, (g, n)] = X[n, g C_g + c]`` (shape ``(C_g, group N, ...)``) convolved with the kernel
``dY'[m, n] = dY[n, m]`` (``(M, N, *out)``, ``group`` groups) at stride ``d`` and dilation ``s`` -- the roles of the
forward's stride and dilation swap -- and the forward's pads gives ``(C_g, M, k' ...)`` with ``k' >= k``; its first
``k`` positions per axis, transposed to ``(M, C_g, ...)``, are ``dW``.
"""
from __future__ import annotations

import numpy as np

from ...padding import split_padding, window_geometry
from . import register
from ._common import blocked

_INT64_MIN = -(2 ** 63)


def transpose_pads(in_spatial, out_spatial, kernel, strides, dilations, begins) -> dict:
    """ConvTranspose attributes that map a forward conv/pool's output grid back onto exactly its input size.

    Unpadded, ConvTranspose produces ``s (o - 1) + (k - 1) d + 1`` per axis; the forward's begin pad is cropped at
    the start and the rest at the end, or -- when the forward never reached the last rows -- ``output_padding`` adds
    them back (always < stride).
    """
    pad_begin, pad_end, out_pad = [], [], []
    for size, o, k, s, d, pb in zip(in_spatial, out_spatial, kernel, strides, dilations, begins):
        crop_end = s * (o - 1) + (k - 1) * d + 1 - size - pb
        pad_begin.append(pb)
        pad_end.append(max(crop_end, 0))
        out_pad.append(max(-crop_end, 0))
    attrs = dict(strides=list(strides), dilations=list(dilations), pads=pad_begin + pad_end, kernel_shape=list(kernel))
    if any(out_pad):
        attrs["output_padding"] = out_pad
    return attrs


def flipped_transposed(weight: np.ndarray, group: int) -> np.ndarray:
    """W (M, C/g, k...) -> W' (C, M/g, k...) flipped in space: the kernel whose stride-1 Conv is conv's transpose."""
    m, cg = weight.shape[:2]
    k = weight.shape[2:]
    w = weight.reshape(group, m // group, cg, *k).swapaxes(1, 2).reshape(cg * group, m // group, *k)
    return np.ascontiguousarray(np.flip(w, axis=tuple(range(2, w.ndim))))


def weight_shape(op_type: str, x_shape, y_shape, group: int, kernel=None, known=None) -> tuple | None:
    """The weight's shape of a Conv ``(M, C / group, *k)`` or ConvTranspose ``(C, M / group, *k)`` (``C``, ``M``:
    the input's and the output's channels): ``known`` when it is fully static, else read from the node's own
    shapes and ``kernel`` (its ``kernel_shape`` attribute); None when neither tells (no ``kernel_shape`` and a
    weight whose shape inference gave up)."""
    if known is not None and all(isinstance(d, (int, np.integer)) for d in known):
        return tuple(int(d) for d in known)
    if kernel is None or x_shape is None or y_shape is None or x_shape[1] is None or y_shape[1] is None:
        return None
    c, m = int(x_shape[1]), int(y_shape[1])
    lead = (m, c // group) if op_type == "Conv" else (c, m // group)
    return (*lead, *(int(k) for k in kernel))


def _weight_shape(ctx, node, x_shape, y_shape) -> tuple:
    """The weight's shape (:func:`weight_shape`): from the constant, from shape information, or from the node."""
    w_value = ctx.value(node.input[1])
    if w_value is not None:
        return tuple(w_value.shape)
    info = ctx.info.get(node.input[1])
    shape = weight_shape(node.op_type, x_shape, y_shape, ctx.attr("group", 1), ctx.attr("kernel_shape"),
                         info.shape if info is not None else None)
    if shape is None:
        ctx.unsupported(f"its weight '{node.input[1]}' is computed at run time, its shape is unknown and the node "
                        "has no kernel_shape attribute to read it from (re-export with static shapes)")
    return shape


@register("Conv")
def conv(ctx, node, dys):
    g = dys[0]
    x_shape, y_shape = ctx.static_shape(node.input[0]), ctx.static_shape(node.output[0])
    w_shape = _weight_shape(ctx, node, x_shape, y_shape)
    kernel = list(ctx.attr("kernel_shape", w_shape[2:]))
    in_spatial, out_spatial = list(x_shape[2:]), list(y_shape[2:])
    strides, dilations, begins, ends = window_geometry(node, in_spatial, kernel)
    group = ctx.attr("group", 1)
    geometry = (kernel, in_spatial, out_spatial, strides, dilations, begins, ends, group)
    dx = _conv_input_grad(ctx, node, g, w_shape, geometry) if ctx.wants(0) else None
    dw = _conv_weight_grad(ctx, node, g, w_shape, geometry) if ctx.wants(1) else None
    db = _bias_grad(ctx, g, len(y_shape)) if ctx.wants(2) else None
    return [dx, dw, db]


def _conv_input_grad(ctx, node, g, w_shape, geometry) -> str:
    b = ctx.b
    kernel, in_spatial, out_spatial, strides, dilations, begins, ends, group = geometry
    # A stride-1 convolution's input gradient is a convolution with the flipped kernel (faster than ConvTranspose in
    # onnxruntime); a held weight (graph/held.py) goes through ConvTranspose instead, which reads it in place where
    # the flipped kernel would be folded into a copy of it in every session (2.6 GB for regnet_y_128gf).
    if not ctx.is_held(node.input[1]) and all(s == 1 for s in strides) and all(
            (k - 1) * d >= max(pb, pe) for k, d, pb, pe in zip(kernel, dilations, begins, ends)):
        w_value = ctx.value(node.input[1])
        flipped = b.const(flipped_transposed(w_value, group), hint="conv_wT") if w_value is not None \
            else _flipped_transposed_graph(ctx, node.input[1], w_shape, group)
        pads = [(k - 1) * d - p for k, d, p in zip(kernel, dilations, begins)]
        pads += [(k - 1) * d - p for k, d, p in zip(kernel, dilations, ends)]
        return b.op("Conv", [g, flipped], hint="conv_grad", dilations=dilations, group=group, pads=pads,
                    kernel_shape=kernel)
    attrs = transpose_pads(in_spatial, out_spatial, kernel, strides, dilations, begins)
    # No blocked (NCHWc) ConvTranspose kernel: its result is moved into that layout for the element-wise ops after it.
    dx = b.op("ConvTranspose", [g, node.input[1]], hint="conv_grad", group=group, **attrs)
    return blocked(ctx, dx, node.input[0])


def _flipped_transposed_graph(ctx, w: str, w_shape, group: int) -> str:
    """:func:`flipped_transposed` of a weight computed at run time, as graph nodes."""
    b = ctx.b
    m, cg, kernel = w_shape[0], w_shape[1], list(w_shape[2:])
    rank = len(kernel)
    grouped = b.op("Reshape", [w, b.ints([group, m // group, cg, *kernel])], hint="conv_wT_grouped")
    swapped = b.op("Transpose", [grouped], hint="conv_wT_swapped", perm=[0, 2, 1, *range(3, 3 + rank)])
    merged = b.op("Reshape", [swapped, b.ints([cg * group, m // group, *kernel])], hint="conv_wT_merged")
    axes = list(range(2, 2 + rank))
    return b.op("Slice", [merged, b.ints([-1] * rank), b.ints([_INT64_MIN] * rank), b.ints(axes),
                          b.ints([-1] * rank)], hint="conv_wT")


def _conv_weight_grad(ctx, node, g, w_shape, geometry) -> str:
    """dW of a filter computed from the image: one convolution of the batch-as-channels input with the
    batch-as-channels output gradient (module docstring)."""
    b = ctx.b
    kernel, in_spatial, out_spatial, strides, dilations, begins, ends, group = geometry
    rank = len(kernel)
    cg = w_shape[1]
    spatial = list(range(3, 3 + rank))
    grouped = b.op("Reshape", [node.input[0], b.ints([0, group, cg, *in_spatial])], hint="conv_dW_x_grouped")
    moved = b.op("Transpose", [grouped], hint="conv_dW_x_moved", perm=[2, 1, 0, *spatial])
    x_batch = b.op("Reshape", [moved, b.ints([cg, -1, *in_spatial])], hint="conv_dW_x")       # (C_g, group N, ...)
    g_batch = b.op("Transpose", [g], hint="conv_dW_g", perm=[1, 0, *range(2, 2 + rank)])      # (M, N, *out)
    full = b.op("Conv", [x_batch, g_batch], hint="conv_dW_full", group=group, strides=list(dilations),
                dilations=list(strides), pads=list(begins) + list(ends), kernel_shape=list(out_spatial))
    reach = [(size + pb + pe - s * (o - 1) - 1) // d + 1 for size, pb, pe, s, d, o in
             zip(in_spatial, begins, ends, strides, dilations, out_spatial)]
    if reach != list(kernel):  # the rows past the kernel's reach, where a strided forward left input unread
        full = b.op("Slice", [full, b.ints([0] * rank), b.ints(kernel), b.ints(list(range(2, 2 + rank)))],
                    hint="conv_dW_cut")
    return b.op("Transpose", [full], hint="conv_dW", perm=[1, 0, *range(2, 2 + rank)])


def _bias_grad(ctx, g: str, rank: int) -> str:
    """dB[m] = sum of dY[:, m] over the batch and every position."""
    return ctx.b.reduce_sum(g, [0, *range(2, rank)], keepdims=False, hint="conv_dB")


@register("ConvTranspose")
def conv_transpose(ctx, node, dys):
    """dX of a transposed convolution is the ordinary convolution of dY with the same kernel and pads; dB is summed
    like a Conv's. A kernel computed from the image (a gradient for it) is refused."""
    b, g = ctx.b, dys[0]
    if ctx.wants(1):
        ctx.unsupported(f"its weight '{node.input[1]}' is computed from the image, and the gradient through a "
                        "ConvTranspose weight is not implemented")
    x_shape, y_shape = ctx.static_shape(node.input[0]), ctx.static_shape(node.output[0])
    w_shape = _weight_shape(ctx, node, x_shape, y_shape)
    rank = len(x_shape) - 2
    db = _bias_grad(ctx, g, len(y_shape)) if ctx.wants(2) else None
    if not ctx.wants(0):
        return [None, None, db]
    kernel = list(ctx.attr("kernel_shape", w_shape[2:]))
    strides = list(ctx.attr("strides", [1] * rank))
    dilations = list(ctx.attr("dilations", [1] * rank))
    out_pad = list(ctx.attr("output_padding", [0] * rank))
    pads = ctx.attr("pads")
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if pads is None or auto_pad != "NOTSET" or ctx.attr("output_shape") is not None:
        # Pads implied by the output size (ConvTranspose spec: the odd pixel at the end only for SAME_UPPER).
        halves = [split_padding(strides[i] * (x_shape[2 + i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
                                - y_shape[2 + i], auto_pad) for i in range(rank)]
        pads = [begin for begin, _ in halves] + [end for _, end in halves]
    dx = b.op("Conv", [g, node.input[1]], hint="convT_grad", strides=strides, dilations=dilations,
              group=ctx.attr("group", 1), pads=list(pads), kernel_shape=kernel)
    return [dx, None, db]
