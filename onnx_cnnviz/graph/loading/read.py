"""The ``read`` pass: read a model under limits, before anything else looks at it (and the ``hold`` record).

:func:`read_model` refuses what would exhaust the machine or fail later with an untyped message: more nodes than
``max_nodes``, a tensor whose declared size is over ``max_tensor_bytes`` or does not match the bytes the file holds
(checked from the dims, before anything is read or allocated), names that are not UTF-8 text, and missing external
data files. A model of :data:`held.HOLD_ABOVE_BYTES` of weights or more has its large weights held beside the graph
as it is read (graph/held.py): they go straight from their files into arrays, never into the protobuf.
:func:`read_pass` is :func:`read_model` plus the records of what it read and what it held.
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...errors import InputError, ModelLoadError, ModelStructureError
from ...files import check_regular, file_kind
from .. import held
from ..subgraphs import subgraphs_of
from .record import PassRecord, plural, size_text

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
    return _read(source, max_nodes, max_tensor_bytes, weights)[0]


def _read(source, max_nodes: int | None, max_tensor_bytes: int | None,
          weights: bool) -> tuple[onnx.ModelProto, list[str]]:
    """:func:`read_model`, and the external data files it read weights from."""
    if isinstance(source, onnx.ModelProto):
        check_node_count(source, max_nodes)
        check_node_names(source, "the ModelProto given")
        check_tensor_sizes(source, max_tensor_bytes)
        if held.should_hold(source):
            model = held.copy_holding(source)
            check_total_size(model, "the ModelProto given")
            return model, []
        return copy.deepcopy(source), []
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
        check_node_names(model, "the bytes given")
        check_tensor_sizes(model, max_tensor_bytes, what="the bytes given")
        if held.should_hold(model):
            held.hold_inplace(model)
            model = compacted(model)
        return model, []
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
    check_node_names(model, f"'{path}'")
    check_tensor_sizes(model, max_tensor_bytes, path.parent, what=f"'{path}'")
    if not weights:
        return model, []
    files = sorted({e.value for t in _all_tensors(model.graph) if t.data_location == TensorProto.EXTERNAL
                    for e in t.external_data if e.key == "location"})
    hold = held.should_hold(model)
    _load_external_data(model, path.parent, hold=hold)
    if hold:
        model = compacted(model)
    check_total_size(model, f"'{path}'")
    return model, files


def compacted(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in memory of its own, for a model whose weights were just held (graph/held.py).

    Protobuf (upb) allocates a parsed message's fields in an arena that is freed only with the whole message, so the
    weights moved into the store stayed allocated in the parsed file's message: the model's size twice over for as
    long as it was loaded (timm nfnet_f1, 0.87 GB of weights: 1.81 GB resident after reading, 0.96 GB compacted;
    issue 26). The copy holds only what is left (placeholders, small tensors); the parsed message is freed when the
    caller drops it.
    """
    fresh = onnx.ModelProto()
    fresh.CopyFrom(model)
    return fresh


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


def check_node_names(model: onnx.ModelProto, what: str = "the model") -> None:
    """Node names must be distinct (empty names aside), as ONNX requires: onnxruntime refuses a graph with two nodes
    of one name, which would otherwise surface only when a rewritten graph is loaded, blamed on the rewrite."""
    seen = set()
    for node in model.graph.node:
        if node.name in seen:
            raise ModelLoadError(f"{what} is an invalid ONNX model: two nodes are named '{node.name}' (node names must "
                                 "be distinct); rename one and save the model again, or re-export it.")
        if node.name:
            seen.add(node.name)


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
                f"{label} declares shape {tuple(dims)} = {size_text(declared)}, more than the limit of "
                f"{size_text(max_tensor_bytes)} for one tensor (a real classifier's largest weight is a few hundred "
                "MB). If you trust this model, raise the limit: "
                "onnx_cnnviz.graph.load.read_model(..., max_tensor_bytes=N).")
        if tensor.data_location == TensorProto.EXTERNAL:
            _check_external(tensor, declared, base, label)
            continue
        if tensor.HasField("segment"):
            continue
        if tensor.raw_data:
            stored, need, unit = len(tensor.raw_data), declared, "bytes"
        else:
            field_name = _TYPED_FIELDS.get(tensor.data_type)
            if field_name is None:
                continue
            stored, need, unit = len(getattr(tensor, field_name)), elements, "values"
        if stored != need:
            raise ModelLoadError(
                f"{label} declares shape {tuple(dims)} ({need:,} {unit}) but the file holds {stored:,} {unit} for it: "
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
        raise ModelLoadError(f"{label} declares {size_text(declared)} but its external data entry says offset "
                             f"{offset}, length {length}: the file is corrupt.")
    if base is None:
        return  # a ModelProto given in memory: its external files are not read here
    location = base / info.get("location", "")
    if not location.is_file():
        return  # reported with every other missing file by _load_external_data
    available = location.stat().st_size - offset
    if available < declared or (length is None and available != declared):
        raise ModelLoadError(
            f"{label} declares {size_text(declared)} but its external data file '{info.get('location')}' holds "
            f"{size_text(max(available, 0))} from offset {offset}: the file is truncated or not this model's.")


def _load_external_data(model: onnx.ModelProto, base: Path, hold: bool = False) -> None:
    """Read the tensors stored in external files under ``base`` into ``model``; with ``hold``, its large initializers
    go into graph/held.py's store instead, read straight from their files into arrays."""
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    missing, irregular = [], []
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            info = {e.key: e.value for e in tensor.external_data}
            location = base / info.get("location", "")
            if not location.exists():
                missing.append(info.get("location", "?"))
            elif not location.is_file():  # a FIFO would block the read, a device such as /dev/zero never end
                irregular.append(f"'{info.get('location')}' is {file_kind(location.stat().st_mode)}")
    if irregular:
        raise ModelLoadError(f"the model's external data must be regular files, but {', '.join(sorted(set(irregular)))}"
                             "; put the weight files themselves next to the .onnx file.")
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




def read_pass(source, max_nodes: int | None = MAX_NODES,
              max_tensor_bytes: int | None = MAX_TENSOR_BYTES) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """:func:`read_model`, with the records of the ``read`` and ``hold`` passes.

    Args:
        source: a path to an ``.onnx`` file, its bytes, or an ``onnx.ModelProto`` (copied, never modified).
        max_nodes: the node limit (None: no limit).
        max_tensor_bytes: the limit on one tensor's declared size (None: no limit).

    Returns:
        The model read, and two records: ``read`` (where from, nodes, weights, external data; it changes nothing)
        and ``hold`` (the weights held beside the graph, if any).

    Raises:
        ModelLoadError: an unreadable, corrupt or truncated model, a tensor over the limit, missing external data.
        ModelStructureError: more nodes than ``max_nodes``.
        InputError: a limit that is not a positive int or None.
    """
    model, files = _read(source, max_nodes, max_tensor_bytes, weights=True)  # refuses any other type of source
    if isinstance(source, onnx.ModelProto):
        where = "the ModelProto given"
    elif isinstance(source, (bytes, bytearray)):
        where = "the bytes given"
    else:
        where = f"'{Path(source).name}'"
    inits = list(model.graph.initializer)
    weight_bytes = sum(held.declared_bytes(t) for t in inits)
    nodes = count_nodes(model.graph)
    read = PassRecord(
        "read", False,
        f"{where}: {plural(nodes, 'node')}, {plural(len(inits), 'weight')} ({size_text(weight_bytes)})"
        + (f", external data from {', '.join(files)}" if files else "")
        + f", within max_nodes={max_nodes if max_nodes is None else f'{max_nodes:,}'} and max_tensor_bytes="
        + (str(max_tensor_bytes) if max_tensor_bytes is None else size_text(max_tensor_bytes)),
        # an absolute path: --json documents name files absolutely, whatever the working folder
        {"source": os.path.abspath(source) if isinstance(source, (str, os.PathLike)) else where, "nodes": nodes,
         "weights": len(inits), "weight_bytes": weight_bytes,
         "external_files": [os.path.join(os.path.dirname(os.path.abspath(source)), f) for f in files]
         if isinstance(source, (str, os.PathLike)) else files,
         "max_nodes": max_nodes, "max_tensor_bytes": max_tensor_bytes})
    return model, [read, hold_record(model, weight_bytes)]


def hold_record(model: onnx.ModelProto, weight_bytes: int | None = None) -> PassRecord:
    """The ``hold`` record: which weights :func:`read_model` left beside the graph (graph/held.py) and why."""
    if weight_bytes is None:
        weight_bytes = sum(held.declared_bytes(t) for t in model.graph.initializer)
    kept = [t for t in model.graph.initializer if held.is_held(t)]
    threshold = size_text(held.hold_above_bytes())
    if not kept:
        return PassRecord("hold", False, f"no weights held beside the graph ({size_text(weight_bytes)} of weights, "
                                         f"under {threshold})",
                          {"held": 0, "held_bytes": 0, "weight_bytes": weight_bytes,
                           "threshold_bytes": held.hold_above_bytes()})
    kept_bytes = sum(held.declared_bytes(t) for t in kept)
    return PassRecord("hold", True, f"{plural(len(kept), 'weight')} ({size_text(kept_bytes)}) held beside the graph "
                                    f"as arrays ({size_text(weight_bytes)} of weights, {threshold} or more)",
                      {"held": len(kept), "held_bytes": kept_bytes, "weight_bytes": weight_bytes,
                       "threshold_bytes": held.hold_above_bytes()})
