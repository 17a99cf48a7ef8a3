"""What a metric is given for a method's result: the maps as they are, maps rescaled to [0, 1], or the method itself.

The command line (``cnnviz evaluate``), the report's faithfulness line and the Ray pipeline score an explanation
method's raw output the same way, through :func:`explanation_for`.
"""
from __future__ import annotations

import numpy as np

from . import registry
from .base import pixel_maps

#: The metrics that multiply the image by the map (Grad-CAM++'s explanation map ``E = M * x``, Chattopadhyay et al.
#: 2018, Sec. 5.1), so the map must lie in [0, 1]: each image's per-pixel map is min-max normalised for them
#: (Chattopadhyay et al. normalise the CAM the same way). The ranking metrics (deletion, insertion, ROAD) get the maps
#: as the methods return them: a per-image positive affine rescaling leaves their pixel order, and so their values,
#: unchanged.
UNIT_RANGE_METRICS = frozenset({"average-drop", "increase-in-confidence"})


def unit_range(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) maps min-max normalised per image to [0, 1], in float32; a constant map becomes all 0."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return ((flat - lo) / span).reshape(maps.shape).astype(np.float32)


def explanation_for(metric, maps: np.ndarray, method, params: dict | None = None):
    """What metric ``metric`` takes for ``method``'s ``maps`` (the method's registry name, or a function, with its
    raw output): the method itself for a metric that re-explains (``takes == "method"``); for
    :data:`UNIT_RANGE_METRICS`, one map per pixel (reduced over channels as the metric would, by its ``channels``
    parameter) min-max normalised to [0, 1] per image; otherwise the maps as they are."""
    meta = registry.get(metric)
    if meta.takes == "method":
        return method
    if meta.name not in UNIT_RANGE_METRICS:
        return maps
    channels = registry.parameters(meta, params).get("channels", "sum")
    return unit_range(pixel_maps(np.asarray(maps, dtype=np.float32), channels))
