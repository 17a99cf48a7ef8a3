"""Targets: what an explanation explains, as the seed of the backward pass.

A method explains one scalar per image, ``L = sum_j w_j T_j``: a weighted sum of the elements of one tensor ``T`` of
the model (the class scores, a dense output, a detector's head). The weights ``w`` (the *cotangent*, one row per
image) are fed to the backward graph at run time (:meth:`onnx_cnnviz.Model.run`), so one cached graph serves every
target on that tensor, and targets of different kinds (a class here, a region there) run in one batch.

``targets=`` of every method takes

* ``None``: each image's top-1 class (classifiers only; chosen inside the same run);
* an ``int`` or a class name (``Model.labels``), or one per image;
* a :class:`Target` object, or one per image: :class:`ClassScore` (the class score ``S_c``), :class:`OutputElement`
  (one element of any output), :class:`OutputWeights` (any weighted sum of an output tensor),
  :class:`Region` (a class channel of a dense output summed over a mask, as pytorch-grad-cam's
  ``SemanticSegmentationTarget``), :class:`onnx_cnnviz.tasks.Detection` (one detection's class score).

:func:`resolve` turns any of these into :class:`Seeds` (the seeded tensor, the cotangent rows, the class each row
explains); it is the one place targets are read. A new target kind is a subclass of :class:`Target` with a
``seed(m)`` method returning ``(tensor name, cotangent of the tensor's per-image shape)``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from .errors import InputError

__all__ = ["Target", "ClassScore", "OutputElement", "OutputWeights", "Region", "Seeds", "resolve", "target_values"]


class Target:
    """One scalar of the model to explain: ``L = sum(cotangent * T)`` for a tensor ``T`` of the model.

    Subclasses implement :meth:`seed`; ``class_index`` is the class the target explains (-1 when it names none),
    which CAM (Zhou et al.'s class weights) and the reports read."""

    class_index: int = -1

    def seed(self, m) -> tuple[str, np.ndarray]:
        """``(tensor, cotangent)``: the name of the tensor ``T`` seeded and ``dL/dT`` for one image, an array of
        ``T``'s shape without the batch axis (or its flat size).

        Args:
            m: the :class:`onnx_cnnviz.Model` the target is explained on.

        Returns:
            The tensor name and the float cotangent.
        """
        raise NotImplementedError

    def seed_entries(self, m) -> tuple[str, int, np.ndarray, np.ndarray] | None:
        """``(tensor, size, indices, values)``: :meth:`seed` as its nonzero entries, for a target whose cotangent is a
        few elements of a large tensor (a detection's one score in a 640x640 head output: 2.8 MB a row written
        densely); ``values`` at repeated ``indices`` add up. None (the default): use :meth:`seed`."""
        return None


def _output_name(m, output) -> str:
    """``output`` (None: the model's head output, ``Model.score_name``) checked as a tensor of ``m``."""
    if output is None:
        return m.score_name
    if not isinstance(output, str):
        raise InputError(f"a target's output is a tensor name (a str), got {output!r}.")
    m.tensor_shape(output)  # raises, with suggestions, for an unknown name
    return output


def _per_image_shape(m, tensor: str) -> tuple:
    shape = m.tensor_shape(tensor)
    if len(shape) < 1 or any(d is None for d in shape[1:]):
        raise InputError(f"'{tensor}' has shape {shape}: a target needs a tensor whose axes after the batch are "
                         "known; load the model at a fixed input size (input_size=(H, W)).")
    return tuple(int(d) for d in shape[1:])


@dataclass(frozen=True)
class ClassScore(Target):
    """The class score ``S_c`` (before any final softmax) of a classifier: the seed is the one-hot row ``e_c``.

    ``targets=ClassScore(c)`` explains exactly what ``targets=c`` does. ``c``: a class index or a class name
    (``Model.labels``)."""
    cls: int | str

    @property
    def class_index(self) -> int:  # type: ignore[override]
        return self.cls if isinstance(self.cls, int) else -1

    def seed(self, m) -> tuple[str, np.ndarray]:
        _classifier_only(m, self.cls)
        c = class_index(m, self.cls)
        row = np.zeros(score_size(m), np.float32)
        row[c] = 1.0
        return m.score_name, row


@dataclass(frozen=True)
class OutputElement(Target):
    """One element ``T[index]`` of tensor ``output`` (None: the model's head output); ``index`` is the element's
    position without the batch axis (a tuple, or one int into the flattened tensor)."""
    output: str | None = None
    index: tuple | int = 0
    class_index: int = -1

    def seed(self, m) -> tuple[str, np.ndarray]:
        tensor = _output_name(m, self.output)
        shape = _per_image_shape(m, tensor)
        row = np.zeros(shape, np.float32)
        try:
            if isinstance(self.index, (int, np.integer)) and len(shape) != 1:
                row.reshape(-1)[int(self.index)] = 1.0
            else:
                index = tuple(int(i) for i in np.atleast_1d(self.index))
                if len(index) != len(shape):
                    raise IndexError
                row[index] = 1.0
        except (IndexError, TypeError, ValueError):
            raise InputError(f"index {self.index!r} is not an element of '{tensor}' (per-image shape {shape}); give "
                             f"{len(shape)} indices or one flat index below {row.size}.") from None
        return tensor, row


@dataclass(frozen=True, eq=False)
class OutputWeights(Target):
    """Any weighted sum ``sum_j weights_j T_j`` of tensor ``output`` (None: the head output): ``weights`` has the
    tensor's per-image shape (or its flat size); this is the cotangent itself."""
    output: str | None = None
    weights: np.ndarray | None = None
    class_index: int = -1

    def seed(self, m) -> tuple[str, np.ndarray]:
        tensor = _output_name(m, self.output)
        shape = _per_image_shape(m, tensor)
        w = np.asarray(self.weights, dtype=np.float32)
        if w.size != int(np.prod(shape)) or not np.isfinite(w).all():
            raise InputError(f"weights must be {int(np.prod(shape))} finite values shaped like '{tensor}' without "
                             f"its batch axis {shape}, got shape {w.shape}.")
        return tensor, w.reshape(shape)


@dataclass(frozen=True, eq=False)
class Region(Target):
    """A region of a dense output (N, C, H, W): ``L = sum_ij mask_ij T[c, i, j]``, class ``c``'s channel summed over
    ``mask`` (pytorch-grad-cam's ``SemanticSegmentationTarget``: ``(model_output[c] * mask).sum()``).

    ``mask``: (H, W) at the output's resolution (bool or float weights); ``cls``: a class index or name;
    ``output``: the dense tensor (None: the head output)."""
    cls: int | str = 0
    mask: np.ndarray | None = None
    output: str | None = None

    @property
    def class_index(self) -> int:  # type: ignore[override]
        return self.cls if isinstance(self.cls, int) else -1

    def seed(self, m) -> tuple[str, np.ndarray]:
        tensor = _output_name(m, self.output)
        shape = _per_image_shape(m, tensor)
        if len(shape) != 3:
            raise InputError(f"a Region is a class channel of a dense (N, C, H, W) output; '{tensor}' has per-image "
                             f"shape {shape}. Use OutputWeights for other tensors.")
        mask = np.asarray(self.mask, dtype=np.float32)
        if mask.shape != shape[1:] or not np.isfinite(mask).all():
            raise InputError(f"the region's mask must be finite and {shape[1]}x{shape[2]} like '{tensor}''s map "
                             f"(resize it to the output's resolution), got shape {mask.shape}.")
        c = class_index(m, self.cls, channels=shape[0])
        row = np.zeros(shape, np.float32)
        row[c] = mask
        return tensor, row


# ==================================================================================================================
# Resolution: the one code path from ``targets=`` to the seed
# ==================================================================================================================
@dataclass
class Seeds:
    """The backward seed of one run: ``rows[n]`` is ``dL_n/dT`` (flattened) for tensor ``tensor`` of image ``n``.

    ``rows`` None: each image's top-1 class, chosen inside the graph (classifiers only). ``classes``: (N,) int64 class
    each row explains (-1: none); None for top-1. ``objects``: the target objects given (None for plain ints)."""
    tensor: str
    rows: np.ndarray | None
    classes: np.ndarray | None
    objects: tuple | None = None

    def values(self, flat_outputs: np.ndarray, images) -> np.ndarray:
        """The targets' values ``sum_j rows[n, j] T_j`` for rows of ``flat_outputs`` (B, size) of the seeded tensor
        belonging to images ``images`` (B,): a class score is read exactly (no products with zeros)."""
        images = np.asarray(images)
        if self.objects is None and self.classes is not None:
            return flat_outputs[np.arange(len(images)), self.classes[images]]
        return np.einsum("bj,bj->b", flat_outputs.astype(np.float64), self.rows[images].astype(np.float64))


def score_size(m) -> int:
    """Elements per image of the head output (K for a classifier's (N, K) scores)."""
    return int(m.score_size)


def class_index(m, cls, channels: int | None = None) -> int:
    """``cls`` (an int or a class name of ``m.labels``) as a class index below ``channels`` (default: the model's
    classes), :class:`InputError` otherwise."""
    k = channels if channels is not None else m.num_classes
    if isinstance(cls, str):
        labels = getattr(m, "labels", None)
        if not labels:
            raise InputError(f"target {cls!r} is a class name, but the model has no class names; load it with "
                             "labels=[...] (or give class indices).")
        if cls not in labels:
            close = difflib.get_close_matches(cls, labels, n=3)
            hint = f" Closest: {', '.join(repr(c) for c in close)}." if close else ""
            raise InputError(f"{cls!r} is not a class name of the model.{hint}")
        return labels.index(cls)
    if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)):
        raise InputError(f"a class is an int or a class name, got {cls!r}.")
    if k is None:
        raise InputError(f"class {int(cls)} cannot be checked: the model ({m.task}) has no class count; give a "
                         "target object.")
    if not 0 <= int(cls) < k:
        raise InputError(f"target class {int(cls)} is out of range: the model has {k} classes (0..{k - 1}).")
    return int(cls)


def _classifier_only(m, target) -> None:
    """A class score exists only in a classifier's (N, K) scores: on a detector's or segmenter's head output an int
    would silently pick an element (a box coordinate, one pixel), so it is refused."""
    if m.task != "classifier":
        what = ("the Detection objects of onnx_cnnviz.tasks.detect" if m.task == "detector"
                else "a Region (a class channel over a mask)")
        raise InputError(f"target {target!r} is a class score, but this is a {m.task}: its targets are {what}, or "
                         "any OutputElement / OutputWeights of its outputs.")


def _as_list(targets, n: int) -> list:
    """``targets`` as one item per image: a single item is repeated."""
    if isinstance(targets, (Target, str, int, np.integer)):
        return [targets] * n
    arr = np.asarray(targets) if not isinstance(targets, (list, tuple)) else None
    if arr is not None and arr.ndim == 0:
        return [arr.item()] * n
    items = list(targets)
    if len(items) != n:
        raise InputError(f"targets must be None, one target, or {n} targets (one per image), got {len(items)}.")
    return [t.item() if isinstance(t, np.generic) else t for t in items]


def resolve(m, targets, n: int, score_weights=None) -> Seeds:
    """The seed of ``targets`` for ``n`` images on model ``m``: the one place ``targets=`` is read.

    Args:
        m: the :class:`onnx_cnnviz.Model`.
        targets: None, an int or class name, a :class:`Target`, or one of these per image.
        n: the number of images.
        score_weights: (n, K) rows weighting the head output's elements (:meth:`Model.run`'s argument); replaces
            ``targets``' rows when given.

    Returns:
        The :class:`Seeds`.

    Raises:
        InputError: a target out of range, of an unknown class name, of the wrong count, or targets of one call
            seeding different tensors.
    """
    if score_weights is not None:
        rows = np.asarray(score_weights, dtype=np.float32)
        if rows.shape != (n, score_size(m)):
            raise InputError(f"score_weights must have shape ({n}, {score_size(m)}), got {rows.shape}.")
        classes = None if targets is None else resolve(m, targets, n).classes
        return Seeds(m.score_name, rows, classes if classes is not None else np.full(n, -1, np.int64), ())
    if targets is None:
        if m.task != "classifier":
            raise InputError(f"a {m.task} has no top-1 class to explain by default: give targets (for a detector the "
                             "Detection objects of onnx_cnnviz.tasks.detect, for a segmenter a Region, or any "
                             "OutputElement / OutputWeights).")
        return Seeds(m.score_name, None, None)
    items = _as_list(targets, n)
    if not any(isinstance(t, Target) for t in items):
        _classifier_only(m, items[0])
        classes = np.array([class_index(m, t) for t in items], dtype=np.int64)
        rows = np.zeros((n, score_size(m)), np.float32)
        rows[np.arange(n), classes] = 1.0
        return Seeds(m.score_name, rows, classes)
    tensors, rows, classes = [], [], []
    for t in items:
        if not isinstance(t, Target):
            t = ClassScore(t)
        entries = t.seed_entries(m)
        if entries is None:
            tensor, row = t.seed(m)
            row = np.asarray(row, np.float32).reshape(-1)
        else:
            tensor, row = entries[0], entries[1:]
        tensors.append(tensor)
        rows.append(row)
        classes.append(class_index(m, t.cls) if isinstance(t, (ClassScore, Region)) and isinstance(t.cls, str)
                       else int(t.class_index))
    if len(set(tensors)) > 1:
        raise InputError(f"the targets of one call seed different tensors ({', '.join(sorted(set(tensors)))}); "
                         "explain them in separate calls.")
    return Seeds(tensors[0], _stacked(rows), np.asarray(classes, np.int64), tuple(items))


def _stacked(rows: list) -> np.ndarray:
    """The (N, size) seed of rows given densely or as ``(size, indices, values)`` entries: zeros written only where
    an entry is (the pages of the rest are never touched)."""
    sizes = {r.size if isinstance(r, np.ndarray) else int(r[0]) for r in rows}
    if len(sizes) != 1:
        raise InputError(f"the targets of one call seed rows of different sizes ({sorted(sizes)}).")
    out = np.zeros((len(rows), sizes.pop()), np.float32)
    for row, target in zip(out, rows):
        if isinstance(target, np.ndarray):
            row[:] = target
        else:
            np.add.at(row, np.asarray(target[1], np.int64), np.asarray(target[2], np.float32))
    return out


def target_values(m, x: np.ndarray, targets, batch_size: int | None = None) -> np.ndarray:
    """(N,) float64 value of each image's target ``L = sum(cotangent * T)`` (forward only).

    Args:
        m: the :class:`onnx_cnnviz.Model`.
        x: (N, C, H, W) images.
        targets: as every method's ``targets`` (None: each image's top-1 class score).
        batch_size: images per run.

    Returns:
        The targets' values.
    """
    n = np.shape(x)[0]
    seeds = resolve(m, targets, n)
    if seeds.tensor == m.score_name:
        flat = m.scores(x, batch_size=batch_size)
    else:
        flat = m.run(x, outputs=[seeds.tensor], batch_size=batch_size).outputs[seeds.tensor].reshape(n, -1)
    if seeds.rows is None:
        return flat.max(axis=1).astype(np.float64)
    return seeds.values(flat, np.arange(n))
