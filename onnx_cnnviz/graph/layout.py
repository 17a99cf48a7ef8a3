"""Layouts: which axes of a tensor hold the image's batch, channels, rows and columns, and how the engine sees a
model's own layout as the usual NCHW.

Deployed models differ from a torch export in three ways this module absorbs:

* the image input is channels-last (N, H, W, C), TensorFlow's layout: tf2onnx without ``inputs_as_nchw`` puts a
  Transpose in front of the convolutions;
* the image input is raw integer pixels (uint8) cast to float inside the graph (Cast -> Transpose -> Sub/Div);
* feature maps are channels-last (ConvNeXt blocks, Swin stages, tf2onnx graphs) or token sequences (vision
  transformers: (N, p + h*w, C), ``p`` class/distillation/register tokens, then the patch grid in row-major order).

:func:`adapt_image_input` rewrites the graph so that its image input is float NCHW: a Transpose in front for NHWC,
and the int-to-float Cast becomes an Identity for raw pixels (the input then takes the pixel values as floats). Every
method computes in the model's own layout behind that one front node, and gradients with respect to the new input are
gradients with respect to the pixels, at pixel positions.

:func:`tensor_layouts` follows the image's axes through the graph; :class:`LayerView` turns a channels-last or token
tensor into an (N, C, h, w) view and back, as pytorch-grad-cam's ``reshape_transform`` does for ViT
(``tensor[:, 1:].reshape(N, h, w, C).transpose(...)``) and Swin.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelStructureError
from . import held
from .ops import GLOBAL_POOLS, POINTWISE, REDUCTIONS, SLIDING_WINDOWS, node_attr
from .subgraphs import node_inputs

NCHW = (0, 1, 2, 3)
#: The layout of a channels-last tensor: its axis i holds the image's axis ``NHWC[i]`` (N=0, C=1, H=2, W=3).
NHWC = (0, 2, 3, 1)
#: The name of the NCHW float input the engine puts in front of a channels-last or integer image input.
ADAPTED_INPUT = "cnnviz/image"
#: Ops whose data input is (N, C, H, W) by their definition: where the image's axes end up in front of them tells the
#: input's layout, and their output is NCHW whatever came in.
CHANNELS_FIRST = SLIDING_WINDOWS | GLOBAL_POOLS | {
    "ConvTranspose", "BatchNormalization", "InstanceNormalization", "LRN", "DepthToSpace", "SpaceToDepth",
    "MaxUnpool", "MaxRoiPool"}
#: Ops that keep every element at its position (or move it within its axis) whatever the layout: the output has the
#: layout of its data inputs.
LAYOUT_KEEPING = POINTWISE | {
    "Pad", "Slice", "Concat", "Split", "Softmax", "LogSoftmax", "LayerNormalization", "Resize", "Upsample",
    "Identity", "Dropout", "Cast", "Clip", "Gelu", "Erf", "Tile", "Expand", "Where", "Not", "Sign", "Floor",
    "Ceil", "Round"}
#: Integer ops a raw-pixel input may pass before its Cast to float: they move values without computing on them,
#: so they work on float pixels the same.
VALUE_MOVING = {"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Slice"}
#: At most this many tokens before the patch grid (a class token, DeiT's distillation token, register tokens).
MAX_PREFIX_TOKENS = 8
_FLOATS = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def compose(layout: tuple, perm) -> tuple:
    """The layout of ``Transpose(t, perm)`` when ``t`` has ``layout``: output axis i is input axis ``perm[i]``."""
    return tuple(layout[p] for p in perm)


def inverse(perm) -> tuple:
    out = [0] * len(perm)
    for i, p in enumerate(perm):
        out[p] = i
    return tuple(out)


# --- the image input ------------------------------------------------------------------------------------------------
def input_layout(model: onnx.ModelProto, image: str) -> tuple:
    """The layout of the image input, read from the data flow: the axes the first channels-first ops (Conv, pools,
    BatchNormalization, ...) see, through Transposes and value-wise ops. :data:`NHWC` or :data:`NCHW` (also when
    nothing tells: a model without convolutions keeps its declared layout)."""
    graph = model.graph
    layout = {image: NCHW}
    seen = set()
    for node in graph.node:
        data = [layout[i] for i in node.input if i in layout]
        if not data:
            continue
        if node.op_type in CHANNELS_FIRST:
            if node.input[0] in layout:
                seen.add(layout[node.input[0]])
            continue
        if node.op_type == "Transpose" and len(data[0]) == 4:
            out = compose(data[0], node_attr(node, "perm", [3, 2, 1, 0]))
        elif node.op_type in LAYOUT_KEEPING and all(d == data[0] for d in data):
            out = data[0]
        else:
            continue
        for name in node.output:
            if name:
                layout[name] = out
    # A conv input holding the image's axis 3 as channels: the image is channels-last.
    if len(seen) == 1:
        (seen_layout,) = seen
        if seen_layout == (0, 3, 1, 2):
            return NHWC
    return NCHW


@dataclass(frozen=True)
class AdaptedInput:
    """What :func:`adapt_image_input` did: the input's ``layout`` ("NCHW"/"NHWC") and element type as declared
    (``dtype``: "float32", "uint8", ...), the original input's name, and the new input's ValueInfo."""
    layout: str
    dtype: str
    original: str
    value: onnx.ValueInfoProto


def _dtype_name(elem: int) -> str:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name


def adapt_image_input(model: onnx.ModelProto, image: onnx.ValueInfoProto) -> tuple[onnx.ModelProto, AdaptedInput]:
    """A copy of ``model`` whose image input is float NCHW (``model`` itself when it already is).

    Channels-last: a new input :data:`ADAPTED_INPUT` (N, C, H, W) feeds ``Transpose(perm=[0, 2, 3, 1])`` whose output
    takes the old input's name, so the rest of the graph is unchanged. Integer pixels: the input becomes float and
    the Casts to float that read it (maybe through value-moving ops such as a Transpose) become Identities; any other
    integer computation on the pixels is refused (:class:`ModelStructureError`), since it would not be
    differentiable. The rewritten graph computes the same scores for integer-valued pixels.
    """
    ttype = image.type.tensor_type
    dims = list(ttype.shape.dim)
    layout = input_layout(model, image.name)
    is_float = ttype.elem_type in _FLOATS
    if is_float and layout == NCHW:
        return model, AdaptedInput("NCHW", _dtype_name(ttype.elem_type), image.name, image)
    model = copy.deepcopy(model)
    graph = model.graph
    if not is_float:
        _pixels_to_float_inplace(graph, image.name)
    value = next(v for v in graph.input if v.name == image.name)
    value.type.tensor_type.elem_type = TensorProto.FLOAT
    if layout == NHWC:
        nchw_dims = [dims[0], dims[3], dims[1], dims[2]]
        new = helper.make_tensor_value_info(ADAPTED_INPUT, TensorProto.FLOAT, [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in nchw_dims])
        keep = [v for v in graph.input if v.name != image.name]
        del graph.input[:]
        graph.input.extend([new] + keep)
        front = helper.make_node("Transpose", [ADAPTED_INPUT], [image.name], perm=list(NHWC),
                                 name="cnnviz/image_to_nhwc")
        nodes = [front] + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        value = new
    del graph.value_info[:]  # the types of everything between the input and its casts changed
    return model, AdaptedInput("NHWC" if layout == NHWC else "NCHW", _dtype_name(ttype.elem_type), image.name,
                               copy.deepcopy(value))


def _pixels_to_float_inplace(graph: onnx.GraphProto, image: str) -> None:
    """Turn the integer region after ``image`` float: value-moving ops stay, Casts to float32 become Identity."""
    region = {image}
    for node in graph.node:
        reads = [i for i in node_inputs(node) if i in region]
        if not reads:
            continue
        where = f"node '{node.name or node.op_type}' ({node.op_type})"
        if node.op_type == "Shape" or (node.op_type in VALUE_MOVING and node.input[0] in region
                                       and len(reads) == 1):
            if node.op_type != "Shape":
                region.update(o for o in node.output if o)
            continue
        if node.op_type == "Cast" and len(reads) == 1:
            to = node_attr(node, "to")
            if to == TensorProto.FLOAT:
                node.op_type = "Identity"
                del node.attribute[:]
                continue
            if to in _FLOATS:
                continue  # a float64 or float16 cast of float pixels computes the same
        raise ModelStructureError(
            f"the model takes integer pixels and computes on them before casting them to float ({where}), which "
            "cannot be differentiated. Export the model with a float image input (the preprocessing inside the "
            "graph can stay).")


# --- layouts of the tensors ------------------------------------------------------------------------------------------
# Where a Reshape moves the image's axes is followed with *factors*: a tensor axis is a tuple of (image axis, stride,
# size) in row-major order, position along the image axis = sum of index * stride. A Reshape splits and merges them
# (Swin's patch merging is a space-to-depth: rows (28) -> rows (14) x inner rows (2), the inner part going into the
# channels), a Transpose permutes them. The batch is the factor (0, 1, None).
_BATCH = (0, 1, None)


def _factors_of(layout: tuple, shape: tuple) -> tuple | None:
    if shape[0] is not None or None in shape[1:]:
        return None
    return tuple((_BATCH,) if i == 0 else (((layout[i], 1, shape[i]),) if shape[i] != 1 else ())
                 for i in range(len(shape)))


def _reshape_factors(axes: tuple, out_shape: tuple) -> tuple | None:
    """The factors of ``Reshape(t, out_shape)`` when ``t`` has ``axes``; None when a new axis would cut a factor
    unevenly or the batch would not be in one free axis."""
    pending = [f for axis in axes for f in axis]
    static = int(np.prod([f[2] for f in pending if f[2] is not None], dtype=np.int64))
    if sum(f[2] is None for f in pending) != 1 or sum(d is None for d in out_shape) != 1:
        return None
    rest = int(np.prod([d for d in out_shape if d is not None], dtype=np.int64))
    if rest == 0 or static % rest:
        return None
    out = []
    for d in out_shape:
        need_batch, target, axis = d is None, (static // rest if d is None else int(d)), []
        while need_batch or target > 1:
            if not pending:
                return None
            f = pending[0]
            if f[2] is None:
                if not need_batch:
                    return None
                axis.append(pending.pop(0))
                need_batch = False
            elif target % f[2] == 0:
                axis.append(pending.pop(0))
                target //= f[2]
            elif f[2] % target == 0:  # the outer part of this factor closes the axis, the inner part stays
                inner = f[2] // target
                axis.append((f[0], f[1] * inner, target))
                pending[0] = (f[0], f[1], inner)
                target = 1
            else:
                return None
        out.append(tuple(axis))
    return tuple(out) if not pending else None


def _reduced_axes(node: onnx.NodeProto, constant) -> list[int] | None:
    """The axes a Reduce* node reduces (attribute before opset 18, input after; None: all, or not known)."""
    axes = node_attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = constant(node.input[1])
        axes = None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
    return None if axes is None or len(axes) == 0 else list(axes)


def _pooled_factors(axes: tuple, reduced: list[int] | None, keepdims: int) -> tuple | None:
    """The factors of a reduction over ``reduced`` of a tensor with ``axes``, when it pools space: every reduced
    factor is an inner part of the rows or the columns (strides below those of every factor of that image axis that
    stays), as Hiera's max over its mask units (``x.view(B, 4, -1, C).max(dim=1)``) is a 2x2 max-pool of tokens kept
    in unrolled order. None for any other reduction (over channels, the batch, or an outer part of the grid)."""
    if reduced is None:
        return None
    reduced = sorted({a + len(axes) if a < 0 else a for a in reduced})
    if any(not 0 <= a < len(axes) for a in reduced):
        return None
    gone = [f for a in reduced for f in axes[a]]
    kept = [f for i, axis in enumerate(axes) if i not in reduced for f in axis]
    for f in gone:
        if f[0] not in (2, 3) or any(k[0] == f[0] and k[1] < f[1] * f[2] for k in kept):
            return None
    if keepdims:
        return tuple(() if i in reduced else axis for i, axis in enumerate(axes))
    return tuple(axis for i, axis in enumerate(axes) if i not in reduced)


def _consecutive(axis: tuple) -> bool:
    return all(a[1] == b[1] * b[2] for a, b in zip(axis, axis[1:]))


def _layout_from_factors(axes: tuple) -> tuple | None:
    """The layout of a 4-D tensor whose axes are ``axes``: one axis exactly the batch, one the rows (the outer
    factors of H, in order), one the columns; the fourth holds the channels (and maybe the inner factors of H and W,
    as after a space-to-depth). None when the axes are not so (windows folded into the batch, heads, ...)."""
    roles = [None] * 4
    for i, axis in enumerate(axes):
        ids = {f[0] for f in axis}
        if axis == (_BATCH,):
            roles[i] = 0
        elif ids in ({2}, {3}) and _consecutive(axis):
            roles[i] = ids.pop()
    if sorted(r for r in roles if r is not None) != [0, 2, 3]:
        return None
    for spatial in (2, 3):
        outer = min(f[1] for f in axes[roles.index(spatial)])
        if any(f[0] == spatial and f[1] * f[2] > outer
               for i, axis in enumerate(axes) if roles[i] is None for f in axis):
            return None  # an outer part of the rows elsewhere: the grid is scrambled
    if any(f[0] == 0 for i, axis in enumerate(axes) if roles[i] is None for f in axis):
        return None
    return tuple(1 if r is None else r for r in roles)


def tensor_layouts(model: onnx.ModelProto, image: str, info: dict, data: set[str]) -> tuple[dict, dict]:
    """For each 4-D tensor computed from the image, the permutation of the image's NCHW axes it is laid out in;
    tensors whose axes are not the image's (attention windows, heads) are absent. Also returns the factors of every
    tensor they could be followed to (see ``_reshape_factors``).

    ``data``: the tensors computed from the image (others are constants and shapes). Transposes compose
    permutations; channels-first ops (Conv, pools, BatchNormalization) output NCHW; value-wise ops, LayerNorm,
    Softmax, Concat, Slice, Pad keep the layout their data inputs share, and an input of unknown layout with the
    output's exact shape is taken to share it (Swin's residual Add of the window attention's output); a MatMul by a
    constant over the channel axis (a Linear applied channels-last, as in ConvNeXt and Swin) keeps it. Reshapes are
    followed factor by factor: a channel shuffle, a space-to-depth (Swin's patch merging) and the inverse of a window
    partition (Swin, MaxViT) give image layouts again; shape-keeping work between them (a residual Add, a LayerNorm,
    a Linear) keeps the factors.
    """
    def shape(name):
        ti = info.get(name)
        return tuple(ti.shape) if ti is not None and ti.shape is not None else None

    inits = {t.name: t for t in model.graph.initializer}

    def constant(name):
        return held.value(inits[name]) if name in inits else None

    layout = {image: NCHW}
    factors: dict[str, tuple] = {}
    if shape(image) is not None and len(shape(image)) == 4:
        factors[image] = _factors_of(NCHW, shape(image))
    for node in model.graph.node:
        ins = [i for i in node_inputs(node) if i in data]
        if not ins:
            continue
        outs = [o for o in node.output if o]
        four = [o for o in outs if shape(o) is not None and len(shape(o)) == 4]
        known = [layout[i] for i in ins if i in layout]
        op = node.op_type
        moved = None
        if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze") and factors.get(node.input[0]) and outs \
                and shape(outs[0]) is not None:
            moved = _reshape_factors(factors[node.input[0]], shape(outs[0]))
        elif op == "Transpose" and factors.get(node.input[0]):
            moved = tuple(factors[node.input[0]][p] for p in node_attr(node, "perm", []))
        elif op in ("MatMul", "Gemm") and factors.get(node.input[0]) and outs \
                and shape(outs[0]) is not None and len(shape(outs[0])) == len(factors[node.input[0]]) \
                and all(f[0] == 1 for f in factors[node.input[0]][-1]) and not node_attr(node, "transA", 0):
            # a constant weight over the channel axis (Keras's Dense on (N*h*w, C), a Linear channels-last): the
            # other axes stay, the channels get the new width. Attention's products too (queries times keys, then
            # the attention weights times the values): each row of the result belongs to the query's token, its
            # columns are new channels (so a query's attention weights become its channels); without this, LeViT's
            # tokens are lost at every attention that has no residual connection around it (its downsampling).
            width = shape(outs[0])[-1]
            moved = factors[node.input[0]][:-1] + ((((1, 1, width),) if width != 1 else ()),)
        elif op in REDUCTIONS and factors.get(node.input[0]) and outs:
            moved = _pooled_factors(factors[node.input[0]], _reduced_axes(node, constant),
                                    node_attr(node, "keepdims", 1))
        elif outs and shape(outs[0]) is not None:
            # work that keeps a shape keeps the axes (a residual Add, a LayerNorm, a Linear C -> C)
            moved = next((factors[i] for i in ins if factors.get(i) and shape(i) == shape(outs[0])), None)
        result = None
        if op == "Transpose" and node.input[0] in layout and len(layout[node.input[0]]) == 4:
            result = compose(layout[node.input[0]], node_attr(node, "perm", [3, 2, 1, 0]))
        elif op in CHANNELS_FIRST:
            result = NCHW if node.input[0] in layout or node.input[0] in data else None
        elif op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            if four and node.input[0] in layout and shape(four[0]) == shape(node.input[0]):
                result = layout[node.input[0]]
        elif op in ("MatMul", "Gemm"):
            a = node.input[0]
            if a in layout and len(ins) == 1 and layout[a][-1] == 1:
                result = layout[a]  # x (.., C) times a constant (C, C'): channels stay last
        elif known and all(k == known[0] for k in known):
            unknown = [i for i in ins if i not in layout and shape(i) is not None and len(shape(i)) >= 2]
            if op in LAYOUT_KEEPING or op in REDUCTIONS or not unknown:
                if all(four and shape(i) == shape(four[0]) for i in unknown):
                    result = known[0]
        if result is None and moved is not None and four:
            result = _layout_from_factors(moved)
        for o in outs:
            if result is not None and o in four:
                layout[o] = result
                factors[o] = _factors_of(result, shape(o)) or moved
            elif moved is not None:
                factors[o] = moved
    return layout, factors


@dataclass(frozen=True)
class LayerView:
    """How a tensor the model keeps in another layout is seen as an (N, C, h, w) feature map.

    ``perm``: a 4-D tensor whose axis i holds the image's axis ``perm[i]`` (:data:`NHWC` for channels-last).
    ``grid``/``prefix``: a token tensor (N, prefix + h*w, C): the first ``prefix`` tokens (class, distillation,
    registers) are dropped and the rest reshaped to the (h, w) patch grid, as pytorch-grad-cam's ViT
    ``reshape_transform`` does. ``order``: for tokens not in row-major order (Hiera keeps them "unrolled", each
    mask unit's 2x2 offsets outermost), ``(sizes, perm)``: the tokens viewed as ``sizes`` and transposed by
    ``perm`` are row-major. ``native``: the tensor's shape in the model (None for the batch).
    """
    native: tuple
    perm: tuple | None = None
    grid: tuple | None = None
    prefix: int = 0
    order: tuple | None = None  # (sizes, perm): tokens not in row-major order, see _token_grid

    @property
    def kind(self) -> str:
        return "tokens" if self.grid is not None else ("NHWC" if self.perm == NHWC else "permuted")

    def nchw_shape(self) -> tuple:
        if self.grid is not None:
            return (self.native[0], self.native[2], *self.grid)
        return tuple(self.native[p] for p in inverse(self.perm))

    def to_nchw(self, a: np.ndarray) -> np.ndarray:
        """The model's tensor (batched) as (N, C, h, w)."""
        if self.grid is not None:
            n, _, c = a.shape
            h, w = self.grid
            tokens = a[:, self.prefix:]
            if self.order is not None:
                sizes, perm = self.order
                k = len(sizes)
                tokens = tokens.reshape(n, *sizes, c).transpose(0, *[1 + p for p in perm], k + 1)
            return np.ascontiguousarray(tokens.reshape(n, h, w, c).transpose(0, 3, 1, 2))
        return np.ascontiguousarray(a.transpose(inverse(self.perm)))

    def from_nchw(self, a: np.ndarray) -> np.ndarray:
        """An (N, C, h, w) array (a cotangent) in the model's layout; dropped tokens get zeros."""
        if self.grid is not None:
            n, c, h, w = a.shape
            out = np.zeros((n, self.prefix + h * w, c), dtype=a.dtype)
            tokens = a.transpose(0, 2, 3, 1)
            if self.order is not None:
                sizes, perm = self.order
                k = len(sizes)
                back = inverse(perm)
                tokens = tokens.reshape(n, *[sizes[p] for p in perm], c).transpose(0, *[1 + i for i in back], k + 1)
            out[:, self.prefix:] = tokens.reshape(n, h * w, c)
            return out
        return np.ascontiguousarray(a.transpose(self.perm))


def batch_leading(model: onnx.ModelProto, image: str, info: dict) -> set[str]:
    """The float tensors computed from the image whose axis 0 is the batch, sample for sample.

    Attention reshapes move the batch: (N, T, 3, heads, d) is permuted to (3, N, heads, T, d), a window partition
    folds it into (N * windows, ws * ws, C). A Transpose keeps the batch in front when its perm starts with 0; a
    Reshape when the batch stays the only free axis and each sample keeps its element count; a value-wise op, MatMul
    or reduction when one input with the batch in front already has the output's shape (a residual Add of an
    attention branch) or, for every other op, when all its float inputs have it.
    """
    def shape(name):
        ti = info.get(name)
        return tuple(ti.shape) if ti is not None and ti.shape is not None else None

    def per_sample(s):
        return None if s is None or None in s[1:] else int(np.prod(s[1:], dtype=np.int64))

    inits = {t.name for t in model.graph.initializer}
    lead = {image}
    # Tensors whose axis 0 is the batch merged with the axes after it, samples one after the other (LeViT's
    # ``bn(x.flatten(0, 1)).reshape_as(x)``, BatchNorm1d over (N*T, C)): name -> elements per sample. A view back to
    # that many elements per sample has the batch in front again.
    merged: dict[str, int] = {}
    # Tensors computed from the image: a float computed from the weights alone (a bias behind an Identity, a
    # weight-standardised kernel) is a parameter of the op, not a sample-mixing input.
    from_image = {image}
    for node in model.graph.node:
        if any(i in from_image for i in node_inputs(node)):
            from_image.update(o for o in node.output if o)
        floats = [i for i in node_inputs(node) if i in info and info[i].is_float and i not in inits and i in from_image]
        tracked = [i for i in floats if i in lead]
        rows = [i for i in floats if i in merged]
        if rows and not tracked:
            _follow_merged(node, rows, floats, merged, lead, shape, per_sample)
            continue
        if not tracked:
            continue
        op, first = node.op_type, node.input[0] if node.input else ""
        for out in (o for o in node.output if o):
            s = shape(out)
            if s is None or not s or s[0] is not None:
                continue
            if op in ("Reshape", "Flatten") and first in lead and per_sample(s) is not None \
                    and per_sample(shape(first)) is not None and per_sample(s) != per_sample(shape(first)) \
                    and per_sample(shape(first)) % per_sample(s) == 0:
                merged[out] = per_sample(shape(first))
                continue
            if op == "Transpose":
                keep = first in lead and list(node_attr(node, "perm", [1, 0]))[0] == 0
            elif op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
                keep = first in lead and per_sample(s) is not None and per_sample(s) == per_sample(shape(first))
            elif op == "Concat":  # along another axis, every input has the batch where the one in ``lead`` has it
                keep = node_attr(node, "axis", 0) != 0
            elif op in ("Gather", "Split", "Slice"):
                keep = first in lead and (op == "Slice" or node_attr(node, "axis", 0) != 0)
            else:
                keep = any(shape(i) == s for i in tracked) or len(tracked) == len(floats)
            if keep:
                lead.add(out)
    return lead


#: Ops that work row by row on a (N*T, C) tensor (with constant parameters): the rows stay where they are.
_ROW_WISE = POINTWISE | {"BatchNormalization", "LayerNormalization", "MatMul", "Gemm", "Gelu", "Erf", "Softplus",
                         "HardSwish"}


def _follow_merged(node, rows: list[str], floats: list[str], merged: dict, lead: set, shape, per_sample) -> None:
    """One node reading tensors whose batch is merged with the next axes (``merged`` in :func:`batch_leading`)."""
    op, first = node.op_type, node.input[0] if node.input else ""
    count = merged[rows[0]]
    if any(merged[r] != count for r in rows) or len(rows) != len(floats):
        return  # another computed tensor in the mix: its rows may not be the samples'
    for out in (o for o in node.output if o):
        s = shape(out)
        if s is None or not s or s[0] is not None or per_sample(s) is None:
            continue
        if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze") and first in merged:
            if per_sample(s) == count:
                lead.add(out)
            elif count % per_sample(s) == 0:
                merged[out] = count
        elif op in _ROW_WISE and first in merged and (op not in ("MatMul", "Gemm") or len(floats) == 1) \
                and (node_attr(node, "axis", -1) in (-1, len(s) - 1) or op != "LayerNormalization") \
                and not node_attr(node, "transA", 0) and shape(first)[1:-1] == s[1:-1]:
            merged[out] = count


def _token_grid(axes: tuple) -> tuple | None:
    """((h, w), order) when a 3-D tensor's ``axes`` are (batch, tokens, channels) and the tokens are the cells of an
    (h, w) grid: the rows' factors form one chain (each factor's stride the size times the stride of the next one
    in), the columns' too, and nothing else is in the token axis. ``order`` is None for row-major tokens (ViT, Swin,
    LeViT); otherwise ``(sizes, perm)``: the token axis viewed as ``sizes`` (its factors in the model's order) and
    transposed by ``perm`` is the row-major grid (Hiera's unrolled tokens, whose inner 2x2 mask-unit offsets come
    first). None when the axes are not so."""
    if len(axes) != 3 or axes[0] != (_BATCH,):
        return None
    tokens = axes[1]
    rows = sorted((f for f in tokens if f[0] == 2), key=lambda f: -f[1])
    cols = sorted((f for f in tokens if f[0] == 3), key=lambda f: -f[1])
    if not rows or not cols or len(rows) + len(cols) != len(tokens) or not _consecutive(rows) \
            or not _consecutive(cols):
        return None
    if any(f[0] in (2, 3) and f[1] * f[2] > min(g[1] for g in (rows if f[0] == 2 else cols)) for f in axes[2]) \
            or any(f[0] == 0 for f in axes[2]):
        return None
    grid = (int(np.prod([f[2] for f in rows])), int(np.prod([f[2] for f in cols])))
    if tokens == tuple(rows + cols):
        return grid, None
    perm = tuple(tokens.index(f) for f in rows + cols)
    return grid, (tuple(int(f[2]) for f in tokens), perm)


def token_grids(model: onnx.ModelProto, layout: dict, factors: dict, info: dict, data: set[str],
                lead: set[str]) -> dict[str, LayerView]:
    """Token tensors (N, p + h*w, C) and their views. Where the factors of the tensor are known (the tokens are a
    map's rows and columns flattened, as Swin's blocks do) they give the grid exactly; after tokens are prepended (a
    class token) the grid is that of the last image-laid-out tensor the tokens were computed from (the patch
    embedding's output), with ``p`` at most :data:`MAX_PREFIX_TOKENS`. The batch must lead, as the factors show or
    else ``lead`` (:func:`batch_leading`) does, which leaves out attention's per-head and per-window tensors. Tokens
    whose factors are a permuted grid (Hiera's unrolled order) get a view that puts them back in row-major order."""
    grid: dict[str, tuple] = {}
    views = {}
    for node in model.graph.node:
        ins = [i for i in node_inputs(node) if i in data]
        if not ins:
            continue
        inherited = next((grid[i] for i in ins if i in grid), None)
        for out in node.output:
            ti = info.get(out)
            if not out or ti is None or ti.shape is None:
                continue
            if out in layout:
                nchw = [ti.shape[p] for p in inverse(layout[out])]
                grid[out] = tuple(nchw[2:])
                continue
            s = ti.shape
            if len(s) == 3 and None not in s[1:] and ti.is_float and factors.get(out):
                # The factors say where every token sits and that the batch leads, sample for sample (also after
                # LeViT's flatten(0, 1) -> BatchNorm1d -> reshape round trips, which batch_leading cannot follow).
                exact = _token_grid(factors[out])
                if exact is not None:
                    grid[out] = exact[0]
                    views[out] = LayerView(native=tuple(s), grid=exact[0], prefix=0, order=exact[1])
                continue  # the axes are known and are not tokens (a flattened NCHW map: channels first)
            if len(s) != 3 or out not in lead or None in s[1:] or not ti.is_float:
                if inherited is not None:
                    grid[out] = inherited
                continue
            if inherited is None:
                continue
            grid[out] = inherited
            h, w = inherited
            prefix = s[1] - h * w
            if h * w > 1 and 0 <= prefix <= MAX_PREFIX_TOKENS:
                views[out] = LayerView(native=tuple(s), grid=(h, w), prefix=prefix)
    return views
