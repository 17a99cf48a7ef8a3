"""The report's faithfulness line: the value under each panel is the metric registry's on that panel's map, for its
class, scored as ``cnnviz evaluate`` scores it (maps rescaled to [0, 1] for average drop); bad metric arguments fail
before any work."""
from __future__ import annotations

import re

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.image import Preprocessing, preprocess
from onnx_cnnviz.methods import registry
from onnx_cnnviz.metrics import registry as metric_registry
from onnx_cnnviz.metrics.inputs import explanation_for, unit_range
from onnx_cnnviz.report import make_report
from tests.tiny_models import gap_classifier, save, write_png

METRICS = ("deletion", "insertion", "average-drop")
PARAMS = {"deletion": {"pixels_per_step": 4}, "insertion": {"pixels_per_step": 4}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report_metrics")
    m = cv.load(save(gap_classifier(), folder / "gap.onnx"))
    return m, write_png(folder / "a.png", size=8, seed=3)


def shown(page: str) -> list[dict]:
    """Per panel (in page order), {metric: value} as the page prints them."""
    lines = re.findall(r'<div class="metrics">(.*?)</div>', page)
    return [{name: float(value) for name, value in re.findall(r"([a-z-]+) <b>([^<]+)</b>", line)} for line in lines]


def test_each_panel_shows_the_registry_value_of_its_map(setup):
    m, image = setup
    pre = Preprocessing(size=(8, 8))
    page = make_report(m, [image], ["gradcam", "saliency"], preprocessing=pre, metrics=METRICS, metric_params=PARAMS)
    panels = shown(page)
    assert len(panels) == 2 and all(set(p) == set(METRICS) for p in panels)
    x = preprocess([image], preset=pre)
    target = np.array([int(m.scores(x).argmax())])
    for method, values in zip(["gradcam", "saliency"], panels):
        maps = registry.explain(m, method, x, target)
        for metric in METRICS:
            expected = metric_registry.evaluate(metric, m, x, explanation_for(metric, maps, method, PARAMS.get(metric)),
                                                target, params=PARAMS.get(metric)).values[0]
            assert values[metric] == pytest.approx(expected, rel=2e-3, abs=1e-3), (method, metric)
    assert page.count("&#8593;") == 2 * 1 and page.count("&#8595;") == 2 * 2  # insertion up; deletion, drop down


def test_average_drop_gets_maps_in_the_unit_range():
    """Non-negative maps min-max scaled; signed maps keep their positive part over the maximum; constant or
    nowhere-positive maps give 0."""
    maps = np.array([[[1.0, 2.0], [3.0, 5.0]], [[-2.0, 0.0], [2.0, 6.0]], [[1.0, 1.0], [1.0, 1.0]],
                     [[-1.0, -3.0], [-2.0, -1.0]]], np.float32)
    np.testing.assert_allclose(unit_range(maps), [[[0, 0.25], [0.5, 1]], [[0, 0], [1 / 3, 1]], [[0, 0], [0, 0]],
                                                  [[0, 0], [0, 0]]])
    np.testing.assert_allclose(explanation_for("average-drop", maps, "gradcam"), unit_range(maps))
    assert explanation_for("deletion", maps, "gradcam") is maps
    assert explanation_for("sensitivity-max", maps, "gradcam") == "gradcam"


@pytest.mark.parametrize("metrics, params, words", [
    (("pointing-game",), None, "needs ground-truth boxes"),
    (("nonsense",), None, "unknown metric 'nonsense'"),
    (("deletion",), {"deletion": {"steps": 3}}, "takes no parameter 'steps'"),
    (("deletion",), {"insertion": {"pixels_per_step": 4}}, "not among the report's metrics"),
])
def test_bad_metric_arguments_fail_before_any_work(setup, metrics, params, words):
    m, image = setup
    with pytest.raises(InputError, match=re.escape(words)):
        make_report(m, [image], ["gradcam"], preprocessing=Preprocessing(size=(8, 8)), metrics=metrics,
                    metric_params=params)


def test_t_quantile_and_interval_equal_scipys():
    """Exact sums (A&S 26.7.3/4) up to 200 degrees of freedom, the Cornish-Fisher expansion above: scipy's quantile
    to 1e-9 either way; a NaN value is left out."""
    from scipy.stats import t

    from onnx_cnnviz.metrics.intervals import mean_interval, t_quantile

    for df in [1, 2, 3, 4, 7, 30, 199, 200, 201, 1000, 50000]:
        for level in (0.9, 0.95, 0.99):
            assert t_quantile(df, level) == pytest.approx(t.ppf((1 + level) / 2, df), rel=1e-9)
    v = np.array([0.2, 0.5, np.nan, 0.9, 0.4])
    got = mean_interval(v)
    kept = v[~np.isnan(v)]
    half = t.ppf(0.975, 3) * kept.std(ddof=1) / 2
    assert got["n"] == 4 and got["low"] == pytest.approx(kept.mean() - half) and got["high"] == pytest.approx(
        kept.mean() + half)
    assert mean_interval([3.0]) == {"mean": 3.0, "std": 0.0, "n": 1, "low": 3.0, "high": 3.0}


def test_cli_report_shows_the_metrics_asked_for(setup, tmp_path):
    """``cnnviz report --metric deletion,insertion --metric-param ...``: one faithfulness line per panel; a metric
    parameter of a metric not asked for is a usage error (exit 2), as for evaluate."""
    from tests.cli import invoke

    m, image = setup
    model = tmp_path / "gap.onnx"
    save(gap_classifier(), model)
    result = invoke("report", model, image, "--preprocess", "imagenet", "--method", "gradcam,saliency", "--metric",
                    "deletion,insertion", "--metric-param", "deletion.pixels_per_step=4", "--metric-param",
                    "insertion.pixels_per_step=4", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    panels = shown((tmp_path / "r" / "report.html").read_text())
    assert len(panels) == 2 and all(set(p) == {"deletion", "insertion"} for p in panels)
    bad = invoke("report", model, image, "--preprocess", "imagenet", "--metric", "deletion", "--metric-param",
                 "insertion.pixels_per_step=4", "--out", tmp_path / "r2")
    assert bad.exit_code == 2 and "not evaluated" in bad.output
