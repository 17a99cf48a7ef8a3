"""What ONNX shape inference says at a given batch (no weights, nothing run): the batch pass and the unbake search
read these."""
from __future__ import annotations

import onnx

from .weightless import weightless


def infers_batch(model: onnx.ModelProto, input_name: str, batch: int = 2) -> bool | None:
    """Whether ONNX shape inference, with the image input's batch set to ``batch``, gives every output that batch:
    False when it gives another size (a graph that hard-codes batch 1 says (1, K)) or finds the graph inconsistent
    at that batch (a Concat of (1, ...) and (2, ...)); None when it cannot tell (ops of other domains have no shape
    functions here). Costs no weights and no run (the graph is inferred without its large initializers)."""
    light = weightless(model)
    for value in light.graph.input:
        if value.name == input_name and value.type.tensor_type.shape.dim:
            dim = value.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_value = int(batch)
    for value in light.graph.output:
        if value.type.tensor_type.shape.dim:
            value.type.tensor_type.shape.dim[0].Clear()
    del light.graph.value_info[:]
    custom = any(n.domain not in ("", "ai.onnx") for n in light.graph.node)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=True, data_prop=True).graph
    except Exception:  # noqa: BLE001
        if not custom:
            return False
        try:
            inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True).graph
        except Exception:  # noqa: BLE001
            return None
    firsts = []
    for value in inferred.output:
        dims = value.type.tensor_type.shape.dim
        firsts.append(dims[0].dim_value if dims and dims[0].HasField("dim_value") else None)
    if any(d is not None and d != batch for d in firsts):
        return False
    return True if firsts and all(d == batch for d in firsts) else None


def shapes_at(model: onnx.ModelProto, input_name: str, batch: int) -> dict[str, tuple]:
    """Static shapes ONNX shape inference gives every tensor with the image input's batch set to ``batch`` (tensors
    it cannot tell, or that an inconsistent node leaves unknown, are absent). Weights are left out."""
    light = weightless(model)
    for value in light.graph.input:
        if value.name == input_name and value.type.tensor_type.shape.dim:
            value.type.tensor_type.shape.dim[0].Clear()
            value.type.tensor_type.shape.dim[0].dim_value = int(batch)
    for value in light.graph.output:
        if value.type.tensor_type.shape.dim:
            value.type.tensor_type.shape.dim[0].Clear()
    del light.graph.value_info[:]
    try:
        graph = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True).graph
    except Exception:  # noqa: BLE001 - nothing known
        return {}
    out = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        ttype = value.type.tensor_type
        if ttype.HasField("shape") and all(d.HasField("dim_value") for d in ttype.shape.dim):
            out[value.name] = tuple(int(d.dim_value) for d in ttype.shape.dim)
    for tensor in model.graph.initializer:
        out[tensor.name] = tuple(int(d) for d in tensor.dims)
    return out
