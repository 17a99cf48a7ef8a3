"""Average drop and increase in confidence (Chattopadhyay et al., "Grad-CAM++: Generalized Gradient-based Visual
Explanations for Deep Convolutional Networks", WACV 2018, Sec. 6.1).

The *explanation map* of an image is the image multiplied by its map, ``E = M * x`` (M in [0, 1], shared by the
channels): what the map keeps of the image. With ``Y`` the target's confidence on ``x`` and ``O`` on ``E``:

* **average drop** = ``mean_i max(0, Y_i - O_i) / Y_i``: how much confidence is lost when only the explained
  region is shown; lower is better. The paper reports it in percent; this is the fraction (x100 for the paper's
  tables), as torchcam's ``ClassificationMetric`` reports it;
* **increase in confidence** = ``mean_i [O_i > Y_i]``: how often the explained region alone is *more* convincing;
  higher is better.

The confidence is the probability by default (the paper's; torchcam with ``logits_fn=softmax``); ``output="score"``
reads the class score, which must then be positive on the unperturbed image for the drop to be a fraction.
torchcam divides by ``Y + 1e-7``; this divides by ``Y`` (the paper's formula): the two differ by less than 1e-6
unless ``Y`` is itself below 1e-3. pytorch-grad-cam's ``DropInConfidence`` is a different quantity, the absolute
drop ``max(0, Y - O)``, not divided by ``Y``.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError
from ..model import Model
from .base import (MetricResult, batch_size_of, check_maps, check_x, clean_scores, pixel_maps, readout, score_jobs,
                   result_targets, targets_of)

#: How far a map may stray outside [0, 1] (float rounding of a normalised, upsampled map).
RANGE_TOLERANCE = 1e-5


def _unit_maps(maps: np.ndarray) -> np.ndarray:
    """The maps, checked to lie in [0, 1]: they multiply the image."""
    lo = maps.reshape(len(maps), -1).min(axis=1)
    hi = maps.reshape(len(maps), -1).max(axis=1)
    bad = np.flatnonzero((lo < -RANGE_TOLERANCE) | (hi > 1 + RANGE_TOLERANCE))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"the map of image {i} spans [{lo[i]:.4g}, {hi[i]:.4g}]; average drop multiplies the image "
                         "by its map, which must lie in [0, 1]: min-max normalise it (the map functions' "
                         "normalize=True).")
    return maps


def confidence_change(m: Model, x, maps, targets=None, *, output: str = "probability", channels: str = "sum",
                      batch_size: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> tuple[MetricResult, MetricResult]:
    """Average drop and increase in confidence (Chattopadhyay et al., "Grad-CAM++", WACV 2018), from one run.

    ``Y`` is the target's confidence on the image and ``O`` on ``map (.) image``; average drop is
    ``mean(max(0, Y - O) / Y)``, increase in confidence ``mean(O > Y)``.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) preprocessed images, as the model takes them.
        maps: (N, H, W) maps in [0, 1], or (N, C, H, W) attributions reduced per pixel by ``channels`` (then in
            [0, 1]).
        targets: the classes (or target objects) the maps explain; None: each image's top-1.
        output: ``"probability"`` (the softmax of the scores, or the model's own probabilities) or ``"score"``
            (the class score before any final Softmax).
        channels: how (N, C, H, W) attributions become one value per pixel: ``"sum"``, ``"abs-sum"`` or
            ``"max-abs"`` (:func:`~onnx_cnnviz.metrics.base.pixel_maps`).
        batch_size: perturbed images per onnxruntime run (default: the model's).
        progress: ``progress(done, total)``, called after each batch with the perturbed images scored so far and
            their total.

    Returns:
        ``(drop, increase)``: one value per image each (the drop fraction; 1.0 or 0.0 for an increase), whose
        :meth:`~onnx_cnnviz.metrics.base.MetricResult.mean` is the paper's metric; ``details["clean"]`` and
        ``details["masked"]`` hold ``Y`` and ``O``.

    Raises:
        InputError: images, maps, targets or parameters of the wrong shape or value (the message names which).
        NumericalError: the model produced NaN or Inf.
    """
    x = check_x(m, x)
    maps = _unit_maps(pixel_maps(check_maps(maps, x), channels))
    bs = batch_size_of(m, batch_size)
    clean = clean_scores(m, x, bs)
    targets = targets_of(m, targets, clean)
    read = readout(m, output, clean)
    y = read(clean, targets)
    bad = np.flatnonzero(y <= 0)
    if bad.size:
        cls = int(result_targets(targets)[bad[0]])
        raise InputError(f"image {int(bad[0])}'s {read.output} for class {cls} is {y[bad[0]]:.4g}; "
                         "the drop in confidence divides by it, so it must be positive: use output='probability'.")
    o = np.empty(len(x))
    jobs = [(i,) for i in range(len(x))]

    def build(chunk):
        ids = [i for (i,) in chunk]
        return maps[ids][:, None] * x[ids]

    for chunk, values in score_jobs(m, jobs, build, read, targets, bs, progress):
        o[[i for (i,) in chunk]] = values
    details = {"clean": y, "masked": o}
    classes = result_targets(targets)
    drop = MetricResult("average-drop", np.maximum(y - o, 0.0) / y, classes, False, read.description,
                        details=details)
    increase = MetricResult("increase-in-confidence", (o > y).astype(np.float64), classes, True, read.description,
                            details=details)
    return drop, increase


def average_drop(m: Model, x, maps, targets=None, *, output: str = "probability", channels: str = "sum",
                 batch_size: int | None = None, progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """Average drop (Chattopadhyay et al., "Grad-CAM++", WACV 2018): per image ``max(0, Y - O) / Y``, with ``O``
    the confidence on ``map (.) image``. Lower is better.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) preprocessed images, as the model takes them.
        maps: (N, H, W) maps in [0, 1], or (N, C, H, W) attributions reduced per pixel by ``channels`` (then in
            [0, 1]).
        targets: the classes (or target objects) the maps explain; None: each image's top-1.
        output: ``"probability"`` (the softmax of the scores, or the model's own probabilities) or ``"score"``
            (the class score before any final Softmax).
        channels: how (N, C, H, W) attributions become one value per pixel: ``"sum"``, ``"abs-sum"`` or
            ``"max-abs"`` (:func:`~onnx_cnnviz.metrics.base.pixel_maps`).
        batch_size: perturbed images per onnxruntime run (default: the model's).
        progress: ``progress(done, total)``, called after each batch with the perturbed images scored so far and
            their total.

    Returns:
        The drop per image.

    Raises:
        InputError: images, maps, targets or parameters of the wrong shape or value (the message names which).
        NumericalError: the model produced NaN or Inf.
    """
    return confidence_change(m, x, maps, targets, output=output, channels=channels, batch_size=batch_size,
                             progress=progress)[0]


def increase_in_confidence(m: Model, x, maps, targets=None, *, output: str = "probability", channels: str = "sum",
                           batch_size: int | None = None,
                           progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """Increase in confidence (Chattopadhyay et al., "Grad-CAM++", WACV 2018): per image 1 when ``O > Y`` else 0.
    Higher is better.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) preprocessed images, as the model takes them.
        maps: (N, H, W) maps in [0, 1], or (N, C, H, W) attributions reduced per pixel by ``channels`` (then in
            [0, 1]).
        targets: the classes (or target objects) the maps explain; None: each image's top-1.
        output: ``"probability"`` (the softmax of the scores, or the model's own probabilities) or ``"score"``
            (the class score before any final Softmax).
        channels: how (N, C, H, W) attributions become one value per pixel: ``"sum"``, ``"abs-sum"`` or
            ``"max-abs"`` (:func:`~onnx_cnnviz.metrics.base.pixel_maps`).
        batch_size: perturbed images per onnxruntime run (default: the model's).
        progress: ``progress(done, total)``, called after each batch with the perturbed images scored so far and
            their total.

    Returns:
        1.0 or 0.0 per image.

    Raises:
        InputError: images, maps, targets or parameters of the wrong shape or value (the message names which).
        NumericalError: the model produced NaN or Inf.
    """
    return confidence_change(m, x, maps, targets, output=output, channels=channels, batch_size=batch_size,
                             progress=progress)[1]


__all__ = ["confidence_change", "average_drop", "increase_in_confidence"]
