"""Detections as targets: decode a detector's head, keep the boxes NMS keeps, and explain each box.

A detection's score is one element of the head output (for an ultralytics head, the sigmoid class score ``s_{c,a}``
of its anchor ``a``), so the :class:`Detection` target's seed is that element's one-hot cotangent: the gradient of a
detection is ``d s_{c,a} / d x``, the quantity YOLO Grad-CAM tutorials backpropagate one box at a time
(pytorch-grad-cam's YOLO notebooks, ``yolov8-explainer``). :func:`explain` explains every detection of every image
in one batched run instead: the images are repeated, one row per detection, and each row gets its detection's
cotangent.

Where the head's score is a product ``s = T_e T_f`` (YOLOv5: class probability x objectness), the cotangent is its
gradient at the detected image, ``T_f e_e + T_e e_f``: the input gradient is then exactly ``ds/dx`` (the chain
rule), and perturbation methods (occlusion, the metrics) read the score's first-order change
``T_f dT_e + T_e dT_f``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..targets import Target
from .nms import nms

__all__ = ["Detection", "detect", "explain", "per_own_level"]


@dataclass(frozen=True)
class Detection(Target):
    """One detection: ``box`` (x1, y1, x2, y2 in input pixels), ``cls``, ``score``, and the flat index ``element``
    of its score in the image's head output ``output`` (None: the model's head output). ``image``: the image of the
    batch it was found in. ``factor``/``factor_value``/``element_value``: for a product score ``T[element] *
    T[factor]`` (-1: none), the factor's index and both values at the detected image."""
    image: int
    box: tuple
    cls: int
    score: float
    element: int
    output: str | None = None
    factor: int = -1
    element_value: float = 1.0
    factor_value: float = 1.0

    @property
    def class_index(self) -> int:  # type: ignore[override]
        return int(self.cls)

    def seed(self, m) -> tuple[str, np.ndarray]:
        tensor, size, indices, values = self.seed_entries(m)
        row = np.zeros(size, np.float32)
        np.add.at(row, indices, values)
        return tensor, row

    def seed_entries(self, m) -> tuple[str, int, np.ndarray, np.ndarray]:
        tensor = self.output or m.score_name
        size = int(np.prod(m.tensor_shape(tensor)[1:]))
        if not 0 <= self.element < size:
            raise InputError(f"detection element {self.element} is outside the head output '{tensor}' "
                             f"({size} elements per image).")
        if self.factor < 0:
            return tensor, size, np.array([self.element]), np.array([1.0], np.float32)
        # d(T_e T_f) = T_f dT_e + T_e dT_f
        return (tensor, size, np.array([self.element, self.factor]),
                np.array([self.factor_value, self.element_value], np.float32))


def detect(m, x, conf: float = 0.25, iou: float = 0.45, max_det: int = 300,
           batch_size: int | None = None) -> list[list[Detection]]:
    """The detections of each image: the head output decoded by ``m.decoder``, candidates scoring at least ``conf``,
    class-aware greedy NMS at ``iou`` (:func:`onnx_cnnviz.tasks.nms.nms`; none where the graph applied its own,
    :func:`onnx_cnnviz.tasks.nms_head`), at most ``max_det`` per image.

    Args:
        m: a model loaded with ``task="detector"``.
        x: (N, C, H, W) float images, preprocessed for the model.
        conf: the score threshold (ultralytics' ``conf``).
        iou: the NMS overlap threshold.
        max_det: detections kept per image at most, best first.
        batch_size: images per run.

    Returns:
        One list of :class:`Detection` per image, best score first (empty where nothing scores ``conf``).

    Raises:
        InputError: ``m`` is not a detector, or a threshold is out of range.
    """
    if getattr(m, "decoder", None) is None:
        raise InputError(f"detect needs a detector: load the model with task='detector' (this one is a {m.task}).")
    if not 0.0 <= float(conf) <= 1.0 or not 0.0 <= float(iou) <= 1.0:
        raise InputError(f"conf and iou are in [0, 1], got conf={conf!r}, iou={iou!r}.")
    if isinstance(max_det, bool) or not isinstance(max_det, (int, np.integer)) or max_det < 1:
        raise InputError(f"max_det must be a positive int, got {max_det!r}.")
    heads = m.scores(x, batch_size=batch_size)  # (N, elements): the head output, flattened per image
    found = []
    for i, head in enumerate(heads):
        cand = m.decoder.candidates(head)
        ok = np.flatnonzero(cand.scores >= conf)
        if getattr(m.decoder, "nms_inside", False):  # the graph's own NMS chose them: best first, as it orders them
            kept = ok[np.argsort(-cand.scores[ok], kind="stable")][:max_det]
        else:
            kept = ok[nms(cand.boxes[ok], cand.scores[ok], iou, cand.classes[ok], max_det)]
        if getattr(m.decoder, "clip_boxes", False):
            h, w = np.shape(x)[2:]
            cand.boxes = cand.boxes.copy()
            cand.boxes[kept] = np.clip(cand.boxes[kept], 0, [w, h, w, h])
        found.append([_detection(i, cand, k, head, m.score_name) for k in kept])
    return found


def _detection(image: int, cand, k: int, head: np.ndarray, output: str) -> Detection:
    """Candidate ``k`` of image ``image`` as a :class:`Detection` (``head``: the image's flat head output)."""
    element = int(cand.elements[k])
    factor = -1 if cand.factors is None else int(cand.factors[k])
    return Detection(image, tuple(float(v) for v in cand.boxes[k]), int(cand.classes[k]), float(cand.scores[k]),
                     element, output, factor, float(head[element]), float(head[factor]) if factor >= 0 else 1.0)


def explain(method: Callable, m, x, detections, **params) -> np.ndarray:
    """Maps of ``method`` for every detection, all in one batched run: row ``d`` explains ``detections[d]``.

    Args:
        method: any map function of the registry (``grad_cam``, ``saliency``, ``gradients``, ...).
        m: a model loaded with ``task="detector"``.
        x: (N, C, H, W) the images the detections were found in.
        detections: the :class:`Detection` objects (a flat list, or :func:`detect`'s list of lists), or any
            targets with an ``image`` index (:class:`onnx_cnnviz.tasks.text.TextRegion`).
        **params: the method's own parameters (``layer``, ``upsample``, ...).

    Returns:
        The method's maps, one per detection ((D, H, W) for a map method).

    Raises:
        InputError: no detection to explain (the message says none scored above the threshold), or a target that
            does not say its image.
    """
    flat = [d for item in detections for d in (item if isinstance(item, (list, tuple)) else [item])]
    if not flat:
        raise InputError("there is no detection to explain: nothing scored above the detection threshold (conf); "
                         "lower it (detect(..., conf=...)) or check the preprocessing.")
    if not all(isinstance(d, Target) and isinstance(getattr(d, "image", None), (int, np.integer)) for d in flat):
        raise InputError("explain takes Detection objects (from onnx_cnnviz.tasks.detect) or TextRegion objects "
                         "(from onnx_cnnviz.tasks.text_regions): targets that say which image they belong to.")
    x = np.asarray(x)
    rows = np.asarray([d.image for d in flat], dtype=np.int64)
    if rows.max() >= len(x):
        raise InputError(f"a detection belongs to image {int(rows.max())}, but x holds {len(x)} images.")
    if params.get("layer") is not None or not _takes_layer(method):
        return method(m, _images(x, rows), targets=flat, **params)
    params.pop("layer", None)
    return per_own_level(m, flat, lambda idx, level: method(
        m, _images(x, rows[idx]), targets=[flat[i] for i in idx], **params,
        **({} if level is None else {"layer": level})))


def _images(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``x[rows]``, one row per detection; detections of one image as a read-only view of it, not copies (a 640x640
    image is 4.9 MB a row, and the model runs its forward pass once per distinct image anyway)."""
    if len(rows) > 1 and np.all(rows == rows[0]):
        return np.broadcast_to(x[rows[0]:rows[0] + 1], (len(rows),) + x.shape[1:])
    return x[rows]


def _takes_layer(method: Callable) -> bool:
    """Whether ``method`` is a registered method that explains at a feature layer it may be given (``uses_layer``,
    without a fixed one as CAM's). A function outside the registry is called as it is."""
    from ..methods import registry  # the registry's explain groups detections through this module

    return any(meth.func is method and meth.uses_layer and meth.layer_rule is None
               for meth in map(registry.get, registry.names()))


def per_own_level(m, targets: list, run: Callable) -> np.ndarray:
    """``run(indices, layer)`` for the targets at each pyramid level, the results put back in the targets' order.

    A one-stage detector scores each anchor from its own level's branch (:func:`onnx_cnnviz.tasks.levels.own_levels`),
    so a layer method left to its default layer explains each detection at its own level, where its gradient is;
    at the coarsest level (the single default of pytorch-grad-cam's YOLO tutorials) a detection of a finer level has
    none, and its map would be blank. ``run(indices, None)`` for all targets at once where the model has no levels.

    Raises:
        InputError: the levels' maps differ in size (``upsample=False``) and cannot be returned as one array.
    """
    from .levels import own_levels

    levels = own_levels(m, targets)
    if levels is None:
        return run(np.arange(len(targets)), None)
    out = None
    for level in dict.fromkeys(levels):
        idx = np.flatnonzero(np.asarray(levels) == level)
        maps = np.asarray(run(idx, level))
        if out is None:
            out = np.empty((len(targets),) + maps.shape[1:], maps.dtype)
        elif maps.shape[1:] != out.shape[1:]:
            raise InputError(f"the detections read pyramid levels of different sizes ({out.shape[1:]} and "
                             f"{maps.shape[1:]}), so their maps at each one's own level cannot form one array: keep "
                             "upsample=True, or give one layer for all (layer=...).")
        out[idx] = maps
    return out
