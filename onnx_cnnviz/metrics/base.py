"""What every metric shares: its result, the checks of its inputs, the quantity read from the model, and the batched
scoring of perturbed images.

**Bounded memory.** A metric never builds all its perturbed images at once: it lists its *jobs* (one small tuple per
perturbed image: the image index and a step, a percentile or a sample), and :func:`score_jobs` builds and scores them
``batch_size`` at a time through onnxruntime (:meth:`Model.scores`). Jobs of consecutive images share a batch, so the
batches stay full when a curve has fewer steps than ``batch_size``.

**Probability or score.** A metric reads either the target's *probability* or its *score* (the class score before
any final Softmax / LogSoftmax / Sigmoid, what :meth:`Model.scores` returns). :func:`readout` says which, in words
that go into every result's ``output``: the softmax of the scores (the model's own head when it ended in a Softmax or
LogSoftmax that the engine skipped), the sigmoid when the head was a Sigmoid, or the model's output as it is when that
output is already a probability (rows of non-negative values summing to 1 with no normaliser to skip: applying a
softmax again would flatten every curve).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable, Iterable

import numpy as np

from ..errors import InputError
from ..model import Model
from ..targets import resolve

OUTPUTS = ("probability", "score")
#: How (N, C, H, W) attributions become one value per pixel for the metrics that rank or mask pixels.
CHANNELS = ("sum", "abs-sum", "max-abs")
#: A row of outputs is taken for probabilities when its values lie in [0, 1] and sum to 1 within this.
PROBABILITY_TOLERANCE = 1e-3


@dataclass
class MetricResult:
    """One metric on a batch of images: one number per image, and the curve behind it when there is one.

    Attributes:
        metric: the registry name (``deletion``, ``road-morf``, ...).
        values: (N,) float64, one per image (an AUC, a drop, ...); :meth:`mean` averages them.
        targets: (N,) the classes measured (-1 for a target object that is not a class).
        higher_is_better: the direction in which a more faithful explanation moves the value.
        output: what was read from the model, in words (:func:`readout`); None for metrics that read explanations,
            not scores.
        curve: (N, P) the values per step, percentile or sample, or None.
        axis: (P,) the curve's abscissae, or None.
        axis_name: what the abscissae are, or None.
        details: further per-image arrays (``clean``: the target's value on the unperturbed image, ...).
    """
    metric: str
    values: np.ndarray
    targets: np.ndarray
    higher_is_better: bool
    output: str | None = None
    curve: np.ndarray | None = None
    axis: np.ndarray | None = None
    axis_name: str | None = None
    details: dict = field(default_factory=dict)

    def mean(self) -> float:
        """The mean over images (what the peers' ``summary()`` reports).

        Returns:
            The mean of :attr:`values`.
        """
        return float(np.mean(self.values))

    def __len__(self) -> int:
        return len(self.values)


# ---------------------------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------------------------
def check_x(m: Model, x) -> np.ndarray:
    """The images, checked by the model (4-D float, channels, size, finite).

    Args:
        m: the loaded model.
        x: the images.

    Returns:
        (N, C, H, W) float32.

    Raises:
        InputError: not images the model takes.
    """
    return m.check_input(x)


def check_maps(maps, x: np.ndarray, what: str = "maps") -> np.ndarray:
    """Maps for images ``x``, checked: (N, H, W) or (N, C', H, W) with C' = 1 or C, the images' H and W, finite.

    Args:
        maps: the maps or attributions.
        x: the (N, C, H, W) images they explain.
        what: how the error messages call them.

    Returns:
        The maps as float32 (the precision the peers compare in).

    Raises:
        InputError: missing, not numeric, of another shape or count than the images, or not finite.
    """
    n, c, h, w = x.shape
    if maps is None:
        raise InputError(f"{what} are required: one ({h}, {w}) map per image, shape ({n}, {h}, {w}).")
    try:
        arr = np.asarray(maps)
    except Exception:  # a ragged list, an object that is not array-like
        raise InputError(f"{what} must be a numeric array of shape ({n}, {h}, {w}), not {type(maps).__name__}.") \
            from None
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{what} must be numeric, got dtype {arr.dtype}.")
    if arr.ndim not in (3, 4):
        raise InputError(f"{what} must have shape ({n}, {h}, {w}) (or ({n}, {c}, {h}, {w}) for attributions), got "
                         f"{arr.shape}.")
    if arr.shape[0] != n:
        raise InputError(f"{what} hold {arr.shape[0]} maps for {n} images; give one map per image.")
    if tuple(arr.shape[-2:]) != (h, w):
        raise InputError(f"{what} are {arr.shape[-2]}x{arr.shape[-1]}, the images {h}x{w}; upsample the maps to the "
                         "image size first (the map functions' upsample=True).")
    if arr.ndim == 4 and arr.shape[1] not in (1, c):
        raise InputError(f"{what} have {arr.shape[1]} channels; attributions need 1 or the images' {c}.")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr.reshape(n, -1)).all(axis=1)
    if bad.any():
        raise InputError(f"{what} of image {int(np.flatnonzero(bad)[0])} contain NaN or Inf; an explanation must be "
                         "finite (recompute it, or drop that image).")
    return arr


def pixel_maps(maps: np.ndarray, channels: str = "sum") -> np.ndarray:
    """One value per pixel: (N, H, W) maps as they are, (N, C, H, W) attributions reduced over channels.

    Args:
        maps: checked maps (:func:`check_maps`).
        channels: ``"sum"`` (the signed sum over channels, as Quantus's tutorials and captum's visualisation reduce
            attributions: positive evidence ranks first), ``"abs-sum"`` (``|sum_c a_c|``, the report's gray
            pictures) or ``"max-abs"`` (``max_c |a_c|``, Simonyan et al.'s saliency).

    Returns:
        (N, H, W) float32.

    Raises:
        InputError: an unknown ``channels``.
    """
    if channels not in CHANNELS:
        raise InputError(f"channels must be one of {', '.join(CHANNELS)}, not {channels!r}.")
    if maps.ndim == 3:
        return maps
    if channels == "sum":
        return maps.sum(axis=1, dtype=np.float32)
    if channels == "abs-sum":
        return np.abs(maps.sum(axis=1, dtype=np.float32))
    return np.abs(maps).max(axis=1)


def positive_int(value, name: str) -> int:
    """``value`` as a positive int (bools refused).

    Args:
        value: the value given.
        name: the parameter's name, for the error.

    Returns:
        ``int(value)``.

    Raises:
        InputError: not an int, a bool, or below 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive int, not {value!r}.")
    return int(value)


def batch_size_of(m: Model, batch_size) -> int:
    """Perturbed images per onnxruntime run.

    Args:
        m: the loaded model.
        batch_size: the caller's choice, or None.

    Returns:
        ``batch_size``, or the model's own default.

    Raises:
        InputError: ``batch_size`` is not a positive int.
    """
    return m.batch_size if batch_size is None else positive_int(batch_size, "batch_size")


class TargetRows(np.ndarray):
    """(N, K) float32 cotangent rows of target objects over the scores (what :func:`targets_of` returns for them).

    Attributes:
        classes: (N,) int64 the class each row explains (-1: none), what a :class:`MetricResult` reports.
    """
    classes: np.ndarray


def targets_of(m: Model, targets, clean_scores: np.ndarray) -> np.ndarray:
    """The targets a metric measures: ``targets`` checked, or each image's top-1.

    Args:
        m: the loaded model.
        targets: None, a class index or name, a target object (:mod:`onnx_cnnviz.targets`), or one per image.
        clean_scores: (N, K) the unperturbed images' scores.

    Returns:
        (N,) int64 classes (top-1: the first index on ties, as torch's argmax), or, for target objects (a
        detection, a region, a weighted sum of the head output), their :class:`TargetRows`: a metric then reads each
        image's target value ``sum(cotangent * scores)``.

    Raises:
        InputError: a bad target, a target on another tensor than the head output, or None for a detector or
            segmenter.
    """
    if targets is None:
        if m.task != "classifier":
            resolve(m, None, len(clean_scores))  # raises: a detector or segmenter has no top-1 class
        return np.argmax(clean_scores, axis=1).astype(np.int64)
    seeds = resolve(m, targets, len(clean_scores))
    if not seeds.objects:
        return seeds.classes
    if seeds.tensor != m.score_name:
        raise InputError(f"the metrics read the model's head output '{m.score_name}'; a target on '{seeds.tensor}' "
                         "cannot be scored by them.")
    rows = seeds.rows.view(TargetRows)
    rows.classes = seeds.classes
    return rows


def result_targets(targets: np.ndarray) -> np.ndarray:
    """The (N,) classes a :class:`MetricResult` reports for :func:`targets_of`'s ``targets``.

    Args:
        targets: classes, or :class:`TargetRows`.

    Returns:
        (N,) int64 (-1 for a target object that is not a class).
    """
    return getattr(targets, "classes", targets)


# ---------------------------------------------------------------------------------------------------------------
# what is read from the model
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Readout:
    """The quantity a metric reads from the scores.

    Attributes:
        output: ``"probability"`` or ``"score"``.
        description: what exactly, in words (the records and pages show it).
        transform: scores (B, K) -> values (B, K), float64.
    """
    output: str
    description: str
    transform: Callable[[np.ndarray], np.ndarray]

    def __call__(self, scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The target's value per row of ``scores``.

        Args:
            scores: (B, K) scores.
            targets: (B,) classes, or (B, K) cotangent rows of target objects (:class:`TargetRows`), whose value is
                ``sum_k rows[b, k] values[b, k]``.

        Returns:
            (B,) float64.
        """
        values = self.transform(np.asarray(scores, dtype=np.float64))
        if np.ndim(targets) == 2:
            return np.einsum("bk,bk->b", values, np.asarray(targets, dtype=np.float64))
        return values[np.arange(len(values)), targets]


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(s: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-s))


def _identity(s: np.ndarray) -> np.ndarray:
    return s


def looks_like_probabilities(scores: np.ndarray) -> bool:
    """Whether the model's output already is a probability distribution.

    Args:
        scores: (N, K) scores.

    Returns:
        True when every row is in [0, 1] and sums to 1.
    """
    s = np.asarray(scores, dtype=np.float64)
    return bool(s.shape[1] > 1 and (s >= 0).all() and (s <= 1).all()
                and np.allclose(s.sum(axis=1), 1.0, atol=PROBABILITY_TOLERANCE))


def readout(m: Model, output: str, clean_scores: np.ndarray) -> Readout:
    """What a metric reads for ``output`` on model ``m``.

    * ``"score"``: the class score before any final Softmax/LogSoftmax/Sigmoid (as it is when the output has no such
      head; the description then says the score is the model's probability).
    * ``"probability"``: the softmax of the scores (or the sigmoid after a Sigmoid head); when the model has no head
      to skip and its output already sums to 1, that output as it is.

    Args:
        m: the loaded model.
        output: ``"probability"`` or ``"score"``.
        clean_scores: the unperturbed images' scores, which show whether the output already is a probability.

    Returns:
        The readout.

    Raises:
        InputError: an unknown ``output``, or ``"probability"`` of a single-output model without a Sigmoid head
            (a softmax over one class is always 1).
    """
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {', '.join(OUTPUTS)}, not {output!r}.")
    if m.task != "classifier":  # no class vector to normalise: the head output's elements are the targets' values
        return Readout("score", f"the {m.task}'s head output '{m.score_name}' as it is (the target's value)",
                       _identity)
    head = m.softmax_skipped
    already = head is None and looks_like_probabilities(clean_scores)
    if output == "score":
        if already:
            return Readout("score", "score (the model's output, which is already a probability)", _identity)
        skipped = f", the input of the model's final {head}" if head else ""
        return Readout("score", f"score (the class score before any softmax{skipped})", _identity)
    if head == "Sigmoid":
        return Readout("probability", "probability (sigmoid of the scores, the model's own Sigmoid head)", _sigmoid)
    if head is not None:
        return Readout("probability", f"probability (softmax of the scores, the model's own {head} head)", _softmax)
    if already:
        return Readout("probability", "probability (the model's own output, already normalised; no softmax "
                       "applied)", _identity)
    if clean_scores.shape[1] == 1:
        raise InputError("the model has a single output and no Sigmoid head, so it has no probability (a softmax "
                         "over one class is always 1); use output='score'.")
    return Readout("probability", "probability (softmax of the scores)", _softmax)


# ---------------------------------------------------------------------------------------------------------------
# batched scoring
# ---------------------------------------------------------------------------------------------------------------
def score_jobs(m: Model, jobs: list, build: Callable[[list], np.ndarray], read: Readout, targets: np.ndarray,
               batch_size: int, progress: Callable[[int, int], None] | None = None) -> Iterable[tuple]:
    """Score ``jobs`` ``batch_size`` at a time; only one chunk's perturbed images exist at a time.

    Args:
        m: the loaded model.
        jobs: tuples whose first item is the image index.
        build: ``build(chunk)`` returns the chunk's perturbed images, (B, C, H, W) float32.
        read: what to read from the scores.
        targets: the targets of :func:`targets_of`, indexed by image.
        batch_size: jobs per run.
        progress: ``progress(done, total)`` after each chunk, in jobs.

    Yields:
        ``(chunk, values)``, with ``values`` (B,) the target's readout on each perturbed image.
    """
    total = len(jobs)
    for start in range(0, total, batch_size):
        chunk = jobs[start:start + batch_size]
        images = build(chunk)
        scores = m.scores(images, batch_size=len(chunk))
        yield chunk, read(scores, targets[[job[0] for job in chunk]])
        if progress is not None:
            progress(min(start + batch_size, total), total)


def clean_scores(m: Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The scores of the unperturbed images.

    Args:
        m: the loaded model.
        x: (N, C, H, W) checked images.
        batch_size: images per run.

    Returns:
        (N, K) scores.
    """
    return m.scores(x, batch_size=batch_size)


__all__ = ["MetricResult", "Readout", "OUTPUTS", "CHANNELS", "check_x", "check_maps", "pixel_maps", "positive_int",
           "batch_size_of", "targets_of", "TargetRows", "result_targets", "readout", "looks_like_probabilities",
           "score_jobs", "clean_scores"]
