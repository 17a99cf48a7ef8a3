"""Backward rules of the selections a detector's post-processing makes: TopK, NonMaxSuppression, and Concat of
pieces whose lengths are only known at run time (the per-class candidate lists of torchvision's SSD and RetinaNet
exports).

A selection is differentiated like a max-pool: the indices it picked in the forward run are fixed, and the gradient
flows to the picked elements only. The backward graph is appended to the forward graph and runs in the same session,
so it reads the very indices the forward pass chose: the gradient is exact wherever the choice does not flip under an
infinitesimal change of the input (no tie), as max-pool's winners are.

* ``TopK``: ``Y = X[..., I, ...]`` with I the forward's indices output: ``dX = ScatterElements(0, I, dY, add)``.
* ``NonMaxSuppression``: its only output is int64 indices, piecewise constant in the boxes and scores, so it
  passes no gradient (the engine never differentiates integer tensors); the scores it keeps reach the model's output
  through a Gather of those indices, differentiated by Gather's rule with the forward's indices.
* ``Concat`` along an axis whose input lengths are computed at run time (not the batch): ``dY`` is split back at
  the inputs' run-time lengths. With every length known this is :func:`shape.concat` (whose rule it extends).
"""
from __future__ import annotations

from onnx import TensorProto

from . import register
from .shape import _is_batch_axis, concat

__all__ = ["top_k", "non_max_suppression", "concat_any_length"]


@register("TopK")
def top_k(ctx, node, dys):
    """``values, indices = TopK(X, k, axis)``: ``dX = ScatterElements(zeros like X, indices, dvalues, axis, add)``.

    The indices are the forward run's (Fix the winners, as max-pool's rule does); ``k`` is an integer and gets no
    gradient."""
    b = ctx.b
    x = node.input[0]
    rank = len(ctx.shape(x))
    axis = ctx.attr("axis", -1)
    axis = axis + rank if axis < 0 else axis
    if ctx.shape(x)[axis] is None and _is_batch_axis(ctx, x, axis):
        ctx.unsupported("selecting along the batch axis")
    g = dys[0]
    if g is None:  # only the indices are used downstream: they are integers, no gradient reaches X
        return [b.zeros_like(x), None]
    indices = ctx.forward_output(1, "topk_indices")
    placed = b.op("ScatterElements", [b.zeros_like(x), indices, g], hint="topk_grad", axis=axis, reduction="add")
    return [placed, None]


@register("NonMaxSuppression")
def non_max_suppression(ctx, node, dys):
    """The selected indices are integers, constant between the points where a box's rank or overlap crosses a
    threshold: no gradient reaches the boxes or the scores through them (they reach the output, if at all, through
    the Gather that reads them, whose rule takes these indices from the forward run)."""
    return [None] * len(node.input)


@register("Concat")
def concat_any_length(ctx, node, dys):
    """Concat whose inputs' lengths along ``axis`` may be computed at run time: ``dY`` is split at the lengths the
    forward run had (read with Shape); every length known: :func:`shape.concat`. Along the batch axis: refused."""
    b = ctx.b
    axis = ctx.attr("axis", 0)
    rank = len(ctx.shape(node.input[0]))
    axis = axis + rank if axis < 0 else axis
    sizes = [ctx.shape(name)[axis] for name in node.input]
    if all(s is not None for s in sizes) or any(_is_batch_axis(ctx, name, axis) for name in node.input
                                                 if ctx.shape(name)[axis] is None):
        return concat(ctx, node, dys)
    if len(node.input) == 1:
        return [dys[0]]
    lengths = [b.op("Slice", [b.op("Shape", [name]), b.ints([axis]), b.ints([axis + 1])], hint="concat_length")
               for name in node.input]
    split = b.op("Cast", [b.op("Concat", lengths, hint="concat_lengths", axis=0)], to=TensorProto.INT64)
    parts = b.op("Split", [dys[0], split], hint="concat_grad", outputs=len(node.input), axis=axis)
    return [part if ctx.wants(i) else None for i, part in enumerate(parts)]
