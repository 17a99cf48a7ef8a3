"""``cnnviz evaluate``: the tables it writes hold exactly what the library computes on the same preprocessed batch,
the summary is numpy's statistics of those rows, and bad names, bad parameters and existing files fail cleanly.

Model: tests/tiny_models.py's gap_classifier (8x8 input, 5 classes) from the ``inputs`` fixture; every run takes
well under a second.
"""
from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.image import preprocess
from onnx_cnnviz.methods import registry
from onnx_cnnviz.metrics import registry as metric_registry

from . import invoke, one_line_error

METHODS = ["gradcam", "saliency", "guided"]  # guided: signed (N, C, H, W) gradients
METRICS = ["deletion", "insertion", "average-drop"]
#: 8x8 images: 4 pixels a step gives 16-point curves (the default step would delete everything at once).
STEP = ["--metric-param", "deletion.pixels_per_step=4", "--metric-param", "insertion.pixels_per_step=4"]
LIB_PARAMS = {"deletion": {"pixels_per_step": 4}, "insertion": {"pixels_per_step": 4}, "average-drop": {}}


def evaluate(inputs, out, *extra):
    return invoke("evaluate", inputs / "model.onnx", inputs / "a.png", inputs / "b.png", "--preprocess", "imagenet",
                  "--out", out, *extra)


def read_csv(path) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def run(inputs, tmp_path):
    """One full run: gradcam, saliency and guided backprop x deletion, insertion, average drop on the two images."""
    out = tmp_path / "eval"
    result = evaluate(inputs, out, "--method", ",".join(METHODS), "--metric", ",".join(METRICS), *STEP)
    assert result.exit_code == 0, result.output
    return inputs, out, result


def library_values(inputs) -> dict:
    """(image index, method, metric) -> value, from the library on the same preprocessed batch and top-1 classes."""
    m = cv.load(inputs / "model.onnx")
    x = preprocess([inputs / "a.png", inputs / "b.png"], preset="imagenet", size=(8, 8))
    targets = m.scores(x).argmax(axis=1)
    out = {}
    for method in METHODS:
        maps = registry.explain(m, method, x, targets)
        for metric in METRICS:
            given = maps
            if metric == "average-drop":  # the CLI min-max normalises the maps that multiply the image
                pixels = maps.sum(axis=1) if maps.ndim == 4 else maps  # the metric's channels="sum"
                flat = pixels.reshape(len(pixels), -1).astype(np.float64)
                lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
                given = ((flat - lo) / (hi - lo)).reshape(pixels.shape).astype(np.float32)
            result = metric_registry.evaluate(metric, m, x, given, targets, params=LIB_PARAMS[metric])
            for i, value in enumerate(result.values):
                out[(i, method, metric)] = (float(value), int(result.targets[i]))
    return out


def test_rows_equal_the_library(run):
    inputs, out, _ = run
    rows = read_csv(out / "results.csv")
    assert len(rows) == 2 * len(METHODS) * len(METRICS)
    expected = library_values(inputs)
    index = {str((inputs / "a.png").resolve()): 0, str((inputs / "b.png").resolve()): 1}
    for row in rows:
        value, cls = expected[(index[row["image"]], row["method"], row["metric"])]
        assert float(row["value"]) == pytest.approx(value, rel=1e-9, abs=1e-12)
        assert int(row["class"]) == cls
        assert row["output"].startswith("probability")
    # Not all equal: the test could see a swapped method or metric.
    assert len({round(float(r["value"]), 9) for r in rows}) > len(METRICS)
    document = json.loads((out / "results.json").read_text())
    assert [r["value"] for r in document["rows"]] == [float(r["value"]) for r in rows]


def test_summary_is_numpys_statistics(run):
    _, out, _ = run
    rows = read_csv(out / "results.csv")
    summary = read_csv(out / "summary.csv")
    assert len(summary) == len(METHODS) * len(METRICS)
    low, high = [k for k in summary[0] if k.startswith("ci95_")]
    assert "1.96*std/sqrt(n)" in low and "1.96*std/sqrt(n)" in high
    for s in summary:
        v = np.array([float(r["value"]) for r in rows if (r["method"], r["metric"]) == (s["method"], s["metric"])])
        std = v.std(ddof=1)
        assert int(s["n"]) == len(v) == 2
        assert float(s["mean"]) == pytest.approx(v.mean(), rel=1e-12)
        assert float(s["std"]) == pytest.approx(std, rel=1e-12)
        assert float(s[low]) == pytest.approx(v.mean() - 1.96 * std / math.sqrt(2), rel=1e-12, abs=1e-15)
        assert float(s[high]) == pytest.approx(v.mean() + 1.96 * std / math.sqrt(2), rel=1e-12, abs=1e-15)
        assert s["higher_is_better"] == str(metric_registry.get(s["metric"]).higher_is_better)
    document = json.loads((out / "summary.json").read_text())
    assert "1.96" in document["confidence_interval"]
    assert [d["mean"] for d in document["summary"]] == [float(s["mean"]) for s in summary]


def test_curve_pictures_and_ranking(run):
    _, out, result = run
    for method in METHODS:
        for metric in ("deletion", "insertion"):
            pic = cv2.imread(str(out / f"curve.{method}.{metric}.png"))
            assert pic is not None and pic.shape[2] == 3 and (pic < 128).any()
        assert not (out / f"curve.{method}.average-drop.png").exists()  # one number per image: no curve
    summary = {(s["method"], s["metric"]): float(s["mean"]) for s in read_csv(out / "summary.csv")}
    text = result.stdout
    assert "(deletion, lower is better)" in text and "(insertion, higher is better)" in text
    for metric in METRICS:
        better = metric_registry.get(metric).higher_is_better
        best = sorted(METHODS, key=lambda n: -summary[(n, metric)] if better else summary[(n, metric)])[0]
        block = text.split(f"({metric}, ")[1]
        assert block.splitlines()[1].split()[1] == best


def test_json_document(inputs, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(inputs, out, "--json", "--method", "gradcam", "--metric", "insertion,average-drop",
                      "--target", "3", *STEP[2:])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert len(document["results"]) == 4 and {r["class"] for r in document["results"]} == {3}
    assert document["ranking"] == {"insertion": ["gradcam"], "average-drop": ["gradcam"]}
    assert document["metrics"]["insertion"]["parameters"]["pixels_per_step"] == 4
    assert set(document["files"]["curves"]) == {"gradcam.insertion"}
    assert document["results"] == json.loads((out / "results.json").read_text())["rows"]


@pytest.mark.parametrize("args, code, words", [
    (["--method", "nosuch"], 2, "nosuch"),
    (["--metric", "deletion,nosuch"], 2, "nosuch"),
    (["--metric-param", "deletion.nosuch=1"], 1, "takes no parameter 'nosuch'"),
    (["--metric-param", "insertion.pixels_per_step=4"], 1, "not evaluated"),
    (["--metric-param", "deletion=4"], 1, "METRIC.KEY=VALUE"),
    (["--metric-param", "deletion.pixels_per_step=0"], 1, "pixels_per_step"),
])
def test_bad_names_and_parameters(inputs, tmp_path, args, code, words):
    out = tmp_path / "eval"
    result = evaluate(inputs, out, "--metric", "deletion", *args) if "--metric" not in args else \
        evaluate(inputs, out, *args)
    assert result.exit_code == code, result.output
    assert words in result.stderr
    if code == 1:
        one_line_error(result)
    assert not (out / "results.csv").exists()


def test_method_that_is_not_a_map(inputs, tmp_path):
    def scores_only(m, x, targets=None, *, batch_size=None):
        return m.scores(x)  # (N, classes): not a map over the image

    registry.register(registry.Method("scores-only", "Scores only", scores_only, "map", False))
    try:
        result = evaluate(inputs, tmp_path / "eval", "--method", "scores-only", "--metric", "deletion")
    finally:
        registry.unregister("scores-only")
    assert result.exit_code == 1
    assert "method 'scores-only'" in one_line_error(result) and "not a map" in result.stderr


def test_existing_files_are_kept(inputs, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary.csv").write_text("mine\n")
    result = evaluate(inputs, out, "--metric", "deletion", *STEP[:2])
    assert result.exit_code == 1
    assert "already exists" in one_line_error(result)
    assert (out / "summary.csv").read_text() == "mine\n"
    assert not (out / "results.csv").exists()  # refused before any work
    result = evaluate(inputs, out, "--metric", "deletion", "--overwrite", *STEP[:2])
    assert result.exit_code == 0, result.output
    assert read_csv(out / "summary.csv")[0]["metric"] == "deletion"
