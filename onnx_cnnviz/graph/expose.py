"""Expose intermediate tensors as graph outputs (copy, edit, return)."""
from __future__ import annotations

import copy

import onnx
from onnx import helper

from .shapes import TensorInfo, annotated_dims


def expose(model: onnx.ModelProto, names, info: dict[str, TensorInfo], keep_outputs: bool = False) -> onnx.ModelProto:
    """A copy of the model whose outputs are ``names`` (plus the original outputs when ``keep_outputs``).

    Outputs nobody asked for are dropped, so onnxruntime prunes what only they needed (a final Softmax, say).

    Args:
        model: the ONNX model (not edited).
        names: the tensors to output.
        info: tensor name -> its static type and shape, for the outputs' value infos.
        keep_outputs: keep the model's own outputs too.

    Returns:
        The new model (sharing the weights' protos).
    """
    model = copy.deepcopy(model)
    graph = model.graph
    original = list(graph.output)
    del graph.output[:]
    seen = set()
    if keep_outputs:
        for value in original:
            graph.output.append(value)
            seen.add(value.name)
    by_name = {v.name: v for v in original}
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        if name in by_name:
            graph.output.append(by_name[name])
            continue
        ti = info.get(name)
        if ti is not None and ti.shape is not None:
            dims = annotated_dims(ti)  # "N" only where the axis is the batch itself, not N x windows
            graph.output.append(helper.make_tensor_value_info(name, ti.elem_type, dims))
        else:
            graph.output.append(helper.make_empty_tensor_value_info(name))
    return model
