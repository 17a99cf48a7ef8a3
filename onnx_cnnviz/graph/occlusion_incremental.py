"""Incremental occlusion: recompute only what a window can change (exact, not an approximation).

An occluded image differs from the original only inside the window. Through a convolution or pooling of kernel k,
stride s and padding p the difference spreads to the output units whose input window meets it::

    affected input [a, a + n)  ->  affected output [ceil((a + p - (k-1)d) / s), floor((a + n - 1 + p) / s) + 1)

so in the early layers the *affected box* of a 32-pixel window is a small part of the map (ResNet-50: 19 of 112
columns after conv1, 17 of 56 after layer1, 15 of 28 after layer2). Every unit outside it keeps its original value.
The graph built here therefore runs, per window position,

* the model once on the **original** image, returning the feature maps the graph reads (the values outside the
  affected boxes); the graph takes them as inputs;
* every *local* node (Conv, MaxPool, AveragePool, and pointwise ops: ReLU, BatchNorm, Add, Mul by constants,
  Concat over channels, ...) only on its output's affected box. Its input box is assembled from the recomputed box
  of the producer and, around it, the original values gathered at that position; outside the image the input is
  the op's padding value (0, or -inf for MaxPool), so boxes cut by the border are exact too. The ops then run with
  zero padding ("valid") on the assembled box;
* where the boxes become a large part of the map (or an op is not local: global pooling, a squeeze-and-excitation
  gate, Flatten, ...), the *frontier*: the recomputed box is pasted into the original map, giving full (P, C, h, w)
  maps, and the rest of the network runs on those unchanged.

For a box to sit at the same place relative to its window at every position, window positions must be multiples of
the window stride and every recomputed map's stride (its *jump*, the product of the strides before it) must divide
the window stride; maps on coarser grids are left to the frontier. The positions then still travel as a (P, 2) tensor
and the boxes are found in the graph from them: ``start = beta + top / jump``, ``beta`` fixed per map.

Only ``ai.onnx`` operators are emitted. :func:`plan` says whether (and how much) the rewrite saves;
:func:`incremental_occlusion_graph` builds it. The result equals the plain occlusion graph's
(:mod:`onnx_cnnviz.graph.occlusion`) up to float summation order.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import InputError
from .autodiff.rules.conv import weight_shape
from .builder import GraphBuilder
from .load import opset_of
from .occlusion import BASELINE, MODES, OUTPUT, POSITIONS
from .ops import BOXABLE_WINDOWS, POINTWISE, node_attr
from .padding import window_geometry
from .structure import downstream, upstream
from .subgraphs import has_subgraphs, node_inputs

# How much of a map a box may cover before the rest runs on full maps: the plan tries each, keeps the cheapest.
BOX_FRACTIONS = (0.25, 0.4, 0.55, 0.7, 0.85, 1.0)
# One value moved by the glue (gather, pad, where, transpose) costs about this many conv multiply-adds
# (onnxruntime on a CPU: ~90 G multiply-adds/s in ResNet-50's convolutions, ~1.5 G values/s through a Where).
GLUE_COST = 60.0
# Below this estimated saving the plain occlusion graph is used.
MIN_SAVING = 0.15


@dataclass(frozen=True)
class Axis:
    """Where a box lies along one axis of a map: ``[beta + top // jump, ... + size)`` for a window at ``top``."""
    beta: int
    size: int
    jump: int


@dataclass
class Plan:
    """The rewrite for one (image size, window, stride): which nodes run on boxes, and what it is expected to save."""
    boxes: dict = field(default_factory=dict)      # tensor -> (Axis_y, Axis_x): its affected box
    needs: dict = field(default_factory=dict)      # (node index, input) -> (Axis_y, Axis_x, pad value, pads?)
    incremental: set = field(default_factory=set)  # node indices run on boxes
    frontier: list = field(default_factory=list)   # tensors pasted back into full maps
    cost_fraction: float = 1.0                      # estimated work per window, relative to a full forward
    reason: str = ""                                # why nothing (or little) can be recomputed incrementally

    @property
    def worthwhile(self) -> bool:
        return bool(self.incremental) and self.cost_fraction <= 1.0 - MIN_SAVING


def _spatial(info, name):
    ti = info.get(name)
    if ti is None or ti.shape is None or len(ti.shape) != 4 or any(d is None for d in ti.shape[1:]):
        return None
    return tuple(int(d) for d in ti.shape[1:])


def _window_geometry(node, info, inits):
    """(kernel, strides, dilations, pad_begin) per spatial axis of a Conv/pool, or None when not modelled."""
    op = node.op_type
    if op == "Conv":
        wshape = conv_weight_shape(node, info, inits)
        kernel = node_attr(node, "kernel_shape", list(wshape[2:]) if wshape else None)
    else:
        kernel = node_attr(node, "kernel_shape")
        if (op == "MaxPool" and (len(node.output) > 1 and node.output[1])) or node_attr(node, "storage_order", 0):
            return None  # the Indices output holds positions in the full map
        if op == "AveragePool" and node_attr(node, "ceil_mode", 0):
            return None  # a truncated last window's divisor differs from a box's
    if kernel is None or len(kernel) != 2:
        return None
    in_hw, out_hw = _spatial(info, node.input[0]), _spatial(info, node.output[0])
    if in_hw is None or out_hw is None:
        return None
    strides, dilations, begins, ends = window_geometry(node, in_hw[1:], kernel)
    if op == "AveragePool" and not node_attr(node, "count_include_pad", 0) and any(begins + ends):
        return None  # border windows divide by fewer pixels: not a fixed-pad valid pool
    begin = [int(p) for p in begins]
    return [int(k) for k in kernel], strides, dilations, begin


def _conv_out_axis(a: Axis, k: int, s: int, d: int, p: int) -> Axis:
    k_eff = (k - 1) * d + 1
    lo = -((-(a.beta + p - k_eff + 1)) // s)           # ceil((beta + p - k_eff + 1) / s)
    hi = (a.beta + a.size - 1 + p) // s               # floor
    return Axis(lo, hi - lo + 1, a.jump * s)


def _conv_in_axis(out: Axis, k: int, s: int, d: int, p: int, jump_in: int) -> Axis:
    k_eff = (k - 1) * d + 1
    return Axis(out.beta * s - p, (out.size - 1) * s + k_eff, jump_in)


def _union(axes) -> Axis | None:
    if len({a.jump for a in axes}) != 1:
        return None
    lo = min(a.beta for a in axes)
    hi = max(a.beta + a.size for a in axes)
    return Axis(lo, hi - lo, axes[0].jump)


def _conv_cost(node, info, inits) -> float:
    """Multiply-adds of a Conv, or, for convolutions with few per output (depthwise ones are bound by memory, not
    arithmetic), :data:`GLUE_COST` per output value."""
    out = _spatial(info, node.output[0])
    w = conv_weight_shape(node, info, inits)
    if out is None or w is None:
        return 0.0
    return float(np.prod(out)) * max(float(np.prod(w[1:])), GLUE_COST)


def conv_weight_shape(node, info, inits) -> tuple | None:
    """A Conv's weight shape (M, C / group, k...): an initializer's dims, the static shape shape inference gave, or,
    for a weight computed in the graph whose shape inference gave up (timm's weight-standardised convolutions), read
    from the node's input and output channels and its ``kernel_shape`` (the backward rule's ``weight_shape``); None
    when nothing tells."""
    weight = node.input[1]
    if weight in inits:
        return tuple(int(d) for d in inits[weight].dims)
    known = info[weight].shape if weight in info else None
    x, y = info.get(node.input[0]), info.get(node.output[0])
    return weight_shape("Conv", x.shape if x is not None else None, y.shape if y is not None else None,
                        int(node_attr(node, "group", 1)), node_attr(node, "kernel_shape"), known)


def plan(model: onnx.ModelProto, info: dict, input_name: str, score_name: str, window, stride,
         max_box_fraction: float | None = None) -> Plan:
    """Decide which nodes of ``model`` (specialised to a static image size; ``info`` its shapes) run on boxes for
    windows of ``window`` (h, w) placed at multiples of ``stride`` (h, w).

    A node runs on boxes when it is local, its inputs do, and its box covers at most ``max_box_fraction`` of its map.
    By default the fraction is the one of :data:`BOX_FRACTIONS` with the lowest estimated cost (:func:`_estimate`).
    """
    if max_box_fraction is not None:
        return _plan_at(model, info, input_name, score_name, window, stride, max_box_fraction)
    plans = [_plan_at(model, info, input_name, score_name, window, stride, f) for f in BOX_FRACTIONS]
    return min(plans, key=lambda p: p.cost_fraction)


def _plan_at(model, info, input_name, score_name, window, stride, max_box_fraction) -> Plan:
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    result = Plan()
    image_hw = _spatial(info, input_name)
    if image_hw is None:
        result.reason = "the image input has no static (N, C, H, W) shape"
        return result
    derived = downstream(graph, [input_name]) | {input_name}
    on_path = upstream(graph, [score_name])
    # The rewrite renames the inputs of the nodes it recomputes; a subgraph reading a feature map by name from outer
    # scope would keep reading the unoccluded one. Such models get the plain occlusion graph.
    flow = next((n for n in graph.node if has_subgraphs(n) and any(i in derived for i in node_inputs(n))), None)
    if flow is not None:
        result.reason = (f"node '{flow.name or flow.op_type}' ({flow.op_type}) reads feature maps inside its "
                         "subgraphs")
        return result
    boxes = {input_name: (Axis(0, int(window[0]), 1), Axis(0, int(window[1]), 1))}
    consumers_outside: set = set()
    for idx, node in enumerate(graph.node):
        outs = [o for o in node.output if o]
        if not any(o in on_path for o in outs):
            continue
        spatial_in = [n for n in node.input if n and n in derived]
        if not spatial_in:
            continue
        box = _node_box(node, idx, spatial_in, boxes, info, inits, stride, max_box_fraction, result)
        if box is None:
            consumers_outside.update(n for n in spatial_in if n in boxes)
            continue
        boxes[outs[0]] = box
        result.incremental.add(idx)
    if score_name in boxes:
        consumers_outside.add(score_name)
    result.boxes = boxes
    result.frontier = [n for n in boxes if n in consumers_outside]
    result.cost_fraction = _estimate(result, graph, info, inits, on_path)
    if not result.incremental and not result.reason:
        first = next((n for n in graph.node if any(i in derived for i in n.input)), None)
        result.reason = (f"the first node on the image, {first.op_type if first else '?'}, is not a local op on a "
                         "grid the windows share")
    return result


def _estimate(result: Plan, graph, info, inits, on_path) -> float:
    """Work per window relative to a full forward pass: the convolutions' cost (:func:`_conv_cost`, on boxes where
    they run on boxes) plus :data:`GLUE_COST` for each value the assembly and the pastes move."""
    full = boxed = 0.0
    for idx, node in enumerate(graph.node):
        if node.op_type != "Conv" or not any(o in on_path for o in node.output):
            continue
        macs = _conv_cost(node, info, inits)
        full += macs
        if idx in result.incremental:
            box = result.boxes[node.output[0]]
            out = _spatial(info, node.output[0])
            macs *= box[0].size * box[1].size / (out[1] * out[2])
        boxed += macs
    if full == 0:
        return 1.0
    moved = 0.0
    for (idx, name), (need_y, need_x, _, border) in result.needs.items():
        have = result.boxes[name]
        if (need_y, need_x) != have or border:
            passes = 1 if (need_y, need_x) == have else 6  # a masking Where; or gather, pad, where and reorders
            moved += passes * _spatial(info, name)[0] * need_y.size * need_x.size
    for name in result.frontier:
        c, h, w = _spatial(info, name)
        moved += 5 * c * h * w  # gather, transposes, where and a reorder over the full map
    return (boxed + GLUE_COST * moved) / full


def _node_box(node, idx, spatial_in, boxes, info, inits, stride, max_box_fraction, result):
    """The affected box of the node's output if the node can run on boxes (recording its input needs), else None."""
    op = node.op_type
    outs = [o for o in node.output if o]
    if len(outs) != 1 or any(n not in boxes for n in spatial_in):
        return None
    out_shape = _spatial(info, outs[0])
    if out_shape is None:
        return None
    in_shapes = [_spatial(info, n) for n in spatial_in]
    if op in BOXABLE_WINDOWS:
        if len(spatial_in) != 1 or node.input[0] != spatial_in[0]:
            return None  # weights computed from the image
        geometry = _window_geometry(node, info, inits)
        if geometry is None:
            return None
        kernel, strides, dilations, begin = geometry
        src = boxes[node.input[0]]
        out_axes = tuple(_conv_out_axis(src[a], kernel[a], strides[a], dilations[a], begin[a]) for a in range(2))
        needs = tuple(_conv_in_axis(out_axes[a], kernel[a], strides[a], dilations[a], begin[a], src[a].jump)
                      for a in range(2))
        pad_value = -np.inf if op == "MaxPool" else 0.0
        pads_border = any(k > 1 for k in kernel) or any(begin)
        needs_entry = {node.input[0]: (needs[0], needs[1], pad_value, pads_border)}
    elif op in POINTWISE or (op == "Concat" and node_attr(node, "axis") in (1, -3)):
        # Every image-derived input must be a map of the output's size; constant inputs must not vary over space.
        if any(s is None or s[1:] != out_shape[1:] for s in in_shapes):
            return None
        for name in node.input[1:] if op == "BatchNormalization" else ():
            if name in spatial_in:
                return None  # statistics computed from the image
        for name in node.input if op != "BatchNormalization" else ():
            if name and name not in spatial_in:
                # Broadcasting aligns trailing axes: a constant that varies along H or W breaks the box.
                shape = info[name].shape if name in info and info[name].shape is not None else (
                    tuple(inits[name].dims) if name in inits else None)
                if shape is None or any(d != 1 for d in shape[-2:]):
                    return None
        axes = [_union([boxes[n][a] for n in spatial_in]) for a in range(2)]
        if any(a is None for a in axes):
            return None
        out_axes = tuple(axes)
        needs_entry = {n: (out_axes[0], out_axes[1], 0.0, False) for n in spatial_in}
    else:
        return None
    for a in range(2):
        if out_axes[a].size < 1 or int(stride[a]) % out_axes[a].jump:
            return None  # the box would not sit at a fixed place relative to the window
    if out_axes[0].size * out_axes[1].size > max_box_fraction * out_shape[1] * out_shape[2]:
        return None
    for name, need in needs_entry.items():
        result.needs[(idx, name)] = need
    return out_axes


class _Emitter:
    """Emits the box-level graph: index grids per map, gathers of original values, assembly, and pastes."""

    def __init__(self, b: GraphBuilder, info: dict, positions_top, positions_left, count):
        self.b = b
        self.info = info
        self.top, self.left, self.count = positions_top, positions_left, count
        self.originals: list[str] = []  # original maps the graph reads, in order of first use
        # Shapes of the (P, C, h, w) tensors made here: onnxruntime fuses Conv+Add+ReLU only where it can prove
        # the shapes equal, so they are declared rather than left to inference through Gather and Where.
        self.shapes: dict[str, tuple] = {}  # name -> (element type, dims)
        self._cache: dict = {}

    def _memo(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def starts(self, axis: int, ax: Axis) -> str:
        """(P, 1) int64: the first row (axis 0) or column (axis 1) of the box at each position."""
        def make():
            pos = self.top if axis == 0 else self.left
            scaled = pos if ax.jump == 1 else self.b.op("Div", [pos, self.b.ints([ax.jump])], hint="pos_scaled")
            return self.b.op("Add", [scaled, self.b.ints([ax.beta])], hint="box_start")
        return self._memo(("start", axis, ax.beta, ax.jump), make)

    def box_lines(self, axis: int, ax: Axis, extent: int):
        """(P, n) clamped line indices into the map, and (P, n) bool "inside the map"."""
        def make():
            b = self.b
            lines = b.op("Add", [self.starts(axis, ax), b.ints(np.arange(ax.size)[None, :])], hint="box_lines")
            inside = b.op("And", [b.op("GreaterOrEqual", [lines, b.ints([0])]),
                                  b.op("Less", [lines, b.ints([extent])])], hint="box_inside")
            clamped = b.op("Min", [b.op("Max", [lines, b.ints([0])]), b.ints([extent - 1])], hint="box_clamped")
            return clamped, inside
        return self._memo(("lines", axis, ax, extent), make)

    def inside(self, box, hw) -> str:
        """(P, 1, ny, nx) bool: which box pixels lie inside the map."""
        def make():
            b = self.b
            iy = self.box_lines(0, box[0], hw[0])[1]
            ix = self.box_lines(1, box[1], hw[1])[1]
            return b.op("And", [b.op("Unsqueeze", [iy, b.ints([1, 3])]), b.op("Unsqueeze", [ix, b.ints([1, 2])])],
                        hint="box_inside_2d")
        return self._memo(("inside", box, hw), make)

    def declare(self, name: str, tensor: str, hw) -> str:
        """Record ``name`` as (P, C of ``tensor``, *hw), of ``tensor``'s element type."""
        dims = ["P", _spatial(self.info, tensor)[0], int(hw[0]), int(hw[1])]
        self.shapes[name] = (self.info[tensor].elem_type, dims)
        return name

    def original(self, tensor: str) -> str:
        """The original (1, C, h, w) map, a graph input fed from the unoccluded run."""
        if tensor not in self.originals:
            self.originals.append(tensor)
        return tensor

    def gather(self, tensor: str, box, fill: float) -> str:
        """(P, C, ny, nx): the original map ``tensor`` read at each position's box; ``fill`` outside the map."""
        def make():
            b = self.b
            c, h, w = _spatial(self.info, tensor)
            flat = b.op("Reshape", [self.original(tensor), b.ints([c, h * w])], hint="orig_flat")
            # Row h*w of the table is the fill value: indices outside the map point there.
            table = b.op("Transpose", [b.op("Concat", [flat, b.const(np.full((c, 1), fill, np.float32), hint="fill")],
                                            axis=1)], perm=[1, 0], hint="orig_table")        # (h*w + 1, C)
            ry, iy = self.box_lines(0, box[0], h)
            rx, ix = self.box_lines(1, box[1], w)
            index = b.op("Add", [b.op("Unsqueeze", [b.op("Mul", [ry, b.ints([w])]), b.ints([2])]),
                                 b.op("Unsqueeze", [rx, b.ints([1])])], hint="orig_index")   # (P, ny, nx)
            inside = b.op("Squeeze", [self.inside(box, (h, w)), b.ints([1])])
            index = b.op("Where", [inside, index, b.ints([h * w])], hint="orig_index_filled")
            picked = b.op("Gather", [table, index], axis=0, hint="orig_box")             # (P, ny, nx, C)
            return self.declare(b.op("Transpose", [picked], perm=[0, 3, 1, 2], hint="orig_box_nchw"), tensor,
                                (box[0].size, box[1].size))
        return self._memo(("gather", tensor, box, float(fill)), make)

    def assemble(self, tensor: str, computed: str, have, need, pad_value: float, border: bool) -> str:
        """The values of ``tensor`` on box ``need``: recomputed ones on ``have``, original ones around them, and
        ``pad_value`` outside the map when ``border`` (the consumer pads)."""
        b = self.b
        hw = _spatial(self.info, tensor)[1:]
        # The part of the recomputed box inside the needed one (a strided consumer may skip its edge lines).
        lo = [max(h.beta, n.beta) for h, n in zip(have, need)]
        hi = [min(h.beta + h.size, n.beta + n.size) for h, n in zip(have, need)]
        fill = pad_value if border else 0.0
        if hi[0] <= lo[0] or hi[1] <= lo[1]:
            return self.gather(tensor, need, fill)  # nothing recomputed lies in it: all original values
        if [(h.beta, h.size) for h in have] == [(n.beta, n.size) for n in need]:
            if not border:
                return computed
            return self.declare(b.op("Where", [self.inside(need, hw), computed,
                                               b.const(np.array(fill, dtype=np.float32))], hint="box_padded"),
                                tensor, (need[0].size, need[1].size))
        cut = [(lo[a] - have[a].beta, hi[a] - have[a].beta) for a in range(2)]
        part = computed
        if any(c != (0, h.size) for c, h in zip(cut, have)):
            part = b.op("Slice", [computed, b.ints([cut[0][0], cut[1][0]]), b.ints([cut[0][1], cut[1][1]]),
                                  b.ints([2, 3])], hint="box_cut")
        before = [lo[a] - need[a].beta for a in range(2)]
        after = [need[a].beta + need[a].size - hi[a] for a in range(2)]
        placed = self.declare(b.op("Pad", [part, b.ints([0, 0, before[0], before[1], 0, 0, after[0], after[1]])],
                                   hint="box_placed"), tensor, (need[0].size, need[1].size)) \
            if any(before + after) else part
        mask = np.zeros((1, 1, need[0].size, need[1].size), dtype=bool)
        mask[..., before[0]:need[0].size - after[0], before[1]:need[1].size - after[1]] = True
        if mask.all() and not border:
            return placed
        mask = b.const(mask, dtype=bool, hint="box_mask")
        if border:  # recomputed values outside the map are not the padding: take the gathered fill there
            mask = b.op("And", [mask, self.inside(need, hw)], hint="box_mask_inside")
        return self.declare(b.op("Where", [mask, placed, self.gather(tensor, need, fill)], hint="box_assembled"),
                            tensor, (need[0].size, need[1].size))

    def paste(self, tensor: str, computed: str, box) -> str:
        """(P, C, h, w): the original map with each position's recomputed box written in."""
        b = self.b
        c, h, w = _spatial(self.info, tensor)
        ny, nx = box[0].size, box[1].size
        rows = b.op("Sub", [b.ints(np.arange(h)[None, :]), self.starts(0, box[0])], hint="paste_rows")  # (P, h)
        cols = b.op("Sub", [b.ints(np.arange(w)[None, :]), self.starts(1, box[1])], hint="paste_cols")  # (P, w)

        def within(rel, n):
            return b.op("And", [b.op("GreaterOrEqual", [rel, b.ints([0])]), b.op("Less", [rel, b.ints([n])])])

        def clamp(rel, n):
            return b.op("Min", [b.op("Max", [rel, b.ints([0])]), b.ints([n - 1])])

        inside = b.op("And", [b.op("Unsqueeze", [within(rows, ny), b.ints([1, 3])]),
                              b.op("Unsqueeze", [within(cols, nx), b.ints([1, 2])])], hint="paste_mask")
        zero, one = (b.const(np.array(v), dtype=np.int64, hint="scalar") for v in (0, 1))
        sample = b.op("Unsqueeze", [b.op("Range", [zero, self.count, one]), b.ints([1, 2])], hint="paste_p")
        first = b.op("Mul", [sample, b.ints([ny * nx])], hint="paste_sample")                      # (P, 1, 1)
        index = b.op("Add", [b.op("Add", [first, b.op("Unsqueeze", [b.op("Mul", [clamp(rows, ny), b.ints([nx])]),
                                                                      b.ints([2])])]),
                             b.op("Unsqueeze", [clamp(cols, nx), b.ints([1])])], hint="paste_index")  # (P, h, w)
        table = b.op("Reshape", [b.op("Transpose", [computed], perm=[0, 2, 3, 1]), b.ints([-1, c])],
                     hint="box_table")                                                            # (P*ny*nx, C)
        spread = b.op("Transpose", [b.op("Gather", [table, index], axis=0)], perm=[0, 3, 1, 2], hint="box_spread")
        pasted = self.declare(b.op("Where", [inside, spread, self.original(tensor)], hint="pasted"), tensor, (h, w))
        if self.info[tensor].elem_type != TensorProto.FLOAT:
            return pasted
        # An identity (1x1) max pool: onnxruntime's CPU provider then hands the map on in its blocked channel
        # layout, so the Add that reads it fuses into a Conv and the rest of the network stays in that layout,
        # rather than converting before and after every convolution (measured: convolutions ~15% slower).
        return self.declare(b.op("MaxPool", [pasted], kernel_shape=[1, 1], hint="pasted_blocked"), tensor, (h, w))


@dataclass
class IncrementalGraph:
    """The rewritten graph and the original maps it reads: run the model once on the image with those tensors as
    outputs, then feed them (batch 1) beside the positions and the baseline."""
    model: onnx.ModelProto
    originals: list


def incremental_occlusion_graph(model: onnx.ModelProto, info: dict, input_name: str, score_name: str, window,
                                stride, mode: str = "score", the_plan: Plan | None = None) -> IncrementalGraph:
    """The occlusion graph, recomputing only affected boxes (see the module docstring).

    Inputs: :data:`POSITIONS` (P, 2) int64 window corners, each a multiple of ``stride``; :data:`BASELINE` (C,);
    and, under their own names, the original maps listed in ``originals`` (each (1, C, h, w), from a run of the
    model on the unoccluded image; the image itself is one of them when the first layers read it). The window size
    is part of the graph. Output: :data:`OUTPUT` (P, K), the scores (or softmax probabilities,
    ``mode="probability"``) with each window occluded.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
    the_plan = the_plan or plan(model, info, input_name, score_name, window, stride)
    if not the_plan.incremental:
        raise InputError(f"no node can be recomputed incrementally: {the_plan.reason}.")
    model = copy.deepcopy(model)
    graph = model.graph
    c = _spatial(info, input_name)[0]
    derived = downstream(graph, [input_name]) | {input_name}
    on_path = upstream(graph, [score_name])
    taken = {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    taken |= {t.name for t in graph.initializer}
    taken |= {o for node in graph.node for o in list(node.output) + list(node.input)}
    b = GraphBuilder(taken | {POSITIONS, BASELINE, OUTPUT}, opset_of(model), prefix="cnnviz/occlusion")
    # Nodes that only compute constants (shape arithmetic, say) stay as they are.
    constant_nodes = [n for n in graph.node if any(o in on_path for o in n.output)
                      and not any(i in derived for i in n.input if i)]

    top = b.op("Slice", [POSITIONS, b.ints([0]), b.ints([1]), b.ints([1])], hint="top")     # (P, 1)
    left = b.op("Slice", [POSITIONS, b.ints([1]), b.ints([2]), b.ints([1])], hint="left")
    count = b.op("Slice", [b.op("Shape", [POSITIONS]), b.ints([0]), b.ints([1])], hint="count")
    count = b.op("Squeeze", [count, b.ints([0])], hint="count_scalar")
    emit = _Emitter(b, info, top, left, count)

    # The image's "recomputed box" is the window itself: the baseline, one value per channel.
    boxes = the_plan.boxes
    wy, wx = boxes[input_name][0].size, boxes[input_name][1].size
    fill = b.op("Reshape", [BASELINE, b.ints([1, c, 1, 1])], hint="baseline_4d")
    shape = b.op("Concat", [b.op("Unsqueeze", [count, b.ints([0])]), b.ints([c, wy, wx])], axis=0, hint="box_shape")
    recomputed = {input_name: emit.declare(b.op("Expand", [fill, shape], hint="window_box"), input_name, (wy, wx))}
    full: dict = {}

    def full_map(name: str) -> str:
        if name not in full:
            full[name] = emit.paste(name, recomputed[name], boxes[name])
        return full[name]

    occluded_name = {}
    for idx, node in enumerate(graph.node):
        if not any(o in on_path for o in node.output) or not any(i in derived for i in node.input if i):
            continue
        new = copy.deepcopy(node)
        new.name = b.unique((node.name or node.op_type) + ("/box" if idx in the_plan.incremental else "/occluded"))
        if idx in the_plan.incremental:
            for k, name in enumerate(node.input):
                if (idx, name) in the_plan.needs:
                    need_y, need_x, pad_value, border = the_plan.needs[(idx, name)]
                    new.input[k] = emit.assemble(name, recomputed[name], boxes[name], (need_y, need_x), pad_value,
                                                 border)
            if node.op_type in BOXABLE_WINDOWS:
                _make_valid(new)
            out = b.unique(node.output[0] + "/box")
            new.output[0] = out
            recomputed[node.output[0]] = emit.declare(out, node.output[0], [a.size for a in boxes[node.output[0]]])
        else:
            for k, name in enumerate(node.input):
                if name in boxes:
                    new.input[k] = full_map(name)
                elif name in occluded_name:
                    new.input[k] = occluded_name[name]
            for k, name in enumerate(node.output):
                if name:
                    occluded_name[name] = new.output[k] = b.unique(name + "/occluded")
                    shape = info[name].shape if name in info else None
                    if shape and shape[0] is None and all(d is not None for d in shape[1:]):  # (batch, ...)
                        emit.shapes[new.output[k]] = (info[name].elem_type, ["P", *shape[1:]])
        b.nodes.append(new)

    score = full_map(score_name) if score_name in boxes else occluded_name[score_name]
    flat = b.op("Flatten", [score], axis=1, hint="scores_2d")
    if mode == "probability":
        b.nodes.append(helper.make_node("Softmax", [flat], [OUTPUT], name=b.unique("softmax_node"), axis=1))
    else:
        b.nodes.append(helper.make_node("Identity", [flat], [OUTPUT], name=b.unique("identity_node")))

    del graph.node[:]
    graph.node.extend(constant_nodes + b.nodes)
    graph.initializer.extend(b.initializers)
    elem = next(v for v in graph.input if v.name == input_name).type.tensor_type.elem_type
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(POSITIONS, TensorProto.INT64, ["P", 2]),
                        helper.make_tensor_value_info(BASELINE, elem, [c])])
    graph.input.extend(helper.make_tensor_value_info(name, info[name].elem_type, [1, *_spatial(info, name)])
                       for name in emit.originals)
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["P", None])])
    # Existing annotations describe batch-N tensors, some of which are now batch-1 inputs: replace them.
    del graph.value_info[:]
    graph.value_info.extend(helper.make_tensor_value_info(name, elem_type, dims)
                            for name, (elem_type, dims) in emit.shapes.items())
    return IncrementalGraph(model, list(emit.originals))


def _make_valid(node: onnx.NodeProto) -> None:
    """Zero padding and floor mode: the assembled box already holds the border."""
    keep = [a for a in node.attribute if a.name not in ("pads", "auto_pad", "ceil_mode")]
    del node.attribute[:]
    node.attribute.extend(keep)
