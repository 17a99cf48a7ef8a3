"""Static shapes of every tensor: ONNX shape inference first, one probe run where inference cannot tell.

Shapes are tuples with ``None`` for every dimension that follows the batch and concrete ints elsewhere: the engine
fixes the image's C, H, W before building any graph, so all but the batch is static. The batch is usually axis 0, but
not always: attention writes (L, N, E) tensors, window partitions (N * windows, area, C). A probe runs batch 1 and
batch 2 and marks *every* dimension that differs as None; :attr:`TensorInfo.batch_axes` says which of them equal the
batch itself (dim_param ``N`` in the graph), the others (a multiple of it, say) are written as unknown dims, so that
onnxruntime's optimisers never plan with a size that is only right at batch 1. Rules read a None dimension at run
time (``Shape`` of the forward tensor).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelStructureError
# batch_one_only and bakes_batch_one belong to the batch pass (graph/loading/batch.py); re-exported for callers.
from .loading.batch import BATCH_DIM, bakes_batch_one, batch_one_only  # noqa: F401
from .loading.probe import lending, pruned_to
from .loading.probe import quiet_session as _quiet_session
from .loading.weightless import FLOAT_TYPES, weightless
from .loading.weights import constants_to_initializers_inplace, float16_to_float32_inplace
from .ops import node_attr
from .padding import window_geometry
from .subgraphs import DEFAULT_DOMAINS, fold_constant_ifs, value_dependent



@dataclass(frozen=True)
class TensorInfo:
    elem_type: int
    shape: tuple | None  # None = rank unknown; entries None = symbolic (they follow the batch)
    batch_axes: tuple = (0,)  # the None entries equal to the batch itself; other None entries are multiples of it

    @property
    def is_float(self) -> bool:
        return self.elem_type in FLOAT_TYPES

    @property
    def static(self) -> bool:
        return self.shape is not None and all(d is not None for d in self.shape[1:])


def _dims(value: onnx.ValueInfoProto):
    ttype = value.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim)


def _batch_axes(value: onnx.ValueInfoProto) -> tuple:
    """Axes whose dim_param is the batch's (:data:`BATCH_DIM`)."""
    ttype = value.type.tensor_type
    if not ttype.HasField("shape"):
        return ()
    return tuple(i for i, d in enumerate(ttype.shape.dim) if d.HasField("dim_param") and d.dim_param == BATCH_DIM)


def infer(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Shape inference with data propagation; initializers included."""
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless(model), strict_mode=False, data_prop=True)
    except Exception as exc:
        raise ModelStructureError(f"ONNX shape inference failed on this model ({str(exc)[:300]}).") from None
    graph = inferred.graph
    info: dict[str, TensorInfo] = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        info[value.name] = TensorInfo(value.type.tensor_type.elem_type, _dims(value), _batch_axes(value))
    for tensor in graph.initializer:
        info[tensor.name] = TensorInfo(tensor.data_type, tuple(tensor.dims))
    return info


@dataclass(frozen=True)
class ProbedShape:
    """What a probe learnt of a tensor whose values were not asked for: its shape and dtype (as an array's)."""
    shape: tuple
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _outputs_shapes_only(model: onnx.ModelProto, names: list[str],
                         dtypes: dict | None = None) -> dict[str, tuple[str, str | None]]:
    """Make ``model`` output, for each of ``names``, its ``Shape`` and, unless ``dtypes`` has its dtype, an empty
    slice of it (which keeps its dtype) instead of the tensor: name -> (shape output, empty output or None). A probe
    that returned the tensors themselves kept every activation of the run alive at once (mvitv2_base_cls: 6.5 GB to
    load a 210 MB file, issue 26); these let onnxruntime free each tensor after its last use, as in any forward
    pass."""
    graph = model.graph
    taken = {o for n in graph.node for o in n.output} | {v.name for v in graph.input} | \
        {t.name for t in graph.initializer} | {n.name for n in graph.node}
    counter = [0]

    def fresh(hint: str) -> str:
        while True:
            counter[0] += 1
            name = f"cnnviz/probe/{hint}_{counter[0]}"
            if name not in taken:
                taken.add(name)
                return name

    dtypes = dtypes or {}
    flat_shape, zero = fresh("flat"), fresh("zero")
    if any(name not in dtypes for name in names):
        graph.initializer.extend([numpy_helper.from_array(np.array([-1], dtype=np.int64), flat_shape),
                                  numpy_helper.from_array(np.array([0], dtype=np.int64), zero)])
    outputs, wrappers = {}, {}
    for name in names:
        shape = fresh("shape")
        wrappers[name] = [helper.make_node("Shape", [name], [shape], name=fresh("node"))]
        if name in dtypes:  # a third of the nodes: a session over 20,000 nodes takes seconds to build
            outputs[name] = (shape, None)
            continue
        flat, empty = fresh("flat"), fresh("empty")
        wrappers[name] += [helper.make_node("Reshape", [name, flat_shape], [flat], name=fresh("node")),
                           helper.make_node("Slice", [flat, zero, zero], [empty], name=fresh("node"))]
        outputs[name] = (shape, empty)
    # Each right after its tensor's producer, and the probe's session runs nodes in this order (quiet_session's
    # PRIORITY_BASED): a wrapper run later would keep its tensor alive until then.
    made = {o for node in graph.node for o in node.output}  # once: per name, it took mvitv2 100 s to load
    nodes = [n for name in names if name not in made for n in wrappers[name]]
    for node in graph.node:
        nodes.append(node)
        for out in node.output:
            nodes.extend(wrappers.pop(out, ()))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(helper.make_empty_tensor_value_info(o) for pair in outputs.values() for o in pair if o)
    return outputs


def probe_runs(model: onnx.ModelProto, names: list[str], input_name: str, chw,
               shapes_only=(), float_shapes_only=()) -> list[list]:
    """Run the model at batch 1 and batch 2 (zeros) exposing ``names``; returns the two lists of values (a
    :class:`ProbedShape` instead of the value for each name in ``shapes_only``, and for each name in
    ``float_shapes_only`` that turns out to be a float tensor: only integer ones are read whole there).

    Only the nodes ``names`` need run (:func:`pruned_to`), on zeros that stay unwritten (untouched memory) unless a
    node reads them. A model whose batch is fixed runs at that batch alone (both lists are then the same run). A
    failure is a :class:`ModelStructureError` (onnxruntime's own log is silenced: loading never prints); when only
    batch 2 fails, its message says the export hard-codes a batch of 1 (:func:`batch_one_only` tells callers).
    """
    with lending() as lend:  # the weights the probe's sessions read, lent in place (see pruned_to)
        return _probe_runs(model, list(names), input_name, chw, shapes_only, float_shapes_only, lend)


def _probe_runs(model: onnx.ModelProto, names: list[str], input_name: str, chw, shapes_only, float_shapes_only,
                lend) -> list[list]:
    probe_model = pruned_to(model, names, input_name, lend)
    wanted = set(names)
    float_shapes_only = [n for n in dict.fromkeys(float_shapes_only) if n in wanted]
    shapes_only = [n for n in dict.fromkeys(list(shapes_only) + float_shapes_only) if n in wanted]
    valued = [n for n in dict.fromkeys(names) if n not in set(shapes_only) or n in set(float_shapes_only)]
    # ONNX type inference (no weights: milliseconds) gives most tensors' types, often their shapes: a dtype known
    # needs no empty-slice wrapper, and it says which candidates are floats (their shapes suffice) and which have a
    # static shape (fetched whole). The other candidates are fetched only where both runs gave them one shape, in
    # runs of their own: one whose shape follows the batch cannot be a batch-independent value, and mvitv2's
    # relative-position indices, (N, heads, 784, 784, 4) int64 and more, were otherwise fetched whole. Floats are
    # never declared outputs: onnxruntime keeps every graph output of a run alive until the run ends, fetched or not
    # (mvitv2_base_cls: 4.5 GB at batch 2, where its forward pass peaks at 1.4 GB).
    try:
        inferred = infer(probe_model)
    except ModelStructureError:
        inferred = {}
    dtypes = {}
    for name in shapes_only:
        ti = inferred.get(name)
        try:
            dtypes[name] = helper.tensor_dtype_to_np_dtype(ti.elem_type) if ti is not None and ti.elem_type else None
        except (KeyError, ValueError, TypeError):
            dtypes[name] = None
    dtypes = {n: d for n, d in dtypes.items() if d is not None}
    floats = {n for n in float_shapes_only if n in dtypes and np.issubdtype(dtypes[n], np.floating)}
    deferred = {n for n in float_shapes_only if n not in floats and not (
        n in inferred and inferred[n].shape is not None and all(d is not None for d in inferred[n].shape))}
    valued = [n for n in valued if n not in floats and n not in deferred]
    wrapped = _outputs_shapes_only(probe_model, shapes_only, dtypes) if shapes_only else {}
    probe_model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in valued)
    fixed = _fixed_batch(model, input_name)
    batches = (fixed,) if fixed else (1, 2)
    try:
        session = _quiet_session(probe_model)
    except Exception as exc:
        raise ModelStructureError(f"a probe run of the model (to learn {len(names)} tensor shapes or values that "
                                  f"shape inference could not tell) could not start: {str(exc)[:300]}") from None
    fetch = valued + [o for pair in wrapped.values() for o in pair if o]
    fetched = set(valued)
    runs = []
    for batch in batches:
        try:
            got = dict(zip(fetch, session.run(fetch, {input_name: np.zeros((batch, *chw), dtype=np.float32)})))
            release_freed_memory()
            runs.append([got[n] if n in fetched else
                         ProbedShape(tuple(int(d) for d in got[wrapped[n][0]]),
                                     dtypes[n] if wrapped[n][1] is None else got[wrapped[n][1]].dtype)
                         for n in names])
        except Exception as exc:
            if batch == 2:
                raise ModelStructureError(
                    "the model runs at batch 1 but not at batch 2: its graph hard-codes a batch of 1 somewhere (an "
                    "exporter tracing an example batch of 1 does this; with torch.onnx.export, trace a batch of 2). "
                    f"onnxruntime: {str(exc)[:300]}") from None
            raise ModelStructureError(
                f"a probe run of the model (to learn {len(names)} tensor shapes or values that shape inference could "
                f"not tell) failed: {str(exc)[:300]}") from None
    if deferred:
        index = {n: i for i, n in enumerate(names)}
        late = [n for n in deferred if runs[0][index[n]].shape == runs[-1][index[n]].shape]
        del session
        session = _quiet_session(pruned_to(model, late, input_name, lend)) if late else None
        for batch, values in zip(batches, runs):
            if late:  # these already ran once per batch above: a failure here cannot be the model's
                for n, value in zip(late, session.run(late, {input_name: np.zeros((batch, *chw), dtype=np.float32)})):
                    values[index[n]] = value
                release_freed_memory()
    return runs if len(runs) == 2 else runs * 2


def _fixed_batch(model: onnx.ModelProto, input_name: str) -> int | None:
    image = next((v for v in model.graph.input if v.name == input_name), None)
    dims = image.type.tensor_type.shape.dim if image is not None else []
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def release_freed_memory() -> None:
    """:func:`onnx_cnnviz.runtime.release_freed_memory` (imported late: runtime imports this package)."""
    from ..runtime import release_freed_memory as release

    release()


def probe(model: onnx.ModelProto, names: list[str], input_name: str, chw) -> dict[str, TensorInfo]:
    """Shapes by running the model at batch 1 and 2: every dim that differs between the two runs becomes None,
    wherever it is (attention and window partitions move the batch off axis 0); those that are 1 and 2 are the batch
    itself (:attr:`TensorInfo.batch_axes`)."""
    return probe_with_constants(model, names, (), input_name, chw)[0]


def probe_with_constants(model: onnx.ModelProto, names: list[str], candidates, input_name: str,
                         chw) -> tuple[dict[str, TensorInfo], dict[str, np.ndarray]]:
    """:func:`probe`'s shapes of ``names`` and :func:`batch_independent_values` of the integer tensors among
    ``candidates``, from one pair of runs (a second session over a large model costs seconds: serialising it and
    planning its memory)."""
    inputs = [v.name for v in model.graph.input if v.name not in {t.name for t in model.graph.initializer}]
    data = value_dependent(model.graph, inputs) if candidates else set()
    candidates = [n for n in candidates if n not in data]
    everything = list(dict.fromkeys(list(names) + candidates))
    if not everything:
        return {}, {}
    # Shapes only, but for integer candidates: a float tensor's values are never read here, and fetching them all
    # kept every activation of the run alive at once (mvitv2_base_cls: 6.5 GB to load a 210 MB file, issue 26).
    one, two = probe_runs(model, everything, input_name, chw, shapes_only=[n for n in names if n not in candidates],
                          float_shapes_only=candidates)
    runs = {name: (a, b) if isinstance(a, ProbedShape) else (np.asarray(a), np.asarray(b))
            for name, a, b in zip(everything, one, two)}
    info = {}
    for name in names:
        a, b = runs[name]
        if a.ndim != b.ndim:
            raise ModelStructureError(f"tensor '{name}' has rank {a.ndim} at batch 1 but {b.ndim} at batch 2; the "
                                      "model's shapes do not follow the batch in a way that can be explained.")
        shape = tuple(int(s) if s == t else None for s, t in zip(a.shape, b.shape))
        batch = tuple(i for i, (s, t) in enumerate(zip(a.shape, b.shape)) if (s, t) == (1, 2))
        info[name] = TensorInfo(_np_to_onnx(a.dtype), shape, batch)
    constants = {name: runs[name][0] for name in candidates
                 if not np.issubdtype(runs[name][0].dtype, np.floating)
                 and runs[name][0].shape == runs[name][1].shape and np.array_equal(*runs[name])}
    return info, constants


def batch_independent_values(model: onnx.ModelProto, names: list[str], input_name: str, chw) -> dict:
    """Values of tensors computed from shapes only (shape arithmetic) that are the same at batch 1 and 2: constants
    in effect once C, H, W are fixed.

    A tensor computed from the *values* of a graph input is left out even when the probe's zeros give it the same
    value at both batches (``ReduceSum(x) > 0`` is False for any batch of zeros): it is not a constant.
    """
    inputs = [v.name for v in model.graph.input if v.name not in {t.name for t in model.graph.initializer}]
    data = value_dependent(model.graph, inputs)
    names = [n for n in names if n not in data]
    if not names:
        return {}
    one, two = probe_runs(model, names, input_name, chw)
    return {name: np.asarray(a) for name, a, b in zip(names, one, two)
            if np.asarray(a).shape == np.asarray(b).shape and np.array_equal(a, b)}


def fold_ifs_at_size(model: onnx.ModelProto, input_name: str, chw) -> onnx.ModelProto:
    """``model`` (its image input already fixed at ``chw``) with every ``If`` whose condition is computed from shapes
    only replaced by the branch it takes (:func:`onnx_cnnviz.graph.subgraphs.fold_constant_ifs`); ``model`` itself
    when there is none. Conditions that depend on the image's values stay (the engine refuses to differentiate
    through them)."""
    for _ in range(len(model.graph.node) + 1):
        inits = {t.name for t in model.graph.initializer}
        conds = list(dict.fromkeys(n.input[0] for n in model.graph.node if n.op_type == "If" and n.input
                                   and n.domain in DEFAULT_DOMAINS and n.input[0] and n.input[0] not in inits))
        if not conds:
            return model
        values = batch_independent_values(model, conds, input_name, chw)
        model, folded = fold_constant_ifs(model, values)  # initializer conditions of inlined branches too
        if not folded:
            return model
        constants_to_initializers_inplace(model)
        float16_to_float32_inplace(model)
    return model


def _np_to_onnx(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def annotate_inplace(model: onnx.ModelProto, info: dict[str, TensorInfo], names=None) -> None:
    """Write known shapes into ``model``'s ``value_info`` (replacing what it held) so that later passes and onnxruntime
    see them."""
    graph = model.graph
    declared = {v.name for v in list(graph.input) + list(graph.output)} | {t.name for t in graph.initializer}
    del graph.value_info[:]
    for name in names if names is not None else info:
        ti = info.get(name)
        if ti is None or ti.shape is None or name in declared:
            continue
        graph.value_info.append(helper.make_tensor_value_info(name, ti.elem_type, annotated_dims(ti)))


def annotated_dims(ti: TensorInfo) -> list:
    """The dims to declare for a tensor: sizes, :data:`BATCH_DIM` where the dim is the batch, and an unnamed
    (unknown) dim where it only follows the batch (N * windows): naming it N would tell onnxruntime two sizes are
    equal that are not."""
    return [d if d is not None else (BATCH_DIM if i in ti.batch_axes else None) for i, d in enumerate(ti.shape)]


def pool_output_size(size: int, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int,
                     ceil_mode: bool) -> int:
    """Output length of a pooling window along one axis, as the ONNX spec and onnxruntime compute it.

    In ceil mode the last window must start inside the input or the left padding; a window that would start in the
    right padding is dropped (onnx's shape inference, as of 1.23, keeps it).
    """
    span = dilation * (kernel - 1) + 1
    if not ceil_mode:
        return (size + pad_begin + pad_end - span) // stride + 1
    out = -(-(size + pad_begin + pad_end - span) // stride) + 1
    if (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def misinferred_pools(model: onnx.ModelProto, info: dict[str, TensorInfo]) -> list[str]:
    """Outputs of ceil-mode pools whose inferred shape disagrees with :func:`pool_output_size`."""
    wrong = []
    for node in model.graph.node:
        if node.op_type not in ("MaxPool", "AveragePool"):
            continue
        if not node_attr(node, "ceil_mode", 0) or node_attr(node, "auto_pad", "NOTSET") != "NOTSET":
            continue
        x, y = info.get(node.input[0]), info.get(node.output[0])
        if x is None or y is None or x.shape is None or y.shape is None:
            continue
        if None in x.shape[2:]:
            continue  # a size only the run tells: nothing to compare
        kernel = list(node_attr(node, "kernel_shape"))
        strides, dilations, begins, ends = window_geometry(node, x.shape[2:], kernel)
        expected = [pool_output_size(s, k, st, d, pb, pe, True) for s, k, st, d, pb, pe in
                    zip(x.shape[2:], kernel, strides, dilations, begins, ends)]
        if list(y.shape[2:]) != expected:
            wrong.append(node.output[0])
    return wrong
