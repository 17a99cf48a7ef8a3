"""Backward rules of convolutions (input gradient only: weights are constants of a deployed model).

For ``Y = conv(X, W)`` with strides s, dilations d and pads (b, e) per spatial axis, ``dX`` is the transposed
convolution of ``dY`` with the same ``W``. Two emissions compute it:

* stride 1 with a constant ``W``: a plain ``Conv`` of ``dY`` with the spatially flipped, in/out-swapped kernel and
  pads ``(k-1)d - b, (k-1)d - e`` -- onnxruntime's Conv kernels are much faster than its ConvTranspose;
* otherwise ``ConvTranspose(dY, W)`` with pads and ``output_padding`` chosen so the result has X's exact size
  (the rows a strided forward never read get zero gradient).
"""
from __future__ import annotations

import numpy as np

from ...padding import split_padding, window_geometry
from . import register


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


def _operands(ctx, node) -> tuple:
    """(input shape, constant weight or None, weight shape) of a Conv / ConvTranspose; only the gradient of the
    input (an activation) is ever built, never of the weight or bias."""
    if ctx.wants(1) or ctx.wants(2):
        ctx.unsupported(f"a gradient for the {node.op_type} weight or bias was asked for; only activations are "
                        "differentiated")
    w_value = ctx.value(node.input[1])
    w_shape = ctx.static_shape(node.input[1]) if w_value is None else w_value.shape
    return ctx.static_shape(node.input[0]), w_value, w_shape


@register("Conv")
def conv(ctx, node, dys):
    b, g = ctx.b, dys[0]
    x_shape, w_value, w_shape = _operands(ctx, node)
    kernel = list(ctx.attr("kernel_shape", w_shape[2:]))
    in_spatial = list(x_shape[2:])
    out_spatial = list(ctx.static_shape(node.output[0])[2:])
    strides, dilations, begins, ends = window_geometry(node, in_spatial, kernel)
    group = ctx.attr("group", 1)

    if w_value is not None and all(s == 1 for s in strides) and all(
            (k - 1) * d >= max(pb, pe) for k, d, pb, pe in zip(kernel, dilations, begins, ends)):
        flipped = b.const(flipped_transposed(w_value, group), hint="conv_wT")
        pads = [(k - 1) * d - p for k, d, p in zip(kernel, dilations, begins)]
        pads += [(k - 1) * d - p for k, d, p in zip(kernel, dilations, ends)]
        return [b.op("Conv", [g, flipped], hint="conv_grad", dilations=dilations, group=group, pads=pads,
                     kernel_shape=kernel), None, None]

    attrs = transpose_pads(in_spatial, out_spatial, kernel, strides, dilations, begins)
    return [b.op("ConvTranspose", [g, node.input[1]], hint="conv_grad", group=group, **attrs), None, None]


@register("ConvTranspose")
def conv_transpose(ctx, node, dys):
    """dX of a transposed convolution is the ordinary convolution of dY with the same kernel and pads."""
    b, g = ctx.b, dys[0]
    x_shape, _, w_shape = _operands(ctx, node)
    y_shape = ctx.static_shape(node.output[0])
    rank = len(x_shape) - 2
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
    return [b.op("Conv", [g, node.input[1]], hint="convT_grad", strides=strides, dilations=dilations,
                 group=ctx.attr("group", 1), pads=list(pads), kernel_shape=kernel), None, None]
