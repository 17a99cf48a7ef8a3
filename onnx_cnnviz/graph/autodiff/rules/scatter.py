"""Backward rule of ScatterND, the transpose of GatherND: what a scatter writes is read back by a gather.

``Y = ScatterND(X, I, U)`` copies X and then writes the update slices U[i_1..i_q] at positions I[i_1..i_q, :] of Y
(ONNX ScatterND-11/13/16/18). torch's exporters write sliced assignment (``attn[:, :, s:, s:] = attn[...] + bias``,
MViTv2's decomposed relative-position bias, Li et al. 2022, "MViTv2: Improved Multiscale Vision Transformers for
Classification and Detection", eq. 4) this way, with the indices built at run time from the shapes.
"""
from __future__ import annotations

from . import register


@register("ScatterND")
def scatter_nd(ctx, node, dys):
    """``reduction="none"``: dX = g with the written positions zeroed (those elements of X were overwritten),
    dU = GatherND(g, I). ``reduction="add"``: Y = X + scatter(U), so dX = g and dU = GatherND(g, I) (an index written
    twice sends the same g to both updates, as it should for a sum).

    With ``none``, an index written twice leaves Y undefined by the ONNX spec (onnxruntime keeps one of the
    updates): exporters write each position once, which is what dU assumes. ``mul``, ``max`` and ``min`` depend on
    which update wins or on the product of the others, and are refused. The indices are integers: no gradient.
    """
    b = ctx.b
    reduction = ctx.attr("reduction", "none")
    if reduction not in ("none", "add"):
        ctx.unsupported(f"ScatterND with reduction '{reduction}' (only 'none' and 'add' are supported)")
    g = dys[0]
    indices, updates = node.input[1], node.input[2]
    dx = du = None
    if ctx.wants(0):
        dx = g if reduction == "add" else b.op("ScatterND", [g, indices, b.zeros_like(updates)],
                                               hint="scatter_nd_grad_data")
    if ctx.wants(2):
        du = b.op("GatherND", [g, indices], hint="scatter_nd_grad_updates")
    return [dx, None, du]
