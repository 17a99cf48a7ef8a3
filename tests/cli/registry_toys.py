"""A toy method and a toy metric, each with one parameter of its own, that only the tests register: what a new
contributor adds as one function plus one registry entry (tests/cli/test_registry_toy.py, and
tests/dataset/test_registry_toy_ray.py on Ray)."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from onnx_cnnviz.methods import registry
from onnx_cnnviz.metrics import registry as metric_registry
from onnx_cnnviz.metrics.base import MetricResult, pixel_maps

METHOD = "toypow"
METRIC = "toy-mean"
#: The defaults written once, in the functions' signatures; the tests compare with these copies.
POWER = 2.0
SCALE = 3.0


def toy_power(m, x, targets=None, layer=None, *, upsample=True, normalize=True, batch_size=None, power=2.0):
    """A map of the registry's shape with one tunable: ``|x|`` summed over channels, to the power ``power``, times
    the target's |score| (so that two classes give two maps), min-max scaled to [0, 1] per image with
    ``normalize``."""
    x = m.check_input(x)
    scores = m.scores(x, batch_size=batch_size)
    t = scores.argmax(axis=1) if targets is None else m.targets_for(targets, len(x))
    rows = np.arange(len(x))
    maps = np.abs(x).sum(axis=1) ** float(power) * np.abs(scores[rows, t])[:, None, None]
    if normalize:
        lo = maps.min(axis=(1, 2), keepdims=True)
        maps = (maps - lo) / np.maximum(maps.max(axis=(1, 2), keepdims=True) - lo, 1e-12)
    return maps.astype(np.float32)


def toy_mean(m, x, maps, targets=None, *, batch_size=None, progress=None, scale=3.0):
    """A metric of the registry's shape with one tunable: ``scale`` times the mean of each image's map (summed over
    channels for (N, C, H, W) results)."""
    values = float(scale) * pixel_maps(np.asarray(maps, dtype=np.float32), "sum").reshape(len(x), -1).mean(axis=1)
    if targets is None:
        targets = m.scores(x, batch_size=batch_size).argmax(axis=1)
    return MetricResult(METRIC, values.astype(np.float64), np.asarray(targets).reshape(-1), True, None)


def method_entry() -> registry.Method:
    return registry.Method(METHOD, "Toy power", toy_power, kind="map", gradients=False, paper="Test 2026")


def metric_entry() -> metric_registry.Metric:
    return metric_registry.Metric(METRIC, "Toy mean", toy_mean, takes="maps", higher_is_better=True, output=None,
                                  paper="Test 2026")


@contextmanager
def registered():
    """Both toys registered for the duration (and removed after, whatever happens)."""
    registry.register(method_entry())
    try:
        metric_registry.register(metric_entry())
        try:
            yield
        finally:
            metric_registry.unregister(METRIC)
    finally:
        registry.unregister(METHOD)
