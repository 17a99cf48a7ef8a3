"""The ``constants`` and ``float32`` passes: weights are initializers, and float16 computes in float32.

* weights are initializers, never ``Constant`` nodes (PaddlePaddle exports use Constant nodes) and never graph inputs
  (IR < 4 exports list weights as inputs too);
* every float16 tensor is float32 (the user's file is never touched; only our copy computes in float32).
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .. import held
from ..ops import node_attr
from .record import PassRecord, plural


def constants_to_initializers_inplace(model: onnx.ModelProto) -> int:
    """Turn ``Constant`` nodes of the main graph into initializers (PaddlePaddle keeps its weights this way).
    Returns how many were turned."""
    graph = model.graph
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            tensor = _constant_value(node)
            if tensor is not None:
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
                continue
        keep.append(node)
    turned = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(keep)
    return turned


def _constant_value(node: onnx.NodeProto):
    tensor = node_attr(node, "value")
    if tensor is not None:
        return copy.deepcopy(tensor)
    for name, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                        ("value_ints", np.int64)):
        value = node_attr(node, name)
        if value is not None:
            return numpy_helper.from_array(np.array(value, dtype=dtype))
    return None  # sparse or string constants stay nodes


def drop_initializer_inputs_inplace(model: onnx.ModelProto) -> int:
    """IR < 4 lists every weight as a graph input too; keep only real inputs (weights stay initializers). Returns how
    many inputs were dropped."""
    inits = {t.name for t in model.graph.initializer}
    real = [i for i in model.graph.input if i.name not in inits]
    dropped = len(model.graph.input) - len(real)
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(real)
    if model.ir_version < 4:
        model.ir_version = 4
    return dropped



def float16_to_float32_inplace(model: onnx.ModelProto) -> int:
    """Compute in float32: convert float16 initializers, I/O types, Cast targets and constant attributes. Returns
    how many tensors, values and attributes were converted."""
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    graph = model.graph
    converted = 0
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == f16:
            converted += 1
            arr = held.value(tensor).astype(np.float32)
            if held.is_held(tensor):
                held.put(tensor, arr, held.holding_of(tensor))
            else:
                graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, tensor.name))
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.tensor_type.elem_type == f16:
            converted += 1
            value.type.tensor_type.elem_type = f32
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == f16:
                converted += 1
                attr.i = f32
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == f16:
                converted += 1
                arr = numpy_helper.to_array(attr.t).astype(np.float32)
                attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
    return converted


def constants_pass(model: onnx.ModelProto) -> PassRecord:
    """Make every weight an initializer, in place: ``Constant`` nodes become initializers and weights listed as
    graph inputs stop being inputs.

    Args:
        model: the model, edited in place.

    Returns:
        The ``constants`` record (how many Constant nodes and weight inputs changed).
    """
    ir = int(model.ir_version)
    turned = constants_to_initializers_inplace(model)
    dropped = drop_initializer_inputs_inplace(model)
    done = [f"{plural(turned, 'Constant node')} became weights"] if turned else []
    if dropped:
        done.append(f"{plural(dropped, 'weight')} listed as graph inputs (IR {ir}) stopped being inputs")
    return PassRecord("constants", bool(turned or dropped),
                      "; ".join(done) if done else "every weight is already an initializer",
                      {"constants_to_weights": turned, "weight_inputs_dropped": dropped})


def float32_pass(model: onnx.ModelProto) -> PassRecord:
    """Convert float16 to float32 in place (:func:`float16_to_float32_inplace`).

    Args:
        model: the model, edited in place.

    Returns:
        The ``float32`` record (how many tensors, values and attributes were converted).
    """
    converted = float16_to_float32_inplace(model)
    what = plural(converted, "float16 tensor, value or attribute", "float16 tensors, values and attributes")
    return PassRecord("float32", bool(converted), f"{what} made float32" if converted else "no float16 tensors",
                      {"converted": converted})
