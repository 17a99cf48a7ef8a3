"""Detectors exported with their NMS inside the graph: torchvision's SSD, SSDlite, RetinaNet, FCOS, Faster R-CNN.

``torch.onnx.export(model, ([image],), ...)`` of a torchvision detector gives a graph taking one ``(C, H, W)`` image
and returning the detections left after its own post-processing, each output as long as that image's detection
count ``D``: ``boxes (D, 4)`` (x1, y1, x2, y2, input pixels), ``scores (D,)`` and ``labels (D,)`` (int64). The
score of detection ``d`` is an element of the class probabilities picked by the graph's own selections (score
threshold, per-class ``TopK``, ``NonMaxSuppression``, the first ``detections_per_img``), all differentiated with the
indices the forward run chose (:mod:`onnx_cnnviz.graph.autodiff.rules.selection`): its input gradient is exact.

:func:`nms_head` makes such a graph explainable like any detector: a batch axis on the input (``(1, C, H, W)``), and
one head output :data:`NMS_OUTPUT` ``(1, max_det, 6)``: row ``d`` is ``x1, y1, x2, y2, score, label`` of detection
``d`` for ``d < D``, rows after the last detection ``0, 0, 0, 0, 0, -1``. :class:`NmsDecoder` reads it: each row with
a label is a candidate whose element is its score (column 4); the graph's NMS has been applied, so
:func:`onnx_cnnviz.tasks.detect` applies none of its own.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InputError, ModelStructureError
from ..graph.load import read_model
from .decoders import Candidates, Decoder, register_decoder

__all__ = ["NMS_OUTPUT", "nms_head", "is_nms_head", "NmsDecoder"]

#: The head output :func:`nms_head` adds (the name :class:`NmsDecoder` recognises).
NMS_OUTPUT = "nms/detections"
_FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _shape(value: onnx.ValueInfoProto) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)


def _outputs(model: onnx.ModelProto) -> tuple[str, str, str]:
    """The (boxes, scores, labels) outputs: float rank 2 with 4 columns, float rank 1, integer rank 1."""
    outs = [(o.name, o.type.tensor_type.elem_type, _shape(o)) for o in model.graph.output]
    boxes = [n for n, t, s in outs if t in _FLOATS and len(s) == 2 and s[1] == 4]
    scores = [n for n, t, s in outs if t in _FLOATS and len(s) == 1]
    labels = [n for n, t, s in outs if t not in _FLOATS and len(s) == 1]
    if len(boxes) != 1 or len(scores) != 1 or len(labels) != 1:
        listed = ", ".join(f"'{n}' {s}" for n, _, s in outs)
        raise ModelStructureError(
            f"these outputs ({listed}) are not a detector's post-processed detections: nms_head needs one float "
            "(D, 4) boxes output, one float (D,) scores output and one integer (D,) labels output (torchvision's "
            "detection exports). For another head write a decoder (subclass onnx_cnnviz.tasks.Decoder).")
    return boxes[0], scores[0], labels[0]


def is_nms_head(model: onnx.ModelProto) -> bool:
    """Whether ``model`` takes one (C, H, W) image and returns boxes (D, 4), scores (D,) and labels (D,): a detector
    with its NMS inside the graph, what :func:`nms_head` reads (torchvision's detection exports)."""
    try:
        _outputs(model)
    except ModelStructureError:
        return False
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    return len(inputs) == 1 and len(_shape(inputs[0])) == 3 and _shape(inputs[0])[0] is not None


def nms_head(source, max_det: int = 300) -> onnx.ModelProto:
    """A detector whose graph ends with NMS, given a batch axis and one fixed-size head output, :data:`NMS_OUTPUT`.

    Load the result as a detector: ``onnx_cnnviz.load(nms_head(path), task="detector")``. The user's file is never
    changed.

    Args:
        source: the model (a path or an ``onnx.ModelProto``) taking one (C, H, W) image and returning boxes (D, 4),
            scores (D,) and labels (D,) (torchvision's ``torch.onnx.export(model, ([image],))``).
        max_det: rows of the head output; at least the model's own cap on detections per image (torchvision's
            ``detections_per_img``, 300 by default for SSD and RetinaNet, 100 for Faster R-CNN): a run finding more
            fails.

    Returns:
        A new ``ModelProto`` taking (1, C, H, W) images, whose only output is (1, ``max_det``, 6): per detection
        ``x1, y1, x2, y2, score, label``, then rows with label -1.

    Raises:
        ModelStructureError: the input is not one (C, H, W) image or the outputs are not boxes, scores, labels.
        InputError: ``max_det`` is not a positive int.
    """
    if isinstance(max_det, bool) or not isinstance(max_det, (int, np.integer)) or max_det < 1:
        raise InputError(f"max_det must be a positive int, got {max_det!r}.")
    model = read_model(source)
    g = model.graph
    boxes, scores, labels = _outputs(model)
    weights = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in weights]
    shape = _shape(inputs[0]) if len(inputs) == 1 else ()
    if len(shape) != 3 or shape[0] is None:
        raise ModelStructureError(f"nms_head expects one (C, H, W) image input (torchvision's detection exports take "
                                  f"a list of such images), got {[(i.name, _shape(i)) for i in inputs]}.")
    image = inputs[0]
    elem = image.type.tensor_type.elem_type
    p = "nms/"
    base = np.zeros((int(max_det), 6), np.float32)
    base[:, 5] = -1.0
    g.initializer.extend([
        numpy_helper.from_array(np.array(shape, np.int64), p + "image_shape"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), p + "column"),
        numpy_helper.from_array(np.array(0, np.int64), p + "zero"),
        numpy_helper.from_array(np.array(1, np.int64), p + "one"),
        numpy_helper.from_array(np.array([0], np.int64), p + "first"),
        numpy_helper.from_array(np.array([1], np.int64), p + "second"),
        numpy_helper.from_array(base, p + "padding"),
        numpy_helper.from_array(np.array([1, int(max_det), 6], np.int64), p + "head_shape"),
    ])
    batched = p + "images"
    g.node.insert(0, helper.make_node("Reshape", [batched, p + "image_shape"], [image.name], name=p + "unbatch"))
    g.node.extend([
        helper.make_node("Cast", [boxes], [p + "boxes"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [scores], [p + "scores"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", [p + "scores", p + "column"], [p + "score_column"]),
        helper.make_node("Cast", [labels], [p + "labels"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", [p + "labels", p + "column"], [p + "label_column"]),
        helper.make_node("Concat", [p + "boxes", p + "score_column", p + "label_column"], [p + "rows"], axis=1),
        # row d of the padded output is detection d: ScatterND at slots 0..D-1 of the (max_det, 6) padding
        helper.make_node("Shape", [p + "rows"], [p + "rows_shape"]),
        helper.make_node("Gather", [p + "rows_shape", p + "zero"], [p + "count"], axis=0),
        helper.make_node("Range", [p + "zero", p + "count", p + "one"], [p + "slots"]),
        helper.make_node("Reshape", [p + "slots", p + "column"], [p + "slot_index"]),
        helper.make_node("ScatterND", [p + "padding", p + "slot_index", p + "rows"], [p + "padded"]),
        helper.make_node("Reshape", [p + "padded", p + "head_shape"], [NMS_OUTPUT]),
    ])
    g.input.remove(image)
    g.input.insert(0, helper.make_tensor_value_info(batched, elem, [1, *shape]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(NMS_OUTPUT, TensorProto.FLOAT, [1, int(max_det), 6]))
    return model


class NmsDecoder(Decoder):
    """The output of :func:`nms_head`: (1, max_det, 6) rows ``x1, y1, x2, y2, score, label`` after the graph's own
    NMS, label -1 after the last detection. Each labelled row is a candidate; its element is its score (column 4).
    The class count is not in the output (``num_classes`` None): give class names with ``labels=`` to name them."""

    description = f"a detector with NMS in the graph, read by onnx_cnnviz.tasks.nms_head ('{NMS_OUTPUT}' (1, D, 6))"
    #: The graph applied its NMS already: :func:`onnx_cnnviz.tasks.detect` applies none.
    nms_inside = True

    @classmethod
    def matches(cls, name: str, shape: tuple) -> bool:
        return name == NMS_OUTPUT and len(shape) == 3 and shape[2] == 6 and shape[1] is not None

    def __init__(self, shape: tuple):
        self.shape = (int(shape[1]), 6)
        self.num_classes = None

    def candidates(self, output: np.ndarray) -> Candidates:
        out = np.asarray(output, dtype=np.float32).reshape(self.shape)
        rows = np.flatnonzero(out[:, 5] >= 0)
        return Candidates(out[rows, :4], out[rows, 4], out[rows, 5].astype(np.int64), rows * 6 + 4)


register_decoder(NmsDecoder)
