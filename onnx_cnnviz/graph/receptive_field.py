"""Receptive fields of feature-map units, computed from the ONNX graph.

For every 4-D tensor on the path from the image, per spatial axis, three integers describe which input pixels a unit
can see (Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural Networks", Distill 2019):

* ``size`` r: the receptive field size in input pixels;
* ``jump`` j: the effective stride, the input distance between neighbouring units (product of the strides);
* ``start`` s: the input coordinate of the first pixel seen by unit 0 (negative where the field reaches into the
  padding; ``-start`` is Distill's "effective padding").

Unit ``i`` sees input pixels ``[s + i*j, s + i*j + r - 1]``. Walking the graph from the input, a Conv / pooling node of
kernel k, stride t, begin padding p and dilation d maps ``(r, j, s)`` to

    r' = r + ((k - 1) * d) * j,    s' = s - p * j,    j' = j * t            (Distill, Eqs. 1-3, in recursive form)

Ops that keep the grid (ReLU, BatchNorm, Add, Mul, Concat over channels, ...) take the **union** of their spatial
inputs' fields (``s' = min s``, ``end' = max end``): where paths merge (a residual Add, an Inception Concat) a unit sees
everything any path sees. An input broadcast over space (the 1x1 gate of a squeeze-and-excitation block) is not a
spatial path and is left out: it modulates a unit but does not localise it. Global pooling makes one unit seeing the
whole input map. A Pad node moves the start by its begin amounts, ``s' = s - p * j``, read from its attribute, an
initializer, or a value computed from shapes at run time and constant once the input size is fixed (TF-style "same"
padding, as EfficientNet's ``static_padding`` exports it; :func:`compute_receptive_fields`'s ``constants``). Ops that
resample (Resize, ConvTranspose, DepthToSpace, ...) or move the spatial axes give an
"unknown" field; asking for such a tensor raises an error naming the op.

Convention: ``size`` counts the pixels of the *theoretical* field (including the padding it may reach into); boxes
are clipped to the image only in :meth:`ReceptiveField.box`. With it, VGG-16 conv5_3 has r = 196 and pool5 r = 212
(Distill's VGG-16 value, which is at pool5), torchvision ResNet-18 layer1 r = 43 and layer4 r = 435.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import ModelStructureError
from . import held
from .layout import inverse, tensor_layouts
from .structure import downstream
from .ops import GLOBAL_POOLS, REDUCTIONS, RESAMPLING, SLIDING_WINDOWS, node_attr
from .padding import window_geometry
from .subgraphs import node_inputs


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of the units of one layer, in the coordinates of the model input (rows y, columns x).

    The recursion of Araujo et al., "Computing Receptive Fields of Convolutional Neural Networks", Distill 2019:
    unit ``(i, j)`` sees the input box starting at ``start + (i, j) * jump`` of ``size`` pixels.

    Attributes:
        layer: the layer's name.
        size: (r_y, r_x), the field's size in pixels.
        jump: (j_y, j_x), the effective stride.
        start: (s_y, s_x), the input coordinate of unit (0, 0)'s first pixel; ``-start`` is the effective padding.
        input_hw: (H, W) of the model input the fields refer to.
        layer_hw: (h, w) of the layer.
    """
    layer: str
    size: tuple  # (r_y, r_x) pixels
    jump: tuple  # (j_y, j_x) effective stride
    start: tuple  # (s_y, s_x) input coordinate of unit (0, 0)'s first pixel; -start is the effective padding
    input_hw: tuple  # (H, W) of the model input the fields refer to
    layer_hw: tuple  # (h, w) of the layer

    @property
    def padding(self) -> tuple:
        """Distill's effective padding, ``-start`` per axis.

        Returns:
            (p_y, p_x).
        """
        return tuple(-s for s in self.start)

    def center(self, i: int, j: int) -> tuple:
        """Input coordinates of the centre of unit (i, j)'s field.

        Args:
            i: the unit's row.
            j: the unit's column.

        Returns:
            (y, x), possibly fractional.
        """
        return tuple(self.start[a] + idx * self.jump[a] + (self.size[a] - 1) / 2.0 for a, idx in enumerate((i, j)))

    def box(self, i: int, j: int, clip: bool = True) -> tuple:
        """The field of unit (row i, column j) as a half-open pixel box: ``image[y0:y1, x0:x1]``.

        Args:
            i: the unit's row.
            j: the unit's column.
            clip: cut it to the image (what a crop can show); False keeps the theoretical box.

        Returns:
            ``(x0, y0, x1, y1)``.
        """
        y0 = self.start[0] + int(i) * self.jump[0]
        x0 = self.start[1] + int(j) * self.jump[1]
        y1, x1 = y0 + self.size[0], x0 + self.size[1]
        if clip:
            H, W = self.input_hw
            y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, H), min(x1, W)
        return (int(x0), int(y0), int(x1), int(y1))


class _Values:
    """Known values by name: initializers (converted on first use) and run-time constants."""

    def __init__(self, initializers, constants=None):
        self._protos = {t.name: t for t in initializers}
        self._arrays = dict(constants or {})

    def __contains__(self, name) -> bool:
        return name in self._arrays or name in self._protos

    def __getitem__(self, name):
        if name not in self._arrays:
            self._arrays[name] = held.value(self._protos[name])
        return np.asarray(self._arrays[name])

    def shape(self, name) -> tuple:
        return tuple(self._protos[name].dims) if name in self._protos else np.shape(self._arrays[name])


@dataclass(frozen=True)
class _Axis:
    r: int
    j: int
    s: int

    @property
    def end(self) -> int:
        return self.s + self.r - 1


def _union(fields):
    s = min(f.s for f in fields)
    end = max(f.end for f in fields)
    jumps = {f.j for f in fields}
    if len(jumps) > 1:
        return None  # paths on different grids merged: no single (r, j, s) describes the units
    return _Axis(end - s + 1, fields[0].j, s)


def _spatial(info, name, layouts=None):
    """(h, w) of a 4-D tensor laid out in the image's axes (NCHW unless ``layouts`` says otherwise)."""
    ti = info.get(name)
    if ti is None or ti.shape is None or len(ti.shape) != 4:
        return None
    if layouts is not None and name in layouts:
        where = inverse(layouts[name])
        hw = (ti.shape[where[2]], ti.shape[where[3]])
    elif layouts is not None:
        return None  # axes that are not the image's (attention windows): no grid
    else:
        hw = ti.shape[2:]
    return None if any(d is None for d in hw) else tuple(int(d) for d in hw)


def compute_receptive_fields(model: onnx.ModelProto, input_name: str, info: dict, constants: dict | None = None
                              ) -> dict:
    """Walk the graph once and give the field of every spatial tensor reached from the input.

    Args:
        model: the ONNX model.
        input_name: the image input's name.
        info: static shapes (``Model.spec(hw).info``).
        constants: integer tensors computed at run time whose values are fixed once the input size is
            (``Model.spec(hw).constants``), such as the Pad amounts TF-style "same" padding computes from ``Shape``
            arithmetic (EfficientNet's ``static_padding``); without them such a Pad leaves its field unknown.

    Returns:
        ``{tensor: (axis_y, axis_x) | reason}``: a string says why the field is unknown.
    """
    graph = model.graph
    values = _Values(graph.initializer, constants)
    # Fields are per image axis (rows, columns): a channels-last tensor holds them on its axes 1 and 2, and a
    # Transpose between two layouts of the image's axes (tf2onnx's around every Conv) leaves them unchanged.
    layouts, _ = tensor_layouts(model, input_name, info, downstream(graph, [input_name]))
    in_hw = _spatial(info, input_name)
    if in_hw is None:
        raise ModelStructureError(f"the input '{input_name}' has no static (N, C, H, W) shape.")
    fields: dict = {input_name: (_Axis(1, 1, 0), _Axis(1, 1, 0))}
    for node in graph.node:
        tracked = [name for name in node_inputs(node) if name in fields]  # subgraph reads included
        if not tracked:
            continue
        unknown = [fields[n] for n in tracked if isinstance(fields[n], str)]
        for out in node.output:
            out_hw = _spatial(info, out, layouts)
            if not out or out_hw is None:
                continue  # leaves the spatial domain (Flatten, Gemm, ...): nothing to track
            if unknown:
                fields[out] = unknown[0]
            elif node.op_type == "Transpose" and node.input[0] in layouts and node.input[0] in fields:
                fields[out] = fields[node.input[0]]
            else:
                fields[out] = _node_field(node, out_hw, fields, info, values, layouts)
    return fields


def _node_field(node, out_hw, fields, info, values, layouts):
    op = node.op_type
    spatial = lambda name: _spatial(info, name, layouts)  # noqa: E731
    src = node.input[0]
    if op in SLIDING_WINDOWS and src in fields:
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            weight = node.input[3] if op == "QLinearConv" else node.input[1]
            wshape = info[weight].shape if weight in info and info[weight].shape else values.shape(weight)
            kernel = list(node_attr(node, "kernel_shape", list(wshape)[2:]))
        else:
            kernel = list(node_attr(node, "kernel_shape"))
        strides, dilations, begins, _ = window_geometry(node, spatial(src), kernel)
        out = []
        for a in range(2):
            f = fields[src][a]
            out.append(_Axis(f.r + (kernel[a] - 1) * dilations[a] * f.j, f.j * strides[a], f.s - begins[a] * f.j))
        return tuple(out)
    if op in GLOBAL_POOLS or (op in REDUCTIONS and out_hw == (1, 1)):
        in_hw = spatial(src)
        return tuple(_Axis(f.r + (n - 1) * f.j, f.j, f.s) for f, n in zip(fields[src], in_hw))
    if op == "Pad" and src in fields:
        begins = _pad_begins(node, values, inverse(layouts.get(src, (0, 1, 2, 3))))
        if begins is None:
            return f"the Pad node '{node.name}' has pads computed at run time from the image's values"
        return tuple(_Axis(f.r, f.j, f.s - int(begins[a]) * f.j) for a, f in enumerate(fields[src]))
    # Everything else keeps the grid when its spatial inputs share the output's size (elementwise ops, BatchNorm,
    # Concat over channels, ...): union over those inputs, leaving out inputs broadcast over space.
    spatial_inputs = [n for n in node.input if n in fields]
    same = [n for n in spatial_inputs if spatial(n) == out_hw]
    broadcast = [n for n in spatial_inputs if spatial(n) == (1, 1) and out_hw != (1, 1)]
    if op in RESAMPLING and not (same and spatial(src) == out_hw and op != "Transpose"):
        return f"node '{node.name or node.output[0]}' ({op}) resamples or moves the spatial axes"
    if len(same) + len(broadcast) != len(spatial_inputs) or not same:
        return f"node '{node.name or node.output[0]}' ({op}) changes the spatial size in a way not modelled"
    axes = []
    for a in range(2):
        merged = _union([fields[n][a] for n in same])
        if merged is None:
            return f"node '{node.name or node.output[0]}' ({op}) merges paths with different strides"
        axes.append(merged)
    return tuple(axes)


def _pad_begins(node, values, where=(0, 1, 2, 3)):
    """The (y, x) begin padding of a Pad node: from the ``pads`` attribute (opset < 11) or the ``pads`` input (an
    initializer or a run-time constant), with the optional ``axes`` input (opset 18); None when the amounts are not
    known before running the graph. ``where``: the tensor axes holding the image's N, C, H, W (NCHW by default)."""
    pads = node_attr(node, "pads")
    axes = None
    if pads is None:
        if len(node.input) < 2 or node.input[1] not in values:
            return None
        pads = [int(v) for v in values[node.input[1]].ravel()]
        if len(node.input) > 3 and node.input[3]:
            if node.input[3] not in values:
                return None
            axes = [int(v) % 4 for v in values[node.input[3]].ravel()]
    axes = axes if axes is not None else list(range(len(pads) // 2))
    if len(pads) != 2 * len(axes):
        return None
    begin = dict(zip(axes, pads[:len(axes)]))
    return begin.get(where[2], 0), begin.get(where[3], 0)


def layer_field(fields: dict, info: dict, input_name: str, name: str, layer_hw: tuple | None = None
                ) -> ReceptiveField:
    """The :class:`ReceptiveField` of one tensor.

    Args:
        fields: :func:`compute_receptive_fields` on the same graph and ``info``.
        info: static shapes.
        input_name: the image input's name.
        name: the tensor.
        layer_hw: the layer's (h, w) when it is not laid out NCHW.

    Returns:
        The field.

    Raises:
        ModelStructureError: ``name`` is not a spatial map computed from the image, or an op on the way resamples
            the grid.
    """
    if name not in fields:
        raise ModelStructureError(f"'{name}' is not a spatial (N, C, h, w) tensor computed from the image; it has no "
                                  "receptive field.")
    f = fields[name]
    if isinstance(f, str):
        raise ModelStructureError(f"the receptive field of '{name}' is not defined: {f}.")
    return ReceptiveField(layer=name, size=(f[0].r, f[1].r), jump=(f[0].j, f[1].j), start=(f[0].s, f[1].s),
                          input_hw=_spatial(info, input_name), layer_hw=tuple(layer_hw or _spatial(info, name)))
