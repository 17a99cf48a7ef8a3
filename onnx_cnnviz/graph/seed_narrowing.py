"""A backward seed moved from a Concat's output to the one input it lies in.

A detector's head output is often a Concat of parts (ultralytics: the decoded boxes, then the sigmoid class scores;
``(N, 4 + C, A)``), and a detection's seed is one class score. The gradient of ``sum(seed * Concat(a, b))`` is the
gradient of ``sum(seed_b * b)`` when the seed is zero outside ``b``'s slice (the Concat copies each input to its slice,
nothing else), so the backward pass can start at ``b``: the box branch's distributions (DFL over every anchor) are
then not differentiated at all instead of with a zero cotangent. The same numbers, less work.
"""
from __future__ import annotations

import numpy as np
import onnx

from .ops import node_attr

__all__ = ["narrow_seed"]


def narrow_seed(model: onnx.ModelProto, info: dict, at: str, rows: np.ndarray) -> tuple[str, np.ndarray]:
    """``(tensor, rows)`` of the seed ``rows`` (N, elements of ``at`` per sample) at ``at``, moved through every Concat
    (along an axis after the batch, static sizes) whose nonzero seed lies in one input.

    Args:
        model: the graph ``at`` belongs to.
        info: tensor name -> :class:`~onnx_cnnviz.graph.shapes.TensorInfo`.
        at: the tensor the seed is given at.
        rows: the seed, one row per sample.

    Returns:
        The tensor to seed and its rows (``at`` and ``rows`` themselves where nothing narrows).
    """
    producer = {o: node for node in model.graph.node for o in node.output if o}
    initializers = {t.name for t in model.graph.initializer}
    while True:
        node = producer.get(at)
        if node is None or node.op_type != "Concat" or node.domain not in ("", "ai.onnx"):
            return at, rows
        shape = _static(info, at)
        parts = [_static(info, name) for name in node.input]
        if shape is None or any(p is None or len(p) != len(shape) for p in parts) \
                or any(name in initializers for name in node.input):
            return at, rows
        axis = int(node_attr(node, "axis", 0)) % (len(shape) + 1)
        if axis == 0:
            return at, rows
        seed = rows.reshape((len(rows),) + shape)
        other = tuple(i for i in range(seed.ndim) if i != axis)
        used = np.flatnonzero(np.any(seed != 0, axis=other))
        if used.size == 0:
            return at, rows
        ends = np.cumsum([p[axis - 1] for p in parts])
        k = int(np.searchsorted(ends, used[0], side="right"))
        start = int(ends[k - 1]) if k else 0
        if used[-1] >= ends[k]:
            return at, rows  # the seed spans several inputs
        rows = np.ascontiguousarray(np.take(seed, np.arange(start, int(ends[k])), axis=axis).reshape(len(rows), -1))
        at = node.input[k]


def _static(info: dict, name: str) -> tuple | None:
    """The per-sample shape of a float tensor with the batch first, when static."""
    ti = info.get(name)
    if ti is None or ti.shape is None or not ti.is_float or not ti.shape or ti.shape[0] is not None \
            or 0 not in ti.batch_axes or any(d is None for d in ti.shape[1:]):
        return None
    return tuple(int(d) for d in ti.shape[1:])
