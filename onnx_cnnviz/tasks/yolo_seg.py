"""ultralytics instance segmentation heads (YOLOv8-seg, YOLO11-seg) exported without NMS.

The export (ultralytics' own ``YOLO(model).export(format="onnx")``, static batch 1, or ``torch.onnx.export``) has
two outputs: the head ``(N, 4 + C + M, A)`` (per anchor point ``a``: box ``cx, cy, w, h`` in input pixels, C sigmoid
class scores, M mask coefficients ``k_a``) and the prototypes ``P`` ``(N, M, h, w)``. A detection's mask is
ultralytics' ``process_mask``: ``sigmoid(k_a . P)`` at the prototypes' resolution, cropped to the detection's box
(scaled to that resolution: pixel column ``j`` inside when ``x1 <= j < x2``, rows likewise).

:func:`yolo_seg_head` appends, with standard operators, each anchor's **mask mass** to the graph::

    mass_a = sum_{i,j in box_a} sigmoid(k_a . P[:, i, j])

and makes one head output :data:`YOLO_SEG_OUTPUT` ``(N, 4 + C + 1, A)``: the head's box and class rows, then the
mask mass. :class:`YoloSegDecoder` reads it like the detection head (a candidate's score: its best class score). Two
targets per detection: the :class:`onnx_cnnviz.tasks.Detection` that :func:`onnx_cnnviz.tasks.detect` returns
explains the **class score**; :func:`mask_target` turns it into the same detection explained by its **mask mass**
(what makes the mask, through the coefficients and the prototypes alike). The box crop is held at the forward's box
(a comparison: no gradient flows through the crop's edges, as none does through ultralytics' ``crop_mask``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InputError, ModelStructureError
from ..graph.load import read_model
from ..graph.shapes import infer
from .decoders import Candidates, UltralyticsDecoder, register_decoder
from .detection import Detection

__all__ = ["YOLO_SEG_OUTPUT", "yolo_seg_head", "is_yolo_seg", "YoloSegDecoder", "mask_target"]

#: The head output :func:`yolo_seg_head` adds (the name :class:`YoloSegDecoder` recognises).
YOLO_SEG_OUTPUT = "yoloseg/detections"


def _shape(value: onnx.ValueInfoProto) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)


def _seg_outputs(model: onnx.ModelProto) -> tuple:
    """``((head, shape), (prototypes, shape), (H, W))`` of an ultralytics segmentation model: one (N, 4 + C + M, A)
    output and one (N, M, h, w) output, at a fixed input size.

    Raises:
        ModelStructureError: no such pair of outputs, or an input size that is not fixed.
    """
    g = model.graph
    # torch.onnx.export leaves the head's rows open; shape inference tells them (the anchor count A may stay open:
    # the loaded model measures it). ultralytics' own exporter declares every dimension (static batch 1).
    inferred = infer(model)
    outs = [(o.name, inferred[o.name].shape if o.name in inferred and inferred[o.name].shape is not None
             and len(inferred[o.name].shape) == len(_shape(o)) else _shape(o)) for o in g.output]
    heads = [(n, s) for n, s in outs if len(s) == 3 and s[1] is not None]
    protos = [(n, s) for n, s in outs if len(s) == 4 and None not in s[1:]]
    weights = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in weights]
    hw = _shape(inputs[0])[2:] if len(inputs) == 1 and len(_shape(inputs[0])) == 4 else (None, None)
    if len(heads) != 1 or len(protos) != 1 or heads[0][1][1] <= 4 + protos[0][1][1] or None in hw:
        listed = ", ".join(f"'{n}' {s}" for n, s in outs)
        raise ModelStructureError(
            f"these outputs ({listed}) are not an ultralytics segmentation head at a fixed input size: yolo_seg_head "
            "needs one (N, 4 + C + M, A) head and one (N, M, h, w) prototypes output (export at a fixed imgsz).")
    return heads[0], protos[0], hw


def is_yolo_seg(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s two outputs are an ultralytics segmentation head and its prototypes at a fixed input size
    (what :func:`yolo_seg_head` joins), as ``YOLO(...).export(format="onnx")`` and ``torch.onnx.export`` write them:
    what the runs (:func:`onnx_cnnviz.runs.detections.load_for_task`) load through :func:`yolo_seg_head` unasked."""
    # The declared ranks first: shape inference (of the whole graph) only for a (3-D, 4-D) pair of outputs.
    if sorted(len(_shape(o)) for o in model.graph.output) != [3, 4]:
        return False
    try:
        _seg_outputs(model)
    except ModelStructureError:
        return False
    return True


def yolo_seg_head(source) -> onnx.ModelProto:
    """An ultralytics segmentation model with each anchor's mask mass computed in the graph, one head output.

    Load the result as a detector: ``onnx_cnnviz.load(yolo_seg_head(path), task="detector")``. The user's file is
    never changed.

    Args:
        source: the model (a path or an ``onnx.ModelProto``) with the (N, 4 + C + M, A) head and (N, M, h, w)
            prototypes among its outputs, at a fixed input size.

    Returns:
        A new ``ModelProto`` whose only output is (N, 4 + C + 1, A): box rows, class rows, the mask mass row.

    Raises:
        ModelStructureError: no such pair of outputs, or an input size that is not fixed.
    """
    model = read_model(source)
    g = model.graph
    (head, (_, rows, anchors)), (proto, (_, masks, ph, pw)), hw = _seg_outputs(model)
    classes = rows - 4 - masks
    p = "yoloseg/"
    cols, lines = np.meshgrid(np.arange(pw, dtype=np.float32), np.arange(ph, dtype=np.float32))
    g.initializer.extend([
        numpy_helper.from_array(np.array([0], np.int64), p + "row0"),
        numpy_helper.from_array(np.array([4 + classes], np.int64), p + "row_coeffs"),
        numpy_helper.from_array(np.array([rows], np.int64), p + "row_end"),
        numpy_helper.from_array(np.array([1], np.int64), p + "axis1"),
        numpy_helper.from_array(np.array([0, masks, ph * pw], np.int64), p + "proto_flat"),
        # box cx, cy, w, h (input pixels) @ M = x1, y1, x2, y2 at the prototypes' resolution (process_mask's scaling)
        numpy_helper.from_array(np.array([[pw / hw[1], 0, pw / hw[1], 0], [0, ph / hw[0], 0, ph / hw[0]],
                                          [-pw / hw[1] / 2, 0, pw / hw[1] / 2, 0],
                                          [0, -ph / hw[0] / 2, 0, ph / hw[0] / 2]], np.float32), p + "to_proto"),
        numpy_helper.from_array(np.array([4], np.int64), p + "row4"),
        numpy_helper.from_array(cols.reshape(1, 1, -1), p + "cols"),
        numpy_helper.from_array(lines.reshape(1, 1, -1), p + "lines"),
        numpy_helper.from_array(np.array([2], np.int64), p + "axis2"),
        *[numpy_helper.from_array(np.array([i], np.int64), p + f"at{i}") for i in range(5)],
    ])
    g.node.extend([
        helper.make_node("Slice", [head, p + "row0", p + "row_coeffs", p + "axis1"], [p + "boxes_classes"]),
        helper.make_node("Slice", [head, p + "row_coeffs", p + "row_end", p + "axis1"], [p + "coeffs"]),
        helper.make_node("Transpose", [p + "coeffs"], [p + "coeffs_t"], perm=[0, 2, 1]),          # (N, A, M)
        helper.make_node("Reshape", [proto, p + "proto_flat"], [p + "protos"]),                     # (N, M, hw)
        helper.make_node("MatMul", [p + "coeffs_t", p + "protos"], [p + "mask_logits"]),           # (N, A, hw)
        helper.make_node("Sigmoid", [p + "mask_logits"], [p + "masks"]),
        # the crop: comparisons of the forward's box with pixel indices (boolean, so no gradient through it)
        helper.make_node("Slice", [head, p + "row0", p + "row4", p + "axis1"], [p + "cxcywh"]),
        helper.make_node("Transpose", [p + "cxcywh"], [p + "cxcywh_t"], perm=[0, 2, 1]),          # (N, A, 4)
        helper.make_node("MatMul", [p + "cxcywh_t", p + "to_proto"], [p + "corners"]),
        *[helper.make_node("Slice", [p + "corners", p + f"at{i}", p + f"at{i + 1}", p + "axis2"], [p + side])
          for i, side in enumerate(("x1", "y1", "x2", "y2"))],                                     # (N, A, 1) each
        helper.make_node("GreaterOrEqual", [p + "cols", p + "x1"], [p + "right_of_x1"]),
        helper.make_node("Less", [p + "cols", p + "x2"], [p + "left_of_x2"]),
        helper.make_node("GreaterOrEqual", [p + "lines", p + "y1"], [p + "below_y1"]),
        helper.make_node("Less", [p + "lines", p + "y2"], [p + "above_y2"]),
        helper.make_node("And", [p + "right_of_x1", p + "left_of_x2"], [p + "in_columns"]),
        helper.make_node("And", [p + "below_y1", p + "above_y2"], [p + "in_lines"]),
        helper.make_node("And", [p + "in_columns", p + "in_lines"], [p + "in_box"]),
        helper.make_node("Cast", [p + "in_box"], [p + "crop"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [p + "masks", p + "crop"], [p + "cropped"]),
        helper.make_node("ReduceSum", [p + "cropped", p + "axis2"], [p + "mass"], keepdims=0),       # (N, A)
        helper.make_node("Unsqueeze", [p + "mass", p + "axis1"], [p + "mass_row"]),                 # (N, 1, A)
        helper.make_node("Concat", [p + "boxes_classes", p + "mass_row"], [YOLO_SEG_OUTPUT], axis=1),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(YOLO_SEG_OUTPUT, TensorProto.FLOAT,
                                                  ["N", 4 + classes + 1, anchors or "A"]))
    return model


class YoloSegDecoder(UltralyticsDecoder):
    """The output of :func:`yolo_seg_head`: (N, 4 + C + 1, A), read as the detection head (a candidate's score its
    best class score, its element row ``4 + c``); row ``4 + C`` is each anchor's mask mass (:func:`mask_target`)."""

    description = f"an ultralytics segmentation head read by onnx_cnnviz.tasks.yolo_seg_head ('{YOLO_SEG_OUTPUT}')"

    @classmethod
    def matches(cls, name: str, shape: tuple) -> bool:
        return name == YOLO_SEG_OUTPUT and len(shape) == 3 and None not in shape[1:] and shape[1] > 5

    def __init__(self, shape: tuple):
        self.shape = (int(shape[1]), int(shape[2]))
        self.num_classes = self.shape[0] - 5
        self.anchors = self.shape[1]

    def candidates(self, output: np.ndarray) -> Candidates:
        out = np.asarray(output, dtype=np.float32).reshape(self.shape)
        return UltralyticsDecoder.candidates(_Rows(self.shape[0] - 1, self.anchors), out[:-1])

    def vectors(self, output: np.ndarray, elements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.asarray(output, dtype=np.float32).reshape(self.shape)
        return UltralyticsDecoder.vectors(_Rows(self.shape[0] - 1, self.anchors), out[:-1], elements)

    def mask_element(self, element: int) -> int:
        """The flat index of the mask mass of the anchor whose class-score element is ``element``."""
        return (self.shape[0] - 1) * self.anchors + int(element) % self.anchors


class _Rows:
    """The detection rows' shape, for :class:`UltralyticsDecoder`'s readers."""

    def __init__(self, rows: int, anchors: int):
        self.shape = (rows, anchors)


def mask_target(m, detection: Detection) -> Detection:
    """``detection`` explained by its mask mass ``sum over its box of sigmoid(k_a . P)`` instead of its class score.

    Args:
        m: a model loaded from :func:`yolo_seg_head`.
        detection: one of :func:`onnx_cnnviz.tasks.detect`'s detections of ``m``.

    Returns:
        The same detection (box, class, score, image) whose seed is its anchor's mask mass.

    Raises:
        InputError: ``m`` is not a segmentation head read by :func:`yolo_seg_head`.
    """
    if not isinstance(getattr(m, "decoder", None), YoloSegDecoder):
        raise InputError("mask_target needs a model loaded from onnx_cnnviz.tasks.yolo_seg_head(path) with "
                         "task='detector'.")
    return dataclasses.replace(detection, element=m.decoder.mask_element(detection.element), factor=-1)


register_decoder(YoloSegDecoder)
