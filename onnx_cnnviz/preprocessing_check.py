"""Which preprocessing do a model's weights fit? :func:`check_preprocessing` scores candidate presets on pictures.

A deployed model file rarely says how it wants its pixels, and input normalised differently from training is the
first cause of a misleading explanation: the model still answers, with wrong classes, and every map explains those.
The check feeds the same pictures through each candidate preprocessing (the presets ``imagenet``, ``caffe``, ``tf``
``x / 127.5 - 1``, ``tflite`` ``(x - 127) / 128``, ``raw`` 0..255 and ``none`` 0..1, each also with its channel
order swapped, and the model's declared preprocessing) and scores what the model makes of them:

* **Labelled pictures** (a ``labels.csv`` of ``file,class_index`` rows, as ``shared/images/imagenet-sample/`` has;
  ImageNet-style class folders; or a mapping): top-1 and top-5 accuracy and the mean negative log-likelihood of the
  true class, ``-mean_i log p(y_i | x_i)``. Candidates are ranked by top-1, then by that likelihood.
* **Unlabelled pictures**: no accuracy, so the score is the information the predictions carry about the pictures,
  ``I = H(mean_i p_i) - mean_i H(p_i)`` in nats (the mutual information between picture and predicted class, the
  criterion of Bridle, Heading & MacKay, "Unsupervised classifiers, mutual information and 'phantom targets'",
  NeurIPS 1991, and Krause, Perona & Gomes, "Discriminative clustering by regularized information maximization",
  NeurIPS 2010). A right input gives confident predictions (low ``H(p_i)``) spread over many classes (high
  ``H(mean p)``); a wrong one gives unsure predictions or collapses onto a few classes. The confidence (mean top
  probability) and the agreement of each candidate's top-1 with the best one's are reported beside it.

Two candidates whose inputs differ by under :data:`SAME_INPUT_TOLERANCE` of their range (``tf`` and ``tflite``:
``(x - 127.5) / 127.5`` against ``(x - 127) / 128``) are one row: no sample can tell them apart, so the row is named
after the declared preprocessing when it is one of them, else the first in :data:`CANDIDATES`.

The declared preprocessing is "not the best by a clear margin" when the best row does not hold it, the best row
leads by at least :data:`MIN_TOP1_LEAD` top-1 (labelled) or :data:`MIN_INFORMATION_LEAD` nats (unlabelled), and it
leads in at least 95% of :data:`BOOTSTRAP_ROUNDS` bootstrap resamples of the pictures (a paired test: the same
resampled pictures for both rows). Then :attr:`PreprocessingCheck.warning` says so, and :func:`check_preprocessing`
issues it as a :class:`PreprocessingWarning`.

All candidates share the declared preprocessing's size and resize policy (the model's input size and "squash" when
nothing is declared); the best normalisation is also scored with the other resize policy
(:attr:`PreprocessingCheck.resize_rows`). The pictures and their labels are found by
:func:`onnx_cnnviz.image.labelled.find_images` (re-exported here).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .image import PRESETS, Preprocessing, read_image
from .image.labelled import find_images, subsample
from .image.preprocessing import RESIZE_POLICIES

#: Candidate presets, in the order that names a row of equivalent inputs (the first wins unless the declared
#: preprocessing is among them). tflite comes before tf: the two are one row (see the module docstring).
CANDIDATES = ("imagenet", "caffe", "tflite", "tf", "raw", "none")
#: Inputs closer than this fraction of their range, at every channel's 0 and 255, are the same input.
SAME_INPUT_TOLERANCE = 0.01
#: The smallest lead of the best row over the declared one that is a "clear margin".
MIN_TOP1_LEAD = 0.03
MIN_INFORMATION_LEAD = 0.1
#: Bootstrap resamples of the pictures behind the clear-margin test, and the share of them the lead must hold in.
BOOTSTRAP_ROUNDS = 1000
BOOTSTRAP_SHARE = 0.95
#: The most pictures scored (an even, order-keeping subsample of a larger folder) unless ``max_images`` says more.
MAX_IMAGES = 500
_CHUNK = 16  # pictures per forward pass: bounds the float inputs held at once


class PreprocessingWarning(UserWarning):
    """The model's declared preprocessing is clearly not the one its weights fit."""


@dataclass(frozen=True)
class CandidateScore:
    """One row of the check: a preprocessing and what the model made of the pictures through it.

    ``name``: the candidate ("imagenet", "caffe-rgb", "declared", ...); ``same_as``: other candidates that give the
    same input (merged into this row). ``top1``, ``top5``, ``nll``: accuracy and mean negative log-likelihood of the
    true class (None without labels). ``information``: ``H(mean p) - mean H(p)`` in nats; ``confidence``: mean top
    probability; ``classes``: distinct top-1 classes; ``agreement``: share of pictures whose top-1 equals the best
    row's.
    """
    name: str
    preprocessing: Preprocessing
    same_as: tuple = ()
    top1: float | None = None
    top5: float | None = None
    nll: float | None = None
    information: float = 0.0
    confidence: float = 0.0
    classes: int = 0
    agreement: float = 0.0
    declared: bool = False
    key: str = ""  # the candidate whose scores the row carries (rows are merged and renamed)

    @property
    def label(self) -> str:
        """The name with its merged equivalents, e.g. "tflite (= tf)"."""
        return self.name + (f" (= {', '.join(self.same_as)})" if self.same_as else "")

    def to_dict(self) -> dict:
        pre = self.preprocessing
        return {"name": self.name, "same_as": list(self.same_as), "declared": self.declared,
                "description": pre.describe(), "order": pre.order, "scale": pre.scale,
                "mean": list(pre.mean) if pre.mean else None, "std": list(pre.std) if pre.std else None,
                "size": list(pre.size) if pre.size else None, "resize": pre.resize,
                "top1": self.top1, "top5": self.top5, "nll": self.nll, "information": self.information,
                "confidence": self.confidence, "classes": self.classes, "agreement": self.agreement}


@dataclass(frozen=True)
class PreprocessingCheck:
    """What :func:`check_preprocessing` found. ``rows``: best first. ``best``: ``rows[0]``. ``declared``: the row
    holding the model's declared preprocessing (None when it declares none). ``warning``: why the declared one is
    clearly wrong, or None. ``lead_share``: the share of bootstrap resamples in which the best row beat the declared
    one (None when they are the same row or nothing is declared). ``resize_rows``: the best normalisation under each
    resize policy. ``labels_source``: where the labels came from (None: unlabelled)."""
    rows: tuple
    labelled: bool
    images: int
    declared: CandidateScore | None
    warning: str | None
    lead_share: float | None
    resize_rows: tuple = ()
    labels_source: str | None = None
    skipped: tuple = field(default=())

    @property
    def best(self) -> CandidateScore:
        return self.rows[0]

    def summary(self) -> str:
        """One line: which preprocessing the weights fit, with its numbers and the declared one's."""
        best = self.best
        line = f"the weights fit {best.label}: {_numbers(best, self.labelled)}"
        if self.declared is None:
            return line + "; the model declares no preprocessing"
        if self.declared is best:
            return line + " (the declared preprocessing)"
        return line + f"; the declared {self.declared.label}: {_numbers(self.declared, self.labelled)}"

    def table(self) -> list[str]:
        """The rows as aligned text lines, best first, with a header."""
        width = max(len(r.label) + (11 if r.declared else 0) for r in self.rows)
        if self.labelled:
            head = f"{'preprocessing':<{width}}  top-1  top-5    NLL  information"
        else:
            head = f"{'preprocessing':<{width}}  information  confidence  classes  agreement"
        lines = [head]
        for r in self.rows:
            name = r.label + (" [declared]" if r.declared else "")
            if self.labelled:
                lines.append(f"{name:<{width}}  {r.top1:5.0%}  {r.top5:5.0%}  {r.nll:5.2f}  {r.information:11.2f}")
            else:
                lines.append(f"{name:<{width}}  {r.information:11.2f}  {r.confidence:10.2f}  {r.classes:7d}  "
                             f"{r.agreement:9.0%}")
        return lines

    def to_dict(self) -> dict:
        return {"labelled": self.labelled, "images": self.images, "labels_source": self.labels_source,
                "best": self.best.name, "declared": self.declared.name if self.declared else None,
                "summary": self.summary(), "warning": self.warning, "lead_share": self.lead_share,
                "rows": [r.to_dict() for r in self.rows],
                "resize": [r.to_dict() for r in self.resize_rows], "skipped": list(self.skipped)}


def _numbers(row: CandidateScore, labelled: bool) -> str:
    if labelled:
        return f"top-1 {row.top1:.0%}, top-5 {row.top5:.0%}, NLL {row.nll:.2f}"
    return f"information {row.information:.2f} nats, confidence {row.confidence:.2f}, {row.classes} classes"


# ---------------------------------------------------------------------------------------------------------------------
# Candidates


def swapped(pre: Preprocessing) -> Preprocessing:
    """``pre`` fed in the other channel order (mean and std follow their colours)."""
    return dataclasses.replace(pre, order="BGR" if pre.order == "RGB" else "RGB",
                               mean=pre.mean[::-1] if pre.mean else None, std=pre.std[::-1] if pre.std else None)


def _swap_name(name: str, pre: Preprocessing) -> str:
    return f"{name}-{'bgr' if pre.order == 'RGB' else 'rgb'}"


def _affine(pre: Preprocessing) -> tuple:
    """The input of pixel value 0 and of 255, per model channel, in RGB colour terms: ((3,), (3,))."""
    mean = np.zeros(3) if pre.mean is None else np.asarray(pre.mean)
    std = np.ones(3) if pre.std is None else np.asarray(pre.std)
    low, high = (0 * pre.scale - mean) / std, (255 * pre.scale - mean) / std
    # Channel k of the model input holds colour k (RGB) or colour 2 - k (BGR); compare colour by colour.
    if pre.order == "BGR":
        low, high = low[::-1], high[::-1]
    return low, high


def same_input(a: Preprocessing, b: Preprocessing, tolerance: float = SAME_INPUT_TOLERANCE) -> bool:
    """Whether ``a`` and ``b`` feed the model the same numbers to within ``tolerance`` of their range (same
    channel order, size and resize, and every channel's 0 and 255 within it)."""
    if a.order != b.order or a.size != b.size or a.resize != b.resize:
        return False
    (a0, a1), (b0, b1) = _affine(a), _affine(b)
    span = np.maximum(np.abs(a1 - a0), np.abs(b1 - b0))
    return bool(np.all(np.abs(a0 - b0) <= tolerance * span) and np.all(np.abs(a1 - b1) <= tolerance * span))


def candidates(declared: Preprocessing | None, size, resize: str = "squash") -> list[tuple[str, Preprocessing]]:
    """The candidate (name, preprocessing) pairs: each of :data:`CANDIDATES` and its channel swap, then the
    declared preprocessing ("declared") and its swap ("declared-swapped"), all at ``size`` with ``resize``."""
    out = []
    for name in CANDIDATES:
        pre = dataclasses.replace(PRESETS[name], size=size, resize=resize)
        out.append((name, pre))
        out.append((_swap_name(name, pre), swapped(pre)))
    if declared is not None:
        declared = dataclasses.replace(declared, size=size, resize=resize)
        out.append(("declared", declared))
        out.append(("declared-swapped", swapped(declared)))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Scoring


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    s = scores.astype(np.float64)
    s = s - s.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def _entropy(p: np.ndarray, axis=-1) -> np.ndarray:
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=axis)


def _information(probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray | float:
    """``H(mean p) - mean H(p)``; with ``weights`` (R, N) resample counts, one value per resample."""
    per_image = _entropy(probs)
    if weights is None:
        return float(_entropy(probs.mean(axis=0)) - per_image.mean())
    n = weights.sum(axis=1, keepdims=True)
    return _entropy(weights @ probs / n) - (weights @ per_image) / n[:, 0]


def _score(name, pre, log_probs, classes, declared) -> CandidateScore:
    log_probs = log_probs.astype(np.float64)
    probs = np.exp(log_probs)
    top = np.argsort(-log_probs, axis=1)[:, :5]
    fields = dict(information=_information(probs), confidence=float(probs.max(axis=1).mean()),
                  classes=int(len(np.unique(top[:, 0]))), declared=declared)
    if classes is not None:
        fields.update(top1=float(np.mean(top[:, 0] == classes)), top5=float(np.mean((top == classes[:, None]).any(1))),
                      nll=float(-log_probs[np.arange(len(classes)), classes].mean()))
    return CandidateScore(name, pre, key=name, **fields)


def _rank_key(row: CandidateScore, labelled: bool):
    return (-row.top1, row.nll) if labelled else (-row.information,)


def _lead_share(best_lp, other_lp, classes, rounds: int, seed: int) -> tuple[float, float]:
    """The best row's lead over another (top-1 or information) and the share of bootstrap resamples it holds in."""
    n = len(best_lp)
    best_lp, other_lp = best_lp.astype(np.float64), other_lp.astype(np.float64)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=rounds).astype(np.float64)
    if classes is not None:
        diff = (np.argmax(best_lp, 1) == classes).astype(float) - (np.argmax(other_lp, 1) == classes)
        return float(diff.mean()), float(np.mean(weights @ diff / n > 0))
    best_p, other_p = np.exp(best_lp), np.exp(other_lp)
    lead = _information(best_p) - _information(other_p)
    return float(lead), float(np.mean(_information(best_p, weights) - _information(other_p, weights) > 0))


def check_preprocessing(model, images, labels=None, declared=None, max_images: int | None = MAX_IMAGES,
                        batch_size: int | None = None, progress=None, warn: bool = True, seed: int = 0,
                        declared_as: str = "the model's declared preprocessing") -> PreprocessingCheck:
    """Score candidate preprocessings on pictures and say which one the model's weights fit.

    See the module docstring for the candidates, the scores (top-1 / top-5 / NLL with labels, the information
    ``H(mean p) - mean H(p)`` without) and the clear-margin test behind the warning.

    Args:
        model: a loaded :class:`~onnx_cnnviz.Model` or a path to load on the CPU.
        images: a folder (its pictures, with its ``labels.csv`` or class sub-folders when present) or a list of
            picture paths.
        labels: None (found as above), a CSV path (``file,class_index``), a mapping file name -> class, or False.
        declared: the preprocessing to judge; None reads the model's ``cnnviz.preprocess.*`` metadata.
        max_images: score at most this many pictures (an even subsample; None: all).
        batch_size: rows per onnxruntime run (default: the library's).
        progress: called with ``(done, total)`` forward passes after each one.
        warn: issue :attr:`PreprocessingCheck.warning` as a :class:`PreprocessingWarning` too.
        seed: of the bootstrap resamples.
        declared_as: what the warning calls ``declared`` (a caller judging its user's flags says so).

    Returns:
        A :class:`PreprocessingCheck`, best row first.

    Raises:
        InputError: bad folder, pictures or labels (see :func:`find_images`), or a model that does not take
            3-channel pictures.
    """
    from .report import fit_preprocessing, labels_from_metadata

    if not isinstance(model, (str, Path)):
        m = model
    else:
        from . import load
        m = load(model, device="cpu")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer))
                                   or max_images < 1):
        raise InputError(f"max_images must be a positive int or None, not {max_images!r}.")
    if declared is None:
        declared = Preprocessing.from_metadata(m.metadata)
    elif not isinstance(declared, Preprocessing):
        from .image import get_preprocessing
        declared = get_preprocessing(declared)
    base = fit_preprocessing(m, declared or dataclasses.replace(PRESETS["imagenet"], size=(224, 224)))
    size, resize = base.size or (224, 224), base.resize

    class_names = labels_from_metadata(m.metadata)
    paths, classes, source = find_images(images, labels, class_names, m.num_classes)
    paths, classes = subsample(paths, classes, max_images)
    pictures, skipped, kept = [], [], []
    for i, path in enumerate(paths):
        try:
            pictures.append(read_image(path))
            kept.append(i)
        except InputError as exc:
            skipped.append(f"{path}: {exc}")
    if not pictures:
        raise InputError(f"none of the {len(paths)} pictures could be read ({skipped[0]}).")
    if classes is not None:
        classes = classes[kept]

    cands = candidates(declared, size, resize)
    other = [p for p in RESIZE_POLICIES if p != resize][0]
    total = len(cands) + 1
    fitted = {resize: np.stack([cands[0][1].fit_picture(p) for p in pictures])}
    log_probs, rows = {}, []
    for done, (name, pre) in enumerate(cands, start=1):
        log_probs[name] = _run(m, fitted[resize], pre, batch_size)
        rows.append(_score(name, pre, log_probs[name], classes, name == "declared"))
        if progress is not None:
            progress(done, total)

    labelled = classes is not None
    merged = _merge(rows, declared is not None)
    merged.sort(key=lambda r: _rank_key(r, labelled))
    best = merged[0]
    best_top1 = np.argmax(log_probs[best.key], axis=1)
    merged = [dataclasses.replace(r, agreement=float(np.mean(np.argmax(log_probs[r.key], 1) == best_top1)))
              for r in merged]
    best = merged[0]
    declared_row = next((r for r in merged if r.declared), None)

    # The best normalisation under the other resize policy.
    best_pre = dataclasses.replace(best.preprocessing, resize=other)
    fitted[other] = np.stack([best_pre.fit_picture(p) for p in pictures])
    other_row = _score(best.name, best_pre, _run(m, fitted[other], best_pre, batch_size), classes, False)
    if progress is not None:
        progress(total, total)
    resize_rows = tuple(sorted((dataclasses.replace(best, same_as=(), agreement=1.0), other_row),
                               key=lambda r: _rank_key(r, labelled)))

    warning, share = None, None
    if declared_row is not None and declared_row is not best:
        lead, share = _lead_share(log_probs[best.key], log_probs[declared_row.key], classes, BOOTSTRAP_ROUNDS, seed)
        minimum = MIN_TOP1_LEAD if labelled else MIN_INFORMATION_LEAD
        if lead >= minimum and share >= BOOTSTRAP_SHARE:
            unit = f"{100 * lead:.0f} points more top-1" if labelled else f"{lead:.2f} nats more information"
            named = f"{declared_row.label}: " if declared_row.name != "declared" else ""
            warning = (f"{declared_as} ({named}{declared_row.preprocessing.describe()}) is not the one the model's "
                       "weights fit: "
                       f"{best.label} ({best.preprocessing.describe()}) scores {unit} on {len(pictures)} pictures "
                       f"({_numbers(best, labelled)} against {_numbers(declared_row, labelled)}; ahead in "
                       f"{share:.0%} of {BOOTSTRAP_ROUNDS} resamples). Explanations made with the declared "
                       "preprocessing explain wrong predictions: record the right one in the model's metadata.")
    result = PreprocessingCheck(tuple(merged), labelled, len(pictures), declared_row, warning, share, resize_rows,
                                source, tuple(skipped))
    if warn and warning:
        warnings.warn(warning, PreprocessingWarning, stacklevel=2)
    return result


def _merge(rows: list[CandidateScore], has_declared: bool) -> list[CandidateScore]:
    """Rows whose inputs are the same (:func:`same_input`) as one row, named after the preset the declared
    preprocessing is when it is among them, else the first in candidate order ("declared" when no preset is)."""
    groups: list[list[CandidateScore]] = []
    for row in rows:
        for group in groups:
            if same_input(group[0].preprocessing, row.preprocessing):
                group.append(row)
                break
        else:
            groups.append([row])
    out = []
    for group in groups:
        declared = next((r for r in group if r.declared), None)
        head = group[0]
        names = [r.name for r in group if r.name not in ("declared", "declared-swapped")]
        if declared is not None:
            # The preset the declared preprocessing is (exactly) names the row: "tf" stays "tf", not "tflite".
            exact = [n for n in names if same_input(next(r for r in group if r.name == n).preprocessing,
                                                    declared.preprocessing, 1e-9)]
            names = exact[:1] + [n for n in names if n not in exact[:1]]
            out.append(dataclasses.replace(declared, name=names[0] if names else "declared",
                                           same_as=tuple(names[1:])))
        else:
            out.append(dataclasses.replace(head, name=names[0] if names else head.name, same_as=tuple(names[1:])))
    return out


def _run(m, fitted: np.ndarray, pre: Preprocessing, batch_size) -> np.ndarray:
    """Log-probabilities (N, K) of the model on the fitted uint8 pictures under ``pre``'s arithmetic."""
    parts = []
    mean = None if pre.mean is None else np.asarray(pre.mean, np.float32)
    std = None if pre.std is None else np.asarray(pre.std, np.float32)
    for start in range(0, len(fitted), _CHUNK):
        x = fitted[start:start + _CHUNK].astype(np.float32)
        if pre.order == "BGR":
            x = x[..., ::-1]
        x *= np.float32(pre.scale)
        if mean is not None:
            x -= mean
        if std is not None:
            x /= std
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        scores = m.scores(x, batch_size=batch_size) if batch_size else m.scores(x)
        parts.append(_log_softmax(np.asarray(scores)).astype(np.float32))  # float32: 13 candidates x N x K held
    out = np.concatenate(parts)
    # A picture the model answers with NaN or infinite scores tells nothing: a uniform guess stands for it.
    bad = ~np.isfinite(out).all(axis=1)
    out[bad] = -math.log(out.shape[1])
    return out


__all__ = ["check_preprocessing", "PreprocessingCheck", "CandidateScore", "PreprocessingWarning", "candidates",
           "same_input", "swapped", "find_images", "CANDIDATES"]
