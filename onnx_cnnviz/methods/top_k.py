"""Maps of each image's k best classes (the CAM paper's top-5 figure, Zhou et al. 2016, Fig. 4)."""
from __future__ import annotations

import inspect

import numpy as np

from ..errors import InputError
from ..model import Model
from . import attribution, registry
from .attribution import Progress, auto_batch_size


def check_k(k, num_classes: int, name: str = "k") -> int:
    """``k`` classes to explain, checked against the model's ``num_classes``.

    Args:
        k: the number of best classes asked for.
        num_classes: the model's class count.
        name: how the caller calls ``k`` in the error (``top_k`` for the report, ``--top-k`` on the command line).

    Returns:
        ``k`` as an int.

    Raises:
        InputError: ``k`` is not an int in [1, num_classes]: explaining fewer classes than asked would be a silent
            wrong answer.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_classes:
        raise InputError(f"{name} must be an int between 1 and {num_classes} (the model's class count), got "
                         f"{k!r}; give at most {num_classes}.")
    return int(k)


def top_k(method, m: Model, x, k: int = 5, *, progress: Progress | None = None, **kwargs):
    """Maps of the ``k`` best-scoring classes of each image (the CAM paper's top-5 figure, Zhou et al. 2016, Fig. 4).

    The N * k (image, class) maps are made ``batch_size`` at a time (see :func:`class_maps`), so memory beyond the
    result does not grow with ``k``.

    Args:
        method: a registered method's name (``"gradcam"``) or its function (``cv.grad_cam``; any function of the
            map-function shape works).
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        k: how many classes, in [1, ``m.num_classes``].
        progress: ``progress(done, total)``, called after each batch with the maps done so far and
            their total, ``N * k``.
        **kwargs: passed on to ``method`` (``layer``, ``batch_size``, its parameters); not ``targets``.

    Returns:
        ``(maps, classes)``: maps (N, k, ...) and classes (N, k) in decreasing score order.

    Raises:
        InputError: ``targets`` given, a model that is not a classifier, a class-agnostic method (EigenCAM: its k
            maps would be equal), a ``method`` that is neither a name nor a function, or a bad ``k``.

    Example:
        ```python
        maps, classes = cv.top_k("gradcam", model, x, k=3)   # maps (N, 3, H, W)
        ```
    """
    if "targets" in kwargs:
        raise InputError("top_k chooses the targets itself (the k best classes); do not pass targets.")
    if m.task != "classifier":
        raise InputError(f"top_k explains a classifier's k best classes; a {m.task}'s predictions are explained with "
                         "onnx_cnnviz.tasks.explain(method, m, x, targets) (detections, regions).")
    entry = registry.get(method) if isinstance(method, str) else registry.by_function(method)
    if entry is not None and not entry.class_specific:
        raise InputError(f"{entry.title} does not depend on the class, so its top-{k} maps would all be equal; use a "
                         "class-specific method.")
    func = entry.func if entry is not None else method
    if not callable(func):
        raise InputError(f"method must be a registered method name or a map function, got {method!r}.")
    x = m.check_input(x)
    k = check_k(k, m.num_classes)
    scores = m.scores(x, batch_size=kwargs.get("batch_size"))
    classes = np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)
    maps = class_maps(func, m, x, classes, progress=progress, **kwargs)
    return maps, classes


def class_maps(method, m: Model, x, classes, *, batch_size: int | None = None, progress: Progress | None = None,
               **kwargs) -> np.ndarray:
    """Maps of ``method`` for image ``i`` and each class ``classes[i, j]``, without copying the images k times.

    What ``method`` returns for ``np.repeat(x, k, axis=0)`` and ``classes.reshape(-1)``, made ``batch_size``
    (image, class) rows at a time. A method whose noise comes from a ``seed`` (SmoothGrad) gets one generator for
    all the batches, so its draws are those of one call.

    Args:
        method: a registered name or a map function.
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        classes: (N, k) class indices.
        batch_size: rows per call of ``method`` (default: :func:`auto_batch_size` for N * k rows); passed on.
        progress: ``progress(done, total)``, called after each batch with the maps done so far and
            their total, ``N * k``. When ``method`` takes a ``progress`` of its own, its reports in
            between are passed on, scaled to whole maps.
        **kwargs: passed on to ``method``.

    Returns:
        (N, k, ...) maps.

    Raises:
        InputError: ``classes`` not (N, k) with k >= 1, or a bad ``batch_size``.
    """
    func = registry.get(method).func if isinstance(method, str) else method
    x = m.check_input(x)
    classes = np.asarray(classes)
    if classes.ndim != 2 or classes.shape[0] != x.shape[0] or classes.shape[1] < 1:
        raise InputError(f"classes must be (N, k) with N = {x.shape[0]} images and k >= 1, got shape "
                         f"{classes.shape}.")
    n, k = classes.shape
    flat = classes.reshape(-1)
    total = n * k
    entry = registry.by_function(func)
    if batch_size and int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}.")
    rows = int(batch_size) if batch_size else auto_batch_size(
        m, x.shape[2:], total, backward=entry.gradients if entry is not None else True)
    params = _parameters(func)
    if func is attribution.smoothgrad:
        seed = kwargs.get("seed", params["seed"].default)
        kwargs["seed"] = np.random.default_rng(seed)  # a Generator passes through default_rng: the draws continue
    takes_progress = "progress" in params
    reported = [0]

    def report(done: int) -> None:
        if progress is not None and done > reported[0]:
            reported[0] = done
            progress(done, total)

    out = None
    for start in range(0, total, rows):
        stop = min(start + rows, total)
        extra = {} if batch_size is None else {"batch_size": batch_size}
        if takes_progress and progress is not None:
            extra["progress"] = lambda d, t, start=start, size=stop - start: report(start + size * d // max(t, 1))
        maps = np.asarray(func(m, x[np.arange(start, stop) // k], targets=flat[start:stop], **extra, **kwargs))
        if out is None:
            out = np.empty((total,) + maps.shape[1:], dtype=maps.dtype)
        out[start:stop] = maps
        del maps
        report(stop)
    return out.reshape(n, k, *out.shape[1:])


def _parameters(func) -> dict:
    try:
        return dict(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return {}


__all__ = ["top_k", "class_maps"]
