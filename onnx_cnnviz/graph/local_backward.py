"""The backward pass of a spatially local seed through a run of stride-1 layers, computed on a window around it.

A detection's class score is read at one anchor of its level's map, and the head between that level's feature map
(the layer Grad-CAM explains it at) and the score is a stack of stride-1 convolutions, normalisations and activations
(ultralytics' ``cv3``: a 3x3, a 3x3 and a 1x1 convolution). The cotangent at the end of that stack is nonzero at one
position, and the gradient it gives the layer is nonzero within the stack's span around it; differentiating the whole
80x80 map for it, once per detection, is almost all of the work. On a window the same numbers come out:

* the *local run* ``L`` is the set of nodes that, starting from the layer ``A``, keep its spatial size and read
  nothing but ``A``, each other's outputs and constants without spatial extent: Conv at stride 1 whose output has
  its input's size, BatchNormalization, element-wise ops (with per-channel or scalar constants), Concat and Split
  along channels. Its *frontier* ``F`` is the one tensor of ``L`` the rest of the backward path reads;
* ``r``, the run's *span*, is the largest sum over a path from ``A`` to ``F`` of each convolution's extent
  ``d (k - 1)`` (dilation ``d``, kernel ``k``);
* with ``B`` the bounding box of the nonzero cotangent at ``F`` (the seed's support), the gradient at ``A`` is
  nonzero only in ``B`` grown by ``r``, and the backward pass at a tensor ``T`` of ``L`` reads forward values of ``T``
  only there. Recomputed from ``A`` cropped to a window ``W``, a forward value of ``T`` is exact at least ``r_A->T``
  pixels inside ``W``'s border (zero padding at a border inside the image is wrong only that far in); the cotangent
  at ``T`` lies within ``B`` grown by ``r_T->F``, and ``r_A->T + r_T->F <= r``. So ``W = B`` grown by ``r`` on each
  side (clamped inside the map, where the window's border is the map's own and its zero padding the layer's own)
  gives the exact gradient on ``W``, and zeros elsewhere.

:func:`plan` finds ``L``, ``F`` and ``r`` for a layer; :func:`window_model` is ``L`` alone, its input and output a
window of ``hc x wc``, whose gradient graph the model runs once per window size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from . import held
from .autodiff.engine import differentiable_path
from .load import BATCH_DIM
from .ops import node_attr
from .seed_narrowing import UNARY
from .subgraphs import node_inputs

__all__ = ["LocalRun", "plan", "window_model", "windows"]

#: Window sides are multiples of this (or the whole map): few distinct sizes, so few gradient graphs to build.
WINDOW_STEP = 8
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "PRelu", "Max", "Min"})


@dataclass(frozen=True)
class LocalRun:
    """The local run from ``layer`` to ``frontier``: its nodes (in graph order) and its span ``r`` in pixels."""
    layer: str
    frontier: str
    nodes: tuple
    span: int


def plan(model: onnx.ModelProto, info: dict, at: str, layer: str, dead: frozenset = frozenset()) -> LocalRun | None:
    """The local run from ``layer`` toward the seeded tensor ``at`` (see the module), or None where there is none:
    ``layer`` not 4-D with a static size, no stride-1 layer after it, or the run read by the rest of the path at more
    than one tensor.

    Args:
        model: the graph, specialised to an input size.
        info: tensor name -> :class:`~onnx_cnnviz.graph.shapes.TensorInfo`.
        at: the tensor the seed is fed to.
        layer: the tensor whose gradient is wanted.
        dead: tensors no cotangent reaches (:meth:`~onnx_cnnviz.graph.seed_narrowing.SeedPaths.dead`).

    Returns:
        The :class:`LocalRun`, or None.
    """
    size = _spatial(info, layer)
    if size is None:
        return None
    nodes, reached = differentiable_path(model.graph, at, [layer], info)
    nodes = [n for n in nodes if any(o in reached and o not in dead for o in n.output if o)]
    constants = _constants(model)
    if any(held.is_held(t) for t in constants.values()):
        return None  # a held model's weights live outside the protobuf: a window model cannot copy them
    span = {layer: 0}
    local = []
    for node in nodes:
        inputs = [name for name in node_inputs(node) if name and name not in constants]
        if not inputs or any(name not in span for name in inputs):
            continue
        extent = _extent(node, info, constants, size)
        if extent is None:
            continue
        local.append(node)
        for out in node.output:
            if out and out not in dead:
                span[out] = max(span[name] for name in inputs) + extent
    outside = [n for n in nodes if n not in local]
    read = {name for n in outside for name in node_inputs(n) if name in span}
    if at in span:
        read.add(at)
    if len(read) != 1:
        return None
    frontier = read.pop()
    if frontier == layer or _spatial(info, frontier) != size:
        return None
    needed = _upstream_in(local, frontier)
    return LocalRun(layer, frontier, tuple(n for n in local if id(n) in needed), int(span[frontier]))


def windows(support: np.ndarray, span: int) -> tuple[tuple[int, int], np.ndarray]:
    """The window size ``(hc, wc)`` and each row's window origin ``(N, 2)`` for cotangents nonzero at ``support``.

    Args:
        support: (N, H, W) booleans, where each row's cotangent at the frontier is nonzero.
        span: the local run's span ``r``.

    Returns:
        ``((hc, wc), origins)``: every row's nonzero box grown by ``span`` on each side fits its window; windows lie
        inside the map (the whole map where the boxes are that large); see :func:`_side` for the sides.
    """
    n, h, w = support.shape
    rows_any, cols_any = support.any(axis=2), support.any(axis=1)
    boxes = np.zeros((n, 4), np.int64)  # y0, y1, x0, x1 (inclusive); a row without support: the first pixel
    for i in range(n):
        ys, xs = np.flatnonzero(rows_any[i]), np.flatnonzero(cols_any[i])
        if ys.size:
            boxes[i] = ys[0], ys[-1], xs[0], xs[-1]
    hc = _side(int((boxes[:, 1] - boxes[:, 0]).max()) + 1, span, h)
    wc = _side(int((boxes[:, 3] - boxes[:, 2]).max()) + 1, span, w)
    origins = np.stack([np.clip(boxes[:, 0] - span, 0, h - hc), np.clip(boxes[:, 2] - span, 0, w - wc)], axis=1)
    return (hc, wc), origins


def _side(extent: int, span: int, size: int) -> int:
    """A window side for seeds ``extent`` wide: exactly ``1 + 2 span`` for point seeds (a detection's), otherwise
    rounded up to a multiple of :data:`WINDOW_STEP` (each side is a gradient graph of its own, built once); at most
    the map's ``size``."""
    need = extent + 2 * span
    return min(size, need if extent == 1 else -(-need // WINDOW_STEP) * WINDOW_STEP)


def window_model(model: onnx.ModelProto, info: dict, run: LocalRun, hw: tuple) -> onnx.ModelProto:
    """The local run alone, its layer an input and its frontier the output, both ``hw`` in size (batch dynamic).

    Args:
        model: the graph the run was planned on.
        info: its tensor info.
        run: the :class:`LocalRun`.
        hw: the window size ``(hc, wc)``.

    Returns:
        A model with the run's nodes and weights (shapes left to inference).
    """
    constants = _constants(model)
    nodes = [_copy(node) for node in run.nodes]
    for node in nodes:  # a weight behind an Identity (torch's exporter shares them so) read straight
        for i, name in enumerate(node.input):
            if name in constants:
                node.input[i] = constants[name].name
    used = {name for node in nodes for name in node_inputs(node)}
    inits = [t for t in model.graph.initializer if t.name in used]

    def value(name: str) -> onnx.ValueInfoProto:
        ti = info[name]
        return helper.make_tensor_value_info(name, ti.elem_type, [BATCH_DIM, ti.shape[1], *hw])

    graph = helper.make_graph(nodes, "cnnviz-local-run", [value(run.layer)],
                              [value(run.frontier)], inits)
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def _constants(model: onnx.ModelProto) -> dict:
    """Tensor name -> the initializer it is: the initializers, and the outputs of Identity nodes over one."""
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
    return constants


# --- what a local node is -----------------------------------------------------------------------------------------
def _extent(node: onnx.NodeProto, info: dict, constants: dict, size: tuple) -> int | None:
    """The extent a node of the local run adds to the span (0 for a point-wise node), or None where it is not one."""
    if node.domain not in ("", "ai.onnx") or any(_spatial(info, o) != size for o in node.output if o):
        return None
    op = node.op_type
    flat = [name for name in node.input[1:] if name]
    if op == "Conv":
        if len(node.input) < 2 or node.input[1] not in constants \
                or any(s != 1 for s in node_attr(node, "strides", [1, 1])):
            return None
        kernel = constants[node.input[1]].dims[2:]
        dilations = node_attr(node, "dilations", [1] * len(kernel))
        return int(max(d * (k - 1) for d, k in zip(dilations, kernel)))
    if op == "BatchNormalization":
        return 0 if all(name in constants for name in flat) and len([o for o in node.output if o]) == 1 else None
    if op in UNARY and len(node.output) == 1:
        return 0 if all(name in constants for name in flat) else None
    if op in _BINARY:
        for name in node.input:
            if name in constants and not _pointwise_constant(constants[name]):
                return None
        return 0
    if op == "Concat" and int(node_attr(node, "axis", 0)) in (1, -3):
        return 0 if not any(name in constants for name in node.input) else None  # a constant map has extent
    if op == "Split" and int(node_attr(node, "axis", 0)) in (1, -3):
        return 0  # its sizes are integers
    return None


def _pointwise_constant(t: onnx.TensorProto) -> bool:
    """A constant that broadcasts over a feature map without spatial extent: a scalar or (C, 1, 1)-like."""
    dims = list(t.dims)
    return len(dims) == 0 or (int(np.prod(dims)) == 1) or (len(dims) >= 2 and dims[-1] == 1 and dims[-2] == 1)


def _spatial(info: dict, name: str) -> tuple | None:
    ti = info.get(name)
    if ti is None or ti.shape is None or len(ti.shape) != 4 or not ti.is_float or ti.shape[0] is not None \
            or any(d is None for d in ti.shape[1:]):
        return None
    return tuple(int(d) for d in ti.shape[2:])


def _upstream_in(nodes: list, tensor: str) -> set:
    """The ids of the nodes among ``nodes`` that ``tensor`` depends on."""
    producer = {o: n for n in nodes for o in n.output if o}
    todo, seen = [tensor], set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        todo.extend(node_inputs(node))
    return seen


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out

