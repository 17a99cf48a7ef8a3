"""A batch of 1 baked into the middle of a graph, undone: the attention and window reshapes of a transformer traced at
batch 1, and the tokens concatenated to a batch of patches.

Part of the ``batch`` pass (:mod:`.batch`). An exporter that traces at batch 1 writes that 1 into Reshape constants.
:func:`.batch.batch_free_shape` rewrites the leading ``[1, ...]`` of CNN heads; a transformer hides the batch elsewhere:
torch's multi-head attention views its (L, N, E) queries as ``[L, 1, 3, d]``, merges the batch into the heads,
``[L, 1 * heads, d]``, or into the tokens, ``[L * 1, E]``; Swin's window partition writes ``[1 * windows, area, C]``,
SwinV2 expands to such a shape; and the class token, ``[1, 1, E]``, is concatenated to (N, L, E) patches. At batch 2
such a graph fails inside onnxruntime (or, worse, reshapes without error into the wrong layout).

:func:`unbake_inplace` finds these places with ONNX shape inference alone (weights left out, nothing run), at batch 1
and at batch 2, in rounds:

* a Reshape whose input follows the batch on one axis but whose constant target does not hold the input's element
  count at batch 2 is *baked*. Where the batch goes is read from flat positions: the batch starts at element
  ``P = prod(in[:k])`` of its input axis k (or ends at ``prod(in[:k + 1])`` when that axis is a merge); an output
  axis that starts or ends there can hold it (:func:`candidate_axes`), and becomes -1, every other entry its batch-1
  value. Several axes can (``[5, 1, 16] -> [5, 16]``: the inner factor of 5 or the outer factor of 16): the likeliest
  is taken first (an axis of size 1, then the batch as an outer factor, as attention's N * heads, then as an inner
  one, as L * N), and the others are kept;
* an Expand to a constant shape holding the batch-1 size of its input's batch axis gets 1 there (broadcasting keeps
  the input's size);
* a Concat whose inputs disagree at batch 2 on a non-concatenated axis where one has 1 gets that input expanded to
  the other's size there (the class token of each image);
* when no round changes anything, the first node whose inputs are known at batch 2 but not its output (a MatMul
  whose inner sizes no longer agree) shows a wrong choice: the nearest reshape upstream with a placement left takes
  its next one (:func:`_repair`), and the rounds go on.

Shape inference checks neither a Reshape's element count nor which images a merged axis mixes, so nothing here is
trusted blindly: the rewrite is kept only when shape inference then gives every output the batch, and
:class:`onnx_cnnviz.model.Model` still runs batch 2 against batch 1 before it batches (and otherwise runs images one
at a time).
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import held
from .inference import infers_batch, shapes_at
from .weightless import weightless


def unbake_inplace(model: onnx.ModelProto, input_name: str) -> bool:
    """Rewrite the batch-1 reshapes, expands and token concatenations of ``model`` (its image input declared
    any-batch) to follow the batch, when there are any and shape inference then gives every output the batch.
    Returns whether ``model`` was changed."""
    light = unbaked_graph(model, input_name)
    if light is None:
        return False
    apply_inplace(model, light)
    return True


def apply_inplace(model: onnx.ModelProto, light: onnx.ModelProto) -> None:
    """Give ``model`` the nodes of :func:`unbaked_graph`'s result ``light`` and the initializers it added."""
    del model.graph.node[:]
    model.graph.node.extend(light.graph.node)
    have = {t.name for t in model.graph.initializer}
    model.graph.initializer.extend(t for t in light.graph.initializer if t.name not in have)
    del model.graph.value_info[:]


def unbaked_graph(model: onnx.ModelProto, input_name: str) -> onnx.ModelProto | None:
    """The rewrite of :func:`unbake_inplace` as a weightless copy of ``model`` (its nodes and the small initializers
    it adds; it never changes one ``model`` has), or None when there is nothing to rewrite or it does not work out.
    ``model`` is not changed."""
    work = weightless(model)  # shapes are all this reads: the weights join the result at the end
    places = sum(1 for n in work.graph.node if n.op_type in ("Reshape", "Expand", "Concat"))
    decisions: dict[str, list] = {}  # reshape output -> [candidate targets, index chosen]
    changed = False
    for _ in range(3 * places + 8):  # each round fixes a place or moves a decision to its next candidate
        # Shape inference does not check a Reshape's element count, so "every output has the batch" is not enough:
        # rounds go on until no baked place is left that inference reaches. Batch 1 is inferred again each round:
        # an exported ``[0, heads, d, L]`` (0: copy) can make inference's batch-1 shapes inconsistent downstream
        # until it is rewritten.
        one, two = shapes_at(work, input_name, 1), shapes_at(work, input_name, 2)
        if _fix_reshapes(work, one, two, decisions) or _fix_expands(work, one, two) or _fix_concats(work, one, two):
            changed = True
            continue
        failed = first_failure(work, one, two) if changed else None
        if failed is None:
            break
        if not _repair(work, failed, decisions):
            return None
    else:
        return None
    if not changed or infers_batch(work, input_name) is not True:
        return None
    return work


def first_failure(model: onnx.ModelProto, one: dict, two: dict) -> onnx.NodeProto | None:
    """The first node (in graph order) whose inputs shape inference knows at batch 2 but not its output, though it
    knows it at batch 1: where a wrong placement of the batch shows (a MatMul whose inner sizes no longer agree)."""
    for node in model.graph.node:
        inputs = [n for n in node.input if n]
        if inputs and all(n in two for n in inputs) and any(o in one and o not in two for o in node.output):
            return node
    return None


def _repair(model: onnx.ModelProto, failed: onnx.NodeProto, decisions: dict) -> bool:
    """Take the next candidate of the nearest reshape upstream of ``failed`` that had a choice left (its later
    candidates are the less likely placements). Returns whether one was changed."""
    producer = {o: n for n in model.graph.node for o in n.output}
    frontier, seen = [failed], set()
    while frontier:  # breadth first: the nearest decision first
        nxt = []
        for node in frontier:
            for name in node.input:
                if name in seen or name not in producer:
                    continue
                seen.add(name)
                if name in decisions and decisions[name][1] + 1 < len(decisions[name][0]):
                    decisions[name][1] += 1
                    _set_shape(model, producer[name], decisions[name][0][decisions[name][1]])
                    return True
                nxt.append(producer[name])
        frontier = nxt
    return False


def batch_axis(one: tuple, two: tuple) -> int | None:
    """The one axis on which a tensor's batch-2 shape is twice its batch-1 shape; None when it is not exactly that."""
    if len(one) != len(two):
        return None
    differ = [i for i, (a, b) in enumerate(zip(one, two)) if a != b]
    if len(differ) != 1 or two[differ[0]] != 2 * one[differ[0]]:
        return None
    return differ[0]


def candidate_axes(data_one: tuple, axis: int, out_one: tuple) -> list[int]:
    """The output axes of a reshape ``data_one -> out_one`` (batch-1 shapes) that can hold the batch which lies on
    input axis ``axis``, likeliest first: those that start or end at the flat position where the batch starts (or,
    for a merged input axis, ends). An axis of size 1 comes first (the exporter wrote the batch's value there), then
    an axis the batch would start (its outer factor, as torch's attention merges N * heads), then one it would end
    (its inner factor, as L * N)."""
    starts = {math.prod(data_one[:axis])}
    if data_one[axis] != 1:
        starts.add(math.prod(data_one[:axis + 1]))
    ranked = []
    for j in range(len(out_one)):
        begins, ends = math.prod(out_one[:j]) in starts, math.prod(out_one[:j + 1]) in starts
        if begins or ends:
            ranked.append((0 if out_one[j] == 1 else 1 if begins else 2, j))
    return [j for _, j in sorted(ranked)]


def _set_shape(model: onnx.ModelProto, node: onnx.NodeProto, values: np.ndarray) -> None:
    """Give ``node`` (a Reshape) its own constant target ``values``, explicit (allowzero off: no entry is 0)."""
    name = f"{node.output[0]}__cnnviz_unbaked"
    inits = {t.name: t for t in model.graph.initializer}
    tensor = numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)
    if name in inits:
        inits[name].CopyFrom(tensor)
    else:
        model.graph.initializer.append(tensor)
    node.input[1] = name
    for attr in node.attribute:
        if attr.name == "allowzero":
            attr.i = 0


def _fix_reshapes(model: onnx.ModelProto, one: dict, two: dict, decisions: dict) -> bool:
    """Rewrite every baked Reshape shape inference reaches at batch 2, each to its likeliest placement of the batch
    (:func:`candidate_axes`; the others are kept in ``decisions`` for :func:`_repair`). Returns whether any changed."""
    inits = {t.name for t in model.graph.initializer}
    changed = False
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) < 2 \
                or node.input[1] not in inits or node.output[0] in decisions:
            continue
        data, out = node.input[0], node.output[0]
        if data not in one or data not in two or out not in one:
            continue
        axis = batch_axis(one[data], two[data])
        if axis is None:
            continue
        if out in two and math.prod(two[out]) == math.prod(two[data]) and batch_axis(one[out], two[out]) is not None:
            continue  # already follows the batch (a -1 or a copied dim takes it)
        options = []
        for j in candidate_axes(one[data], axis, one[out]):
            values = np.asarray(one[out], dtype=np.int64)
            values[j] = -1
            options.append(values)
        if not options:
            continue
        decisions[out] = [options, 0]
        _set_shape(model, node, options[0])
        changed = True
    return changed


def _fix_expands(model: onnx.ModelProto, one: dict, two: dict) -> bool:
    """An Expand to a constant shape that holds the batch-1 size of its input's batch axis (SwinV2's normalised
    queries expanded to [1 * windows, heads, area, d]): that entry becomes 1, which keeps the input's size there
    (ONNX broadcasting), whatever the batch."""
    inits = {t.name: t for t in model.graph.initializer}
    changed = False
    for node in model.graph.node:
        if node.op_type != "Expand" or node.domain not in ("", "ai.onnx") or len(node.input) < 2 \
                or node.input[1] not in inits:
            continue
        data = node.input[0]
        if data not in one or data not in two:
            continue
        axis = batch_axis(one[data], two[data])
        if axis is None:
            continue
        shape = held.value(inits[node.input[1]]).astype(np.int64).copy()
        at = axis + len(shape) - len(one[data])
        if not 0 <= at < len(shape) or shape[at] == 1 or shape[at] != one[data][axis]:
            continue
        shape[at] = 1
        name = f"{node.output[0]}__cnnviz_unbaked"
        model.graph.initializer.append(numpy_helper.from_array(shape, name))
        node.input[1] = name
        changed = True
    return changed


def _fix_concats(model: onnx.ModelProto, one: dict, two: dict) -> bool:
    """Expand a batch-free input of a Concat (a class token (1, 1, E)) to the batch of the input it joins."""
    changed = False
    new_nodes = []
    for node in model.graph.node:
        if node.op_type != "Concat" or node.domain not in ("", "ai.onnx"):
            continue
        if any(n not in one or n not in two for n in node.input):
            continue
        rank = len(one[node.input[0]])
        cat = _attr(node, "axis") % rank
        follower = next((n for n in node.input if batch_axis(one[n], two[n]) not in (None, cat)), None)
        if follower is None:
            continue
        axis = batch_axis(one[follower], two[follower])
        for i, name in enumerate(node.input):
            if one[name] == two[name] and one[name][axis] == 1:
                base = f"{node.output[0]}__cnnviz_in{i}"
                # The target shape: 1 everywhere but the batch axis, which takes the follower's size there.
                parts = []
                if axis > 0:
                    parts.append(_const(model, base + "_before", [1] * axis))
                parts.append(base + "_batch")
                if axis < rank - 1:
                    parts.append(_const(model, base + "_after", [1] * (rank - 1 - axis)))
                new_nodes.append((node, [
                    helper.make_node("Shape", [follower], [base + "_shape"]),
                    helper.make_node("Gather", [base + "_shape", _const(model, base + "_at", [axis])],
                                     [base + "_batch"], axis=0),
                    helper.make_node("Concat", parts, [base + "_target"], axis=0),
                    helper.make_node("Expand", [name, base + "_target"], [base]),
                ], i, base))
                changed = True
    for node, nodes, i, base in new_nodes:
        at = list(model.graph.node).index(node)
        for k, extra in enumerate(nodes):
            model.graph.node.insert(at + k, extra)
        node.input[i] = base
    return changed


def _attr(node: onnx.NodeProto, name: str) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return 0


def _const(model: onnx.ModelProto, name: str, values) -> str:
    if name not in {t.name for t in model.graph.initializer}:
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
    return name


def unbaked_places(model: onnx.ModelProto) -> int:
    """How many places of ``model`` :func:`unbake_inplace` rewrote: reshapes and expands given their own constant
    target (``..__cnnviz_unbaked``) and concatenation inputs expanded to the batch (``..__cnnviz_in<i>``)."""
    reshaped = sum(1 for n in model.graph.node if n.op_type in ("Reshape", "Expand") and len(n.input) > 1
                   and n.input[1].endswith("__cnnviz_unbaked"))
    expanded = sum(1 for n in model.graph.node if n.op_type == "Expand" and n.output
                   and n.output[0].rpartition("__cnnviz_in")[2].isdigit() and "__cnnviz_in" in n.output[0])
    return reshaped + expanded
