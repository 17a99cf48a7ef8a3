"""Load an ONNX model and normalise it into the form every later pass expects.

Normal form (:func:`normalise` returns it as a new model; its steps edit that copy, ``..._inplace``):

* the nodes are in topological order (:func:`topological_sort`: some exporters and hand edits write them in any
  order, and every walk here reads the graph front to back); a cycle is a :class:`ModelLoadError`;
* an ``If`` whose condition is a constant is replaced by the branch it takes
  (:func:`onnx_cnnviz.graph.subgraphs.fold_constant_ifs`; conditions computed from the input's shape are folded once
  the size is fixed, in ``Model``);
* weights are initializers, never ``Constant`` nodes (PaddlePaddle exports use Constant nodes) and never graph inputs
  (IR < 4 exports list weights as inputs too);
* the ``ai.onnx`` opset is at least :data:`MIN_OPSET` (old models are upgraded with ``onnx.version_converter``), so
  the backward graph can use ``ScatterElements(reduction="add")`` and axes-as-input reductions;
* every float16 tensor is float32 (the user's file is never touched; only our copy computes in float32);
* the batch dimension of the image input and of the outputs is symbolic (:data:`BATCH_DIM`), so a batch runs in one
  call (:func:`make_batch_dynamic_inplace`, applied by :class:`onnx_cnnviz.model.Model` once the image input is
  known). A graph that hard-codes batch 1 in a Reshape (TorchScript's ``[1, -1]``, the dynamo exporter's
  ``[1, 25088]`` with ``allowzero=1``) gets that 1 rewritten to follow the input's batch (:func:`batch_free_shape`),
  and an ``as_strided`` Gather that reads a whole flattened tensor in order becomes that Reshape first; a graph that
  still does not infer batch 2 keeps its static batch. Whether the result really batches is checked when the model
  is loaded (``Model`` runs batch 2 and batch 1 and compares the scores, and runs images one at a time otherwise).

Before any of that, :func:`read_model` refuses what would exhaust the machine or fail later with an untyped message:
more nodes than ``max_nodes``, a tensor whose declared size is over ``max_tensor_bytes`` or does not match the bytes
the file holds (checked from the dims, before anything is read or allocated), and :func:`normalise` an opset or IR
version newer than the installed onnx and onnxruntime support.
"""
from __future__ import annotations

import copy
import copy as _copy  # topological_sort's ``copy`` argument shadows the module there
import functools
import heapq
import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InputError, ModelLoadError, ModelStructureError
from ..files import check_regular
from . import held
from .ops import node_attr
from .subgraphs import fold_constant_ifs, node_inputs, subgraphs_of

MIN_OPSET = 17
BATCH_DIM = "N"  # the name of the symbolic batch dimension in every graph we write
MAX_NODES = 200_000  # default limit on graph nodes (subgraphs included); the largest real CNNs have a few thousand
#: Default limit on the image's H*W (the model's declared input, ``input_size``, or an array to explain). Classifiers
#: take a few hundred pixels a side; 4096 x 4096 leaves room for whole-slide tiles and satellite scenes, while a file
#: of a few bytes declaring a 10^5 x 10^5 input is refused before any memory is spent on it.
MAX_PIXELS = 4096 * 4096
#: Default limit on one tensor's declared size. The largest weight of a real classifier (VGG's first fully connected
#: layer) is ~400 MB; a protobuf file holds at most 2 GB. A tiny file can still *declare* a 10^6 x 10^6 tensor (in
#: its dims, or pointing at external data), which would be allocated before anything failed.
MAX_TENSOR_BYTES = 4 * 2 ** 30
#: Protobuf's limit on one serialised message (an ONNX model with its weights inline).
PROTOBUF_LIMIT = 2 ** 31 - 1
#: Opsets and IR versions every onnxruntime this project accepts (>= 1.20) runs; newer ones are checked against the
#: installed runtime.
KNOWN_GOOD_OPSET, KNOWN_GOOD_IR = 21, 10


def read_model(source, max_nodes: int | None = MAX_NODES,
               max_tensor_bytes: int | None = MAX_TENSOR_BYTES, weights: bool = True) -> onnx.ModelProto:
    """Read a path (external data beside it is loaded) or copy a ModelProto. Never modifies the source.

    ``max_nodes``: refuse a graph with more nodes than this (:class:`ModelStructureError`), checked before any
    external weights are read; ``None``: no limit. ``max_tensor_bytes``: refuse a tensor (initializer or constant)
    whose declared size is larger (:class:`ModelLoadError`), checked from its dims before its data is read;
    ``None``: no limit. A tensor whose declared size does not match the data stored for it is refused too.

    A model of :data:`held.HOLD_ABOVE_BYTES` of weights or more comes back with its large weights held outside the
    protobuf (graph/held.py); whoever keeps the model should :func:`held.claim` them. ``weights=False``: a file's
    external data are not read (its structure only, to describe it).
    """
    if isinstance(source, onnx.ModelProto):
        check_node_count(source, max_nodes)
        check_tensor_sizes(source, max_tensor_bytes)
        if held.should_hold(source):
            model = held.copy_holding(source)
            check_total_size(model, "the ModelProto given")
            return model
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
        check_tensor_sizes(model, max_tensor_bytes, what="the bytes given")
        if held.should_hold(model):
            held.hold_inplace(model)
        return model
    if not isinstance(source, (str, os.PathLike)):
        raise ModelLoadError(f"expected a path to an .onnx file or an onnx.ModelProto, got {type(source).__name__}.")
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"model file '{path}' does not exist.")
    if path.is_dir():
        raise ModelLoadError(f"'{path}' is a folder; give the path of the .onnx file inside it.")
    check_regular(path, "model file", ModelLoadError)  # a FIFO would block, a device fill memory
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
    check_tensor_sizes(model, max_tensor_bytes, path.parent, what=f"'{path}'")
    if not weights:
        return model
    _load_external_data(model, path.parent, hold=held.should_hold(model))
    check_total_size(model, f"'{path}'")
    return model


def check_total_size(model: onnx.ModelProto, what: str = "the model") -> None:
    """Refuse a model whose weights *left inside the protobuf* reach its 2 GiB message limit: every copy of a message
    that large fails inside protobuf ("Failed to serialize proto"), and loading copies the model. Large weights are
    held outside it (graph/held.py: torchvision's vit_h_14 and regnet_y_128gf, 2.5 GB each); what stays is small
    tensors and types numpy cannot hold (bfloat16, 4-bit), which no real model has 2 GiB of."""
    total = sum(t.ByteSize() for t in model.graph.initializer if not held.is_held(t))
    if total >= PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"{what} holds {total / 2 ** 30:.1f} GiB of weights in tensors that cannot be held outside the graph "
            "(types numpy cannot represent, or many small tensors); protobuf, which ONNX models are made of, cannot "
            "copy a message of 2 GiB or more, and loading copies the model. Convert the weights to float32 or "
            "float16.")


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


def _bits() -> dict[int, int]:
    """Bits per element of each tensor type this onnx knows (STRING and unknown types are absent)."""
    table = {"FLOAT": 32, "UINT8": 8, "INT8": 8, "UINT16": 16, "INT16": 16, "INT32": 32, "INT64": 64, "BOOL": 8,
             "FLOAT16": 16, "DOUBLE": 64, "UINT32": 32, "UINT64": 64, "COMPLEX64": 64, "COMPLEX128": 128,
             "BFLOAT16": 16, "FLOAT8E4M3FN": 8, "FLOAT8E4M3FNUZ": 8, "FLOAT8E5M2": 8, "FLOAT8E5M2FNUZ": 8,
             "UINT4": 4, "INT4": 4, "FLOAT4E2M1": 4, "FLOAT8E8M0": 8, "UINT2": 2, "INT2": 2}
    return {getattr(TensorProto, k): v for k, v in table.items() if hasattr(TensorProto, k)}


# Typed fields holding one element per entry: type -> field name.
_TYPED_FIELDS = {TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data", TensorProto.INT64: "int64_data",
                 TensorProto.INT32: "int32_data", TensorProto.INT16: "int32_data", TensorProto.INT8: "int32_data",
                 TensorProto.UINT16: "int32_data", TensorProto.UINT8: "int32_data", TensorProto.BOOL: "int32_data",
                 TensorProto.FLOAT16: "int32_data", TensorProto.BFLOAT16: "int32_data",
                 TensorProto.UINT32: "uint64_data", TensorProto.UINT64: "uint64_data"}


def _all_tensors(graph: onnx.GraphProto):
    """Every TensorProto of ``graph`` and its subgraphs: initializers, sparse ones' values, tensor attributes."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield sparse.values
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors
                elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                    yield attr.sparse_tensor.values
            stack.extend(subgraphs_of(node))


def _size_text(n: int) -> str:
    for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def check_tensor_sizes(model: onnx.ModelProto, max_tensor_bytes: int | None = MAX_TENSOR_BYTES,
                       base: Path | None = None, what: str = "the model") -> None:
    """Refuse a tensor whose declared size (from its dims) is over ``max_tensor_bytes``, or does not match the data
    the model holds for it (embedded, or in an external file under ``base``): :class:`ModelLoadError`.

    Runs on the protobuf as parsed, before external data is read and before any tensor becomes an array, so a tiny
    file declaring a huge tensor costs nothing.
    """
    if max_tensor_bytes is not None and (not isinstance(max_tensor_bytes, int) or isinstance(max_tensor_bytes, bool)
                                         or max_tensor_bytes < 1):
        raise InputError(f"max_tensor_bytes must be a positive int or None, not {max_tensor_bytes!r}.")
    bits = _bits()
    for tensor in _all_tensors(model.graph):
        dims = list(tensor.dims)
        label = f"{what}: tensor '{tensor.name}'" if tensor.name else f"{what}: a constant tensor"
        if any(d < 0 for d in dims):
            raise ModelLoadError(f"{label} declares a negative dimension {dims}; the file is corrupt.")
        elements = math.prod(dims)
        width = bits.get(tensor.data_type)
        if width is None:
            continue  # strings and types this onnx does not know: no byte size to check
        declared = (elements * width + 7) // 8
        if max_tensor_bytes is not None and declared > max_tensor_bytes:
            raise ModelLoadError(
                f"{label} declares shape {tuple(dims)} = {_size_text(declared)}, more than the limit of "
                f"{_size_text(max_tensor_bytes)} for one tensor (a real classifier's largest weight is a few hundred "
                "MB). If you trust this model, raise the limit: "
                "onnx_cnnviz.graph.load.read_model(..., max_tensor_bytes=N).")
        if tensor.data_location == TensorProto.EXTERNAL:
            _check_external(tensor, declared, base, label)
            continue
        if tensor.HasField("segment"):
            continue
        if tensor.raw_data:
            held, need, unit = len(tensor.raw_data), declared, "bytes"
        else:
            field_name = _TYPED_FIELDS.get(tensor.data_type)
            if field_name is None:
                continue
            held, need, unit = len(getattr(tensor, field_name)), elements, "values"
        if held != need:
            raise ModelLoadError(
                f"{label} declares shape {tuple(dims)} ({need:,} {unit}) but the file holds {held:,} {unit} for it: "
                "the file is corrupt or truncated. Re-export the model.")


def _check_external(tensor: TensorProto, declared: int, base: Path | None, label: str) -> None:
    """The external file must hold the declared bytes at ``offset`` (exactly ``length`` when that is given)."""
    info = {e.key: e.value for e in tensor.external_data}
    try:
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise ModelLoadError(f"{label} has an unreadable external-data offset or length.") from None
    if offset < 0 or (length is not None and length != declared):
        raise ModelLoadError(f"{label} declares {_size_text(declared)} but its external data entry says offset "
                             f"{offset}, length {length}: the file is corrupt.")
    if base is None:
        return  # a ModelProto given in memory: its external files are not read here
    location = base / info.get("location", "")
    if not location.is_file():
        return  # reported with every other missing file by _load_external_data
    available = location.stat().st_size - offset
    if available < declared or (length is None and available != declared):
        raise ModelLoadError(
            f"{label} declares {_size_text(declared)} but its external data file '{info.get('location')}' holds "
            f"{_size_text(max(available, 0))} from offset {offset}: the file is truncated or not this model's.")


def _load_external_data(model: onnx.ModelProto, base: Path, hold: bool = False) -> None:
    """Read the tensors stored in external files under ``base`` into ``model``; with ``hold``, its large initializers
    go into graph/held.py's store instead, read straight from their files into arrays."""
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

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
        if hold:
            held.hold_inplace(model, read_external=lambda t: _read_external(t, base))
        for tensor in _all_tensors(model.graph):
            if uses_external_data(tensor) and not held.is_held(tensor):
                load_external_data_for_tensor(tensor, str(base))
                tensor.data_location = TensorProto.DEFAULT
                del tensor.external_data[:]
    except Exception as exc:
        raise ModelLoadError(f"could not read the model's external data ({exc}).") from None


def _read_external(tensor: TensorProto, base: Path) -> np.ndarray:
    """An external tensor's values, read from its file into an array (little-endian, as ONNX stores them)."""
    info = {e.key: e.value for e in tensor.external_data}
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    count = int(np.prod(tensor.dims, dtype=np.int64))
    array = np.fromfile(base / info["location"], dtype=dtype, count=count, offset=int(info.get("offset") or 0))
    if array.size != count:
        raise ModelLoadError(f"tensor '{tensor.name}': its external data file is shorter than its shape says.")
    return array.astype(dtype.newbyteorder("="), copy=False).reshape(tuple(tensor.dims))


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def normalise(model: onnx.ModelProto, copy: bool = True) -> onnx.ModelProto:
    """Return a normalised copy of ``model`` (see the module docstring); ``copy=False`` normalises ``model`` itself
    when it can (a model just read, such as :func:`read_model`'s: copying a ViT-B's 330 MB costs seconds)."""
    check_supported_versions(model)
    model = topological_sort(model, copy=copy)
    constants_to_initializers_inplace(model)
    drop_initializer_inputs_inplace(model)
    model, folded = fold_constant_ifs(model)
    if folded:
        constants_to_initializers_inplace(model)  # the Constant nodes of the inlined branches
    model = upgrade_opset(model)
    # The version converter writes Constant nodes (an old Clip's min/max become Constant inputs): rules need them as
    # values, so a ReLU6 from opset <= 10 is still recognised as a rectifier.
    constants_to_initializers_inplace(model)
    float16_to_float32_inplace(model)
    return model


@functools.cache
def _runtime_accepts(opset: int, ir_version: int) -> bool:
    """Whether the installed onnxruntime loads a one-node model stamped with ``opset`` and ``ir_version``.

    onnxruntime refuses opsets newer than its release only when a session is created, with a C++ signature as the
    message, and no function of its Python API says which opsets it supports: one tiny session per pair, once per
    process, tells.
    """
    import onnxruntime as ort

    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "probe",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    probe.ir_version = ir_version
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any refusal means "not supported"
        return False
    return True


def check_supported_versions(model: onnx.ModelProto) -> None:
    """:class:`ModelLoadError` when the model's ``ai.onnx`` opset or its IR version is newer than the installed onnx
    and onnxruntime support, saying up to which version they do and what to do about it (rather than onnxruntime's
    C++ message at the first run)."""
    opset, ir = opset_of(model), int(model.ir_version)
    if opset <= KNOWN_GOOD_OPSET and ir <= KNOWN_GOOD_IR:
        return
    import onnxruntime as ort

    versions = f"onnx {onnx.__version__}, onnxruntime {ort.__version__}"
    onnx_opset, onnx_ir = onnx.defs.onnx_opset_version(), onnx.IR_VERSION
    if opset > onnx_opset or not _runtime_accepts(opset, KNOWN_GOOD_IR):
        top = next((v for v in range(min(opset, onnx_opset), KNOWN_GOOD_OPSET, -1)
                    if _runtime_accepts(v, KNOWN_GOOD_IR)), KNOWN_GOOD_OPSET)
        raise ModelLoadError(
            f"the model uses ONNX opset {opset}, newer than the installed libraries support: opset {top} at most "
            f"({versions}). Re-export the model with opset_version={top} or lower, or upgrade onnx and "
            "onnxruntime.")
    if ir > onnx_ir or not _runtime_accepts(opset, ir):
        top = next((v for v in range(min(ir, onnx_ir), KNOWN_GOOD_IR, -1) if _runtime_accepts(opset, v)),
                   KNOWN_GOOD_IR)
        raise ModelLoadError(
            f"the model's ONNX IR version {ir} is newer than the installed libraries support: IR {top} at most "
            f"({versions}). Re-export the model with an older exporter, or upgrade onnx and onnxruntime.")


def topological_sort(model: onnx.ModelProto, copy: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` (``model`` itself with ``copy=False``) whose main-graph nodes are in topological order.

    ONNX requires that order, but some exporters and hand-edited graphs do not respect it, and every walk here reads
    the graph front to back (a node listed before its producer would seem not to be reached by the image). Nodes
    keep their original order wherever the dependencies allow (Kahn's algorithm, earliest node first); a node
    depends on the producers of everything it reads, through its subgraphs too. :class:`ModelLoadError` for a cycle,
    a tensor two nodes write, or a tensor nothing provides.
    """
    if copy:
        model = _copy.deepcopy(model)
    graph = model.graph
    nodes = list(graph.node)
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    available |= {t.values.name for t in graph.sparse_initializer}
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if not out:
                continue
            if out in producer or out in available:
                raise ModelLoadError(f"the model is invalid: tensor '{out}' is written by two nodes (or is also a "
                                     "graph input or weight). Re-export the model.")
            producer[out] = i
    waiting = []
    for i, node in enumerate(nodes):
        names = node_inputs(node)
        missing = [n for n in names if n not in available and n not in producer]
        if missing:
            raise ModelLoadError(
                f"the model is invalid: node '{node.name or node.op_type}' reads '{missing[0]}', which no node, "
                "graph input or weight provides. Re-export the model.")
        waiting.append({producer[n] for n in names if n in producer})
    if all(j < i for i, deps in enumerate(waiting) for j in deps):
        return model  # already in order: the common case
    users: dict[int, list[int]] = {}
    for i, deps in enumerate(waiting):
        for j in deps:
            users.setdefault(j, []).append(i)
    count = [len(deps) for deps in waiting]
    ready = [i for i, c in enumerate(count) if c == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in users.get(i, ()):
            count[k] -= 1
            if count[k] == 0:
                heapq.heappush(ready, k)
    if len(order) != len(nodes):
        stuck = [nodes[i].name or f"{nodes[i].op_type}#{i}" for i, c in enumerate(count) if c > 0]
        raise ModelLoadError(
            f"the model's graph has a cycle (through nodes {', '.join(stuck[:6])}{', ...' if len(stuck) > 6 else ''}"
            "), so it cannot be run. Re-export the model.")
    sorted_nodes = [_copy.deepcopy(nodes[i]) for i in order]
    del graph.node[:]
    graph.node.extend(sorted_nodes)
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
            arr = held.value(tensor).astype(np.float32)
            if held.is_held(tensor):
                held.put(tensor, arr, held.holding_of(tensor))
            else:
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

    Exporters that trace at batch 1 write that 1 into Reshape shape constants: TorchScript's ``[1, -1]``, torch's
    dynamo exporter ``[1, 25088]`` with ``allowzero=1`` (where 0 means an empty axis, not "copy"). Each such leading 1
    is rewritten to follow the batch (:func:`batch_free_shape`), and so is an ``as_strided`` Gather
    (:func:`fold_identity_gathers_inplace`). When shape inference at batch 2 still does not give a batch of 2
    (:func:`infers_batch`), the input keeps its static batch. Whether the result really batches is checked when the
    model is loaded (``Model`` runs batch 2 against batch 1 and runs images one at a time otherwise).
    """
    graph = model.graph
    was_static = input_batch_is_static(model, input_name)  # some exporters write -1 for "any"
    if was_static:
        fold_identity_gathers_inplace(model)  # reads the shapes the static batch gives
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
        for name in node_inputs(node):  # a subgraph reading the constant shares it too
            consumers[name] = consumers.get(name, 0) + 1
    for node in graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) < 2 \
                or node.input[1] not in inits:
            continue
        shape = held.value(inits[node.input[1]]).astype(np.int64)
        rewritten = batch_free_shape(shape, bool(node_attr(node, "allowzero", 0)))
        if rewritten is None:
            continue
        new, allowzero = rewritten
        name = node.input[1]
        if consumers.get(name, 0) > 1:  # shared constant: give this node its own copy
            name = f"{name}__cnnviz_batch{'_az' if allowzero else ''}"
            if name not in inits:
                inits[name] = numpy_helper.from_array(new, name)
                graph.initializer.append(inits[name])
            node.input[1] = name
        else:
            inits[name].CopyFrom(numpy_helper.from_array(new, name))
        _set_allowzero(node, allowzero)
    # A batch of 1 may still be baked in elsewhere (an attention reshape to [L, 1 * heads, d], Swin's windows to
    # [1 * windows, area, C]; shape inference does not check a Reshape's element count, so it can look fine): undo it
    # where shape inference shows how (graph/unbake.py). Otherwise, where shape inference sees the batch fail, keep
    # the graph as exported, which Model then runs one image at a time, rather than one whose shape probe would fail.
    from .unbake import unbake_inplace  # unbake builds on this module

    if not unbake_inplace(model, input_name) and infers_batch(model, input_name) is False:
        fix_batch_inplace(model, input_name, 1)
    return True


def infers_batch(model: onnx.ModelProto, input_name: str, batch: int = 2) -> bool | None:
    """Whether ONNX shape inference, with the image input's batch set to ``batch``, gives every output that batch:
    False when it gives another size (a graph that hard-codes batch 1 says (1, K)) or finds the graph inconsistent
    at that batch (a Concat of (1, ...) and (2, ...)); None when it cannot tell (ops of other domains have no shape
    functions here). Costs no weights and no run (the graph is inferred without its large initializers)."""
    from .shapes import weightless  # shapes builds on this module

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


def fold_identity_gathers_inplace(model: onnx.ModelProto) -> int:
    """Replace each ``Gather(v, indices)`` that reads a whole 1-D tensor in order (constant indices 0, 1, ..., len(v)-1
    in any shape) by ``Reshape(v, indices.shape)``, the same values. Returns how many were replaced.

    torch's dynamo exporter writes ``as_strided`` (ConvNeXt's head) as such a Gather over a flattened tensor; traced
    at batch 1 its indices hold that batch, and the Reshape it becomes is then rewritten like any other. Lengths come
    from ONNX shape inference on the model as exported (its batch still static).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    candidates = [n for n in graph.node if n.op_type == "Gather" and n.domain in ("", "ai.onnx")
                  and node_attr(n, "axis", 0) in (0, -1) and len(n.input) == 2 and n.input[1] in inits
                  and math.prod(inits[n.input[1]].dims) > 1]
    if not candidates:
        return 0
    lengths = _static_lengths(model, [n.input[0] for n in candidates])
    folded = 0
    for node in candidates:
        indices = held.value(inits[node.input[1]]).astype(np.int64)
        length = lengths.get(node.input[0])
        if length is None or indices.size != length:
            continue
        if not np.array_equal(np.where(indices < 0, indices + length, indices).reshape(-1), np.arange(length)):
            continue
        shape_name = f"{node.input[1]}__cnnviz_shape"
        if shape_name not in inits:
            inits[shape_name] = numpy_helper.from_array(np.asarray(indices.shape, dtype=np.int64), shape_name)
            graph.initializer.append(inits[shape_name])
        data = node.input[0]
        node.op_type = "Reshape"
        del node.input[:]
        node.input.extend([data, shape_name])
        del node.attribute[:]
        # allowzero: the shape holds no 0, and the batch rewrite must read the leading 1 as "-1", never as "copy dim
        # 0 of a flattened input".
        node.attribute.append(helper.make_attribute("allowzero", 1))
        folded += 1
    return folded


def _static_lengths(model: onnx.ModelProto, names) -> dict[str, int]:
    """Lengths of the 1-D tensors ``names`` as ONNX shape inference tells them (weights left out); absent: unknown."""
    from .shapes import weightless  # shapes builds on this module

    try:
        inferred = onnx.shape_inference.infer_shapes(weightless(model), strict_mode=False, data_prop=True).graph
    except Exception:  # noqa: BLE001 - nothing known: nothing folded
        return {}
    wanted, out = set(names), {}
    for value in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        dims = value.type.tensor_type.shape.dim
        if value.name in wanted and len(dims) == 1 and dims[0].HasField("dim_value"):
            out[value.name] = int(dims[0].dim_value)
    for tensor in model.graph.initializer:
        if tensor.name in wanted and len(tensor.dims) == 1:
            out[tensor.name] = int(tensor.dims[0])
    return out


def batch_free_shape(shape: np.ndarray, allowzero: bool) -> tuple[np.ndarray, bool] | None:
    """A Reshape's constant ``shape`` whose first entry hard-codes batch 1, rewritten to follow the input's batch:
    ``(new shape, new allowzero)``; None when there is nothing to rewrite or no way to.

    ONNX Reshape reads 0 as "copy this dimension of the input" (unless ``allowzero``) and -1 as "whatever the element
    count leaves": ``[1, 25088]`` becomes ``[-1, 25088]`` (either reading), ``[1, -1]`` becomes ``[0, -1]`` (the -1
    is taken, so the batch is copied; with ``allowzero`` on, it is switched off, which changes nothing when the shape
    holds no other 0).
    """
    if shape.ndim != 1 or shape.size == 0 or shape[0] != 1:
        return None
    new = shape.copy()
    rest = shape[1:]
    if not allowzero:
        new[0] = 0
        return new, False
    if not (rest == -1).any():
        new[0] = -1
        return new, True
    if not (rest == 0).any():
        new[0] = 0
        return new, False
    return None


def _set_allowzero(node: onnx.NodeProto, value: bool) -> None:
    for attr in node.attribute:
        if attr.name == "allowzero":
            attr.i = int(value)
            return
    if value:
        node.attribute.append(helper.make_attribute("allowzero", 1))


def fix_batch_inplace(model: onnx.ModelProto, input_name: str, batch: int = 1) -> None:
    """Declare dim 0 of the image input and of every output as ``batch``: the graph a model that cannot batch (it
    hard-codes batch 1 where no rewrite reaches) is run with, one image at a time."""
    graph = model.graph
    for value in [v for v in graph.input if v.name == input_name] + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = int(batch)
    del graph.value_info[:]


def set_input_shape_inplace(model: onnx.ModelProto, input_name: str, chw: tuple[int, int, int]) -> None:
    """Fix the image input's C, H, W (the batch stays symbolic) so that every later shape is static but the batch."""
    for value in model.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            for d, size in zip(list(dims)[1:], chw):
                d.Clear()
                d.dim_value = int(size)
    del model.graph.value_info[:]

