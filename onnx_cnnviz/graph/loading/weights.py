"""The ``constants`` and ``float32`` passes: weights are initializers, and float16 computes in float32.

* weights are initializers, never ``Constant`` nodes (PaddlePaddle exports use Constant nodes) and never graph inputs
  (IR < 4 exports list weights as inputs too);
* every float16 tensor is float32 (the user's file is never touched; only our copy computes in float32).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .. import held
from ..ops import node_attr
from ..subgraphs import node_inputs
from .probe import lending, pruned_to, quiet_session
from .record import PassRecord, plural, size_text
from .weightless import FLOAT_TYPES


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


#: Where a weight is read: the inputs of these ops that hold a learned kernel or matrix. A tensor computed from
#: weights alone that reaches one of them is folded at load. Only the second operand of a product: a first one
#: computed from constants is a computed input, such as swin_v2's continuous position bias (an MLP over a constant
#: coordinate table, whose ReLU the reference tests pin), which onnxruntime folds into a small table.
_WEIGHT_SLOTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (1,)}
#: Never folded, even over weights alone: random generators (a new value every run, not a constant) and quantisation
#: (onnxruntime fuses ``DequantizeLinear -> Conv`` into an integer convolution; a folded float kernel would compute
#: in float32 instead, at four times the memory).
_NEVER_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
                 "Dropout", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
#: Whether loading folds the weights a graph computes from its stored ones (:func:`fold_computed_weights_inplace`);
#: False leaves them to each session, as the file has them (tests of the rules' run-time-weight paths on real models).
FOLD_COMPUTED_WEIGHTS = True
#: Computed weights are folded in runs of about this many bytes of results: each run's session keeps its results
#: (and the copy the Python API makes of them) alive until it ends.
FOLD_CHUNK_BYTES = 64 * 2 ** 20


@dataclass(frozen=True)
class FoldedWeights:
    """What :func:`fold_computed_weights_inplace` did: ``weights``, how many computed weights became initializers;
    ``nodes``, how many nodes that computed them were removed; ``bytes_before`` and ``bytes_after``, the bytes of
    float initializers before and after (the stored weights the computed ones replaced are gone where nothing else
    reads them)."""
    weights: int = 0
    nodes: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


def _float_bytes(graph: onnx.GraphProto) -> int:
    return sum(held.declared_bytes(t) for t in graph.initializer if t.data_type in (TensorProto.FLOAT,
                                                                                   TensorProto.DOUBLE,
                                                                                   TensorProto.FLOAT16))


def computed_weights(model: onnx.ModelProto) -> tuple[list[str], list[onnx.NodeProto]]:
    """The float tensors read as a weight (:data:`_WEIGHT_SLOTS`) that the graph computes from initializers alone,
    and the nodes that compute them (in graph order).

    A node is computed from initializers alone when it is a plain default-domain op (no subgraph, none of
    :data:`_NEVER_FOLDED`) whose every input is an initializer or such a node's output. A tensor whose maker has
    another output that something reads is left out (the maker must go once its result is stored).
    """
    graph = model.graph
    constant = {t.name for t in graph.initializer}
    makers: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if (node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLDED or node.op_type == "Constant"
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
                or not all(i in constant for i in node.input if i)):
            continue
        for out in node.output:
            if out:
                constant.add(out)
                makers[out] = node
    if not makers:
        return [], []
    read = {i for n in graph.node for i in node_inputs(n)} | {o.name for o in graph.output}
    targets = []
    for node in graph.node:
        for slot in _WEIGHT_SLOTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            name = node.input[slot] if slot < len(node.input) else ""
            if name in makers and not any(o != name and o in read for o in makers[name].output if o):
                targets.append(name)
    targets = list(dict.fromkeys(targets))
    if targets:
        inferred = _infer_alone(model, _cone(graph, makers, targets), targets)
        types = {} if inferred is None else \
            {v.name: v.type.tensor_type.elem_type for v in list(inferred.value_info) + list(inferred.output)}
        # Only float results: an integer one is a shape or an index, which the loading passes read as they are.
        targets = [t for t in targets if types.get(t) in (TensorProto.FLOAT, TensorProto.DOUBLE)]
        stored = {t.name: t.data_type for t in graph.initializer}
        targets = [t for t in targets if not _same_values(_cone(graph, makers, [t]), stored)]
    return (targets, _cone(graph, makers, targets)) if targets else ([], [])


def _same_values(nodes, stored: dict) -> bool:
    """Whether ``nodes`` only pass a stored weight on unchanged (``Identity``, a ``Cast`` to the type it has: the
    float16 weights the ``float32`` pass converted keep their Casts): onnxruntime removes such nodes without a copy,
    and the weight keeps the name it has in the file."""
    types = dict(stored)
    for node in nodes:
        source = types.get(node.input[0]) if node.input else None
        if node.op_type == "Identity" and source is not None:
            types[node.output[0]] = source
        elif node.op_type == "Cast" and source is not None and node_attr(node, "to") == source:
            types[node.output[0]] = source
        else:
            return False
    return True


def _cone(graph: onnx.GraphProto, makers: dict, targets) -> list:
    """The nodes among ``makers``' values that ``targets`` are computed from, in graph order."""
    needed, cone = set(targets), set()
    computed = {id(n) for n in makers.values()}
    for node in reversed(graph.node):
        if id(node) in computed and any(o in needed for o in node.output if o):
            cone.add(id(node))
            needed.update(i for i in node.input if i)
    return [n for n in graph.node if id(n) in cone]


def _infer_alone(model: onnx.ModelProto, nodes, targets, data_prop: bool = False):
    """ONNX shape inference over ``nodes`` alone (their initializers' data left out), or None where it fails."""
    needed = {i for n in nodes for i in n.input if i}
    small = onnx.ModelProto(ir_version=model.ir_version)
    small.opset_import.extend(model.opset_import)
    small.graph.node.extend(nodes)
    small.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in targets)
    for tensor in model.graph.initializer:  # large float ones by their type and dims alone, as weightless() does
        if tensor.name in needed:
            if held.is_held(tensor) or (tensor.data_type in FLOAT_TYPES and int(np.prod(tensor.dims)) > 64):
                small.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
            else:
                small.graph.initializer.append(tensor)
    try:
        return onnx.shape_inference.infer_shapes(small, strict_mode=False, data_prop=data_prop).graph
    except Exception:  # noqa: BLE001 - types unknown: nothing folded
        return None


def fold_computed_weights_inplace(model: onnx.ModelProto, release: bool = False) -> FoldedWeights:
    """Compute once, at load, every weight the graph computes from its stored weights, and store the result instead
    of the nodes that computed it.

    timm's weight-standardised convolutions (NFNet's ``ScaledStdConv2d``: ``W' = gain * (W - mean(W)) /
    sqrt(var(W) + eps)`` per output channel; Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and
    Weight Standardization", 2019; Brock et al., "High-Performance Large-Scale Image Recognition Without
    Normalization", ICML 2021) export the stored kernel, a ``BatchNormalization`` in training mode over it and a
    ``Reshape``; a ``Linear`` exported as ``Transpose(W) -> MatMul`` is the same case. onnxruntime folds such
    constants into every session it builds, a private copy each, where the stored weights are shared: timm's
    nfnet_f1 (833 MB) grew by up to its weights' size per cached method (issue 26). Folded here, the results are
    ordinary initializers (held ones when the model's weights are held: graph/held.py), which every session reads in
    place, and the stored weights they replace are dropped when nothing else reads them.

    The nodes run on onnxruntime's CPU kernels, unoptimised, in runs of about :data:`FOLD_CHUNK_BYTES` of results:
    the values onnxruntime's own constant folding computes. Where they cannot run, the graph is left as it was.

    Args:
        model: the normalised model, edited in place.
        release: also free, in graph/held.py's store, the held arrays of the stored weights no longer read (only for
            a model that nobody else holds: another copy of it would still read them).

    Returns:
        What was folded (:class:`FoldedWeights`).
    """
    graph = model.graph
    before = _float_bytes(graph)
    if not FOLD_COMPUTED_WEIGHTS:
        return FoldedWeights(0, 0, before, before)
    targets, nodes = computed_weights(model)
    if not targets:
        return FoldedWeights(0, 0, before, before)
    holding = next(iter(sorted(held.holdings(model))), None)
    sizes = _target_sizes(model, nodes, targets)
    values: dict[str, np.ndarray] = {}
    try:
        with lending() as lend:
            for chunk in _chunks(targets, sizes):
                session = quiet_session(pruned_to(model, chunk, None, lend))
                values.update(zip(chunk, session.run(chunk, {})))
                del session
    except Exception:  # noqa: BLE001 - what onnxruntime cannot compute here, its sessions would not fold either
        return FoldedWeights(0, 0, before, before)
    count = len(graph.node)
    removed = _replace_inplace(model, nodes, values)
    for name, value in values.items():
        tensor = graph.initializer.add()
        if holding is not None and value.nbytes >= held.hold_min_bytes():
            tensor.name = name
            held.put(tensor, value, holding)
        else:
            tensor.CopyFrom(numpy_helper.from_array(value, name))
    if release:
        kept = {held.key_of(t) for t in graph.initializer}
        held.release_keys([key for key in removed if key not in kept])
    return FoldedWeights(len(values), count - len(graph.node), before, _float_bytes(graph))


def _target_sizes(model: onnx.ModelProto, nodes, targets) -> dict[str, int]:
    """Bytes of each target as shape inference tells them (absent where it cannot): only to cut the runs."""
    inferred = _infer_alone(model, nodes, targets, data_prop=True)
    sizes = {}
    for v in list(inferred.value_info) + list(inferred.output) if inferred is not None else []:
        ttype = v.type.tensor_type
        if v.name in targets and ttype.HasField("shape") and all(d.HasField("dim_value") for d in ttype.shape.dim):
            sizes[v.name] = int(np.prod([d.dim_value for d in ttype.shape.dim], dtype=np.int64)) * 4
    return sizes


def _chunks(targets: list[str], sizes: dict[str, int]):
    chunk, total = [], 0
    for name in targets:
        if chunk and total + sizes.get(name, 0) > FOLD_CHUNK_BYTES:
            yield chunk
            chunk, total = [], 0
        chunk.append(name)
        total += sizes.get(name, 0)
    if chunk:
        yield chunk


def _replace_inplace(model: onnx.ModelProto, nodes, values: dict) -> list:
    """Remove the nodes (of ``nodes``) made useless by ``values`` becoming initializers, and the initializers only
    they read; returns the held-store keys of the initializers removed."""
    graph = model.graph
    cone = {id(n) for n in nodes}
    folded = set(values)
    # The makers of the folded values go (their other outputs are read by nothing: computed_weights checks), then
    # every node of the cone whose outputs nothing reads any more.
    kept = [n for n in graph.node if not (id(n) in cone and any(o in folded for o in n.output))]
    while True:
        read = {i for n in kept for i in node_inputs(n)} | {o.name for o in graph.output}
        alive = [n for n in kept if id(n) not in cone or any(o in read for o in n.output if o)]
        if len(alive) == len(kept):
            break
        kept = alive
    del graph.node[:]
    graph.node.extend(kept)
    read = {i for n in kept for i in node_inputs(n)} | {o.name for o in graph.output}
    keys = [held.key_of(t) for t in graph.initializer if t.name not in read and held.key_of(t) is not None]
    for index in reversed([i for i, t in enumerate(graph.initializer) if t.name not in read]):
        del graph.initializer[index]
    return keys


def folded_record(record: PassRecord, folded: FoldedWeights) -> PassRecord:
    """The ``constants`` record with what :func:`fold_computed_weights_inplace` folded added to it (``record`` as it
    is when nothing was)."""
    if not folded.weights:
        return record
    details = {**record.details, "computed_weights_folded": folded.weights, "folding_nodes_removed": folded.nodes,
               "float_weight_bytes": [folded.bytes_before, folded.bytes_after]}
    done = (f"{plural(folded.weights, 'weight')} computed from the stored ones folded into initializers "
            f"({plural(folded.nodes, 'node')} removed; float weights {size_text(folded.bytes_before)} -> "
            f"{size_text(folded.bytes_after)})")
    summary = done if not record.changed else f"{record.summary}; {done}"
    return PassRecord(record.name, True, summary, details)
