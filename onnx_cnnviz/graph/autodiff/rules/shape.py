"""Backward rules of ops that move, copy or select elements without arithmetic.

Re-views (Reshape, Flatten, Squeeze, Unsqueeze) reshape ``g`` back; Transpose applies the inverse permutation;
Concat splits ``g``, Split concatenates; Slice, Pad (every mode: reflect, edge and wrap padding copy elements, so
their gradient adds the border's ``g`` back onto the elements copied) and the gathers (Gather, GatherElements,
GatherND) put ``g`` back
where the elements came from (with ``ScatterND``/``ScatterElements(reduction="add")`` where the indices are known at
run time only); Resize applies the transpose of its (separable, per-axis) interpolation matrices. Sizes that follow
the batch (None in the shape info, wherever the batch sits) are read at run time with ``Shape``.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import register
from ._common import reshape_to_input, unbroadcast


@register("Identity")
def identity(ctx, node, dys):
    return [dys[0]]


@register("Dropout")
def dropout(ctx, node, dys):
    """Inference: identity (the ratio and training-mode inputs get no gradient)."""
    if len(node.input) > 2 and node.input[2] and ctx.value(node.input[2]) is not None \
            and bool(ctx.value(node.input[2]).reshape(-1)[0]):
        ctx.unsupported("Dropout in training mode (export the model in eval mode)")
    return [dys[0], None, None]


@register("Cast")
def cast(ctx, node, dys):
    ti = ctx.info.get(node.input[0])
    to = ti.elem_type if ti is not None else TensorProto.FLOAT
    return [ctx.b.op("Cast", [dys[0]], hint="cast_grad", to=to)]


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def view(ctx, node, dys):
    return [reshape_to_input(ctx, dys[0], node.input[0])] + [None] * (len(node.input) - 1)


@register("Transpose")
def transpose(ctx, node, dys):
    rank = len(ctx.shape(node.input[0]))
    perm = ctx.attr("perm", list(reversed(range(rank))))
    inverse = [0] * rank
    for i, p in enumerate(perm):
        inverse[p] = i
    return [ctx.b.op("Transpose", [dys[0]], hint="transpose_grad", perm=inverse)]


@register("Expand")
def expand(ctx, node, dys):
    return [unbroadcast(ctx, dys[0], node.input[0], ctx.shape(node.output[0])), None]


@register("Tile")
def tile(ctx, node, dys):
    """y = tile(x, r): view g as (r0, d0, r1, d1, ...) and sum over the repeat axes."""
    b = ctx.b
    reps = ctx.constant(node.input[1], "the repeats")
    shape = ctx.shape(node.input[0])
    if any(d is None for d, r in zip(shape, reps) if r != 1):
        ctx.unsupported("tiling along the batch axis")
    split_shape = []
    for d, r in zip(shape, reps):
        split_shape += [int(r), -1 if d is None else int(d)]
    g = b.op("Reshape", [dys[0], b.ints(split_shape)])
    g = b.reduce_sum(g, [2 * i for i in range(len(shape))], keepdims=False)
    return [g, None]


def _axis(ctx, node, default=0):
    rank = len(ctx.shape(node.output[0]))
    axis = ctx.attr("axis", default)
    return axis + rank if axis < 0 else axis


@register("Concat")
def concat(ctx, node, dys):
    b = ctx.b
    axis = _axis(ctx, node)
    sizes = [ctx.shape(name)[axis] for name in node.input]
    if any(s is None for s in sizes):
        ctx.unsupported("concatenation along the batch axis")
    if len(sizes) == 1:
        return [dys[0]]
    parts = b.op("Split", [dys[0], b.ints(sizes)], hint="concat_grad", outputs=len(sizes), axis=axis)
    return [part if ctx.wants(i) else None for i, part in enumerate(parts)]


@register("Split")
def split(ctx, node, dys):
    b = ctx.b
    axis = _axis(ctx, node)
    parts = [g if g is not None else b.zeros_like(out) for g, out in zip(dys, node.output)]
    return [b.op("Concat", parts, hint="split_grad", axis=axis), None]


def _scatter_axis(ctx, g: str, axis: int, rank: int, index: np.ndarray, size: int, hint: str = "select") -> str:
    """Put the slices of ``g`` along ``axis`` back at positions ``index`` of an axis of length ``size`` (slices sent
    to the same position add up).

    Done as a product with the 0/1 selection matrix P (len(index), size) after moving ``axis`` last: each row of P
    has one 1, so each output is a plain sum of the slices sent there, and it needs no run-time shape arithmetic.
    """
    b = ctx.b
    select = np.zeros((len(index), size), dtype=np.float32)
    np.add.at(select, (np.arange(len(index)), np.asarray(index)), 1.0)
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = g if axis == rank - 1 else b.op("Transpose", [g], perm=perm)
    placed = b.op("MatMul", [moved, b.const(select, hint=hint)])
    return placed if axis == rank - 1 else b.op("Transpose", [placed], perm=perm)


def slice_indices(start: int, end: int, step: int, dim: int) -> list[int]:
    """The indices an ONNX Slice takes along one axis (clamping as in the operator spec)."""
    if step > 0:
        start = min(max(start + dim if start < 0 else start, 0), dim)
        end = min(max(end + dim if end < 0 else end, 0), dim)
    else:
        start = min(max(start + dim if start < 0 else start, 0), dim - 1)
        end = min(max(end + dim if end < 0 else end, -1), dim - 1)
    return list(range(start, end, step))


@register("Slice")
def slice_(ctx, node, dys):
    b = ctx.b
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    consts = [ctx.value(name) if i < len(node.input) and name else None
              for i, name in enumerate(list(node.input) + [""] * (5 - len(node.input)))][1:5]
    starts, ends, axes, steps = consts
    if starts is None or ends is None or (len(node.input) > 3 and node.input[3] and axes is None) \
            or (len(node.input) > 4 and node.input[4] and steps is None):
        ctx.unsupported("slice bounds computed at run time")
    axes = list(range(len(starts))) if axes is None else [int(a) + rank if a < 0 else int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    g = dys[0]
    pads_begin, pads_end = [0] * rank, [0] * rank
    strided = []
    for axis, start, end, step in zip(axes, starts, ends, steps):
        dim = shape[axis]
        if dim is None:
            # Exporters that write bounds for every axis (tf2onnx: begin 0, end INT_MAX) slice the batch axis in
            # full: the identity for any batch size, so it needs no gradient step. Anything else is unsupported.
            if step == 1 and (int(start) == 0 or int(start) <= -2 ** 31) and int(end) >= 2 ** 31 - 1:
                continue
            ctx.unsupported("slicing along the batch axis")
        index = slice_indices(int(start), int(end), step, dim)
        if step == 1 and index:
            pads_begin[axis], pads_end[axis] = index[0], dim - index[-1] - 1
        else:
            strided.append((axis, index, dim))
    for axis, index, dim in strided:
        g = _scatter_axis(ctx, g, axis, rank, np.asarray(index, dtype=np.int64), dim)
    if any(pads_begin) or any(pads_end):
        g = b.op("Pad", [g, b.ints(pads_begin + pads_end)], hint="slice_grad")
    return [g] + [None] * (len(node.input) - 1)


@register("Pad")
def pad(ctx, node, dys):
    """Pad in every mode (Pad-2 to Pad-19: constant, reflect, edge, wrap), negative pads (crops) included.

    Constant padding: the gradient is the central crop of g (and zero-padding where the forward cropped). The other
    modes copy input elements into the border: along each padded axis y = P x with P a 0/1 matrix of shape
    (out, in), one 1 per row (y_j = x_{src(j)}); so dx = P^T g, axis by axis (the modes are separable: a corner of
    a reflect-padded map is the reflection along H of the reflection along W). P is measured from onnxruntime's own
    Pad kernel on ``arange(in)`` (as Resize's matrices are), so the backward is the exact transpose of the forward
    the model runs, whatever convention the kernel follows for crops and borders.
    """
    mode = ctx.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        ctx.unsupported(f"Pad mode '{mode}'")
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    pads = ctx.value(node.input[1]) if len(node.input) > 1 and node.input[1] else ctx.attr("pads")
    if pads is None:
        ctx.unsupported("the pads are computed at run time")
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        value = ctx.constant(node.input[3], "the pad axes")
        axes = [int(a) + rank if a < 0 else int(a) for a in value.reshape(-1)]
    n = len(axes)
    begin = dict(zip(axes, pads[:n]))
    end = dict(zip(axes, pads[n:]))
    if mode == "constant":
        return [_constant_pad_grad(ctx, dys[0], shape, ctx.shape(node.output[0]), axes, begin, end)] \
            + [None] * (len(node.input) - 1)
    g = dys[0]
    for axis in axes:
        if begin[axis] == 0 and end[axis] == 0:
            continue
        if shape[axis] is None:
            ctx.unsupported(f"{mode} padding along an axis of unknown length (the batch)")
        source = pad_sources(mode, int(shape[axis]), begin[axis], end[axis])
        if source is None:
            ctx.unsupported(f"onnxruntime refuses {mode} padding of ({begin[axis]}, {end[axis]}) on an axis of "
                            f"length {shape[axis]}")
        g = _scatter_axis(ctx, g, axis, rank, source, int(shape[axis]), hint="pad_grad")
    return [g] + [None] * (len(node.input) - 1)


def _constant_pad_grad(ctx, g: str, shape: tuple, out_shape: tuple, axes: list, begin: dict, end: dict) -> str:
    """Constant padding: crop g where the forward padded, zero-pad it where the forward cropped."""
    b = ctx.b
    rank = len(shape)
    starts, ends, slice_axes = [], [], []
    repad = [0] * (2 * rank)
    for axis in axes:
        pb, pe = begin[axis], end[axis]
        if pb > 0 or pe > 0:
            if out_shape[axis] is None:
                ctx.unsupported("padding along the batch axis")
            starts.append(max(pb, 0))
            ends.append(out_shape[axis] - max(pe, 0))
            slice_axes.append(axis)
        repad[axis], repad[rank + axis] = max(-pb, 0), max(-pe, 0)
    if slice_axes:
        g = b.op("Slice", [g, b.ints(starts), b.ints(ends), b.ints(slice_axes)], hint="pad_grad")
    if any(repad):
        g = b.op("Pad", [g, b.ints(repad)], hint="pad_grad_uncrop")
    return g


def pad_sources(mode: str, size: int, pad_begin: int, pad_end: int) -> np.ndarray | None:
    """Which input index each output element of a 1-D ``Pad(mode, [pad_begin, pad_end])`` of ``arange(size)`` copies,
    read from onnxruntime's kernel (None where onnxruntime refuses the pads, e.g. reflect wider than the axis)."""
    import onnxruntime as ort

    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)], "pad_axis",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("pads", TensorProto.INT64, [2], [pad_begin, pad_end])])
    wrap = mode == "wrap"  # Pad-19 added wrap; the other modes are read at opset 13, as the engine's models run
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19 if wrap else 13)])
    model.ir_version = 9 if wrap else 8
    options = ort.SessionOptions()
    options.log_severity_level = 4  # library code never prints; a refusal is returned as None
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        out = session.run(["y"], {"x": np.arange(size, dtype=np.float32)})[0]
    except Exception:  # onnxruntime's own refusal (InvalidArgument / Fail): the caller names the node
        return None
    return np.rint(out).astype(np.int64)


@register("Gather")
def gather(ctx, node, dys):
    """y = x.take(indices, axis): put g back where each element came from (repeated indices add up).

    Constant indices over an axis of known length: a product with the 0/1 selection matrix, which needs no run-time
    shape arithmetic. Indices computed at run time (torch's dynamo exporter writes ``as_strided`` as a Gather whose
    indices are built from ``Range`` over the batch), or an axis whose length follows the batch: ``ScatterND`` with
    ``reduction="add"`` into zeros shaped like ``x``. Either way the indices are integers, so they get no gradient.
    Gathering along the batch axis itself is refused: it would mix the samples whose gradients a run returns.
    """
    data_shape = ctx.shape(node.input[0])
    rank = len(data_shape)
    axis = ctx.attr("axis", 0)
    axis = axis + rank if axis < 0 else axis
    dim = data_shape[axis]
    if dim is None and _is_batch_axis(ctx, node.input[0], axis):
        ctx.unsupported("gathering along the batch axis")
    indices = ctx.value(node.input[1])
    if indices is None or dim is None or sum(d is None for d in data_shape) > 1:
        return [_gather_scatter(ctx, node, dys[0], axis), None]
    return [_gather_select(ctx, dys[0], np.asarray(indices), data_shape, axis), None]


def _is_batch_axis(ctx, name: str, axis: int) -> bool:
    """Whether ``axis`` of ``name`` is the batch itself (not merely a size that follows it, as N * 768 does)."""
    ti = ctx.info.get(name)
    return ti is None or axis in ti.batch_axes


def _gather_select(ctx, g: str, indices: np.ndarray, data_shape: tuple, axis: int) -> str:
    """Constant indices: ``dx = g P`` along ``axis`` with P[j, i] = [indices[j] == i] (repeats add up)."""
    b = ctx.b
    rank, dim = len(data_shape), data_shape[axis]
    flat = np.asarray(indices, dtype=np.int64).reshape(-1)
    flat = np.where(flat < 0, flat + dim, flat)
    collapsed = [(-1 if d is None else int(d)) for d in data_shape[:axis]] + [len(flat)] \
        + [(-1 if d is None else int(d)) for d in data_shape[axis + 1:]]
    g = b.op("Reshape", [g, b.ints(collapsed)])
    select = np.zeros((len(flat), dim), dtype=np.float32)
    np.add.at(select, (np.arange(len(flat)), flat), 1.0)
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = g if axis == rank - 1 else b.op("Transpose", [g], perm=perm)
    placed = b.op("MatMul", [moved, b.const(select, hint="gather_select")])
    return placed if axis == rank - 1 else b.op("Transpose", [placed], perm=perm)


def _nonnegative(ctx, indices: str, sizes: str) -> str:
    """``indices`` as int64 with negative entries counted from the end of ``sizes`` (broadcast)."""
    b = ctx.b
    idx = b.op("Cast", [indices], to=TensorProto.INT64)
    negative = b.op("Less", [idx, b.ints([0])])
    return b.op("Where", [negative, b.op("Add", [idx, sizes]), idx], hint="gather_index")


def _gather_scatter(ctx, node, g: str, axis: int) -> str:
    """Run-time indices: move ``axis`` to the front, ``ScatterND(add)`` the rows of g into zeros, move it back."""
    b = ctx.b
    x, indices = node.input[0], node.input[1]
    rank = len(ctx.shape(x))
    q = len(ctx.shape(indices))
    front = [axis] + [i for i in range(rank) if i != axis]  # x's axes with ``axis`` first
    g_perm = list(range(axis, axis + q)) + list(range(axis)) + list(range(axis + q, rank - 1 + q))
    if g_perm != list(range(len(g_perm))):
        g = b.op("Transpose", [g], perm=g_perm)
    x_shape = b.shape(x)
    dim = b.op("Slice", [x_shape, b.ints([axis]), b.ints([axis + 1])])
    idx = b.op("Unsqueeze", [_nonnegative(ctx, indices, dim), b.ints([-1])])
    zeros = b.op("ConstantOfShape", [b.op("Gather", [x_shape, b.ints(front)], axis=0)],
                 value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))
    placed = b.op("ScatterND", [zeros, idx, g], hint="gather_grad", reduction="add")
    if front == list(range(rank)):
        return placed
    inverse = [0] * rank
    for i, p in enumerate(front):
        inverse[p] = i
    return b.op("Transpose", [placed], perm=inverse)


@register("GatherElements")
def gather_elements(ctx, node, dys):
    """y[i][j][k] = x[index[i][j][k]][j][k] (axis 0): ``ScatterElements(add)`` of g into zeros like x."""
    b = ctx.b
    x = node.input[0]
    rank = len(ctx.shape(x))
    axis = ctx.attr("axis", 0)
    axis = axis + rank if axis < 0 else axis
    if ctx.shape(x)[axis] is None and _is_batch_axis(ctx, x, axis):
        ctx.unsupported("gathering along the batch axis")
    dim = b.op("Slice", [b.shape(x), b.ints([axis]), b.ints([axis + 1])])
    idx = _nonnegative(ctx, node.input[1], dim)
    placed = b.op("ScatterElements", [b.zeros_like(x), idx, dys[0]], hint="gather_elements_grad", axis=axis,
                  reduction="add")
    return [placed, None]


@register("GatherND")
def gather_nd(ctx, node, dys):
    """y[i_1..i_q] = x[indices[i_1..i_q, :]] (``batch_dims`` 0): ``ScatterND(add)`` of g into zeros like x.

    torch's dynamo exporter writes adaptive average pooling whose windows do not tile the map this way."""
    b = ctx.b
    if ctx.attr("batch_dims", 0):
        ctx.unsupported("GatherND with batch_dims > 0")
    x, indices = node.input[0], node.input[1]
    depth = ctx.shape(indices)[-1]
    if depth is None:
        ctx.unsupported("the length of the index tuples is not known")
    if depth >= 1 and ctx.shape(x)[0] is None and _is_batch_axis(ctx, x, 0):
        ctx.unsupported("gathering along the batch axis")
    sizes = b.op("Slice", [b.shape(x), b.ints([0]), b.ints([int(depth)])])
    idx = _nonnegative(ctx, indices, sizes)
    placed = b.op("ScatterND", [b.zeros_like(x), idx, dys[0]], hint="gather_nd_grad", reduction="add")
    return [placed, None]


def resize_matrix(node: onnx.NodeProto, opset: int, in_size: int, out_size: int, scale: float | None) -> np.ndarray:
    """The (out_size, in_size) matrix of one axis of a Resize node, measured with onnxruntime on a one-hot basis.

    Measuring the runtime's own kernel (rather than re-deriving the coordinate transforms) guarantees that the
    backward pass is the exact transpose of the forward the model runs.
    """
    import onnxruntime as ort

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "axes"}
    inputs = ["x", "", "scales" if scale is not None else "", "" if scale is not None else "sizes"]
    inits = []
    if scale is not None:
        inits.append(helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, float(scale), 1.0]))
    else:
        inits.append(helper.make_tensor("sizes", TensorProto.INT64, [4], [in_size, 1, out_size, 1]))
    while inputs and inputs[-1] == "":
        inputs.pop()
    resize = helper.make_node("Resize", inputs, ["y"], **attrs)
    graph = helper.make_graph([resize], "resize_axis",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [in_size, 1, in_size, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, 13))])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 4  # library code never prints; a failure is raised
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    basis = np.eye(in_size, dtype=np.float32).reshape(in_size, 1, in_size, 1)
    out = session.run(["y"], {"x": basis})[0]  # (in, 1, out, 1): row i is the response to e_i
    return out.reshape(in_size, out_size).T.copy()


@register("Resize", "Upsample")
def resize(ctx, node, dys):
    """Resize is linear in x: Y = A_h X A_w^T per image and channel, so dX = A_h^T dY A_w."""
    b = ctx.b
    if ctx.attr("axes") is not None:
        ctx.unsupported("Resize with the axes attribute")
    x_shape = ctx.static_shape(node.input[0])
    y_shape = ctx.static_shape(node.output[0])
    if x_shape[1] != y_shape[1] or len(x_shape) != 4:
        ctx.unsupported("resizing other than the two spatial axes of an NCHW tensor")
    scales = None
    scale_input = 2 if node.op_type == "Resize" else 1
    if len(node.input) > scale_input and node.input[scale_input]:
        scales = [float(s) for s in ctx.constant(node.input[scale_input], "the scales").reshape(-1)] or None
    g = dys[0]
    for axis in (3, 2):
        in_size, out_size = x_shape[axis], y_shape[axis]
        scale = scales[axis] if scales else None
        matrix = resize_matrix(node, b.opset, in_size, out_size, scale)  # (out, in)
        if np.array_equal(matrix, np.eye(in_size, dtype=np.float32)):
            continue
        if axis == 3:
            g = b.op("MatMul", [g, b.const(matrix, hint="resize_w")])
        else:
            g = b.op("MatMul", [b.const(matrix.T.copy(), hint="resize_hT"), g])
    return [g] + [None] * (len(node.input) - 1)
