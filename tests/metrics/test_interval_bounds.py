"""Issue 24 point 6: evaluate's 95% intervals at n = 4 fell outside the metric's range (deletion [-0.12, 0.39],
average drop [0.969, 1.011]). Given the metric's range, the interval is clipped to it and says so; a bad level is a
typed error, not a bare ValueError.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from onnx_cnnviz.errors import InputError
from onnx_cnnviz.metrics import registry
from onnx_cnnviz.metrics.intervals import RANGES, mean_interval, t_quantile, value_range

#: Four per-image values whose plain t interval crosses the metric's range, as in the issue.
DELETION = [0.02, 0.03, 0.35, 0.01]
AVERAGE_DROP = [1.0, 0.98, 1.0, 0.995]


def test_the_plain_interval_crosses_the_range():
    # What the issue measured: without bounds, the interval leaves [0, 1].
    assert mean_interval(DELETION)["low"] < 0 and mean_interval(AVERAGE_DROP)["high"] > 1


@pytest.mark.parametrize("metric,values,end", [("deletion", DELETION, "low"), ("average-drop", AVERAGE_DROP, "high")])
def test_an_interval_is_clipped_to_the_metrics_range_and_says_so(metric, values, end):
    plain = mean_interval(values)
    got = mean_interval(values, bounds=value_range(metric, "probability (softmax of the scores)"))
    assert got["clipped"] is True
    assert got[end] == (0.0 if end == "low" else 1.0)
    other = "high" if end == "low" else "low"
    assert got[other] == plain[other] and got["mean"] == plain["mean"] and got["std"] == plain["std"]


def test_an_interval_inside_the_range_is_not_clipped():
    values = [0.4, 0.5, 0.45, 0.55]
    got = mean_interval(values, bounds=(0.0, 1.0))
    assert got["clipped"] is False and got == {**mean_interval(values), "clipped": False}


def test_scores_leave_deletion_unbounded():
    assert value_range("deletion", "score (the class score before any softmax)") == (-math.inf, math.inf)
    got = mean_interval(DELETION, bounds=value_range("deletion", "score"))
    assert got["clipped"] is False and got["low"] < 0


def test_every_registered_metric_has_a_range():
    assert set(registry.names()) <= set(RANGES)
    assert value_range("a-metric-of-mine") == (-math.inf, math.inf)


def test_no_values_are_not_clipped():
    got = mean_interval([np.nan], bounds=(0, 1))
    assert got["n"] == 0 and got["clipped"] is False and math.isnan(got["low"])


@pytest.mark.parametrize("level", [0, 1, 1.5, -0.1, "95%", True])
def test_a_bad_level_is_a_typed_error(level):
    with pytest.raises(InputError, match="level must lie in \\(0, 1\\)"):
        mean_interval(DELETION, level=level)


def test_t_quantile_errors_are_typed():
    with pytest.raises(InputError, match="degrees of freedom must be >= 1"):
        t_quantile(0)
    with pytest.raises(InputError, match="level must lie in"):
        t_quantile(3, 1.0)


@pytest.mark.parametrize("bounds", [(1, 0), ("a", 1), (0,)])
def test_bad_bounds_are_a_typed_error(bounds):
    with pytest.raises(InputError, match="bounds must be"):
        mean_interval(DELETION, bounds=bounds)
