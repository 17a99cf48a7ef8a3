"""The ``batch`` pass: the batch axis of the image input and of the outputs made symbolic, wherever the export
baked a batch of 1 in; all of the graph rewriting the batch needs is here (and in unbake.py, the search it calls).

Exporters trace at batch 1 and write that 1 into the graph:

* the input and outputs declare batch 1: dim 0 becomes :data:`BATCH_DIM`;
* a Reshape to ``[1, -1]`` (TorchScript) or ``[1, K]`` with ``allowzero=1`` (torch's dynamo exporter) gets its
  leading 1 rewritten to follow the batch (:func:`batch_free_shape`), after dynamo's ``as_strided`` Gather
  (ConvNeXt's head) has become that Reshape (:func:`fold_identity_gathers_inplace`);
* a transformer's attention and window reshapes, expands and class-token concatenations are rewritten where ONNX
  shape inference at batch 1 and 2 shows how (:mod:`.unbake`), also in a graph that declares any batch but was
  traced at batch 1 (torch.export's ``Dim.DYNAMIC`` over torchvision's attention);
* where shape inference at batch 2 still fails, the batch stays fixed at 1.

What the pass cannot tell without running the model is checked here too, when ``Model`` has specialised the graph to
its default size: a rewritten graph must give batch 1's scores at batch 2 (:func:`batches_correctly`), and a graph
declared any-batch must run at batch 2 (:func:`bakes_batch_one`); when either fails, ``Model`` runs images one at a
time through :attr:`BatchPlan.base`, the graph as exported. :func:`batch_record` turns the plan and that outcome into
the pass's record.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import held
from ..ops import node_attr
from ..subgraphs import node_inputs
from .inference import infers_batch
from .probe import lending, pruned_to, quiet_session
from .record import PassRecord, plural
from .unbake import apply_inplace, unbaked_graph, unbaked_places
from .weightless import weightless

BATCH_DIM = "N"  # the name of the symbolic batch dimension in every graph we write


@dataclass
class BatchPlan:
    """The batch pass's result: ``batched``, the graph with a symbolic batch; ``base``, the graph as exported with
    its batch fixed at 1, run one image at a time if the batched graph turns out not to batch (None: a model declared
    any-batch with nothing rewritten, which has no other graph); ``rewritten``, whether a batch of 1 baked into the
    graph was rewritten (``Model`` must then check by running that it batches); ``counts``, what was rewritten."""
    batched: onnx.ModelProto
    base: onnx.ModelProto | None
    rewritten: bool
    counts: dict


def batch_pass(model: onnx.ModelProto, input_name: str) -> BatchPlan:
    """Make the batch of ``model`` (edited in place: it becomes :attr:`BatchPlan.batched`) symbolic.

    Args:
        model: the normalised model, its image input float NCHW.
        input_name: the image input.

    Returns:
        The :class:`BatchPlan`: the batched graph, the graph as exported (the fallback) and what was rewritten.
    """
    base = copy.deepcopy(model) if input_batch_is_static(model, input_name) else None
    counts = make_batch_dynamic_counted(model, input_name)
    rewritten = counts["was_static"]
    if not rewritten:
        # Declared any-batch, yet traced at batch 1 into reshapes all the same: rewritten as for a static export,
        # checked by Model like one, with the graph as exported, run one image at a time, as the fallback.
        light = unbaked_graph(model, input_name)
        if light is not None:
            base = copy.deepcopy(model)
            fix_batch_inplace(base, input_name, 1)
            apply_inplace(model, light)
            counts["unbaked"] = unbaked_places(model)
            rewritten = True
    return BatchPlan(model, base, rewritten, counts)


def batch_record(plan: BatchPlan, static_batch: bool, why: str | None = None) -> PassRecord:
    """The ``batch`` record: what :func:`batch_pass` rewrote and how the model runs (``static_batch``: one image at
    a time, because ``why``)."""
    counts = dict(plan.counts)
    done = []
    if counts["was_static"]:
        done.append("the declared batch of 1 made symbolic")
    if counts["gathers_folded"]:
        done.append(f"{plural(counts['gathers_folded'], 'as_strided Gather')} turned into a Reshape")
    if counts["reshapes_rewritten"]:
        done.append(f"{plural(counts['reshapes_rewritten'], 'Reshape')} of [1, ...] made to follow the batch")
    if counts["unbaked"]:
        done.append(f"{plural(counts['unbaked'], 'place')} in attention or window reshapes, expands or token "
                    "concatenations rewritten to follow the batch")
    if counts["kept_static"]:
        done.append("batch 1 kept where shape inference at batch 2 fails")
    if static_batch:
        runs = "images run one at a time" + (f" ({why})" if why else "")
    elif plan.rewritten:
        runs = "batches (batch 2 checked against batch 1 by running)"
    else:
        runs = "batches"
    changed = bool(counts["was_static"] or counts["unbaked"] or static_batch)
    summary = ("; ".join(done) + ": " if done else "the batch is already symbolic: ") + runs
    return PassRecord("batch", changed, summary, {**counts, "rewritten": plan.rewritten,
                                                  "one_at_a_time": static_batch, "why": why if static_batch else None})


def input_batch_is_static(model: onnx.ModelProto, input_name: str) -> bool:
    """Whether the image input declares a fixed batch (a positive dim 0; some exporters write -1 for "any")."""
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
    return make_batch_dynamic_counted(model, input_name)["was_static"]


def make_batch_dynamic_counted(model: onnx.ModelProto, input_name: str) -> dict:
    """:func:`make_batch_dynamic_inplace`, saying what it did: ``was_static``, ``gathers_folded``,
    ``reshapes_rewritten``, ``unbaked`` (places graph/loading/unbake.py rewrote) and ``kept_static`` (the batch put
    back at 1 where shape inference shows the rewrite does not batch)."""
    graph = model.graph
    was_static = input_batch_is_static(model, input_name)  # some exporters write -1 for "any"
    counts = {"was_static": was_static, "gathers_folded": 0, "reshapes_rewritten": 0, "unbaked": 0,
              "kept_static": False}
    if was_static:
        counts["gathers_folded"] = fold_identity_gathers_inplace(model)  # reads the shapes the static batch gives
    values = [v for v in graph.input if v.name == input_name] + list(graph.output)
    for value in values:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM
    del graph.value_info[:]
    if not was_static:
        return counts
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
        counts["reshapes_rewritten"] += 1
    # A batch of 1 may still be baked in elsewhere (an attention reshape to [L, 1 * heads, d], Swin's windows to
    # [1 * windows, area, C]; shape inference does not check a Reshape's element count, so it can look fine): undo it
    # where shape inference shows how (loading/unbake.py). Otherwise, where shape inference sees the batch fail, keep
    # the graph as exported, which Model then runs one image at a time, rather than one whose shape probe would fail.
    light = unbaked_graph(model, input_name)
    if light is not None:
        apply_inplace(model, light)
        counts["unbaked"] = unbaked_places(model)
    elif infers_batch(model, input_name) is False:
        fix_batch_inplace(model, input_name, 1)
        counts["kept_static"] = True
    return counts



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


def batch_one_only(model: onnx.ModelProto, input_name: str, chw) -> bool:
    """Whether ``model`` (its batch declared symbolic) computes its outputs at batch 1 but fails at batch 2: an
    export that hard-codes the batch somewhere no rewrite reached (torch.export traced at batch 1, say). Such a model
    is correct run one image at a time. Runs the whole model twice on zeros, silently."""
    outputs = [o.name for o in model.graph.output]
    with lending() as lend:  # the weights read in place (see pruned_to)
        try:
            session = quiet_session(pruned_to(model, outputs, input_name, lend))
            session.run(outputs, {input_name: np.zeros((1, *chw), dtype=np.float32)})
        except Exception:  # noqa: BLE001 - fails at batch 1 too: another problem
            return False
        try:
            session.run(outputs, {input_name: np.zeros((2, *chw), dtype=np.float32)})
        except Exception:  # noqa: BLE001
            return True
        return False


def bakes_batch_one(model: onnx.ModelProto, input_name: str, chw) -> bool:
    """Whether ``model`` (its batch declared symbolic) cannot run a batch of 2: ONNX shape inference at batch 2
    disagrees (no run), confirmed by running batch 1 and batch 2 on zeros (:func:`batch_one_only`)."""
    if infers_batch(model, input_name) is not False:
        return False
    return batch_one_only(model, input_name, chw)


def batches_correctly(model: onnx.ModelProto, info: dict, input_name: str, score_name: str, chw, open_session,
                      budget_bytes: int) -> bool:
    """Run batch 2 and batch 1 through the batch-dynamic graph; both must give the same scores.

    The probe is the smallest that can tell (two images, float32, drawn as float32). When even that would take more
    than ``budget_bytes`` (the input plus twice the largest feature map, at batch 2) the check is skipped and False
    returned: images then run one at a time, always correct, and a model declaring a 4096x4096 input does not
    allocate gigabytes just to be loaded or inspected.

    Args:
        model: the graph specialised to the size ``chw`` (its tensors' shapes in ``info``, name -> TensorInfo).
        info: the static shapes of ``model``'s tensors.
        input_name: the image input.
        score_name: the score tensor compared.
        chw: the image's (C, H, W).
        open_session: a function returning a session (``run(feeds) -> {name: array}``) over the graph to check.
        budget_bytes: the memory the check may take.

    Returns:
        Whether batch 2's first row equals batch 1's scores (rtol 1e-4, atol 1e-5); False when the check fails to run
        or is over budget.
    """
    made = {o for node in model.graph.node for o in node.output if o}
    largest = max((int(np.prod(ti.shape[1:], dtype=np.float64)) for name, ti in info.items()
                   if name in made and ti.static and ti.shape), default=0)
    if 2 * 4 * (math.prod(int(d) for d in chw) + 2 * largest) > budget_bytes:
        return False
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *chw), dtype=np.float32)
    try:
        session = open_session()
        both = session.run({input_name: x})[score_name]
        one = session.run({input_name: x[:1]})[score_name]
    except Exception:  # noqa: BLE001 - a graph that does not run at batch 2 does not batch
        return False
    return both.shape[0] == 2 and np.allclose(both[:1], one, rtol=1e-4, atol=1e-5)
