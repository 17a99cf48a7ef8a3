"""Deletion and insertion (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC 2018, Sec. 4.1).

Rank the pixels by the map, most important first. **Deletion** replaces them, ``pixels_per_step`` at a time, with a
baseline (0 in the model's normalised space by default) and follows the target's probability as the image loses
what the map calls important: a faithful map makes it fall fast, so a *lower* area under the curve is better.
**Insertion** starts from a blurred copy of the image and restores the original pixels in the same order: the
probability should rise fast, a *higher* area is better.

The curve at ``k`` perturbed pixels, ``k = 0, s, 2s, ..., P`` (``s`` = ``pixels_per_step``, ``P = H W``, the last
step possibly shorter), is the target's readout (:func:`~onnx_cnnviz.metrics.base.readout`: probability by default,
as RISE, or the score) on the image with the ``k`` top-ranked pixels replaced in every channel. Its area is the
trapezoid rule over the fraction perturbed, ``AUC = sum_j (f_j + f_{j+1}) / 2 * (k_{j+1} - k_j) / P``.

Conventions, and how they compare to the peers:

* The ranking is a stable sort of the map, descending: equal values (the zeros of a ReLU'd CAM) go in raster order,
  exactly as torchcam's ``DeletionInsertionMetric`` (``torch.argsort(descending=True, stable=True)``).
* The points and the area are torchcam's: its ``steps`` intervals of ``ceil(P / steps)`` pixels are our
  ``pixels_per_step``, and both integrate against the actual fraction (``torch.trapezoid``). RISE's own code divides
  the trapezoid sum by the number of intervals, the same number whenever ``s`` divides ``P`` (the default
  ``8 W`` at 224x224: 28 steps of 1792 pixels). Quantus's ``PixelFlipping`` steps over *features* (C per pixel,
  its step dividing H W), has no point at 0 and integrates with ``dx = 1``; wherever its step has flipped whole
  pixels, its curve is our deletion curve (``tests/metrics/test_parity.py``).
* Deletion and insertion have one baseline each: deletion's is a value to paste (``baseline=0.0``), insertion's the
  image it starts from (``baseline="blur"``). torchcam uses one baseline for both curves.
* The blur is RISE's: the 11x11 kernel ``scipy.ndimage.gaussian_filter`` makes from a centred impulse with
  ``sigma = 5`` (reflecting borders, truncated at 4 sigma: not a plain truncated Gaussian), applied to each channel
  as a convolution with zero padding (RISE's ``conv2d(x, kern, padding=5)``), so the border fades towards 0.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError
from ..methods.arguments import baseline_values
from ..model import Model
from .base import (MetricResult, batch_size_of, check_maps, check_x, clean_scores, pixel_maps, positive_int, readout,
                   result_targets, score_jobs, targets_of)

#: The most points a curve may have per image (``ceil(H W / pixels_per_step)`` steps): 100,000 is one point per pixel
#: up to 316x316 images; a larger count is an :class:`InputError` before any work (the perturbed images are scored in
#: batches either way, but each point costs one forward pass).
MAX_STEPS = 100_000

#: RISE's blur (``gkern(klen=11, nsig=5)``).
BLUR_SIZE = 11
BLUR_SIGMA = 5.0
#: scipy.ndimage's default truncation of a Gaussian, in sigmas.
_TRUNCATE = 4.0


def rise_kernel_1d(size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """The 1-D factor of RISE's blur kernel (Petsiuk et al., "RISE", BMVC 2018).

    ``gaussian_filter1d`` (scipy, mode ``"reflect"``, truncate 4) of a centred impulse of length ``size``. RISE's 2-D
    kernel is its outer product with itself (a separable filter of a separable impulse). Computed here without scipy:
    the Gaussian taps ``exp(-t^2 / 2 sigma^2)``, ``|t| <= 4 sigma``, normalised, each folded back into the window by
    half-sample reflection.

    Args:
        size: the kernel's length (RISE: 11).
        sigma: the Gaussian's standard deviation in pixels (RISE: 5).

    Returns:
        (size,) float64 weights summing to 1.
    """
    radius = int(_TRUNCATE * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    centre = size // 2
    kernel = np.zeros(size)
    for i in range(size):
        where = np.mod(i + taps, 2 * size)
        where = np.where(where >= size, 2 * size - 1 - where, where)
        kernel[i] = weights[where == centre].sum()
    return kernel


def blur(image: np.ndarray) -> np.ndarray:
    """RISE's blurred image, the default baseline of :func:`insertion`.

    Each channel convolved with the 11x11, sigma-5 kernel of :func:`rise_kernel_1d`, zero padding.

    Args:
        image: (C, H, W) image.

    Returns:
        (C, H, W) float32.
    """
    import cv2

    k = rise_kernel_1d().astype(np.float32)
    out = np.empty_like(image, dtype=np.float32)
    for c in range(image.shape[0]):
        out[c] = cv2.sepFilter2D(np.ascontiguousarray(image[c], dtype=np.float32), -1, k, k,
                                 borderType=cv2.BORDER_CONSTANT)
    return out


def ranks_of(pixel_map: np.ndarray) -> np.ndarray:
    """The rank of each pixel, 0 = most important: a stable descending sort, equal values in raster order.

    Args:
        pixel_map: (N, H, W) or (N, P) one value per pixel.

    Returns:
        (N, P) int ranks.
    """
    flat = pixel_map.reshape(len(pixel_map), -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None, :].repeat(len(flat), 0), axis=1)
    return ranks


def step_counts(pixels: int, pixels_per_step: int) -> np.ndarray:
    """Pixels perturbed at each point of the curve: 0, s, 2s, ..., and P (the last step possibly shorter).

    Args:
        pixels: P, the pixels of one image.
        pixels_per_step: s.

    Returns:
        (steps + 1,) int counts.

    Example:
        >>> step_counts(10, 4).tolist()
        [0, 4, 8, 10]
    """
    return np.array(list(range(0, pixels, pixels_per_step)) + [pixels], dtype=np.int64)


def auc(curve: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """The trapezoid rule of each row of ``curve`` over ``fractions``.

    Args:
        curve: (N, T) values.
        fractions: (T,) the fraction perturbed at each point.

    Returns:
        (N,) float64 areas.
    """
    curve = np.asarray(curve, dtype=np.float64)
    widths = np.diff(np.asarray(fractions, dtype=np.float64))
    return ((curve[:, 1:] + curve[:, :-1]) * 0.5 * widths).sum(axis=1)


def check_steps(pixels_per_step, hw) -> int:
    """``pixels_per_step`` checked for ``hw`` = (H, W) images: None (``8 W``, RISE's default) or a positive int giving
    at most :data:`MAX_STEPS` points per curve.

    Args:
        pixels_per_step: pixels perturbed per step.
        hw: the images' (H, W).

    Returns:
        The step, in pixels.

    Raises:
        InputError: not a positive int, or more than :data:`MAX_STEPS` steps on these images.
    """
    h, w = (int(v) for v in hw)
    step = 8 * w if pixels_per_step is None else positive_int(pixels_per_step, "pixels_per_step")
    steps = -(-(h * w) // step)
    if steps > MAX_STEPS:
        raise InputError(f"pixels_per_step={step} gives {steps:,} steps per curve on {h}x{w} images, more than the "
                         f"{MAX_STEPS:,} allowed (each step is one forward pass); give pixels_per_step >= "
                         f"{-(-(h * w) // MAX_STEPS)}.")
    return step


class LazyJobs:
    """The jobs of a metric as a sequence made on demand (``len`` and slices, what
    :func:`~onnx_cnnviz.metrics.base.score_jobs` reads): job ``k`` of ``length`` is ``make(k)``, so no list of
    every (image, step) pair is held, whatever the steps or samples."""

    def __init__(self, length: int, make: Callable[[int], tuple]):
        self.length, self.make = int(length), make

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.make(k) for k in range(*index.indices(self.length))]
        if not -self.length <= index < self.length:
            raise IndexError(index)
        return self.make(index % self.length)


def _substrates(x: np.ndarray, baseline) -> Callable[[int], np.ndarray]:
    """``i -> (C, H, W)`` the values pasted into image ``i`` (deletion) or the image insertion starts from."""
    if isinstance(baseline, str) and baseline == "blur":
        return lambda i: blur(x[i])
    if isinstance(baseline, str) and baseline != "mean":
        raise InputError(f"baseline must be a float, per-channel values, 'mean', 'blur' or an array shaped like x, "
                         f"not {baseline!r}.")
    values = baseline_values(x, baseline)
    shape = x.shape[1:]
    return lambda i: np.broadcast_to(values[i], shape)


def _curves(kind: str, m: Model, x, maps, targets, baseline, pixels_per_step, output: str, channels: str,
            batch_size, progress, target_read: Callable | None = None, name: str | None = None) -> MetricResult:
    """Deletion or insertion (``kind``). ``target_read(clean)``, when given, returns the ``(targets, readout)`` the
    curve follows instead of :func:`targets_of`'s and :func:`readout`'s (a detection's similarity,
    :mod:`onnx_cnnviz.metrics.detections`); ``name``: the result's metric name (default ``kind``)."""
    x = check_x(m, x)
    maps = pixel_maps(check_maps(maps, x), channels)
    n, c, h, w = x.shape
    pixels = h * w
    step = check_steps(pixels_per_step, (h, w))
    bs = batch_size_of(m, batch_size)
    substrate = _substrates(x, baseline)
    clean = clean_scores(m, x, bs)
    if target_read is None:
        targets = targets_of(m, targets, clean)
        read = readout(m, output, clean)
    else:
        targets, read = target_read(clean)
    counts = step_counts(pixels, step)
    ranks = ranks_of(maps)
    flat = x.reshape(n, c, pixels)
    curve = np.empty((n, len(counts)))
    deleting = kind == "deletion"
    # The unperturbed image is the first point of deletion and the last of insertion: already scored.
    curve[:, 0 if deleting else -1] = read(clean, targets)
    per_image = len(counts) - 1  # deletion: points 1..T; insertion: points 0..T-1
    jobs = LazyJobs(n * per_image, lambda k: (k // per_image, k % per_image + (1 if deleting else 0)))

    def build(chunk):
        out = np.empty((len(chunk), c, pixels), dtype=np.float32)
        cache: dict[int, np.ndarray] = {}
        for b, (i, j) in enumerate(chunk):
            if i not in cache:
                cache[i] = substrate(i).reshape(c, pixels)
            hit = ranks[i] < counts[j]
            out[b] = np.where(hit, cache[i], flat[i]) if deleting else np.where(hit, flat[i], cache[i])
        return out.reshape(len(chunk), c, h, w)

    for chunk, values in score_jobs(m, jobs, build, read, targets, bs, progress):
        for (i, j), v in zip(chunk, values):
            curve[i, j] = v
    fractions = counts / pixels
    return MetricResult(
        metric=name or kind, values=auc(curve, fractions), targets=result_targets(targets),
        higher_is_better=not deleting,
        output=read.description, curve=curve, axis=fractions,
        axis_name="fraction of pixels deleted" if deleting else "fraction of pixels inserted",
        details={"clean": read(clean, targets), "pixels_per_step": step,
                 "baseline": baseline if isinstance(baseline, (str, int, float)) else "array"})


def deletion(m: Model, x, maps, targets=None, *, baseline=0.0, pixels_per_step: int | None = None,
             output: str = "probability", channels: str = "sum", batch_size: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """Deletion (Petsiuk et al., "RISE", BMVC 2018): the area under the target's probability as the map's most
    important pixels are replaced by ``baseline``, ``pixels_per_step`` at a time. Lower is better.

    ``AUC = sum_t (f_t + f_(t+1)) / 2 * (a_(t+1) - a_t)``, with ``f_t`` the target's probability after step ``t`` and
    ``a_t`` the fraction of pixels replaced (the trapezoid rule, :func:`auc`).

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) preprocessed images, as the model takes them.
        maps: (N, H, W) maps, or (N, C, H, W) attributions reduced per pixel by ``channels``.
        targets: the classes (or target objects) the maps explain; None: each image's top-1.
        baseline: what replaces the pixels: a float, per-channel values, ``"mean"``, an image-shaped array or
            ``"blur"``.
        pixels_per_step: pixels replaced per step (default ``8 W``: 224*8 at 224x224, RISE's).
        output: ``"probability"`` (the softmax of the scores, or the model's own probabilities) or ``"score"``
            (the class score before any final Softmax).
        channels: how (N, C, H, W) attributions become one value per pixel: ``"sum"``, ``"abs-sum"`` or
            ``"max-abs"`` (:func:`~onnx_cnnviz.metrics.base.pixel_maps`).
        batch_size: perturbed images per onnxruntime run (default: the model's).
        progress: ``progress(done, total)``, called after each batch with the perturbed images scored so far and
            their total.

    Returns:
        The AUC per image and the curves; its ``output`` says what the curve measures.

    Raises:
        InputError: images, maps, targets or parameters of the wrong shape or value (the message names which).
        NumericalError: the model produced NaN or Inf.

    Example:
        ```python
        maps = cv.grad_cam(model, x)
        print(cv.metrics.deletion(model, x, maps).mean())
        ```
    """
    return _curves("deletion", m, x, maps, targets, baseline, pixels_per_step, output, channels, batch_size, progress)


def insertion(m: Model, x, maps, targets=None, *, baseline="blur", pixels_per_step: int | None = None,
              output: str = "probability", channels: str = "sum", batch_size: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """Insertion (Petsiuk et al., "RISE", BMVC 2018): the area under the target's probability as the map's most
    important pixels are restored, ``pixels_per_step`` at a time, into ``baseline``. Higher is better.

    The AUC of :func:`deletion`, the curve running the other way: from the baseline to the image.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) preprocessed images, as the model takes them.
        maps: (N, H, W) maps, or (N, C, H, W) attributions reduced per pixel by ``channels``.
        targets: the classes (or target objects) the maps explain; None: each image's top-1.
        baseline: the image the pixels are restored into (default: RISE's blurred copy, :func:`blur`); as
            :func:`deletion` takes it.
        pixels_per_step: pixels restored per step (default ``8 W``).
        output: ``"probability"`` (the softmax of the scores, or the model's own probabilities) or ``"score"``
            (the class score before any final Softmax).
        channels: how (N, C, H, W) attributions become one value per pixel: ``"sum"``, ``"abs-sum"`` or
            ``"max-abs"`` (:func:`~onnx_cnnviz.metrics.base.pixel_maps`).
        batch_size: perturbed images per onnxruntime run (default: the model's).
        progress: ``progress(done, total)``, called after each batch with the perturbed images scored so far and
            their total.

    Returns:
        The AUC per image and the curves.

    Raises:
        InputError: images, maps, targets or parameters of the wrong shape or value (the message names which).
        NumericalError: the model produced NaN or Inf.
    """
    return _curves("insertion", m, x, maps, targets, baseline, pixels_per_step, output, channels, batch_size,
                   progress)


__all__ = ["deletion", "insertion", "blur", "rise_kernel_1d", "ranks_of", "step_counts", "auc"]
