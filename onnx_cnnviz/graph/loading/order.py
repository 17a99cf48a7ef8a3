"""The ``order`` pass: the nodes in topological order.

ONNX requires that order, but some exporters and hand edits write nodes in any order, and every walk here reads the
graph front to back. A cycle, a tensor written twice or a tensor nothing provides is a :class:`ModelLoadError`.
"""
from __future__ import annotations

import copy as _copy  # topological_sort's ``copy`` argument shadows the module there
import heapq

import onnx

from ...errors import ModelLoadError
from ..subgraphs import node_inputs
from .record import PassRecord, plural


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
    sort_inplace(model)
    return model


def sort_inplace(model: onnx.ModelProto) -> int:
    """Put ``model``'s main-graph nodes in topological order (see :func:`topological_sort`). Returns how many nodes
    moved (0: already in order)."""
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
        return 0  # already in order: the common case
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
    return sum(1 for position, i in enumerate(order) if position != i)


def order_pass(model: onnx.ModelProto, copy: bool = True) -> tuple[onnx.ModelProto, PassRecord]:
    """:func:`topological_sort`, with its record.

    Args:
        model: the model.
        copy: False to sort ``model`` itself (a model just read, which nobody else holds).

    Returns:
        The sorted model and the ``order`` record (how many nodes moved).

    Raises:
        ModelLoadError: a cycle, a tensor two nodes write, or a tensor nothing provides.
    """
    if copy:
        model = _copy.deepcopy(model)
    moved = sort_inplace(model)
    return model, PassRecord("order", bool(moved),
                             f"{plural(moved, 'node')} moved into topological order" if moved else
                             "the nodes are already in topological order", {"moved": moved})
