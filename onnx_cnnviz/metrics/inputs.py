"""What a metric is given for a method's result: the maps as they are, maps rescaled to [0, 1], or the method itself.

The command line (``cnnviz evaluate``), the report's faithfulness line and the Ray pipeline score an explanation
method's raw output the same way, through :func:`explanation_for`.
"""
from __future__ import annotations

import numpy as np

from . import registry
from .base import pixel_maps

def unit_range(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) maps brought to [0, 1] per image, in float32, as a mask that keeps what the map calls evidence for
    the class: a map with no negative value is min-max normalised (the CAM family, as Chattopadhyay et al. and
    pytorch-grad-cam scale a CAM); a signed map (gradient x input, integrated gradients) keeps its positive part over
    its maximum, so that negative evidence masks the image out instead of sitting at 0.5, a half-bright copy of the
    image that raises the confidence whatever the map says. A map with nothing positive (or constant) becomes 0."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    signed = lo < 0
    base = np.where(signed, 0.0, lo)
    span = hi - base
    span = np.where(span > 0, span, 1.0)
    scaled = np.clip((flat - base) / span, 0.0, 1.0)
    scaled[(hi <= base)[:, 0]] = 0.0
    return scaled.reshape(maps.shape).astype(np.float32)


def explanation_for(metric, maps: np.ndarray, method, params: dict | None = None):
    """What metric ``metric`` takes for ``method``'s ``maps`` (the method's registry name, or a function, with its
    raw output): the method itself for a metric that re-explains (``takes == "method"``); for a metric with
    :attr:`~onnx_cnnviz.metrics.registry.Metric.unit_range` (it multiplies the image by the map), one map per pixel
    (reduced over channels as the metric would, by its ``channels``
    parameter) min-max normalised to [0, 1] per image; otherwise the maps as they are."""
    meta = registry.get(metric)
    if meta.takes == "method":
        return method
    if not meta.unit_range:
        return maps
    channels = registry.parameters(meta, params).get("channels", "sum")
    return unit_range(pixel_maps(np.asarray(maps, dtype=np.float32), channels))
