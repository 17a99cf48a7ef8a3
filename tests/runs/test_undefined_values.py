"""Issue 24 point 4: a metric value that is undefined for an image (NaN) is never averaged silently, never leaks a
numpy warning and is never written as the bare ``NaN`` strict JSON parsers reject: the row's value is null with a
reason, the summary says how many were left out, and one warning names them.

Model: the committed shapes GAP CNN (models/gap_cnn.onnx) on the first 10 held-out shapes images: the cascading
randomisation test of Grad-CAM there leaves 3 randomised models with an all-zero map (s4, s5, s6), whose Spearman
correlation with the trained map is undefined (as ``scipy.stats.spearmanr`` of a constant).
"""
from __future__ import annotations

import csv
import json
import math
import warnings

import cv2
import numpy as np
import pytest

from onnx_cnnviz import jsonio, runs
from onnx_cnnviz.runs.reporting import Reporter
from tests.conftest import REPO, load_script


def strict(text: str):
    """``text`` parsed as strict JSON: NaN, Infinity and -Infinity are refused as JavaScript's JSON.parse does."""
    def refuse(word):
        raise AssertionError(f"bare {word} in JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    sd = load_script(REPO / "models" / "shapes_dataset.py")
    images, _, _ = sd.make_dataset(10, sd.TEST_SEED)
    folder = tmp_path_factory.mktemp("shapes")
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"s{i}.png"), image[..., ::-1])
    return folder


def test_undefined_rows_are_null_with_a_reason_and_left_out_of_the_mean(shapes, tmp_path):
    out = tmp_path / "out"
    said = []
    reporter = Reporter(on_warning=lambda message, once: said.append(message))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning leaking out of the run fails the test
        doc = runs.evaluate_images(REPO / "models" / "gap_cnn.onnx", shapes, out, methods=["gradcam"],
                                   metrics=["model-randomisation"], reporter=reporter)
    rows = strict((out / "results.json").read_text())["rows"]
    undefined = [r for r in rows if r["value"] is None]
    assert [r["image"].rsplit("/", 1)[-1] for r in undefined] == ["s4.png", "s5.png", "s6.png"]
    assert all("constant" in r["reason"] and "stage(s)" in r["reason"] for r in undefined)
    assert all(r["reason"] is None and math.isfinite(r["value"]) for r in rows if r["value"] is not None)
    for line in (out / "results.jsonl").read_text().splitlines():
        strict(line)
    (summary,) = strict((out / "summary.json").read_text())["summary"]
    defined = [r["value"] for r in rows if r["value"] is not None]
    assert summary["n"] == 7 and summary["undefined"] == 3
    assert summary["mean"] == pytest.approx(np.mean(defined))
    assert strict(jsonio.dumps(doc))["summary"] == [summary]
    with open(out / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert sum(1 for r in table if r["value"] == "" and "constant" in r["reason"]) == 3
    (line,) = [w for w in said if "undefined" in w]
    assert "3 of 10" in line and "s4.png" in line and "the mean is over the other 7" in line
    # The mean curve is drawn from the defined points, without a warning (checked above) or a made-up height.
    assert (out / "curve.gradcam.model-randomisation.png").stat().st_size > 0


def test_strict_json_everywhere_jsonio_writes():
    text = jsonio.dumps({"a": float("nan"), "b": np.float32("inf"), "c": np.array([1.0, -np.inf]), "d": [np.nan]})
    assert strict(text) == {"a": None, "b": None, "c": [1.0, None], "d": [None]}
    assert strict(jsonio.dumps_for_html({"x": float("nan")})) == {"x": None}
