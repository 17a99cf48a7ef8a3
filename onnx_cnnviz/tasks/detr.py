"""DETR-style set predictors: one box and one class distribution per learned query, no NMS.

DETR (Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020) and its descendants (Deformable
DETR, Conditional DETR, DETA; RT-DETR, Zhao et al., CVPR 2024) end with two outputs per query ``q``: ``boxes``
``(N, Q, 4)``, ``cx, cy, w, h`` relative to the image (after their sigmoid), and class ``logits`` ``(N, Q, K)``.
DETR's post-processing (``transformers``' ``post_process_object_detection``) reads the class probabilities as
``softmax(logits)`` over K = C + 1 classes, the last being "no object", and each query's detection as its best real
class; RT-DETR's reads ``sigmoid(logits)`` over K = C classes, every (query, class) pair a candidate.

:func:`detr_head` appends exactly that reading to the graph and makes one head output :data:`DETR_OUTPUT`
``(N, Q, 4 + K)``: per query the box ``x1, y1, x2, y2`` in input pixels, then the K probabilities. A detection's
score is then one element of that output (its seed, :class:`onnx_cnnviz.tasks.Detection`), and its input gradient
is ``d p_{q,c} / d x`` through the softmax (or sigmoid); a box coordinate is an element too
(:class:`onnx_cnnviz.targets.OutputElement`). :class:`DetrDecoder` reads it; a set predictor needs no NMS.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InputError, ModelStructureError
from ..graph.load import read_model
from .decoders import Candidates, Decoder, register_decoder

__all__ = ["DETR_OUTPUT", "DETR_SIGMOID_OUTPUT", "detr_head", "DetrDecoder"]

#: The head output :func:`detr_head` adds for softmax class scores with a last "no object" class (DETR).
DETR_OUTPUT = "detr/detections"
#: The head output for sigmoid class scores, every (query, class) pair a candidate (RT-DETR).
DETR_SIGMOID_OUTPUT = "detr/detections_sigmoid"


def _shape(value: onnx.ValueInfoProto) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)


def _outputs(model: onnx.ModelProto, boxes: str | None, logits: str | None) -> tuple[str, str, int | None, int]:
    """(boxes, logits, Q or None, K): the (N, Q, 4) and (N, Q, K) outputs, found by shape unless named."""
    outs = {o.name: _shape(o) for o in model.graph.output}
    listed = ", ".join(f"'{n}' {s}" for n, s in outs.items())
    for name in (boxes, logits):
        if name is not None and name not in outs:
            raise ModelStructureError(f"'{name}' is not an output of the model; its outputs: {listed}.")
    # Q may be left open by the exporter (queries expanded to the batch): the loaded model measures it.
    three = {n: s for n, s in outs.items() if len(s) == 3 and s[2] is not None}
    box_names = [boxes] if boxes else [n for n, s in three.items() if s[2] == 4]
    logit_names = [logits] if logits else [n for n, s in three.items() if s[2] != 4 and n not in box_names]
    if len(box_names) != 1 or len(logit_names) != 1 or box_names[0] not in three or logit_names[0] not in three \
            or None not in (three[box_names[0]][1], three[logit_names[0]][1]) \
            and three[box_names[0]][1] != three[logit_names[0]][1]:
        raise ModelStructureError(
            f"these outputs ({listed}) are not a DETR-style head: detr_head needs one (N, Q, 4) boxes output and one "
            "(N, Q, K) class logits output with the same Q (name them: detr_head(model, boxes=..., logits=...)).")
    queries = three[box_names[0]][1] or three[logit_names[0]][1]
    return box_names[0], logit_names[0], queries, int(three[logit_names[0]][2])


def detr_head(source, boxes: str | None = None, logits: str | None = None, scores: str = "softmax") -> onnx.ModelProto:
    """A DETR-style model with its class probabilities and pixel boxes computed in the graph, one head output.

    Load the result as a detector: ``onnx_cnnviz.load(detr_head(path), task="detector")``. The user's file is never
    changed.

    Args:
        source: the model (a path or an ``onnx.ModelProto``) with (N, Q, 4) relative ``cx, cy, w, h`` boxes and
            (N, Q, K) class logits among its outputs.
        boxes: the boxes output's name (None: the only (N, Q, 4) output).
        logits: the logits output's name (None: the other (N, Q, K) output).
        scores: "softmax" (DETR: K = C + 1, the last class "no object") or "sigmoid" (RT-DETR: K = C).

    Returns:
        A new ``ModelProto`` whose only output is (N, Q, 4 + K): ``x1, y1, x2, y2`` in input pixels, then the K class
        probabilities (:data:`DETR_OUTPUT`, or :data:`DETR_SIGMOID_OUTPUT` for sigmoid scores).

    Raises:
        ModelStructureError: no such pair of outputs, or an input size that is not fixed.
        InputError: ``scores`` is neither "softmax" nor "sigmoid".
    """
    if scores not in ("softmax", "sigmoid"):
        raise InputError(f"scores must be 'softmax' (DETR) or 'sigmoid' (RT-DETR), not {scores!r}.")
    model = read_model(source)
    box_name, logit_name, queries, k = _outputs(model, boxes, logits)
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    hw = _shape(inputs[0])[2:] if len(inputs) == 1 and len(_shape(inputs[0])) == 4 else (None, None)
    if None in hw or 0 in hw:
        raise ModelStructureError("detr_head scales the relative boxes to input pixels, so the input size must be "
                                  f"fixed; the model's input has shape {_shape(inputs[0]) if inputs else ()}.")
    h, w = hw
    # (cx, cy, w, h) @ M = (x1, y1, x2, y2) in pixels: x1 = W (cx - w / 2), ...
    corners = np.array([[w, 0, w, 0], [0, h, 0, h], [-w / 2, 0, w / 2, 0], [0, -h / 2, 0, h / 2]], np.float32)
    g = model.graph
    p = "detr/"
    out = DETR_OUTPUT if scores == "softmax" else DETR_SIGMOID_OUTPUT
    g.initializer.append(numpy_helper.from_array(corners, p + "corners"))
    g.node.extend([
        helper.make_node("Cast", [box_name], [p + "boxes"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", [p + "boxes", p + "corners"], [p + "pixels"]),
        helper.make_node("Cast", [logit_name], [p + "logits"], to=TensorProto.FLOAT),
        helper.make_node("Softmax", [p + "logits"], [p + "probabilities"], axis=-1) if scores == "softmax" else
        helper.make_node("Sigmoid", [p + "logits"], [p + "probabilities"]),
        helper.make_node("Concat", [p + "pixels", p + "probabilities"], [out], axis=2),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", queries or "Q", 4 + k]))
    return model


class DetrDecoder(Decoder):
    """The output of :func:`detr_head`: (N, Q, 4 + K) boxes ``x1, y1, x2, y2`` then K class probabilities.

    Softmax scores (:data:`DETR_OUTPUT`): each query is one candidate, its best class but the last ("no object"),
    as ``transformers``' ``post_process_object_detection``; C = K - 1. Sigmoid scores (:data:`DETR_SIGMOID_OUTPUT`):
    every (query, class) pair is a candidate, as RT-DETR's post-processing; C = K. No NMS either way."""

    description = (f"a DETR-style head read by onnx_cnnviz.tasks.detr_head ('{DETR_OUTPUT}' or "
                   f"'{DETR_SIGMOID_OUTPUT}' (N, Q, 4 + K))")
    #: A set predictor: :func:`onnx_cnnviz.tasks.detect` applies no NMS.
    nms_inside = True

    @classmethod
    def matches(cls, name: str, shape: tuple) -> bool:
        return name in (DETR_OUTPUT, DETR_SIGMOID_OUTPUT) and len(shape) == 3 and None not in shape[1:] \
            and shape[2] > 4 + (name == DETR_OUTPUT)

    def __init__(self, shape: tuple, name: str = DETR_OUTPUT):
        self.shape = (int(shape[1]), int(shape[2]))
        self.softmax = name == DETR_OUTPUT
        self.num_classes = self.shape[1] - 4 - int(self.softmax)

    def candidates(self, output: np.ndarray) -> Candidates:
        out = np.asarray(output, dtype=np.float32).reshape(self.shape)
        queries, width = self.shape
        c = self.num_classes
        probs = out[:, 4:4 + c]
        if self.softmax:
            rows = np.arange(queries)
            classes = probs.argmax(axis=1).astype(np.int64)
        else:
            rows = np.repeat(np.arange(queries), c)
            classes = np.tile(np.arange(c, dtype=np.int64), queries)
        return Candidates(out[rows, :4], out[rows, 4 + classes], classes, rows * width + 4 + classes)

    def vectors(self, output: np.ndarray, elements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.asarray(output, dtype=np.float32).reshape(self.shape)
        rows = np.asarray(elements, dtype=np.int64) // self.shape[1]
        return np.ones(len(rows), np.float32), out[rows, 4:4 + self.num_classes]


class _SigmoidDetrDecoder(DetrDecoder):
    """:class:`DetrDecoder` of :data:`DETR_SIGMOID_OUTPUT` (registered apart: a decoder is built from the shape)."""

    description = f"an RT-DETR-style head read by detr_head(..., scores='sigmoid') ('{DETR_SIGMOID_OUTPUT}')"

    @classmethod
    def matches(cls, name: str, shape: tuple) -> bool:
        return name == DETR_SIGMOID_OUTPUT and DetrDecoder.matches(name, shape)

    def __init__(self, shape: tuple):
        super().__init__(shape, DETR_SIGMOID_OUTPUT)


class _SoftmaxDetrDecoder(DetrDecoder):
    """:class:`DetrDecoder` of :data:`DETR_OUTPUT`."""

    description = f"a DETR head read by onnx_cnnviz.tasks.detr_head ('{DETR_OUTPUT}' (N, Q, 4 + C + 1))"

    @classmethod
    def matches(cls, name: str, shape: tuple) -> bool:
        return name == DETR_OUTPUT and DetrDecoder.matches(name, shape)

    def __init__(self, shape: tuple):
        super().__init__(shape, DETR_OUTPUT)


register_decoder(_SoftmaxDetrDecoder)
register_decoder(_SigmoidDetrDecoder)
