"""Weakly supervised localisation: a class's map -> foreground mask -> bounding box.

* From a CAM or Grad-CAM (Zhou et al., CVPR 2016, Sec. 3.1): keep the pixels whose value is above ``threshold``
  (20%) of the map's maximum, and take the bounding box of the largest connected component.
* From a saliency map (Simonyan et al., ICLR 2014 workshop, Sec. 3.1 / 6): the saliency only marks the most
  discriminative pixels, so it seeds a colour segmentation instead: GrabCut (Rother et al. 2004, ``cv2.grabCut``)
  with its foreground colour model estimated from the pixels above the ``fg_quantile`` (95%) of saliency and its
  background model from those below the ``bg_quantile`` (30%); the box is that of the largest connected component
  of the segmentation.

Boxes are half-open pixel boxes ``(x0, y0, x1, y1)`` in the model input's coordinates: ``image[y0:y1, x0:x1]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .. import image as im
from ..errors import InputError
from ..model import Model
from .arguments import batch_size as check_batch_size
from .arguments import count_of_classes

#: The registry names of the methods localise draws boxes from.
METHODS = ("cam", "gradcam", "saliency")


@dataclass
class Localisation:
    """One class's localisation in one image."""
    target: int
    score: float  # the class score (before softmax)
    mask: np.ndarray  # (H, W) bool foreground
    box: tuple  # (x0, y0, x1, y1), half-open; (0, 0, 0, 0) when the mask is empty
    heatmap: np.ndarray  # (H, W) float32 map it came from


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (all False when the mask is empty)."""
    mask = np.asarray(mask, bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


def mask_box(mask: np.ndarray) -> tuple:
    """The bounding box ``(x0, y0, x1, y1)`` of a boolean mask's True pixels (half-open)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def box_from_map(heatmap, threshold: float = 0.2) -> tuple:
    """Zhou et al.'s rule: ``(mask, box)`` of the largest connected region where ``heatmap >= threshold * max``."""
    h = np.asarray(heatmap, dtype=np.float32)
    if h.ndim != 2:
        raise InputError(f"heatmap must be (H, W), not {h.shape}.")
    peak = float(h.max())
    if not np.isfinite(peak) or peak <= 0:
        return np.zeros(h.shape, bool), (0, 0, 0, 0)
    mask = largest_component(h >= threshold * peak)
    return mask, mask_box(mask)


def grabcut_from_saliency(picture, saliency, fg_quantile: float = 0.95, bg_quantile: float = 0.3, iterations: int = 5,
                          seed: int = 0) -> tuple:
    """Simonyan et al.'s rule: ``(mask, box)`` from GrabCut seeded by the saliency quantiles.

    Pixels with saliency >= the ``fg_quantile`` are sure foreground, <= the ``bg_quantile`` sure background; the rest
    start as probable foreground above the median saliency, probable background below. ``picture``: the image as
    shown (uint8 RGB, same size as the map). OpenCV's RNG is seeded with ``seed`` so the GMM initialisation is
    reproducible. The mask is the largest connected component of GrabCut's foreground.
    """
    rgb = im.read_image(picture)
    s = np.asarray(saliency, dtype=np.float32)
    if s.shape != rgb.shape[:2]:
        raise InputError(f"the saliency map {s.shape} and the picture {rgb.shape[:2]} differ in size.")
    hi, lo, mid = np.quantile(s, fg_quantile), np.quantile(s, bg_quantile), np.median(s)
    gc = np.where(s >= mid, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    gc[s <= lo] = cv2.GC_BGD
    gc[s >= hi] = cv2.GC_FGD
    if not (gc == cv2.GC_BGD).any() or not (gc == cv2.GC_FGD).any():
        return np.zeros(s.shape, bool), (0, 0, 0, 0)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(int(seed))
    cv2.grabCut(np.ascontiguousarray(rgb[:, :, ::-1]), gc, None, bgd, fgd, int(iterations), cv2.GC_INIT_WITH_MASK)
    mask = largest_component((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD))
    return mask, mask_box(mask)


def localise(m: Model, x, method: str = "cam", targets=None, top: int = 1, threshold: float = 0.2, layer=None,
             pictures=None, preprocess=None, fg_quantile: float = 0.95, bg_quantile: float = 0.3,
             batch_size: int | None = None) -> list:
    """Boxes for the ``top`` classes (or ``targets``) of each image: a list per image of :class:`Localisation`.

    ``method``: "cam" (Zhou et al.; needs a GAP head), "gradcam" (the same threshold rule on Grad-CAM, which works
    for any head), or "saliency" (Simonyan et al.: saliency + GrabCut; ``pictures`` are the images as shown, by
    default ``x`` deprocessed with ``preprocess``). Maps are used raw (after ReLU) and upsampled bilinearly, so
    ``threshold`` is a fraction of each map's own maximum. ``targets``: None (the top classes), an int, one int per
    image, or an (N, k) array of classes. ``top``: how many of the highest-scoring classes, from 1 to the model's
    class count (an :class:`InputError` otherwise, rather than a silently clipped count); read only when ``targets``
    is None. ``batch_size``: None or an int >= 1.
    """
    from .cam import cam, grad_cam
    from .features import display_image
    from .gradients import saliency

    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
    batch_size = check_batch_size(batch_size)
    if targets is None:  # top is read only without targets; 0, 2.5 or more than the classes are refused, not clipped
        top = count_of_classes(top, m.num_classes if m.task == "classifier" else None, "top")
    x = m.check_input(x)
    n = x.shape[0]
    scores = m.scores(x, batch_size=batch_size)
    if targets is None:
        classes = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    else:
        arr = np.asarray(targets)
        classes = arr.reshape(n, -1) if arr.ndim == 2 else m.targets_for(targets, n)[:, None]
    out = [[] for _ in range(n)]
    if method == "saliency" and pictures is None:
        pictures = [display_image(row, preprocess, m) for row in x]
    for col in range(classes.shape[1]):
        t = classes[:, col].astype(np.int64)
        if method == "cam":
            maps = cam(m, x, t, layer=layer, normalize=False, batch_size=batch_size)
        elif method == "gradcam":
            maps = grad_cam(m, x, t, layer=layer, normalize=False, batch_size=batch_size)
        else:
            maps = saliency(m, x, t, batch_size=batch_size)
        for i in range(n):
            if method == "saliency":
                mask, box = grabcut_from_saliency(pictures[i], maps[i], fg_quantile, bg_quantile)
            else:
                mask, box = box_from_map(maps[i], threshold)
            out[i].append(Localisation(int(t[i]), float(scores[i, t[i]]), mask, box, maps[i].astype(np.float32)))
    return out


def iou(a, b) -> float:
    """Intersection over union of two half-open boxes ``(x0, y0, x1, y1)``."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def draw_boxes(picture, boxes, colors=None, labels=None, thickness: int = 2) -> np.ndarray:
    """The picture (uint8 RGB) with boxes drawn on it (and a label above each when given)."""
    canvas = im.read_image(picture).copy()
    palette = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 160, 0), (200, 0, 200)]
    for k, box in enumerate(boxes):
        color = tuple(int(c) for c in (colors[k] if colors is not None else palette[k % len(palette)]))
        x0, y0, x1, y1 = (int(v) for v in box)
        if x1 <= x0 or y1 <= y0:
            continue
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), color, thickness)
        if labels is not None and labels[k]:
            cv2.putText(canvas, str(labels[k]), (x0 + 2, max(10, y0 + 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1,
                        cv2.LINE_AA)
    return canvas
