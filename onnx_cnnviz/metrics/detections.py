"""Metrics per detection: a detector's explanations measured one detection at a time.

A detector's explanation explains one detection (:class:`onnx_cnnviz.tasks.Detection`), so its metrics are per
detection, with one map per detection (what :func:`onnx_cnnviz.tasks.explain` and :func:`onnx_cnnviz.tasks.drise`
return, in the order of the detections).

* **Matching** (:func:`match_detections`): each detection is matched to a ground-truth box of its class by IoU, the
  PASCAL VOC / COCO rule (Everingham et al., IJCV 2010, Sec. 4.2): per image, detections in decreasing score take the
  unmatched box of their class with the highest IoU, when that IoU is at least ``iou_threshold`` (0.5); a box is
  matched once. An unlabelled box matches every class.
* **Pointing game per detection** (:func:`detection_pointing_game`; Zhang et al., ECCV 2016, as
  :mod:`~onnx_cnnviz.metrics.pointing`): a hit when the detection's map has its first maximum within ``tolerance``
  pixels of *its matched* box, not of any box of the class (two objects of one class in a picture must not share
  credit). Detections with no matched box (false positives) have no object to point at: they are left out and
  counted (``details["unmatched"]``).
* **Deletion / insertion of a detection** (:func:`detection_deletion`, :func:`detection_insertion`; Petsiuk et al.,
  "Black-box Explanation of Object Detectors via Saliency Maps", CVPR 2021, Sec. 5, adapting RISE's metrics): the
  pixels are removed (inserted) in the map's order as for a classifier (:mod:`~onnx_cnnviz.metrics.curves`: the same
  ranking, steps, baselines and trapezoid AUC), and the curve follows, with ``score="similarity"`` (the default), the
  detection's D-RISE similarity to the detections of the perturbed image,
  ``f = max_{d' in D(I')} IoU(L, L') O O' cos(P, P')`` (0 when nothing is detected; :func:`onnx_cnnviz.tasks.drise`
  weighs its masks by the same number), so a box that moves, changes class or disappears counts as lost. With
  ``score="element"`` the curve is the detection's own head element (its anchor's class score), what its gradient
  explains.
* **Sanity check on a detector** (:func:`detection_randomisation`; Adebayo et al., NeurIPS 2018): the model
  parameter randomisation test of :mod:`~onnx_cnnviz.metrics.sanity`, each map explaining its detection's element on
  the trained and on every randomised copy of the detector.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError
from ..model import Model
from .base import MetricResult, TargetRows, Readout, check_maps, check_x, pixel_maps
from .boxes import check_inside, check_labels
from .curves import _curves
from .pointing import TOLERANCE, _non_negative, distance_to_boxes, energy_share, box_mask, peak, pointing_hit

#: The overlap at which a detection finds its object (PASCAL VOC's, COCO's AP50).
IOU_THRESHOLD = 0.5
#: What a detection's deletion/insertion curve follows.
SCORES = ("similarity", "element")

__all__ = ["IOU_THRESHOLD", "SCORES", "match_detections", "detection_pointing_game", "detection_deletion",
           "detection_insertion", "detection_randomisation", "flat_detections"]


def flat_detections(detections) -> list:
    """``detections`` as a flat list of :class:`~onnx_cnnviz.tasks.Detection` (a flat list, or
    :func:`onnx_cnnviz.tasks.detect`'s one list per image).

    Raises:
        InputError: an item that is not a Detection, or no detection at all.
    """
    from ..tasks.detection import Detection

    if isinstance(detections, Detection):
        detections = [detections]
    flat = [d for item in detections for d in (item if isinstance(item, (list, tuple)) else [item])]
    if not flat:
        raise InputError("there is no detection to measure: nothing scored above the detection threshold (conf).")
    bad = [d for d in flat if not isinstance(d, Detection)]
    if bad:
        raise InputError(f"these metrics take Detection objects (from onnx_cnnviz.tasks.detect), not "
                         f"{type(bad[0]).__name__}.")
    return flat


def _iou(box, gt) -> float:
    """IoU of a detection's continuous box and a half-open pixel box, both (x0, y0, x1, y1)."""
    w = min(box[2], gt[2]) - max(box[0], gt[0])
    h = min(box[3], gt[3]) - max(box[1], gt[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (box[2] - box[0]) * (box[3] - box[1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
    return inter / union if union > 0 else 0.0


def _checked_boxes(boxes, images: int, width: int, height: int, num_classes: int | None) -> list:
    if boxes is None or isinstance(boxes, (str, bytes)) or not hasattr(boxes, "__len__"):
        raise InputError(f"boxes must be one list of ground-truth boxes per image ({images} images), in the model "
                         "input's pixels.")
    if len(boxes) != images:
        raise InputError(f"boxes hold {len(boxes)} entries for {images} images; give one list of boxes per image "
                         "(an empty list for an image without objects).")
    checked = [check_inside(list(b), width, height, i, space="boxes are in the model input's pixels (scale them "
                            "with metrics.boxes.to_input)") for i, b in enumerate(boxes)]
    check_labels(checked, num_classes, "boxes")
    return checked


def match_detections(detections, boxes, iou_threshold: float = IOU_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Match each detection to a ground-truth box of its class (the VOC/COCO rule; module docstring).

    Args:
        detections: :class:`~onnx_cnnviz.tasks.Detection` objects (flat, or one list per image).
        boxes: one sequence per image (indexed by ``Detection.image``) of :class:`~onnx_cnnviz.metrics.Box` or
            ``(x0, y0, x1, y1)`` in the model input's pixels; a Box's ``label`` is its class (None: any).
        iou_threshold: the least IoU of a match, in (0, 1].

    Returns:
        ``(matched, ious)``: (D,) int64 the index of each detection's box in its image's list (-1: none), and (D,)
        float64 the IoU with it (0 where unmatched), in the order of the flat detections.

    Raises:
        InputError: a bad detection, box or threshold, or a detection of an image ``boxes`` does not cover.
    """
    from .boxes import as_box

    flat = flat_detections(detections)
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)) or not 0 < iou_threshold <= 1:
        raise InputError(f"iou_threshold must be a number in (0, 1], not {iou_threshold!r}.")
    if max(d.image for d in flat) >= len(boxes):
        raise InputError(f"a detection belongs to image {max(d.image for d in flat)}, but boxes cover "
                         f"{len(boxes)} images.")
    gts = [[as_box(b, f"image {i}, box {k}") for k, b in enumerate(image)] for i, image in enumerate(boxes)]
    matched = np.full(len(flat), -1, np.int64)
    ious = np.zeros(len(flat))
    order = sorted(range(len(flat)), key=lambda k: -flat[k].score)  # stable: equal scores keep their order
    used = [np.zeros(len(image), bool) for image in gts]
    for k in order:
        d = flat[k]
        best, best_iou = -1, 0.0
        for j, gt in enumerate(gts[d.image]):
            if used[d.image][j] or (gt.label is not None and gt.label != d.cls):
                continue
            value = _iou(d.box, gt.coords)
            if value > best_iou:
                best, best_iou = j, value
        if best >= 0 and best_iou >= iou_threshold:
            used[d.image][best] = True
            matched[k], ious[k] = best, best_iou
    return matched, ious


def detection_pointing_game(m: Model, x, maps, detections, boxes, *, iou_threshold: float = IOU_THRESHOLD,
                            tolerance: float = TOLERANCE, channels: str = "sum",
                            progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """The pointing game per detection: 1.0 when a detection's map points (its first maximum, within ``tolerance``
    pixels) at the ground-truth box matched to that detection, else 0.0 (module docstring).

    Args:
        m: the detector (:func:`onnx_cnnviz.load` with ``task="detector"``); its classes bound the boxes' labels.
        x: (N, C, H, W) the images the detections were found in.
        maps: (D, H, W) one map per detection, in the order of the flat detections (or (D, C, H, W) attributions
            reduced per pixel by ``channels``).
        detections: the :class:`~onnx_cnnviz.tasks.Detection` objects (flat, or one list per image).
        boxes: one sequence of ground-truth boxes per image of ``x``, in its pixels, labelled with their class.
        iou_threshold: the least IoU at which a detection finds its box.
        tolerance: Zhang et al.'s tolerance in pixels (15; 0: the point must be inside the box).
        channels: how attributions become one value per pixel (:func:`~onnx_cnnviz.metrics.base.pixel_maps`).
        progress: ``progress(done, total)`` after each detection.

    Returns:
        One value per *matched* detection (1.0 hit, 0.0 miss); ``targets`` their classes; ``details``:
        ``detection`` (M,) their indices among the flat detections, ``box`` (M,) their boxes' indices, ``iou``,
        ``point`` (M, 2) the (x, y) pointed at, ``distance`` to the box, ``ties``, ``energy`` the share of the
        map's positive part inside the box (Score-CAM's energy game), ``unmatched`` the detections left out.

    Raises:
        InputError: bad images, maps, boxes or thresholds, or no detection matches a box (nothing to score).
    """
    flat = flat_detections(detections)
    tolerance = _non_negative(tolerance, "tolerance")
    x = check_x(m, x)
    n, _, h, w = x.shape
    if max(d.image for d in flat) >= n:
        raise InputError(f"a detection belongs to image {max(d.image for d in flat)}, but x holds {n} images.")
    heat = pixel_maps(check_maps(maps, x[[d.image for d in flat]], "detection maps"), channels)
    gts = _checked_boxes(boxes, n, w, h, getattr(m, "num_classes", None))
    matched, ious = match_detections(flat, gts, iou_threshold)
    rows = np.flatnonzero(matched >= 0)
    if not rows.size:
        raise InputError(f"no detection matches a ground-truth box of its class at IoU >= {iou_threshold} "
                         f"({len(flat)} detections): the pointing game has nothing to score; check the boxes' "
                         "labels and pixels (the model input's), or lower iou_threshold.")
    hits, points = np.zeros(len(rows)), np.zeros((len(rows), 2), np.int64)
    distances, ties, energy = np.zeros(len(rows)), np.zeros(len(rows), np.int64), np.zeros(len(rows))
    for r, k in enumerate(rows):
        gt = gts[flat[k].image][matched[k]].pixels(w, h)
        points[r], ties[r] = peak(heat[k])
        distances[r] = distance_to_boxes(points[r], [gt])
        hits[r] = float(pointing_hit(distances[r], tolerance))
        energy[r] = energy_share(heat[k], box_mask([gt], h, w))[0]
        if progress is not None:
            progress(r + 1, len(rows))
    return MetricResult("detection-pointing-game", hits, np.array([flat[k].cls for k in rows], np.int64), True, None,
                        details={"detection": rows, "box": matched[rows], "iou": ious[rows], "point": points,
                                 "distance": distances, "ties": ties, "energy": energy, "tolerance": tolerance,
                                 "iou_threshold": float(iou_threshold), "unmatched": int(len(flat) - len(rows))})


class _SimilarityReadout(Readout):
    """Reads, per perturbed head output, the best D-RISE similarity to a target detection (``targets``: the
    detections' row indices)."""

    def __init__(self, decoder, reference: list, conf: float, iou: float, max_det: int):
        super().__init__("similarity", "the detection's D-RISE similarity (IoU x objectness x class cosine) to the "
                         "best-matching detection of the perturbed image (Petsiuk et al. 2021)", _identity)
        object.__setattr__(self, "decoder", decoder)
        object.__setattr__(self, "reference", reference)  # per row: (box (1, 4), objectness (1,), classes (1, C))
        object.__setattr__(self, "conf", conf)
        object.__setattr__(self, "iou", iou)
        object.__setattr__(self, "max_det", max_det)

    def __call__(self, scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
        from ..tasks.drise import similarity
        from ..tasks.nms import nms

        out = np.zeros(len(scores))
        for b, (head, row) in enumerate(zip(np.asarray(scores), np.asarray(targets))):
            cand = self.decoder.candidates(head)
            ok = np.flatnonzero(cand.scores >= self.conf)
            if not ok.size:
                continue  # nothing detected: the detection is lost
            kept = ok[nms(cand.boxes[ok], cand.scores[ok], self.iou, cand.classes[ok], self.max_det)]
            obj, cls = self.decoder.vectors(head, cand.elements[kept])
            box, obj_t, cls_t = self.reference[int(row)]
            out[b] = float(similarity(box, obj_t, cls_t, cand.boxes[kept], obj, cls).max())
        return out


def _identity(s: np.ndarray) -> np.ndarray:
    return s


def _detection_curves(kind: str, m: Model, x, maps, detections, score: str, baseline, pixels_per_step,
                      conf: float, iou: float, max_det: int, channels: str, batch_size, progress) -> MetricResult:
    flat = flat_detections(detections)
    if score not in SCORES:
        raise InputError(f"score must be one of {', '.join(SCORES)}, not {score!r}.")
    if getattr(m, "decoder", None) is None:
        raise InputError(f"detection metrics need a detector: load the model with task='detector' (this one is a "
                         f"{m.task}).")
    for name, value in (("conf", conf), ("iou", iou)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise InputError(f"{name} must be a number in [0, 1], not {value!r}.")
    x = check_x(m, x)
    if max(d.image for d in flat) >= len(x):
        raise InputError(f"a detection belongs to image {max(d.image for d in flat)}, but x holds {len(x)} images.")
    rows = x[[d.image for d in flat]]
    classes = np.array([d.cls for d in flat], np.int64)
    name = f"detection-{kind}"
    if score == "element":
        result = _curves(kind, m, rows, maps, flat, baseline, pixels_per_step, "score", channels, batch_size,
                         progress, name=name)
        result.targets = classes
        result.details["score"] = score
        return result

    def target_read(clean: np.ndarray):
        reference = []
        for d, head in zip(flat, clean):
            obj, cls = m.decoder.vectors(head, np.array([d.element], np.int64))
            reference.append((np.asarray([d.box], np.float64), obj, cls))
        index = np.arange(len(flat)).view(TargetRows)
        index.classes = classes
        return index, _SimilarityReadout(m.decoder, reference, float(conf), float(iou), int(max_det))

    result = _curves(kind, m, rows, maps, None, baseline, pixels_per_step, "score", channels, batch_size, progress,
                     target_read=target_read, name=name)
    result.details.update(score=score, conf=float(conf), iou=float(iou))
    return result


def detection_deletion(m: Model, x, maps, detections, *, score: str = "similarity", baseline=0.0,
                       pixels_per_step: int | None = None, conf: float = 0.25, iou: float = 0.45,
                       max_det: int = 300, channels: str = "sum", batch_size: int | None = None,
                       progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """Deletion of a detection (Petsiuk et al., CVPR 2021): the AUC of the detection's score as its map's most
    important pixels are replaced by ``baseline``. Lower is better.

    ``AUC = sum_t (f_t + f_(t+1)) / 2 * (a_(t+1) - a_t)`` (:func:`onnx_cnnviz.metrics.curves.auc`), with ``a_t`` the
    fraction of pixels removed and ``f_t`` (``score="similarity"``) ``max_{d'} IoU(L, L') O O' cos(P, P')`` over the
    detections ``d'`` of the perturbed image (decoded with ``conf``, ``iou``, ``max_det``, as
    :func:`onnx_cnnviz.tasks.detect`), or (``score="element"``) the detection's head element.

    Args:
        m: a model loaded with ``task="detector"``.
        x: (N, C, H, W) the images the detections were found in.
        maps: (D, H, W) one map per detection, in the order of the flat detections.
        detections: the :class:`~onnx_cnnviz.tasks.Detection` objects (flat, or one list per image).
        score: ``"similarity"`` or ``"element"``.
        baseline: what replaces the pixels (as :func:`onnx_cnnviz.metrics.deletion`).
        pixels_per_step: pixels per step (default ``8 W``).
        conf: the detection threshold on the perturbed images.
        iou: their NMS threshold.
        max_det: detections kept per perturbed image.
        channels: how attributions become one value per pixel.
        batch_size: perturbed images per run.
        progress: ``progress(done, total)`` after each batch.

    Returns:
        One AUC per detection, the curves; ``targets`` the detections' classes.

    Raises:
        InputError: bad images, maps, detections or parameters, or a model that is no detector.
    """
    return _detection_curves("deletion", m, x, maps, detections, score, baseline, pixels_per_step, conf, iou,
                             max_det, channels, batch_size, progress)


def detection_insertion(m: Model, x, maps, detections, *, score: str = "similarity", baseline="blur",
                        pixels_per_step: int | None = None, conf: float = 0.25, iou: float = 0.45,
                        max_det: int = 300, channels: str = "sum", batch_size: int | None = None,
                        progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """Insertion of a detection (Petsiuk et al., CVPR 2021): the AUC of the detection's score as its map's most
    important pixels are restored into ``baseline`` (RISE's blurred image by default). Higher is better.

    The curve of :func:`detection_deletion` run from the baseline to the image; arguments, result and errors as
    there.

    Args:
        m: a model loaded with ``task="detector"``.
        x: (N, C, H, W) the images the detections were found in.
        maps: (D, H, W) one map per detection.
        detections: the :class:`~onnx_cnnviz.tasks.Detection` objects.
        score: ``"similarity"`` or ``"element"``.
        baseline: the image the pixels are restored into (as :func:`onnx_cnnviz.metrics.insertion`).
        pixels_per_step: pixels per step.
        conf: the detection threshold on the perturbed images.
        iou: their NMS threshold.
        max_det: detections kept per perturbed image.
        channels: how attributions become one value per pixel.
        batch_size: perturbed images per run.
        progress: ``progress(done, total)`` after each batch.

    Returns:
        One AUC per detection, and the curves.

    Raises:
        InputError: bad images, maps, detections or parameters, or a model that is no detector.
    """
    return _detection_curves("insertion", m, x, maps, detections, score, baseline, pixels_per_step, conf, iou,
                             max_det, channels, batch_size, progress)


def detection_randomisation(m: Model, x, detections, methods=("saliency", "gradcam"), **options):
    """The model parameter randomisation test (Adebayo et al., NeurIPS 2018) on a detector, one row per detection.

    Each detection's maps on the trained detector and on each randomised copy explain the same head element (its
    :class:`~onnx_cnnviz.tasks.Detection` seed), all detections in one batched run per model.

    Args:
        m: a model loaded with ``task="detector"`` (never modified).
        x: (N, C, H, W) the images the detections were found in.
        detections: the :class:`~onnx_cnnviz.tasks.Detection` objects (flat, or one list per image).
        methods: registry names.
        **options: :func:`onnx_cnnviz.metrics.randomisation_check`'s keywords (``stages``, ``mode``, ``seed``,
            ``layer``, ...).

    Returns:
        A :class:`~onnx_cnnviz.metrics.SanityResult` whose images are the detections (``targets``: their classes).

    Raises:
        InputError: bad detections, or anything :func:`~onnx_cnnviz.metrics.randomisation_check` refuses.
    """
    from .sanity import randomisation_check

    flat = flat_detections(detections)
    if getattr(m, "decoder", None) is None:
        raise InputError(f"the detection sanity check needs a detector: load the model with task='detector' (this "
                         f"one is a {m.task}).")
    x = check_x(m, x)
    if max(d.image for d in flat) >= len(x):
        raise InputError(f"a detection belongs to image {max(d.image for d in flat)}, but x holds {len(x)} images.")
    return randomisation_check(m, x[[d.image for d in flat]], methods, flat, **options)

