"""Load an ONNX model and normalise it into the form every later pass expects.

Normal form (:func:`normalise` returns it as a new model; its steps edit that copy, ``..._inplace``):

* weights are initializers, never ``Constant`` nodes (PaddlePaddle exports use Constant nodes) and never graph inputs
  (IR < 4 exports list weights as inputs too);
* the ``ai.onnx`` opset is at least :data:`MIN_OPSET` (old models are upgraded with ``onnx.version_converter``), so
  the backward graph can use ``ScatterElements(reduction="add")`` and axes-as-input reductions;
* every float16 tensor is float32 (the user's file is never touched; only our copy computes in float32);
* the batch dimension of the image input and of the outputs is symbolic (:data:`BATCH_DIM`), so a batch runs in one
  call (:func:`make_batch_dynamic_inplace`, applied by :class:`onnx_cnnviz.model.Model` once the image input is
  known). A graph that hard-codes batch 1 in a Reshape (``[1, -1]``) gets that constant rewritten to 0 (copy the
  input's batch); whether the result really batches is checked when the model is loaded (``Model`` runs batch 2 and
  batch 1 and compares the scores).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import InputError, ModelLoadError, ModelStructureError
from .ops import node_attr

MIN_OPSET = 17
BATCH_DIM = "N"  # the name of the symbolic batch dimension in every graph we write
MAX_NODES = 200_000  # default limit on graph nodes (subgraphs included); the largest real CNNs have a few thousand


def read_model(source, max_nodes: int | None = MAX_NODES) -> onnx.ModelProto:
    """Read a path (external data beside it is loaded) or copy a ModelProto. Never modifies the source.

    ``max_nodes``: refuse a graph with more nodes than this (:class:`ModelStructureError`), checked before any
    external weights are read; ``None``: no limit.
    """
    if isinstance(source, onnx.ModelProto):
        check_node_count(source, max_nodes)
        return copy.deepcopy(source)
    if isinstance(source, (bytes, bytearray)):
        try:
            model = onnx.load_from_string(bytes(source))
        except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning subclasses
            raise ModelLoadError(f"the bytes given are not an ONNX model ({exc}).") from None
        if not model.graph.node:
            raise ModelLoadError("the bytes given parsed but hold no graph nodes: they are not an ONNX model or are "
                                 "truncated.")
        check_node_count(model, max_nodes)
        check_text(model, "the bytes given")
        return model
    if not isinstance(source, (str, os.PathLike)):
        raise ModelLoadError(f"expected a path to an .onnx file or an onnx.ModelProto, got {type(source).__name__}.")
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"model file '{path}' does not exist.")
    if path.is_dir():
        raise ModelLoadError(f"'{path}' is a folder; give the path of the .onnx file inside it.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(
            f"'{path}' is not a readable ONNX model ({type(exc).__name__}: {str(exc)[:200]}). "
            "Check that the file is complete and really an .onnx export.") from None
    if not model.graph.node:
        raise ModelLoadError(f"'{path}' parsed but holds no graph nodes: it is not an ONNX model or it is truncated.")
    check_node_count(model, max_nodes, f"'{path}'")
    check_text(model, f"'{path}'")
    _load_external_data(model, path.parent)
    return model


def count_nodes(graph: onnx.GraphProto) -> int:
    """Nodes of ``graph`` and of every subgraph (If/Loop/Scan bodies) inside it."""
    total, stack = 0, [graph]
    while stack:
        g = stack.pop()
        total += len(g.node)
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)
    return total


def check_text(model: onnx.ModelProto, what: str = "the model") -> None:
    """Names and op types must be UTF-8 text: protobuf hands invalid UTF-8 back as ``bytes`` (a corrupt file), which
    onnxruntime would later fail to decode, printing to stdout on the way."""
    graph = model.graph
    values = list(graph.input) + list(graph.output) + list(graph.initializer) + list(graph.value_info)
    fields = [v.name for v in values] + [o.domain for o in model.opset_import]
    for node in graph.node:
        fields += [node.op_type, node.domain, node.name, *node.input, *node.output]
    bad = next((f for f in fields if isinstance(f, bytes)), None)
    if bad is not None:
        raise ModelLoadError(f"{what} is corrupt: the name {bad!r} is not valid UTF-8 text. Check that the file is "
                             "complete and really an .onnx export.")


def check_node_count(model: onnx.ModelProto, max_nodes: int | None, what: str = "the model") -> None:
    if max_nodes is None:
        return
    if not isinstance(max_nodes, int) or isinstance(max_nodes, bool) or max_nodes < 1:
        raise InputError(f"max_nodes must be a positive int or None, not {max_nodes!r}.")
    count = count_nodes(model.graph)
    if count > max_nodes:
        raise ModelStructureError(
            f"{what} has {count:,} graph nodes, more than max_nodes={max_nodes:,}; pass a larger max_nodes "
            "(load(..., max_nodes=N) or None for no limit) if you trust this model.")


def _load_external_data(model: onnx.ModelProto, base: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    missing = []
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            info = {e.key: e.value for e in tensor.external_data}
            if not (base / info.get("location", "")).is_file():
                missing.append(info.get("location", "?"))
    if missing:
        raise ModelLoadError(
            f"the model stores weights in external data files that are missing: {', '.join(sorted(set(missing)))}. "
            f"Put them next to the .onnx file (in '{base}') or load the model from its original folder.")
    try:
        load_external_data_for_model(model, str(base))
    except Exception as exc:
        raise ModelLoadError(f"could not read the model's external data ({exc}).") from None


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def normalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a normalised copy of ``model`` (see the module docstring)."""
    model = copy.deepcopy(model)
    constants_to_initializers_inplace(model)
    drop_initializer_inputs_inplace(model)
    model = upgrade_opset(model)
    float16_to_float32_inplace(model)
    return model


def constants_to_initializers_inplace(model: onnx.ModelProto) -> None:
    """Turn ``Constant`` nodes of the main graph into initializers (PaddlePaddle keeps its weights this way)."""
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
    del graph.node[:]
    graph.node.extend(keep)


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


def drop_initializer_inputs_inplace(model: onnx.ModelProto) -> None:
    """IR < 4 lists every weight as a graph input too; keep only real inputs (weights stay initializers)."""
    inits = {t.name for t in model.graph.initializer}
    real = [i for i in model.graph.input if i.name not in inits]
    if len(real) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(real)
    if model.ir_version < 4:
        model.ir_version = 4


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with the default-domain opset raised to at least MIN_OPSET by onnx's version converter; ``model`` itself
    (never edited) when it is already there."""
    version = opset_of(model)
    if version >= MIN_OPSET:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise ModelLoadError(
            f"the model uses ONNX opset {version}; upgrading it to opset {MIN_OPSET} failed ({str(exc)[:300]}). "
            f"Re-export the model with opset >= {MIN_OPSET}.") from None
    # The converter keeps the old IR version, which may be too low for the new opset.
    converted.ir_version = max(converted.ir_version, 8)
    return converted


def float16_to_float32_inplace(model: onnx.ModelProto) -> None:
    """Compute in float32: convert float16 initializers, I/O types, Cast targets and constant attributes."""
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    graph = model.graph
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == f16:
            arr = numpy_helper.to_array(tensor).astype(np.float32)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, tensor.name))
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.tensor_type.elem_type == f16:
            value.type.tensor_type.elem_type = f32
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == f16:
                attr.i = f32
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == f16:
                arr = numpy_helper.to_array(attr.t).astype(np.float32)
                attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))


def input_batch_is_static(model: onnx.ModelProto, input_name: str) -> bool:
    for value in model.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            return bool(dims) and dims[0].HasField("dim_value") and dims[0].dim_value >= 1
    return False


def make_batch_dynamic_inplace(model: onnx.ModelProto, input_name: str) -> bool:
    """Make dim 0 of the image input and of every output symbolic. Returns True when the model had a static batch.

    Reshape shape constants that start with 1 (a hard-coded batch) are rewritten to 0, which ONNX Reshape reads as
    "copy this dimension from the input".
    """
    graph = model.graph
    was_static = input_batch_is_static(model, input_name)  # some exporters write -1 for "any"
    values = [v for v in graph.input if v.name == input_name] + list(graph.output)
    for value in values:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM
    del graph.value_info[:]
    if not was_static:
        return False
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if node_attr(node, "allowzero", 0) == 1:
            continue
        shape = numpy_helper.to_array(inits[node.input[1]]).astype(np.int64)
        if shape.ndim == 1 and shape.size >= 1 and shape[0] == 1:
            new = shape.copy()
            new[0] = 0
            name = node.input[1]
            if consumers.get(name, 0) > 1:  # shared constant: give this node its own copy
                name = f"{name}__cnnviz_batch"
                if name not in inits:
                    inits[name] = numpy_helper.from_array(new, name)
                    graph.initializer.append(inits[name])
                node.input[1] = name
            else:
                inits[name].CopyFrom(numpy_helper.from_array(new, name))
    return True


def set_input_shape_inplace(model: onnx.ModelProto, input_name: str, chw: tuple[int, int, int]) -> None:
    """Fix the image input's C, H, W (the batch stays symbolic) so that every later shape is static but the batch."""
    for value in model.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            for d, size in zip(list(dims)[1:], chw):
                d.Clear()
                d.dim_value = int(size)
    del model.graph.value_info[:]

