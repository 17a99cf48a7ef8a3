"""Control flow (``If``, ``Loop``, ``Scan``): what a node reads through its subgraphs, and folding an ``If`` whose
condition is constant.

A subgraph may read any tensor of the graphs around it by name ("outer scope") without listing it among the node's
inputs. A walk that looked at ``node.input`` alone would not see that an ``If`` consumes the feature map its branch
multiplies, so the gradient would silently miss that path (a map several times too small) or the image would seem not
to reach the score at all. Every walk over the graph therefore asks :func:`node_inputs`: a node uses its inputs *and*
every tensor its subgraphs read from outer scope.

An ``If`` whose condition is known once the input size is fixed (an initializer, a ``Constant``, or shape arithmetic
such as ``Shape -> Gather -> Equal``) always takes the same branch: :func:`fold_constant_ifs` replaces it by that
branch's nodes, after which it is differentiated like any other part of the graph. Control flow that depends on the
image's values cannot be differentiated by rules keyed on ``op_type``; the engine raises ``UnsupportedOpError`` naming
the node when it lies on the gradient path.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

CONTROL_FLOW = ("If", "Loop", "Scan")
#: Ops whose output depends on the *shape* of their input only, never on its values.
SHAPE_READERS = ("Shape", "Size")
DEFAULT_DOMAINS = ("", "ai.onnx")


def has_subgraphs(node: onnx.NodeProto) -> bool:
    """Whether ``node`` holds graphs in its attributes (If, Loop, Scan).

    Args:
        node: the node.

    Returns:
        True when it does.
    """
    return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)


def subgraphs_of(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in ``node``'s attributes (an If's two branches, a Loop's or Scan's body).

    Args:
        node: the node.

    Returns:
        The graphs, in attribute order.
    """
    out = []
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            out.append(attr.g)
        elif attr.type == AttributeProto.GRAPHS:
            out.extend(attr.graphs)
    return out


def defined_in(graph: onnx.GraphProto) -> set[str]:
    """Names ``graph`` itself defines: its inputs, initializers and node outputs.

    Args:
        graph: the ONNX graph.

    Returns:
        The names.
    """
    names = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    names |= {t.values.name for t in graph.sparse_initializer}
    names |= {o for node in graph.node for o in node.output if o}
    return names


def outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names ``graph`` (or a subgraph nested in it) reads without defining them: tensors of the outer scope.

    Args:
        graph: the ONNX graph.

    Returns:
        The names.
    """
    reads = {o.name for o in graph.output}
    for node in graph.node:
        reads.update(i for i in node.input if i)
        for sub in subgraphs_of(node):
            reads |= outer_reads(sub)
    reads.discard("")
    return reads - defined_in(graph)


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Every tensor ``node`` uses: its listed inputs, then those its subgraphs read from outer scope (sorted).

    Args:
        node: the node.

    Returns:
        The names (empty ones for left-out optional inputs kept in place).
    """
    listed = [i for i in node.input if i]
    if not has_subgraphs(node):
        return listed
    extra = set()
    for sub in subgraphs_of(node):
        extra |= outer_reads(sub)
    return listed + sorted(extra - set(listed))


def value_dependent(graph: onnx.GraphProto, sources) -> set[str]:
    """Tensors whose *values* depend on the values of ``sources`` (the sources included).

    Like :func:`onnx_cnnviz.graph.structure.downstream`, except that ``Shape`` and ``Size`` read only the shape of
    their input: shape arithmetic built on them is constant once the input size is fixed. Names not in the result are
    functions of initializers and shapes only.

    Args:
        graph: the ONNX graph.
        sources: tensor names.

    Returns:
        The names.
    """
    reached = set(sources)
    for node in graph.node:
        if node.op_type in SHAPE_READERS and node.domain in DEFAULT_DOMAINS:
            continue
        if any(name in reached for name in node_inputs(node)):
            reached.update(o for o in node.output if o)
    return reached


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor and node name used anywhere in ``model`` (subgraphs included): what a new name must avoid.

    Args:
        model: an ONNX model.

    Returns:
        The names.
    """
    names: set[str] = set()
    stack = [model.graph]
    while stack:
        g = stack.pop()
        names |= {v.name for v in list(g.input) + list(g.output) + list(g.value_info)}
        names |= {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
            names.add(node.name)
            stack.extend(subgraphs_of(node))
    names.discard("")
    return names


def scalar_condition(value) -> bool | None:
    """A one-element array as a bool.

    Args:
        value: an array.

    Returns:
        Its truth value, or None when it is not one element.
    """
    arr = np.asarray(value)
    if arr.size != 1:
        return None
    return bool(arr.reshape(-1)[0])


def constant_conditions(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values of the one-element initializers and ``Constant`` nodes of the main graph (candidate If conditions).

    Nothing large is materialised.

    Args:
        model: an ONNX model.

    Returns:
        Name -> value.
    """
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and len(node.output) == 1:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == AttributeProto.TENSOR:
                    tensor = onnx.TensorProto()
                    tensor.CopyFrom(attr.t)
                    tensor.name = node.output[0]
                    tensors.append(tensor)
                elif attr.name == "value_int":
                    tensors.append(numpy_helper.from_array(np.array(attr.i, dtype=np.int64), node.output[0]))
    out = {}
    for tensor in tensors:
        if math.prod(tensor.dims) == 1 and tensor.data_location != onnx.TensorProto.EXTERNAL:
            try:
                out[tensor.name] = numpy_helper.to_array(tensor)
            except Exception:  # noqa: BLE001 - a malformed tensor: leave the If alone; loading reports it elsewhere
                continue
    return out


def fold_constant_ifs(model: onnx.ModelProto, values: dict | None = None) -> tuple[onnx.ModelProto, int]:
    """Replace every main-graph ``If`` whose condition has a known value by the nodes of the branch it takes.

    The branch's nodes are inserted where the ``If`` stood (everything a branch reads from outer scope is computed
    before the ``If``, so the order stays topological); every name the branch defines gets a fresh name, and the
    branch's outputs become the ``If``'s outputs. Branches that become main-graph nodes may hold ``If`` nodes
    themselves: they are folded in turn.

    Args:
        model: an ONNX model. Never edited.
        values: condition name -> value (one element), for conditions computed at run time but known to be constant
            (shape arithmetic, see :func:`onnx_cnnviz.graph.shapes.batch_independent_values`); one-element
            initializers are read as well.

    Returns:
        ``(new model, number of Ifs folded)``; ``model`` itself when nothing was folded.
    """
    folded_total = 0
    current = model
    known = dict(values or {})
    for _ in range(count_ifs(model) + 1):
        cond_values = {**constant_conditions(current), **known}
        targets = [i for i, node in enumerate(current.graph.node)
                   if node.op_type == "If" and node.domain in DEFAULT_DOMAINS and node.input
                   and node.input[0] in cond_values and scalar_condition(cond_values[node.input[0]]) is not None
                   and _foldable(node)]
        if not targets:
            break
        if current is model:
            current = copy.deepcopy(model)
        taken = all_names(current)
        graph = current.graph
        new_nodes = []
        targets_set = set(targets)
        folded_conds = {graph.node[i].input[0] for i in targets}
        for i, node in enumerate(graph.node):
            if i not in targets_set:
                new_nodes.append(node)
                continue
            taken_branch = "then_branch" if scalar_condition(cond_values[node.input[0]]) else "else_branch"
            branch = next(a.g for a in node.attribute if a.name == taken_branch)
            nodes, inits = _inline(node, branch, taken)
            new_nodes.extend(nodes)
            graph.initializer.extend(inits)
            folded_total += 1
        kept = [copy.deepcopy(n) for n in new_nodes]
        del graph.node[:]
        graph.node.extend(kept)
        # A condition nothing reads any more is dropped (onnxruntime would warn about an unused initializer).
        used = {name for n in graph.node for name in node_inputs(n)} | {o.name for o in graph.output}
        unused = [t for t in graph.initializer if t.name in folded_conds and t.name not in used]
        for tensor in unused:
            graph.initializer.remove(tensor)
    return current, folded_total


def count_ifs(model: onnx.ModelProto) -> int:
    """The ``If`` nodes of ``model``, subgraphs included.

    Args:
        model: an ONNX model.

    Returns:
        Their number.
    """
    total, stack = 0, [model.graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            total += node.op_type == "If"
            stack.extend(subgraphs_of(node))
    return total


def _foldable(node: onnx.NodeProto) -> bool:
    branches = {a.name: a.g for a in node.attribute if a.type == AttributeProto.GRAPH}
    if set(branches) != {"then_branch", "else_branch"}:
        return False
    # Branches take no inputs and must give one value per If output; sparse initializers are left alone (rare).
    return all(not g.input and len(g.output) >= len([o for o in node.output]) and not g.sparse_initializer
               for g in branches.values())


def _fresh(base: str, taken: set) -> str:
    name, k = base, 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    taken.add(name)
    return name


def _inline(node: onnx.NodeProto, branch: onnx.GraphProto, taken: set):
    """The nodes and initializers replacing ``node`` (an If) by ``branch``, with fresh names."""
    prefix = node.name or (node.output[0] if node.output else "if")
    local_outputs = [o for n in branch.node for o in n.output if o]
    mapping: dict[str, str] = {}
    # A branch output produced by one of its nodes (and returned once) takes the If output's name directly, so the
    # folded graph reads like the original (a layer keeps its name); anything else goes through an Identity.
    out_names = [o.name for o in branch.output]
    for out, target in zip(out_names, node.output):
        if target and out in local_outputs and out_names.count(out) == 1 and out not in mapping:
            mapping[out] = target
    for name in local_outputs + [t.name for t in branch.initializer]:
        if name not in mapping:
            mapping[name] = _fresh(f"{prefix}/{name}", taken)
    nodes = []
    for inner in branch.node:
        new = copy.deepcopy(inner)
        for k, name in enumerate(new.input):
            if name in mapping:
                new.input[k] = mapping[name]
        for k, name in enumerate(new.output):
            if name in mapping:
                new.output[k] = mapping[name]
        new.name = _fresh(f"{prefix}/{inner.name or inner.op_type}", taken)
        for sub in subgraphs_of(new):
            _rename_outer_inplace(sub, mapping)
        nodes.append(new)
    for out, target in zip(out_names, node.output):
        if target and mapping.get(out) != target:
            nodes.append(helper.make_node("Identity", [mapping.get(out, out)], [target],
                                          name=_fresh(f"{prefix}/output", taken)))
    inits = []
    for tensor in branch.initializer:
        new = copy.deepcopy(tensor)
        new.name = mapping[tensor.name]
        inits.append(new)
    return nodes, inits


def _rename_outer_inplace(graph: onnx.GraphProto, mapping: dict) -> None:
    """Rename the outer-scope names ``graph`` reads (names it defines itself shadow the mapping)."""
    local = defined_in(graph)
    active = {k: v for k, v in mapping.items() if k not in local}
    if not active:
        return
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in active:
                node.input[k] = active[name]
        for sub in subgraphs_of(node):
            _rename_outer_inplace(sub, active)
    for out in graph.output:
        if out.name in active:
            out.name = active[out.name]
