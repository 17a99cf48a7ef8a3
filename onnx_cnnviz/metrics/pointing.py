"""Localisation metrics: does a map point at the object? Three numbers against ground-truth boxes, from one entry
point, :func:`localisation`, and each under its registry name.

* **pointing game** (``pointing-game``; Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016 /
  IJCV 2018): a hit when the map's maximum lies within ``tolerance`` pixels (15, the paper's) of a box of the target
  class. As TorchRay's ``torchray.benchmark.pointing_game`` (which reproduces the paper's numbers): the point is the
  *first* maximum in raster order (``argmax`` of the flattened map; the number of tied maxima is kept in
  ``details["ties"]``, so a flat map shows), and the hit test is ``d^2 < tolerance^2`` with ``d`` the distance from the
  point to the nearest pixel of the boxes (pixel centres, as TorchRay's mask test). One deviation: a point inside a box
  is always a hit, so ``tolerance=0`` means "inside" (TorchRay's strict test would never hit at 0; for any tolerance
  >= 1 the two agree). The tolerance is in the map's pixels, the model input's; TorchRay measures it after resizing
  the map to the original image.
* **energy-based pointing game** (``energy-pointing-game``; Wang et al., "Score-CAM", CVPRW 2020, Sec. 5.2): the share
  of the map's energy inside the union of the boxes, ``sum_{in} E / sum E``. Convention: ``E = max(map, 0)``, the
  map's positive part. On the maps the library returns by default for the CAM family and saliency (min-max
  normalised, so in [0, 1] with minimum 0) this is exactly the Score-CAM authors' code (``utils/energyPointGame.py``
  sums the map as it is); for signed maps (occlusion, SmoothGrad, ...) only positive evidence counts, so "no effect"
  stays zero (a min-max normalisation would turn a signed map's zero into energy all over the background). A map with
  no positive energy scores 0 (nothing points at the object) and is flagged in ``details["no_energy"]``.
* **localisation accuracy** (``localisation-accuracy``; Zhou et al., CAM, CVPR 2016, Sec. 3.1 / Table 2): the map
  becomes a box by the project's rule (:func:`onnx_cnnviz.methods.localise.box_from_map`: the largest connected
  region at >= ``threshold`` (20%) of the map's maximum), a hit when its IoU (:func:`onnx_cnnviz.iou`) with a box of
  the target class is >= ``iou_threshold`` (0.5). ``variant="gt-known"``: that alone; ``variant="top-1"``: also the
  model's top-1 class must be right, i.e. equal the target and label one of the image's boxes (CAM's top-1
  localisation, as ``benchmarks/localisation.py`` defines it; give the true classes as ``targets``). Both per-image
  columns are in ``details["gt_known"]`` and ``details["top1"]`` whichever variant the values hold. The threshold is
  a fraction of each map's own maximum: the project's ``localise`` applies it to raw (``normalize=False``) maps, on
  which a min-max normalised map's 20% is a little higher unless its minimum is 0.

Which boxes count: those of the image labelled with the target class, and every unlabelled one (a label that is
no class of the model, 7 on a 6-class model, is an :class:`InputError`: it would match no target); when an image's boxes
are labelled and none has the target class, the class is not in the image and the image scores 0 (a miss, the top-1
rule's "class wrong"), with ``details["class_in_image"]`` False. ``targets`` None means each image's top-1 class, as
every metric. Values are per image: 1.0 / 0.0 for the hits, the energy share for the energy game, so
:meth:`MetricResult.mean` is the accuracy over images; TorchRay's reported accuracy is the mean of per-class
accuracies instead (:func:`class_mean`).

``maps``: (N, H, W) at the images' size, or (N, C, H, W) attributions reduced per pixel by ``channels`` (as the other
metrics, :func:`~onnx_cnnviz.metrics.base.pixel_maps`; TorchRay reduces gradients by ``"max-abs"``). ``boxes``: one
sequence per image of :class:`~onnx_cnnviz.metrics.boxes.Box` (or 4 numbers), half-open, in the model input's pixels
(:func:`~onnx_cnnviz.metrics.boxes.to_input` maps them from the original images). These metrics read the maps only;
the model runs once, for the top-1 classes.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

from ..errors import InputError
from ..methods.localise import box_from_map, iou
from ..model import Model
from .base import (MetricResult, batch_size_of, check_maps, check_x, clean_scores, pixel_maps, result_targets,
                   targets_of)
from .boxes import Box, check_inside, check_labels

#: Zhang et al.'s tolerance, in pixels (TorchRay's default).
TOLERANCE = 15
#: Zhou et al.'s threshold (a fraction of the map's maximum) and the usual IoU for a correct box.
THRESHOLD, IOU_THRESHOLD = 0.2, 0.5
VARIANTS = ("gt-known", "top-1")


@dataclass
class _Batch:
    """What the three metrics share: per-pixel maps (N, H, W), targets and top-1 classes (N,), every image's checked
    boxes (all of them, in the input's pixels) and the ones that count for its target."""
    heat: np.ndarray
    targets: np.ndarray
    predicted: np.ndarray
    boxes: list
    relevant: list

    @property
    def class_in_image(self) -> np.ndarray:
        return np.array([bool(r) for r in self.relevant])


def _prepare(m: Model, x, maps, boxes, targets, channels: str, batch_size) -> _Batch:
    x = check_x(m, x)
    heat = pixel_maps(check_maps(maps, x), channels)
    n, h, w = heat.shape
    checked = check_boxes(boxes, n, w, h)
    check_labels(checked, m.num_classes, "boxes")  # a label of no class would score 0.0 silently
    scores = clean_scores(m, x, batch_size_of(m, batch_size))
    targets = result_targets(targets_of(m, targets, scores))  # a detection or region: the class it explains
    predicted = np.argmax(scores, axis=1).astype(np.int64)
    relevant = [[box.pixels(w, h) for box in image if box.label is None or box.label == t]
                for image, t in zip(checked, targets)]
    return _Batch(heat, targets, predicted, checked, relevant)


def check_boxes(boxes, n: int, width: int, height: int) -> list[list[Box]]:
    """``boxes`` for ``n`` images of ``width`` x ``height`` pixels, checked: one non-empty sequence per image, each
    item a :class:`Box` or 4 numbers within the image (half-open). Returns lists of :class:`Box`."""
    if boxes is None:
        raise InputError(f"ground-truth boxes are required: one list of (x0, y0, x1, y1) boxes per image ({n} "
                         "images), in the model input's pixels.")
    if isinstance(boxes, (str, bytes)) or not hasattr(boxes, "__len__"):
        raise InputError(f"boxes must be a list with one sequence of boxes per image, not {type(boxes).__name__}.")
    if len(boxes) != n:
        raise InputError(f"boxes hold {len(boxes)} entries for {n} images; give one list of boxes per image.")
    out = []
    for i, image in enumerate(boxes):
        if isinstance(image, (Box, str, bytes)) or not hasattr(image, "__iter__"):
            raise InputError(f"the boxes of image {i} must be a list of boxes, not {image!r}.")
        image = list(image)
        if not image:
            raise InputError(f"image {i} has no ground-truth box; a localisation metric needs at least one box per "
                             "image (leave the image out, or add its box).")
        out.append(check_inside(image, width, height, i, space="boxes are in the model input's pixels (scale them "
                                                               "with metrics.boxes.to_input)"))
    return out


def _non_negative(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise InputError(f"{name} must be a number >= 0, not {value!r}.")
    return float(value)


def _fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise InputError(f"{name} must be a number in (0, 1], not {value!r}.")
    return float(value)


def _progress(progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


# ---------------------------------------------------------------------------------------------------------------
# per image
# ---------------------------------------------------------------------------------------------------------------
def peak(heat: np.ndarray) -> tuple:
    """``((u, v), ties)``: the first maximum of an (H, W) map in raster order (torch's and TorchRay's argmax) as
    ``(x, y)``, and how many pixels share the maximum."""
    flat = heat.reshape(-1)
    index = int(np.argmax(flat))
    ties = int(np.count_nonzero(flat == flat[index]))
    return (index % heat.shape[1], index // heat.shape[1]), ties


def distance_to_boxes(point, boxes) -> float:
    """Euclidean distance from pixel ``point`` (x, y) to the nearest pixel of the half-open pixel ``boxes`` (0 inside
    one; inf when there are none)."""
    u, v = point
    best = math.inf
    for x0, y0, x1, y1 in boxes:
        dx = u - min(max(u, x0), x1 - 1)
        dy = v - min(max(v, y0), y1 - 1)
        best = min(best, math.hypot(dx, dy))
    return best


def pointing_hit(distance: float, tolerance: float) -> bool:
    """Zhang et al.'s hit: inside a box, or ``distance^2 < tolerance^2`` (TorchRay's strict test)."""
    return distance == 0 or distance * distance < tolerance * tolerance


def box_mask(boxes, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the union of half-open pixel ``boxes``."""
    mask = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def energy_share(heat: np.ndarray, mask: np.ndarray) -> tuple:
    """``(share, total)``: the share of ``max(heat, 0)`` inside ``mask``, and the total positive energy (share 0 when
    the total is 0). Summed in float64 so a large map's share is not rounded."""
    energy = np.maximum(heat, 0).astype(np.float64)
    total = float(energy.sum())
    return (float(energy[mask].sum()) / total if total > 0 else 0.0), total


# ---------------------------------------------------------------------------------------------------------------
# the three metrics
# ---------------------------------------------------------------------------------------------------------------
def _pointing(batch: _Batch, tolerance: float, progress) -> MetricResult:
    n = len(batch.heat)
    hits, points, distances, ties = np.zeros(n), np.zeros((n, 2), np.int64), np.zeros(n), np.zeros(n, np.int64)
    for i, heat in enumerate(batch.heat):
        points[i], ties[i] = peak(heat)
        distances[i] = distance_to_boxes(points[i], batch.relevant[i])
        hits[i] = float(pointing_hit(distances[i], tolerance))
        _progress(progress, i + 1, n)
    return MetricResult("pointing-game", hits, batch.targets, True, None,
                        details={"point": points, "distance": distances, "ties": ties, "tolerance": tolerance,
                                 "class_in_image": batch.class_in_image})


def _energy(batch: _Batch, progress) -> MetricResult:
    n, h, w = batch.heat.shape
    shares, totals = np.zeros(n), np.zeros(n)
    for i, heat in enumerate(batch.heat):
        shares[i], totals[i] = energy_share(heat, box_mask(batch.relevant[i], h, w))
        _progress(progress, i + 1, n)
    return MetricResult("energy-pointing-game", shares, batch.targets, True, None,
                        details={"energy": totals, "no_energy": totals == 0, "class_in_image": batch.class_in_image})


def _accuracy(batch: _Batch, threshold: float, iou_threshold: float, variant: str, progress) -> MetricResult:
    n = len(batch.heat)
    labelled = [any(box.label is not None for box in image) for image in batch.boxes]
    if variant == "top-1" and not all(labelled):
        i = labelled.index(False)
        raise InputError(f"top-1 localisation accuracy needs class labels on the boxes (whether the top-1 class is "
                         f"right), and image {i}'s boxes have none; label them or use variant='gt-known'.")
    boxes, ious = np.zeros((n, 4), np.int64), np.zeros(n)
    for i, heat in enumerate(batch.heat):
        boxes[i] = box_from_map(heat, threshold)[1]
        ious[i] = max((iou(tuple(boxes[i]), gt) for gt in batch.relevant[i]), default=0.0)
        _progress(progress, i + 1, n)
    gt_known = (ious >= iou_threshold).astype(np.float64)
    right = np.array([batch.predicted[i] == batch.targets[i] and batch.targets[i] in {b.label for b in image}
                      for i, image in enumerate(batch.boxes)])
    top1 = gt_known * right if all(labelled) else None
    values = gt_known if variant == "gt-known" else top1
    return MetricResult("localisation-accuracy", values, batch.targets, True, None,
                        details={"box": boxes, "iou": ious, "gt_known": gt_known, "top1": top1,
                                 "predicted": batch.predicted, "variant": variant, "threshold": threshold,
                                 "iou_threshold": iou_threshold, "class_in_image": batch.class_in_image})


def pointing_game(m: Model, x, maps, targets=None, *, boxes=None, tolerance: float = TOLERANCE, channels: str = "sum",
                  batch_size: int | None = None, progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """Zhang et al.'s pointing game: per image 1.0 when the map's first maximum lies within ``tolerance`` pixels of a
    box of the target class, else 0.0 (module docstring). ``details``: ``point`` (N, 2) the (x, y) pointed at,
    ``distance`` to the nearest box, ``ties`` the pixels sharing the maximum, ``class_in_image``."""
    tolerance = _non_negative(tolerance, "tolerance")
    batch = _prepare(m, x, maps, boxes, targets, channels, batch_size)
    return _pointing(batch, tolerance, progress)


def energy_pointing_game(m: Model, x, maps, targets=None, *, boxes=None, channels: str = "sum",
                         batch_size: int | None = None,
                         progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """Score-CAM's energy-based pointing game: per image the share of ``max(map, 0)`` inside the target class's boxes
    (module docstring). ``details``: ``energy`` the total, ``no_energy`` (maps with none, scored 0),
    ``class_in_image``."""
    batch = _prepare(m, x, maps, boxes, targets, channels, batch_size)
    return _energy(batch, progress)


def localisation_accuracy(m: Model, x, maps, targets=None, *, boxes=None, threshold: float = THRESHOLD,
                          iou_threshold: float = IOU_THRESHOLD, variant: str = "gt-known", channels: str = "sum",
                          batch_size: int | None = None,
                          progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """CAM's localisation accuracy: per image 1.0 when the box of the map's largest region at >= ``threshold`` of its
    maximum has IoU >= ``iou_threshold`` with a box of the target class (``variant="top-1"``: and the model's top-1
    class is the target, labelling a box). ``details``: ``box`` (N, 4) the boxes drawn, ``iou`` the best IoU,
    ``gt_known`` and ``top1`` (None without labels) the two columns, ``predicted`` the top-1 classes."""
    threshold, iou_threshold = _fraction(threshold, "threshold"), _fraction(iou_threshold, "iou_threshold")
    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}.")
    batch = _prepare(m, x, maps, boxes, targets, channels, batch_size)
    return _accuracy(batch, threshold, iou_threshold, variant, progress)


def localisation(m: Model, x, maps, boxes, targets=None, *, tolerance: float = TOLERANCE,
                 threshold: float = THRESHOLD, iou_threshold: float = IOU_THRESHOLD, variant: str = "gt-known",
                 channels: str = "sum", batch_size: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, MetricResult]:
    """The three localisation metrics of ``maps`` against ``boxes`` from one pass over the checked inputs:
    ``{"pointing-game": ..., "energy-pointing-game": ..., "localisation-accuracy": ...}`` (arguments as
    :func:`pointing_game`, :func:`energy_pointing_game` and :func:`localisation_accuracy`). ``progress`` counts the
    images of the three passes."""
    tolerance = _non_negative(tolerance, "tolerance")
    threshold, iou_threshold = _fraction(threshold, "threshold"), _fraction(iou_threshold, "iou_threshold")
    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}.")
    batch = _prepare(m, x, maps, boxes, targets, channels, batch_size)
    n = len(batch.heat)

    def part(offset):
        return None if progress is None else (lambda done, _total: progress(offset + done, 3 * n))

    return {"pointing-game": _pointing(batch, tolerance, part(0)),
            "energy-pointing-game": _energy(batch, part(n)),
            "localisation-accuracy": _accuracy(batch, threshold, iou_threshold, variant, part(2 * n))}


def class_mean(result: MetricResult) -> float:
    """The mean over classes of each class's mean value (TorchRay's pointing-game accuracy), where
    :meth:`MetricResult.mean` is the mean over images."""
    classes = np.unique(result.targets)
    return float(np.mean([result.values[result.targets == c].mean() for c in classes]))


__all__ = ["TOLERANCE", "THRESHOLD", "IOU_THRESHOLD", "VARIANTS", "check_boxes", "peak", "distance_to_boxes",
           "pointing_hit", "box_mask", "energy_share", "pointing_game", "energy_pointing_game",
           "localisation_accuracy", "localisation", "class_mean"]
