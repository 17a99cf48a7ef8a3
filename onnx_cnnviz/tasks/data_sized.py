"""Tensors whose length the image decides: after ``NonZero`` (a score threshold) or ``NonMaxSuppression``, a
detector's post-processing keeps as many candidates as pass, so the lengths downstream differ from image to image.

The model learns the shapes ONNX inference leaves open by a probe run on zeros (:mod:`onnx_cnnviz.graph.loading.size`):
for these tensors that measures the zero image's lengths, which backward rules would then take as fixed (a Concat
split at the probe's lengths fails on the next image). :func:`data_sized_info` runs the graph once more on a random
image and gives every axis back as unknown (and not the batch's) where the two lengths differ, so the rules read it at
run time (``Shape``), from the forward run it belongs to. An axis ONNX inference fixed is never touched; one that
two images happen to give the same length (every candidate of a level passing a low threshold, or a TopK capped at
its k in both) stays fixed, and an image where it differs then fails loudly in the backward run (a Split whose
lengths do not add up), never silently.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ..graph import held
from ..graph.shapes import TensorInfo
from ..graph.structure import downstream

__all__ = ["SIZE_FROM_VALUES", "data_sized_info"]

#: Operators whose output length depends on their input's values.
SIZE_FROM_VALUES = ("NonZero", "NonMaxSuppression", "Unique", "Compress")


def data_sized_info(model: onnx.ModelProto, inferred: dict, probed: dict, input_name: str,
                    chw: tuple) -> dict[str, TensorInfo]:
    """The probed :class:`TensorInfo` of the tensors downstream of a :data:`SIZE_FROM_VALUES` op, with every axis
    that ONNX shape inference left open and a random image gives another length than the probe's set back to None.

    Args:
        model: the graph at its input size.
        inferred: shape inference's info (before the probe).
        probed: the probe's info, name -> TensorInfo.
        input_name: the image input.
        chw: its channels, height and width.

    Returns:
        The entries of ``probed`` to replace (none when the graph has no such op).
    """
    graph = model.graph
    sources = [o for n in graph.node if n.op_type in SIZE_FROM_VALUES for o in n.output if o]
    if not sources:
        return {}
    sized = downstream(graph, sources)
    open_axes = {}
    for name, ti in probed.items():
        before = inferred.get(name)
        if name in sized and ti.shape is not None and (before is None or before.shape is None
                                                       or len(before.shape) != len(ti.shape)
                                                       or any(d is None for d in before.shape)):
            open_axes[name] = ti
    if not open_axes:
        return {}
    try:
        lengths = _shapes_on_random_image(model, list(open_axes), input_name, chw)
    except Exception:  # noqa: BLE001 - onnxruntime's errors have no common type; the probe's lengths then stand
        return {}
    out = {}
    for name, ti in open_axes.items():
        other = lengths[name]
        if len(other) != len(ti.shape):
            continue
        shape = tuple(None if d is not None and d != o else d for d, o in zip(ti.shape, other))
        if shape != ti.shape:
            out[name] = TensorInfo(ti.elem_type, shape, tuple(i for i in ti.batch_axes if ti.shape[i] is None))
    return out


def _shapes_on_random_image(model: onnx.ModelProto, names: list, input_name: str, chw: tuple) -> dict:
    """The shapes of ``names`` (their ``Shape``, not their values) in a run on one seeded random image in [0, 1]."""
    probe = copy.deepcopy(model)
    del probe.graph.output[:]
    outputs = []
    for i, name in enumerate(names):
        shape = f"cnnviz/data_sized/shape_{i}"
        probe.graph.node.append(helper.make_node("Shape", [name], [shape], name=shape))
        outputs.append(shape)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in outputs)
    batch = [d.dim_value for d in next(v for v in model.graph.input if v.name == input_name)
             .type.tensor_type.shape.dim][:1]
    image = np.random.default_rng(0).random((batch[0] if batch and batch[0] > 0 else 1, *chw), dtype=np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = held.session(probe, options, ["CPUExecutionProvider"])
    got = session.run(outputs, {input_name: image})
    return {name: tuple(int(d) for d in shape) for name, shape in zip(names, got)}
