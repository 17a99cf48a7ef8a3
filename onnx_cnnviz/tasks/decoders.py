"""Detector heads: a decoder turns a head output into candidate detections and names the tensor element behind each.

The interface (:class:`Decoder`), so that a user adds an unknown head in a few lines::

    class MyHead(Decoder):
        description = "my head: (N, A, 6) rows of x1, y1, x2, y2, score, class"

        @classmethod
        def matches(cls, name, shape):          # the head output's name and shape (None for the batch)
            return len(shape) == 3 and shape[2] == 6

        def __init__(self, shape):
            self.num_classes = 1
            self.shape = tuple(shape[1:])

        def candidates(self, output):            # one image's output, per-image shape
            rows = output.reshape(-1, 6)
            return Candidates(boxes=rows[:, :4], scores=rows[:, 4], classes=rows[:, 5].astype(np.int64),
                              elements=np.arange(len(rows)) * 6 + 4)

    onnx_cnnviz.tasks.register_decoder(MyHead)

``elements`` are flat indices into the image's head output: the element whose value is the detection's score, which
the :class:`onnx_cnnviz.tasks.Detection` target seeds. A head whose score is a product of two elements (YOLOv5's
objectness x class probability) also gives ``factors``: the other element of each product.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelStructureError

__all__ = ["Candidates", "Decoder", "UltralyticsDecoder", "YoloV5Decoder", "register_decoder", "recognise",
           "find_decoder", "gives_vectors", "DECODERS"]


@dataclass
class Candidates:
    """One image's candidate detections before NMS: (M, 4) boxes (x1, y1, x2, y2, input pixels), (M,) scores,
    (M,) int64 classes, and (M,) int64 ``elements``: the flat index, in the image's head output, of the element
    holding each candidate's score; ``factors`` (M,) int64 or None: where the score is ``T[element] * T[factor]``
    (objectness x class probability), the factor's flat index."""
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    elements: np.ndarray
    factors: np.ndarray | None = None


class Decoder:
    """A detector head's decoder. Subclasses set ``description`` (one line: the head and its layout) and implement
    :meth:`matches`, ``__init__(shape)`` (setting ``num_classes``) and :meth:`candidates`."""

    description: str = ""
    #: The class count, or None where the head output does not say it (:class:`onnx_cnnviz.tasks.NmsDecoder`: the
    #: graph's NMS gives each detection's label only); everything that reads it takes None as "not known".
    num_classes: int | None
    #: Anchor points (one per location of every pyramid level), when the head has them: its levels are then found
    #: (:func:`onnx_cnnviz.tasks.levels.pyramid_levels`).
    anchors: int | None = None
    #: Whether :func:`onnx_cnnviz.tasks.detect` clips the kept boxes to the image (after NMS, as PaddleDetection).
    clip_boxes: bool = False

    def anchor_of(self, element: int) -> int | None:
        """The anchor point (index over all pyramid levels, finest level first) of the head element ``element``, or
        None where the layout has no one anchor per location (then no detection has its own level)."""
        return None

    @classmethod
    def matches(cls, name: str, shape: tuple) -> bool:
        """Whether a head output called ``name`` of ``shape`` (None for unknown axes) is this head's."""
        raise NotImplementedError

    def candidates(self, output: np.ndarray) -> Candidates:
        """The candidate detections in one image's head output (its per-image shape)."""
        raise NotImplementedError

    def vectors(self, output: np.ndarray, elements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """D-RISE's detection vectors (:mod:`onnx_cnnviz.tasks.drise`) of the candidates whose score elements are
        ``elements``: (M,) objectness (1 where the head has none) and (M, C) class scores of their anchors.
        Optional: without it, D-RISE and the metrics' similarity score refuse the head (:func:`gives_vectors`).

        Raises:
            ModelStructureError: the decoder does not give them.
        """
        raise ModelStructureError(
            f"this detector's head ({self.description}) gives no class vectors, which D-RISE and the detection "
            "metrics' similarity score compare: explain it with a gradient or CAM method, score the metrics by the "
            "detection's own element (score='element'; cnnviz evaluate: --metric-param deletion.score=element "
            f"--metric-param insertion.score=element), or implement {type(self).__name__}.vectors(output, elements).")


class UltralyticsDecoder(Decoder):
    """ultralytics YOLOv8 / YOLO11 (and v9, v10 without end-to-end, v12) detection head exported without NMS:
    (N, 4 + C, A), rows ``cx, cy, w, h`` in input pixels then C sigmoid class scores, one column per anchor point of
    all FPN levels. A candidate's score is its best class score; its element is row ``4 + c`` of column ``a``."""

    description = "an ultralytics v8/v11 detection head ((N, 4 + C, A): box cx, cy, w, h and C class scores per anchor)"

    @classmethod
    def matches(cls, name: str, shape: tuple) -> bool:
        return len(shape) == 3 and shape[1] is not None and shape[2] is not None and 4 < shape[1] < shape[2]

    def __init__(self, shape: tuple):
        self.shape = (int(shape[1]), int(shape[2]))
        self.num_classes = self.shape[0] - 4
        self.anchors = self.shape[1]

    def candidates(self, output: np.ndarray) -> Candidates:
        out = np.asarray(output, dtype=np.float32).reshape(self.shape)
        anchors = self.shape[1]
        cls_scores = out[4:]
        classes = cls_scores.argmax(axis=0).astype(np.int64)
        scores = cls_scores[classes, np.arange(anchors)]
        cx, cy, w, h = out[0], out[1], out[2], out[3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        return Candidates(boxes, scores, classes, (4 + classes) * anchors + np.arange(anchors))

    def anchor_of(self, element: int) -> int | None:
        return int(element) % self.anchors  # (4 + C, A): one column per anchor

    def vectors(self, output: np.ndarray, elements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.asarray(output, dtype=np.float32).reshape(self.shape)
        anchors = np.asarray(elements, dtype=np.int64) % self.shape[1]
        return np.ones(len(anchors), np.float32), out[4:, anchors].T


class YoloV5Decoder(Decoder):
    """YOLOv5 (and v7, YOLOX-style exports with the decoding inside) head without NMS: (N, A, 5 + C), per anchor box
    ``cx, cy, w, h`` in input pixels, the objectness and C class probabilities (all after their sigmoids). A
    candidate's score is ``objectness x class probability`` of its best class, as yolov5's ``non_max_suppression``;
    its element is the class probability, its factor the objectness."""

    description = "a YOLOv5-style detection head ((N, A, 5 + C): box cx, cy, w, h, objectness and C class scores)"

    @classmethod
    def matches(cls, name: str, shape: tuple) -> bool:
        return len(shape) == 3 and shape[1] is not None and shape[2] is not None and 5 < shape[2] < shape[1]

    def __init__(self, shape: tuple):
        self.shape = (int(shape[1]), int(shape[2]))
        self.num_classes = self.shape[1] - 5

    def candidates(self, output: np.ndarray) -> Candidates:
        out = np.asarray(output, dtype=np.float32).reshape(self.shape)
        anchors, width = self.shape
        classes = out[:, 5:].argmax(axis=1).astype(np.int64)
        rows = np.arange(anchors)
        scores = out[rows, 5 + classes] * out[:, 4]
        cx, cy, w, h = out[:, 0], out[:, 1], out[:, 2], out[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        return Candidates(boxes, scores, classes, rows * width + 5 + classes, rows * width + 4)

    def vectors(self, output: np.ndarray, elements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.asarray(output, dtype=np.float32).reshape(self.shape)
        rows = np.asarray(elements, dtype=np.int64) // self.shape[1]
        return out[rows, 4], out[rows, 5:]


def gives_vectors(decoder) -> bool:
    """Whether ``decoder`` gives D-RISE's class vectors (implements :meth:`Decoder.vectors`), what D-RISE and the
    detection metrics' similarity score need: a plan refuses them up front on a head that does not."""
    own = getattr(type(decoder), "vectors", None)
    return own is not None and own is not Decoder.vectors


#: Known heads, tried in order by :func:`recognise`.
DECODERS: list = [UltralyticsDecoder, YoloV5Decoder]


def register_decoder(decoder: type, first: bool = True) -> None:
    """Add a :class:`Decoder` subclass to the heads :func:`recognise` tries (``first``: before the built-in ones)."""
    if decoder not in DECODERS:
        DECODERS.insert(0 if first else len(DECODERS), decoder)


def recognise(name: str, shape) -> Decoder | None:
    """The decoder of the first known head matching output ``name`` of ``shape``, or None."""
    shape = tuple(shape) if shape is not None else ()
    for decoder in DECODERS:
        if decoder.matches(name, shape):
            return decoder(shape)
    return None


def find_decoder(name: str, shape) -> Decoder:
    """Like :func:`recognise`, but an unknown head is a :class:`ModelStructureError` naming the output and the
    decoder interface."""
    decoder = recognise(name, shape)
    if decoder is None:
        known = "; ".join(d.description for d in DECODERS)
        raise ModelStructureError(
            f"no known detector head reads the output '{name}' of shape {tuple(shape)} (known: {known}). Choose "
            "another output with output=NAME, or describe the head in a few lines: subclass "
            "onnx_cnnviz.tasks.Decoder (matches, __init__, candidates) and onnx_cnnviz.tasks.register_decoder it.")
    return decoder
