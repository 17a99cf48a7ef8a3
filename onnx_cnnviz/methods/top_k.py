"""Maps of each image's k best classes (the CAM paper's top-5 figure, Zhou et al. 2016, Fig. 4)."""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..model import Model
from . import registry


def top_k(method, m: Model, x, k: int = 5, **kwargs):
    """Maps of the ``k`` best-scoring classes of each image.

    ``method``: a registered method's name (``"gradcam"``) or its function (``cv.grad_cam``; any function of the
    map-function shape works); ``kwargs`` go to it. Returns ``(maps (N, k, ...), classes (N, k))`` with classes in
    decreasing score order. A class-agnostic method (EigenCAM) is refused: its k maps would be equal.
    """
    if "targets" in kwargs:
        raise InputError("top_k chooses the targets itself (the k best classes); do not pass targets.")
    entry = registry.get(method) if isinstance(method, str) else registry.by_function(method)
    if entry is not None and not entry.class_specific:
        raise InputError(f"{entry.title} does not depend on the class, so its top-{k} maps would all be equal; use a "
                         "class-specific method.")
    func = entry.func if entry is not None else method
    if not callable(func):
        raise InputError(f"method must be a registered method name or a map function, got {method!r}.")
    x = m.check_input(x)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= m.num_classes:
        raise InputError(f"k must be an int between 1 and {m.num_classes}, got {k!r}.")
    scores = m.scores(x, batch_size=kwargs.get("batch_size"))
    classes = np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)
    n = scores.shape[0]
    maps = func(m, np.repeat(x, k, axis=0), targets=classes.reshape(-1), **kwargs)
    return maps.reshape(n, k, *maps.shape[1:]), classes


__all__ = ["top_k"]
