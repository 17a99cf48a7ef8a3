"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and Efficient Evaluation Strategy
for Attribution Methods", ICML 2022).

Removing pixels by pasting a constant leaks the removed shape to the model (the mask itself becomes a feature). ROAD
removes them by **noisy linear imputation** instead: each removed pixel takes the weighted mean of its 8 neighbours
(weight 1/6 for the 4 direct ones, 1/12 for the diagonals; neighbours outside the image dropped), removed neighbours
being themselves unknowns, so the values of all removed pixels solve one sparse linear system per image (every
channel a right-hand side); Gaussian noise (``noise`` = 0.01 standard deviation) is added to them. Then the target's
probability is read on the imputed image.

**Most relevant first** (MoRF) removes the pixels the map ranks highest; a faithful map makes the probability fall
(lower is better). **Least relevant first** (LeRF) removes the lowest; the probability should hold (higher is better).
The value per image is the mean over percentiles of the change ``O - Y`` (``Y`` on the image, ``O`` on the imputed
one), as pytorch-grad-cam's ``ROADMostRelevantFirstAverage`` / ``ROADLeastRelevantFirstAverage`` return, and
**combined** is ``(LeRF - MoRF) / 2`` (``ROADCombined``; higher is better).

Percentiles follow pytorch-grad-cam exactly: at percentile ``p``, MoRF removes the pixels whose map value ``v``
satisfies ``v >= percentile(v, p)`` (``numpy.percentile``, linear interpolation, float32), i.e. it *keeps* about
``p``% of the image (``ROADMostRelevantFirst(80)`` removes the top 20%); LeRF does the same on ``1 - v``, keeping the
``p``% most relevant. Ties go with the threshold: a ReLU'd CAM that is 0 on 30% of the image loses *every* pixel
under MoRF at percentiles up to 30 (there is nothing left to impute from; the imputed image is then 0 plus noise, as
pytorch-grad-cam's solver returns). The system is pytorch-grad-cam's (``NoisyLinearImputer``, itself the ROAD
authors' code),
assembled here in one vectorised pass and solved with the same ``scipy.sparse.linalg.spsolve``; scipy is needed
(:class:`MissingDependencyError` otherwise). The noise of image ``i`` at percentile index ``k`` is drawn by
:func:`noise_for`, reproducible from ``seed`` alone; pass ``noise=0`` for the deterministic imputation.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError, MissingDependencyError
from ..model import Model
from .curves import LazyJobs
from .base import (MetricResult, batch_size_of, check_maps, check_x, clean_scores, pixel_maps, readout, score_jobs,
                   result_targets, targets_of)

#: (row offset, column offset) -> weight of that neighbour in the imputation (the ROAD authors' weights).
NEIGHBOURS = [((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
              ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6)]
ORDERS = ("morf", "lerf", "combined")
DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
#: The most percentiles (points of the curve) a call may ask for: each is one imputed image per image and order.
MAX_PERCENTILES = 1_000
_ORDER_CODE = {"morf": 0, "lerf": 1}


def _scipy():
    try:
        from scipy.sparse import csc_matrix
        from scipy.sparse.linalg import spsolve
    except ImportError:
        raise MissingDependencyError("ROAD's imputation solves a sparse linear system with scipy, which is not "
                                     "installed: pip install scipy") from None
    return csc_matrix, spsolve


def removed_mask(pixel_map: np.ndarray, percentile: float, order: str) -> np.ndarray:
    """Where ROAD removes pixels at one percentile.

    Args:
        pixel_map: (H, W) one value per pixel.
        percentile: the percent of pixels kept.
        order: ``"morf"`` (remove the highest ranked) or ``"lerf"`` (the lowest).

    Returns:
        (H, W) bool, True where a pixel is removed.
    """
    v = pixel_map.astype(np.float32) if order == "morf" else np.float32(1) - pixel_map.astype(np.float32)
    return ~(v < np.percentile(v, percentile))


def linear_system(image: np.ndarray, removed: np.ndarray):
    """The imputation's sparse system ``A u = b`` over the removed pixels.

    Row ``r`` says ``sum_j w_j u_j - (sum of in-image weights) u_r = - sum_known w_j x_j`` over the 8 neighbours
    (weights 1/6 for the 4 direct, 1/12 for the diagonal ones, Rong et al. 2022).

    Args:
        image: (C, H, W) the image.
        removed: (H, W) bool, the unknown pixels.

    Returns:
        ``(A, b, index)``: A (n, n) CSC, b (n, C), and the flat indices of the n removed pixels.
    """
    csc_matrix, _ = _scipy()
    c, h, w = image.shape
    flat_removed = removed.reshape(-1)
    missing = np.flatnonzero(flat_removed)
    n = len(missing)
    variable = np.zeros(h * w, dtype=np.int64)
    variable[missing] = np.arange(n)
    pixels = image.reshape(c, -1)
    row, col = missing // w, missing % w
    b = np.zeros((n, c))
    diagonal = np.ones(n)
    rows, cols, vals = [np.arange(n)], [np.arange(n)], []
    for (dy, dx), weight in NEIGHBOURS:
        inside = (row + dy >= 0) & (row + dy < h) & (col + dx >= 0) & (col + dx < w)
        ids = np.flatnonzero(inside)
        neighbour = missing[ids] + dy * w + dx
        unknown = flat_removed[neighbour]
        b[ids[~unknown]] -= weight * pixels[:, neighbour[~unknown]].T
        rows.append(ids[unknown])
        cols.append(variable[neighbour[unknown]])
        vals.append(np.full(int(unknown.sum()), weight))
        diagonal[~inside] -= weight
    vals.insert(0, -diagonal)
    a = csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return a, b, missing


def noise_for(seed: int, image: int, percentile_index: int, order: str, shape: tuple) -> np.ndarray:
    """The standard normal draws that scale into one image's imputation noise at one percentile and order.

    One stream per (seed, image, percentile, order), so a result does not depend on the batch size or on which
    other images are evaluated.

    Args:
        seed: the metric's seed.
        image: the image's index in the batch.
        percentile_index: the percentile's index in the metric's list.
        order: ``"morf"`` or ``"lerf"``.
        shape: the draws' shape.

    Returns:
        float32 draws of ``shape``.
    """
    rng = np.random.default_rng([int(seed), int(image), int(percentile_index), _ORDER_CODE[order]])
    return rng.standard_normal(shape, dtype=np.float32)


def impute(image: np.ndarray, removed: np.ndarray, noise: float = 0.01,
           draw: Callable[[tuple], np.ndarray] | None = None) -> np.ndarray:
    """Noisy linear imputation of the removed pixels: the solution of :func:`linear_system` plus noise.

    Args:
        image: (C, H, W) the image.
        removed: (H, W) bool, the pixels to fill.
        noise: the standard deviation of the noise added to the filled pixels (none when 0).
        draw: ``draw(shape)``, standard normal draws of shape (C, n); needed when ``noise`` is not 0.

    Returns:
        (C, H, W) float32, the image with the removed pixels filled.
    """
    _, spsolve = _scipy()
    c = image.shape[0]
    if removed.all():
        # Nothing known to impute from: the system is singular with b = 0, and scipy's solver returns 0 for it,
        # which is what pytorch-grad-cam gets (a map whose ties at its minimum cover more than p% of the image,
        # such as a ReLU'd CAM's zeros, removes every pixel at percentile p under its MoRF rule).
        missing = np.arange(removed.size)
        solved = np.zeros((c, removed.size), dtype=np.float32)
    else:
        a, b, missing = linear_system(image, removed)
        solved = np.asarray(spsolve(a, b)).reshape(len(missing), c).T.astype(np.float32)
    if noise:
        solved = solved + np.float32(noise) * draw((c, len(missing)))
    out = np.array(image, dtype=np.float32, copy=True).reshape(c, -1)
    out[:, missing] = solved
    return out.reshape(image.shape)


def check_percentiles(percentiles) -> tuple:
    """ROAD's percentiles, checked: one to :data:`MAX_PERCENTILES` numbers in [0, 100].

    Args:
        percentiles: a number or a sequence of numbers.

    Returns:
        The percentiles as a tuple.

    Raises:
        InputError: no numbers, too many, or a value outside [0, 100].
    """
    if hasattr(percentiles, "__len__") and not isinstance(percentiles, (str, bytes)) \
            and len(percentiles) > MAX_PERCENTILES:
        raise InputError(f"percentiles holds {len(percentiles):,} values, more than the {MAX_PERCENTILES:,} allowed "
                         "(each is one imputed image per image); give fewer.")
    values = np.atleast_1d(np.asarray(percentiles, dtype=object))
    if values.ndim != 1 or not len(values):
        raise InputError(f"percentiles must be one or more numbers in [0, 100], not {_short(percentiles)}.")
    if len(values) > MAX_PERCENTILES:
        raise InputError(f"percentiles holds {len(values):,} values, more than the {MAX_PERCENTILES:,} allowed "
                         "(each is one imputed image per image); give fewer.")
    out = []
    for p in values:
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not 0 <= p <= 100:
            raise InputError(f"percentiles must be numbers in [0, 100], not {_short(percentiles)}.")
        out.append(p)
    return tuple(out)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _noise(noise) -> float:
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.integer, np.floating)) \
            or not np.isfinite(noise) or noise < 0:
        raise InputError(f"noise must be a finite number >= 0 (the imputation noise's standard deviation), not "
                         f"{noise!r}.")
    return float(noise)


def road(m: Model, x, maps, targets=None, *, order: str = "morf", percentiles=DEFAULT_PERCENTILES,
         noise: float = 0.01, seed: int = 0, output: str = "probability", channels: str = "sum",
         batch_size: int | None = None, progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022).

    The target's change ``O - Y`` when the pixels the map ranks most (``order="morf"``) or least (``"lerf"``)
    relevant are removed by noisy linear imputation (each removed pixel the weighted mean of its 8 neighbours, plus
    noise: :func:`linear_system`, :func:`impute`), averaged over ``percentiles``; ``"combined"``:
    ``(LeRF - MoRF) / 2``.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) preprocessed images, as the model takes them.
        maps: (N, H, W) maps, or (N, C, H, W) attributions reduced per pixel by ``channels``.
        targets: the classes (or target objects) the maps explain; None: each image's top-1.
        order: ``"morf"``, ``"lerf"`` or ``"combined"``.
        percentiles: the percents of pixels *kept* (pytorch-grad-cam's convention), each one point of the curve.
        noise: the imputation noise's standard deviation.
        seed: the noise's seed (:func:`noise_for`: one stream per image, percentile and order).
        output: ``"probability"`` (the softmax of the scores, or the model's own probabilities) or ``"score"``
            (the class score before any final Softmax).
        channels: how (N, C, H, W) attributions become one value per pixel: ``"sum"``, ``"abs-sum"`` or
            ``"max-abs"`` (:func:`~onnx_cnnviz.metrics.base.pixel_maps`).
        batch_size: perturbed images per onnxruntime run (default: the model's).
        progress: ``progress(done, total)``, called after each batch with the perturbed images scored so far and
            their total.

    Returns:
        The mean change per image; the curve holds the change per percentile.

    Raises:
        InputError: images, maps, targets or parameters of the wrong shape or value (the message names which).
        NumericalError: the model produced NaN or Inf.
    """
    if order not in ORDERS:
        raise InputError(f"order must be one of {', '.join(ORDERS)}, not {order!r}.")
    percentiles = check_percentiles(percentiles)
    noise = _noise(noise)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an int, not {seed!r}.")
    _scipy()
    x = check_x(m, x)
    maps = pixel_maps(check_maps(maps, x), channels)
    bs = batch_size_of(m, batch_size)
    clean = clean_scores(m, x, bs)
    targets = targets_of(m, targets, clean)
    read = readout(m, output, clean)
    y = read(clean, targets)
    orders = ("morf", "lerf") if order == "combined" else (order,)
    n, points = len(x), len(percentiles)
    jobs = LazyJobs(len(orders) * n * points,
                    lambda j: (j // points % n, j % points, orders[j // (n * points)]))
    after = {o: np.empty((len(x), len(percentiles))) for o in orders}

    def build(chunk):
        return np.stack([impute(x[i], removed_mask(maps[i], percentiles[k], o), noise,
                                lambda shape, i=i, k=k, o=o: noise_for(seed, i, k, o, shape))
                         for i, k, o in chunk])

    for chunk, values in score_jobs(m, jobs, build, read, targets, bs, progress):
        for (i, k, o), v in zip(chunk, values):
            after[o][i, k] = v
    change = {o: after[o] - y[:, None] for o in orders}
    curve = (change["lerf"] - change["morf"]) / 2 if order == "combined" else change[order]
    return MetricResult(metric=f"road-{order}", values=curve.mean(axis=1), targets=result_targets(targets),
                        higher_is_better=order != "morf", output=read.description, curve=curve,
                        axis=np.asarray(percentiles, dtype=np.float64), axis_name="percentile (percent of pixels kept)",
                        details={"clean": y, **{f"imputed_{o}": after[o] for o in orders}})


def road_most_relevant_first(m: Model, x, maps, targets=None, *, percentiles=DEFAULT_PERCENTILES, noise: float = 0.01,
                             seed: int = 0, output: str = "probability", channels: str = "sum",
                             batch_size: int | None = None,
                             progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """ROAD, most relevant first (:func:`road` with ``order="morf"``): lower is better.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) preprocessed images, as the model takes them.
        maps: (N, H, W) maps, or (N, C, H, W) attributions reduced per pixel by ``channels``.
        targets: the classes (or target objects) the maps explain; None: each image's top-1.
        percentiles: the percents of pixels *kept* (pytorch-grad-cam's convention), each one point of the curve.
        noise: the imputation noise's standard deviation.
        seed: the noise's seed (:func:`noise_for`: one stream per image, percentile and order).
        output: ``"probability"`` (the softmax of the scores, or the model's own probabilities) or ``"score"``
            (the class score before any final Softmax).
        channels: how (N, C, H, W) attributions become one value per pixel: ``"sum"``, ``"abs-sum"`` or
            ``"max-abs"`` (:func:`~onnx_cnnviz.metrics.base.pixel_maps`).
        batch_size: perturbed images per onnxruntime run (default: the model's).
        progress: ``progress(done, total)``, called after each batch with the perturbed images scored so far and
            their total.

    Returns:
        The mean change per image, and the change per percentile.

    Raises:
        InputError: images, maps, targets or parameters of the wrong shape or value (the message names which).
        NumericalError: the model produced NaN or Inf.
    """
    return road(m, x, maps, targets, order="morf", percentiles=percentiles, noise=noise, seed=seed, output=output,
                channels=channels, batch_size=batch_size, progress=progress)


def road_least_relevant_first(m: Model, x, maps, targets=None, *, percentiles=DEFAULT_PERCENTILES,
                              noise: float = 0.01, seed: int = 0, output: str = "probability", channels: str = "sum",
                              batch_size: int | None = None,
                              progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """ROAD, least relevant first (:func:`road` with ``order="lerf"``): higher is better.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) preprocessed images, as the model takes them.
        maps: (N, H, W) maps, or (N, C, H, W) attributions reduced per pixel by ``channels``.
        targets: the classes (or target objects) the maps explain; None: each image's top-1.
        percentiles: the percents of pixels *kept* (pytorch-grad-cam's convention), each one point of the curve.
        noise: the imputation noise's standard deviation.
        seed: the noise's seed (:func:`noise_for`: one stream per image, percentile and order).
        output: ``"probability"`` (the softmax of the scores, or the model's own probabilities) or ``"score"``
            (the class score before any final Softmax).
        channels: how (N, C, H, W) attributions become one value per pixel: ``"sum"``, ``"abs-sum"`` or
            ``"max-abs"`` (:func:`~onnx_cnnviz.metrics.base.pixel_maps`).
        batch_size: perturbed images per onnxruntime run (default: the model's).
        progress: ``progress(done, total)``, called after each batch with the perturbed images scored so far and
            their total.

    Returns:
        The mean change per image, and the change per percentile.

    Raises:
        InputError: images, maps, targets or parameters of the wrong shape or value (the message names which).
        NumericalError: the model produced NaN or Inf.
    """
    return road(m, x, maps, targets, order="lerf", percentiles=percentiles, noise=noise, seed=seed, output=output,
                channels=channels, batch_size=batch_size, progress=progress)


def road_combined(m: Model, x, maps, targets=None, *, percentiles=DEFAULT_PERCENTILES, noise: float = 0.01,
                  seed: int = 0, output: str = "probability", channels: str = "sum", batch_size: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """ROAD combined, ``(LeRF - MoRF) / 2`` (:func:`road` with ``order="combined"``): higher is better.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) preprocessed images, as the model takes them.
        maps: (N, H, W) maps, or (N, C, H, W) attributions reduced per pixel by ``channels``.
        targets: the classes (or target objects) the maps explain; None: each image's top-1.
        percentiles: the percents of pixels *kept* (pytorch-grad-cam's convention), each one point of the curve.
        noise: the imputation noise's standard deviation.
        seed: the noise's seed (:func:`noise_for`: one stream per image, percentile and order).
        output: ``"probability"`` (the softmax of the scores, or the model's own probabilities) or ``"score"``
            (the class score before any final Softmax).
        channels: how (N, C, H, W) attributions become one value per pixel: ``"sum"``, ``"abs-sum"`` or
            ``"max-abs"`` (:func:`~onnx_cnnviz.metrics.base.pixel_maps`).
        batch_size: perturbed images per onnxruntime run (default: the model's).
        progress: ``progress(done, total)``, called after each batch with the perturbed images scored so far and
            their total.

    Returns:
        The combined value per image.

    Raises:
        InputError: images, maps, targets or parameters of the wrong shape or value (the message names which).
        NumericalError: the model produced NaN or Inf.
    """
    return road(m, x, maps, targets, order="combined", percentiles=percentiles, noise=noise, seed=seed,
                output=output, channels=channels, batch_size=batch_size, progress=progress)


__all__ = ["road", "road_most_relevant_first", "road_least_relevant_first", "road_combined", "impute",
           "linear_system", "removed_mask", "noise_for", "NEIGHBOURS", "DEFAULT_PERCENTILES"]
