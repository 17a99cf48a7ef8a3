"""``cnnviz evaluate``: the tables it writes hold exactly what the library computes on the same preprocessed batch,
the summary is numpy's statistics of those rows, the localisation metrics get the --boxes mapped to the model input
(checked against a hand computation of the energy share), --resume keeps exactly the rows made with the same settings
(and an interrupted run leaves a journal it finishes), the HTML page shows the ranking, curves and maps, and bad
names, parameters, boxes, maps and existing files fail cleanly.

Model: tests/tiny_models.py's gap_classifier (8x8 input, 5 classes) from the ``inputs`` fixture (pictures 32x32);
every run takes well under a second. One test runs the committed shapes GAP CNN (models/gap_cnn.onnx) on 64 generated
images against benchmarks/localisation.py's protocol.
"""
from __future__ import annotations

import base64
import csv
import html.parser
import json
import math

import cv2
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz import evaluation_page
from onnx_cnnviz.image import preprocess
from onnx_cnnviz.methods import registry
from onnx_cnnviz.metrics import registry as metric_registry
from onnx_cnnviz.metrics.boxes import Box
from tests.tiny_models import gap_classifier, save, unchanged

from . import chromium, invoke, one_line_error

METHODS = ["gradcam", "saliency", "guided"]  # guided: signed (N, C, H, W) gradients
METRICS = ["deletion", "insertion", "average-drop"]
#: 8x8 images: 4 pixels a step gives 16-point curves (the default step would delete everything at once).
STEP = ["--metric-param", "deletion.pixels_per_step=4", "--metric-param", "insertion.pixels_per_step=4"]
LIB_PARAMS = {"deletion": {"pixels_per_step": 4}, "insertion": {"pixels_per_step": 4}, "average-drop": {}}
#: Ground truth in the 32x32 pictures' pixels, and the same boxes in the 8x8 model input's (divided by 4 by hand).
BOXES = {"a.png": [(4, 8, 20, 28)], "b.png": [(12, 0, 32, 16), (0, 20, 8, 32)]}
INPUT_BOXES = {"a.png": [(1, 2, 5, 7)], "b.png": [(3, 0, 8, 4), (0, 5, 2, 8)]}
LOCALISATION = ["pointing-game", "energy-pointing-game", "localisation-accuracy"]


def evaluate(inputs, out, *extra):
    return invoke("evaluate", inputs / "model.onnx", inputs / "a.png", inputs / "b.png", "--preprocess", "imagenet",
                  "--out", out, *extra)


def read_csv(path) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def journal(out) -> list:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def values(out) -> dict:
    """(image file name, method, metric) -> value, from results.csv."""
    return {(r["image"].rsplit("/", 1)[-1], r["method"], r["metric"]): float(r["value"])
            for r in read_csv(out / "results.csv")}


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
            if metric == "average-drop":  # the maps that multiply the image are brought to [0, 1]
                pixels = maps.sum(axis=1) if maps.ndim == 4 else maps  # the metric's channels="sum"
                flat = pixels.reshape(len(pixels), -1).astype(np.float64)
                lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
                lo = np.where(lo < 0, 0.0, lo)  # signed: the positive part over the maximum; else min-max
                given = np.clip((flat - lo) / (hi - lo), 0, 1).reshape(pixels.shape).astype(np.float32)
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
    # The journal holds the same rows, each with its settings and (for the curve metrics) its curve.
    lines = journal(out)
    assert [line["value"] for line in lines] != [] and len(lines) == len(rows)
    assert {(r["image"], r["method"], r["metric"]) for r in lines} == \
        {(r["image"], r["method"], r["metric"]) for r in rows}
    assert all(len(r["curve"]) == 17 for r in lines if r["metric"] != "average-drop")  # k = 0, 4, ..., 64


def test_summary_is_numpys_and_scipys_statistics(run):
    """Mean and sample std as numpy computes them; the 95% interval with scipy's Student-t quantile (t(0.975, 1) =
    12.7 at n = 2, where the normal 1.96 would be 6.5 times too narrow)."""
    from scipy.stats import t

    _, out, _ = run
    rows = read_csv(out / "results.csv")
    summary = read_csv(out / "summary.csv")
    assert len(summary) == len(METHODS) * len(METRICS)
    from onnx_cnnviz.metrics.intervals import value_range

    low, high, clipped = [k for k in summary[0] if k.startswith("ci95_")]
    assert "t*std/sqrt(n)" in low and "t*std/sqrt(n)" in high and "metric's range" in clipped
    for s in summary:
        v = np.array([float(r["value"]) for r in rows if (r["method"], r["metric"]) == (s["method"], s["metric"])])
        std = v.std(ddof=1)
        half = t.ppf(0.975, len(v) - 1) * std / math.sqrt(len(v))
        assert int(s["n"]) == len(v) == 2
        assert float(s["mean"]) == pytest.approx(v.mean(), rel=1e-12)
        assert float(s["std"]) == pytest.approx(std, rel=1e-12)
        # Clipped to the metric's range (all of these read probabilities: each lies in [0, 1] or [-1, 1]).
        bottom, top = value_range(s["metric"], s["output"])
        assert float(s[low]) == pytest.approx(max(v.mean() - half, bottom), rel=1e-9, abs=1e-12)
        assert float(s[high]) == pytest.approx(min(v.mean() + half, top), rel=1e-9, abs=1e-12)
        assert s[clipped] == str(v.mean() - half < bottom or v.mean() + half > top)
        assert s["higher_is_better"] == str(metric_registry.get(s["metric"]).higher_is_better)
        assert s["output"] == "probability (softmax of the scores)"
    document = json.loads((out / "summary.json").read_text())
    assert "Student's t" in document["confidence_interval"]
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
    assert "(deletion, lower is better; reads probability" in text
    assert "(insertion, higher is better; reads probability" in text
    for metric in METRICS:
        better = metric_registry.get(metric).higher_is_better
        best = sorted(METHODS, key=lambda n: -summary[(n, metric)] if better else summary[(n, metric)])[0]
        block = text.split(f"({metric}, ")[1]
        assert block.splitlines()[1].split()[1] == best


def test_json_document(inputs, tmp_path):
    out = tmp_path / "eval"
    boxes = tmp_path / "boxes.csv"
    write_boxes(boxes, BOXES)
    result = evaluate(inputs, out, "--json", "--method", "gradcam", "--metric", "insertion,average-drop",
                      "--target", "3", "--boxes", boxes, *STEP[2:])
    assert result.exit_code == 0, result.output
    assert "cnnviz: warning: --boxes is ignored: none of insertion, average-drop uses boxes." in result.stderr
    document = json.loads(result.stdout)
    assert len(document["results"]) == 4 and {r["class"] for r in document["results"]} == {3}
    assert document["ranking"] == {"insertion": ["gradcam"], "average-drop": ["gradcam"]}
    assert document["metrics"]["insertion"]["parameters"]["pixels_per_step"] == 4
    assert set(document["files"]["curves"]) == {"gradcam.insertion"}
    assert document["files"]["page"] == str(out / "report.html")
    assert document["results"] == json.loads((out / "results.json").read_text())["rows"]
    assert document["computed"] == 4 and document["kept"] == 0 and not document["interrupted"]


# ---------------------------------------------------------------------------------------------------------------------
# Localisation metrics and --boxes


def write_boxes(path, boxes: dict, keys=None) -> None:
    """``boxes`` as a CSV (``.csv``) or JSON file; ``keys``: the image names to write (default: the file names)."""
    keys = keys or {name: name for name in boxes}
    if path.suffix == ".csv":
        lines = ["image,x0,y0,x1,y1"] + [f"{keys[name]},{','.join(map(str, b))}" for name in boxes
                                         for b in boxes[name]]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text(json.dumps({keys[name]: [list(b) for b in bs] for name, bs in boxes.items()}))


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_localisation_metrics_read_the_boxes_in_the_models_pixels(inputs, tmp_path, suffix):
    boxes_file = tmp_path / f"boxes{suffix}"
    # The JSON is keyed by the paths as given on the command line, the CSV by file names.
    keys = {name: str(inputs / name) for name in BOXES} if suffix == ".json" else None
    write_boxes(boxes_file, BOXES, keys)
    out = tmp_path / "eval"
    result = evaluate(inputs, out, "--method", "gradcam,saliency", "--metric", ",".join(LOCALISATION), "--boxes",
                      boxes_file, "--json")
    assert result.exit_code == 0, result.output
    got = values(out)
    # The library on the boxes mapped by hand (32 -> 8 pixels: divided by 4).
    m = cv.load(inputs / "model.onnx")
    x = preprocess([inputs / "a.png", inputs / "b.png"], preset="imagenet", size=(8, 8))
    targets = m.scores(x).argmax(axis=1)
    boxes = [[Box(*b) for b in INPUT_BOXES[name]] for name in ("a.png", "b.png")]
    for method in ("gradcam", "saliency"):
        maps = registry.explain(m, method, x, targets)
        for metric in LOCALISATION:
            lib = metric_registry.evaluate(metric, m, x, maps, targets, boxes=boxes)
            for i, name in enumerate(("a.png", "b.png")):
                assert got[(name, method, metric)] == pytest.approx(float(lib.values[i]), rel=1e-12, abs=1e-15)
        # The energy share by hand: the positive part of the map inside the union of the boxes over its total.
        for i, name in enumerate(("a.png", "b.png")):
            inside = np.zeros((8, 8), bool)
            for x0, y0, x1, y1 in INPUT_BOXES[name]:
                inside[y0:y1, x0:x1] = True
            energy = np.maximum(maps[i], 0).astype(np.float64)
            assert got[(name, method, "energy-pointing-game")] == pytest.approx(energy[inside].sum() / energy.sum(),
                                                                                rel=1e-6)
    assert 0 < got[("a.png", "gradcam", "energy-pointing-game")] < 1
    rows = journal(out)
    assert rows[0]["settings"]["boxes"] == [[1.0, 2.0, 5.0, 7.0, None]]
    summary = read_csv(out / "summary.csv")
    assert {s["metric"] for s in summary} == set(LOCALISATION) and all(s["output"] == "" for s in summary)


def test_cam_localisation_on_the_shapes_model_is_the_benchmarks(tmp_path):
    """models/gap_cnn.onnx on 64 held-out shapes images, written at twice their size (so the boxes file is in
    128-pixel coordinates and the CLI maps it back to the model's 64): per image, the CLI's localisation accuracy
    (top-1 class, labelled boxes) is benchmarks/localisation.py's top-1 localisation, computed with
    ``localise(method="cam", top=1)`` and IoU >= 0.5 on the original images."""
    from onnx_cnnviz import iou
    from onnx_cnnviz.image import Preprocessing
    from onnx_cnnviz.methods.localise import localise
    from tests.conftest import REPO, load_script

    sd = load_script(REPO / "models" / "shapes_dataset.py")
    images, labels, boxes = sd.make_dataset(64, sd.TEST_SEED)
    folder = tmp_path / "shapes"
    folder.mkdir()
    table = {}
    for i, (image, label, box) in enumerate(zip(images, labels, boxes)):
        big = cv2.resize(image, (128, 128), interpolation=cv2.INTER_NEAREST)  # a 2x linear shrink gives it back
        cv2.imwrite(str(folder / f"s{i:02d}.png"), big[..., ::-1])
        table[f"s{i:02d}.png"] = [{"box": [2 * int(v) for v in box], "label": int(label)}]
    (tmp_path / "boxes.json").write_text(json.dumps(table))
    out = tmp_path / "eval"
    result = invoke("evaluate", REPO / "models" / "gap_cnn.onnx", folder, "-m", "cam", "--metric",
                    "localisation-accuracy", "--boxes", tmp_path / "boxes.json", "--out", out, "--batch-size", "32")
    assert result.exit_code == 0, result.output
    got = values(out)
    m = cv.load(REPO / "models" / "gap_cnn.onnx")
    x = preprocess(images, Preprocessing.from_metadata(m.metadata))
    predicted = m.scores(x).argmax(axis=1)
    found = [loc[0].box for loc in localise(m, x, method="cam", top=1)]
    expected = [float(predicted[i] == labels[i] and iou(found[i], tuple(int(v) for v in boxes[i])) >= 0.5)
                for i in range(len(images))]
    assert [got[(f"s{i:02d}.png", "cam", "localisation-accuracy")] for i in range(len(images))] == expected
    assert 0.3 < np.mean(expected) < 0.9  # hits and misses both: the comparison can fail


def test_box_errors_come_before_any_work(inputs, tmp_path):
    out = tmp_path / "eval"
    with unchanged(inputs):
        # A localisation metric without --boxes: a usage error, before the model is read.
        result = evaluate(inputs, out, "--metric", "deletion,pointing-game")
        assert result.exit_code == 2 and "pointing-game" in result.stderr and "--boxes" in result.stderr
        # An image the file gives no box.
        only_a = tmp_path / "a.csv"
        write_boxes(only_a, {"a.png": BOXES["a.png"]})
        result = evaluate(inputs, out, "--metric", "pointing-game", "--boxes", only_a)
        assert result.exit_code == 2 and "has no box for image" in result.stderr and "b.png" in result.stderr
        # A box outside the 32x32 picture: a typed error naming the image and the box.
        outside = tmp_path / "outside.json"
        write_boxes(outside, {**BOXES, "b.png": [(12, 0, 40, 16)]})
        result = evaluate(inputs, out, "--metric", "energy-pointing-game", "--boxes", outside, "--json")
        assert result.exit_code == 1
        error = json.loads(result.stdout)["error"]
        assert error["type"] == "InputError" and "b.png" in error["message"] and "outside the image" in \
            error["message"]
        one_line_error(result)
        # A boxes file that is not there.
        result = evaluate(inputs, out, "--metric", "pointing-game", "--boxes", tmp_path / "none.csv")
        assert result.exit_code == 1 and "boxes file" in one_line_error(result)
    assert not out.exists()


def test_no_output_replaces_an_input(inputs, tmp_path):
    """A boxes file where a table goes (results.csv is a fine name for a CSV of boxes): refused whatever the flags."""
    out = tmp_path / "eval"
    out.mkdir()
    write_boxes(out / "results.csv", BOXES)
    with unchanged(inputs, out):
        for flags in (["--overwrite"], ["--overwrite", "--resume"], ["--resume"]):
            result = evaluate(inputs, out, "--metric", "pointing-game", "--boxes", out / "results.csv", *flags)
            assert result.exit_code == 1
            assert "would replace an input file" in one_line_error(result)


# ---------------------------------------------------------------------------------------------------------------------
# --resume, Ctrl-C and kill -9


def test_resume_keeps_rows_made_with_the_same_settings(inputs, tmp_path):
    out = tmp_path / "eval"
    base = ["--method", "gradcam", "--metric", "deletion,average-drop", "--json"]
    assert evaluate(inputs, out, *base, *STEP[:2]).exit_code == 0
    first = values(out)
    # Nothing changed: every row kept, none computed, the tables written again from the journal.
    result = evaluate(inputs, out, *base, *STEP[:2], "--resume")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["computed"] == 0 and doc["kept"] == 4 and values(out) == first
    assert "resume: 4 row(s) already done with the same settings, skipped" in result.stderr
    # Another deletion step: only the deletion rows are stale, recomputed, and the run names what changed.
    result = evaluate(inputs, out, *base, "--metric-param", "deletion.pixels_per_step=2", "--resume")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["computed"] == 2 and doc["kept"] == 2 and doc["stale"] == 2
    assert "resume: 2 row(s) were made with other settings (pixels_per_step) and are recomputed" in result.stderr
    resumed = values(out)
    fresh = tmp_path / "fresh"
    assert evaluate(inputs, fresh, *base, "--metric-param", "deletion.pixels_per_step=2").exit_code == 0
    assert resumed == values(fresh) and resumed != first
    # Another method and a new image: only their rows; the tables hold exactly this run's request.
    result = evaluate(inputs, out, "--method", "gradcam,saliency", "--metric", "deletion,average-drop", "--json",
                      "--metric-param", "deletion.pixels_per_step=2", "--resume")
    doc = json.loads(result.stdout)
    assert doc["computed"] == 4 and {r["method"] for r in doc["results"]} == {"gradcam", "saliency"}
    assert len(read_csv(out / "results.csv")) == 8
    # Another class is another setting.
    result = evaluate(inputs, out, *base, "--metric-param", "deletion.pixels_per_step=2", "--resume", "--target", "1")
    assert json.loads(result.stdout)["computed"] == 4 and "(target)" in result.stderr
    # Back to the first settings: their rows are still in the journal, so nothing is computed.
    result = evaluate(inputs, out, *base, *STEP[:2], "--resume")
    assert json.loads(result.stdout)["computed"] == 0 and values(out) == first


def test_interrupted_run_keeps_its_rows_and_resume_finishes_it(inputs, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    args = ["--method", "gradcam,saliency", "--metric", "deletion,insertion", *STEP, "--batch-size", "1"]
    real, calls = metric_registry.evaluate, []

    def interrupt_at(n):
        def evaluate_until(*a, **k):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*a, **k)
        return evaluate_until

    # Stopped before the first row: nothing is written, not even the journal.
    monkeypatch.setattr(metric_registry, "evaluate", interrupt_at(1))
    result = evaluate(inputs, out, *args)
    assert result.exit_code == 130 and "nothing written" in result.stderr
    assert not out.exists() or not list(out.iterdir())
    # Stopped in the third metric run (image a's gradcam rows are done).
    calls.clear()
    monkeypatch.setattr(metric_registry, "evaluate", interrupt_at(3))
    result = evaluate(inputs, out, *args, "--json")
    assert result.exit_code == 130
    doc = json.loads(result.stdout)
    assert doc["interrupted"] and doc["computed"] == 2 and len(doc["results"]) == 2
    assert "run again with --resume to finish" in result.stderr
    # On disk: the two finished rows in the journal, whole tables of them, no temporary file.
    assert len(journal(out)) == 2 and len(read_csv(out / "results.csv")) == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # Without --resume the results are kept.
    monkeypatch.setattr(metric_registry, "evaluate", real)
    result = evaluate(inputs, out, *args)
    assert result.exit_code == 1 and "--resume" in one_line_error(result)
    result = evaluate(inputs, out, *args, "--resume", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["computed"] == 6 and doc["kept"] == 2
    fresh = tmp_path / "fresh"
    assert evaluate(inputs, fresh, *args).exit_code == 0
    assert values(out) == values(fresh)
    assert read_csv(out / "summary.csv") == read_csv(fresh / "summary.csv")


def test_resume_after_a_kill(inputs, tmp_path):
    """What kill -9 leaves: a half-written last journal line and write_atomic's temporary files."""
    out = tmp_path / "eval"
    args = ["--method", "gradcam", "--metric", "deletion", *STEP[:2]]
    assert evaluate(inputs, out, *args).exit_code == 0
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text(lines[0] + lines[1][:40])  # b's row cut mid-line
    stale = [out / ".summary.csv.0123abcd.tmp", out / ".results.jsonl.89abcdef.tmp"]
    for path in stale:
        path.write_text("half")
    result = evaluate(inputs, out, *args, "--resume", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["computed"] == 1 and doc["kept"] == 1
    assert doc["removed_temporary"] == sorted(str(p) for p in stale) and not any(p.exists() for p in stale)
    assert len(journal(out)) == 2  # the cut line is gone, the recomputed row is whole


def test_existing_files_are_kept(inputs, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary.csv").write_text("mine\n")
    result = evaluate(inputs, out, "--metric", "deletion", *STEP[:2])
    assert result.exit_code == 1
    assert "already exists" in one_line_error(result)
    assert (out / "summary.csv").read_text() == "mine\n"
    assert not (out / "results.csv").exists()  # refused before any work
    # --resume builds only on this tool's own results: a table without the journal is the user's.
    result = evaluate(inputs, out, "--metric", "deletion", "--resume", *STEP[:2])
    assert result.exit_code == 1 and "results.jsonl does not" in one_line_error(result)
    assert (out / "summary.csv").read_text() == "mine\n" and not (out / "results.jsonl").exists()
    result = evaluate(inputs, out, "--metric", "deletion", "--overwrite", *STEP[:2])
    assert result.exit_code == 0, result.output
    assert read_csv(out / "summary.csv")[0]["metric"] == "deletion"


# ---------------------------------------------------------------------------------------------------------------------
# Bad names, parameters and maps; a model whose output is already a probability


@pytest.mark.parametrize("args, code, words", [
    (["--method", "nosuch"], 2, "nosuch"),
    (["--metric", "deletion,nosuch"], 2, "nosuch"),
    (["--metric-param", "deletion.nosuch=1"], 2, "takes no parameter 'nosuch'; its parameters: baseline,"),
    (["--metric-param", "insertion.pixels_per_step=4"], 2, "not evaluated"),
    (["--metric-param", "deletion=4"], 2, "METRIC.KEY=VALUE"),
    (["--metric-param", "deletion.pixels_per_step=0"], 1, "pixels_per_step"),  # a value: the metric checks it
])
def test_bad_names_and_parameters(inputs, tmp_path, args, code, words):
    out = tmp_path / "eval"
    result = evaluate(inputs, out, "--metric", "deletion", *args) if "--metric" not in args else \
        evaluate(inputs, out, *args)
    assert result.exit_code == code, result.output
    assert words in result.stderr
    if code == 1:
        one_line_error(result)
    else:  # click's usage error: the usage, then one "Error:" line
        [line] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert words in line and ("--metric" in line or "--method" in line)
    assert not (out / "results.csv").exists()


@pytest.fixture
def custom_method():
    """Register a method for one test (and remove it after)."""
    names = []

    def add(name, func):
        registry.register(registry.Method(name, name, func, "map", False))
        names.append(name)

    yield add
    for name in names:
        registry.unregister(name)


def test_method_that_is_not_a_map(inputs, tmp_path, custom_method):
    def scores_only(m, x, targets=None, *, batch_size=None):
        return m.scores(x)  # (N, classes): not a map over the image

    def half_size(m, x, targets=None, *, batch_size=None):
        return np.ones((len(x), 4, 4), np.float32)

    custom_method("scores-only", scores_only)
    custom_method("half-size", half_size)
    for name, words in (("scores-only", "(2, 5)"), ("half-size", "(2, 4, 4)")):
        result = evaluate(inputs, tmp_path / name, "--method", name, "--metric", "deletion")
        assert result.exit_code == 1
        line = one_line_error(result)
        assert f"method {name!r}" in line and "not a map" in line and words in line


def test_method_with_nan_maps(inputs, tmp_path, custom_method):
    def nan_on_b(m, x, targets=None, *, batch_size=None):
        maps = np.ones((len(x), 8, 8), np.float32)
        maps[-1, 3, 3] = np.nan
        return maps

    custom_method("nan-maps", nan_on_b)
    result = evaluate(inputs, tmp_path / "eval", "--method", "nan-maps", "--metric", "deletion", "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "NumericalError"
    assert "method 'nan-maps'" in error["message"] and "b.png" in error["message"] and "NaN" in error["message"]
    one_line_error(result)


def probability_model():
    """gap_classifier followed by a softmax written out (Exp, ReduceSum, Div): the output is a probability, but no
    Softmax node tells the loader so."""
    model = gap_classifier()
    graph = model.graph
    graph.output[0].name = "probs"
    graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph.node.extend([helper.make_node("Exp", ["logits"], ["e"], name="exp"),
                       helper.make_node("ReduceSum", ["e", "axis1"], ["total"], keepdims=1, name="total"),
                       helper.make_node("Div", ["e", "total"], ["probs"], name="normalise")])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, None))
    return model


def test_a_model_whose_output_is_already_a_probability(inputs, tmp_path):
    save(probability_model(), inputs / "model.onnx")
    out = tmp_path / "eval"
    result = evaluate(inputs, out, "--method", "gradcam,saliency", "--metric", "deletion,insertion", *STEP,
                      "--batch-size", "1")  # two batches: said once all the same
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "already a probability" in line]
    assert len(said) == 1 and said[0].startswith("cnnviz: warning:")
    reads = "probability (the model's own output, already normalised; no softmax applied)"
    assert all(r["output"] == reads for r in read_csv(out / "results.csv"))
    assert all(s["output"] == reads for s in read_csv(out / "summary.csv"))
    assert f"reads {reads}" in result.stdout
    # The numbers are the library's, which reads that output as it is (no second softmax).
    m = cv.load(inputs / "model.onnx")
    x = preprocess([inputs / "a.png", inputs / "b.png"], preset="imagenet", size=(8, 8))
    targets = m.scores(x).argmax(axis=1)
    lib = metric_registry.evaluate("deletion", m, x, registry.explain(m, "gradcam", x, targets), targets,
                                   params={"pixels_per_step": 4})
    got = values(out)
    assert [got[(n, "gradcam", "deletion")] for n in ("a.png", "b.png")] == pytest.approx(lib.values, rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# The HTML page


class PageParser(html.parser.HTMLParser):
    """The ranking tables' method order, every <img>'s alt and src, and every external reference."""

    def __init__(self):
        super().__init__()
        self.ranking: dict = {}
        self.images: list = []
        self.external: list = []
        self.sections: list = []
        self._metric = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "data-metric" in attrs:
            self._metric = attrs["data-metric"]
            self.ranking[self._metric] = []
        elif tag == "tr" and self._metric and "data-method" in attrs:
            self.ranking[self._metric].append(attrs["data-method"])
        elif tag == "img":
            self.images.append((attrs.get("alt"), attrs.get("src", "")))
        elif tag == "section":
            self.sections.append(attrs.get("id"))
        for key in ("src", "href"):
            if key in attrs and not attrs[key].startswith("data:"):
                self.external.append(attrs[key])

    def handle_endtag(self, tag):
        if tag == "table":
            self._metric = None


def test_the_page_shows_the_ranking_curves_and_maps(run):
    inputs, out, _ = run
    text = (out / "report.html").read_text()
    page = PageParser()
    page.feed(text)
    assert page.sections == ["ranking", "curves", "examples", "model"]
    summary = read_csv(out / "summary.csv")
    for metric in METRICS:
        rows = [s for s in summary if s["metric"] == metric]
        better = metric_registry.get(metric).higher_is_better
        expected = [s["method"] for s in sorted(rows, key=lambda s: float(s["mean"]), reverse=better)]
        assert page.ranking[metric] == expected
    assert "lower is better" in text and "higher is better" in text and "reads: probability" in text
    assert not page.external  # self-contained
    pictures = {}
    for alt, src in page.images:
        assert src.startswith("data:image/png;base64,")
        pictures.setdefault(alt, []).append(cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]),
                                                                       np.uint8), cv2.IMREAD_COLOR))
    assert all(p is not None for ps in pictures.values() for p in ps)
    # The curve pictures are the written PNGs; two example images, each with its input and every method's map.
    for method in METHODS:
        for metric in ("deletion", "insertion"):
            [shown] = pictures[f"curve {method} {metric}"]
            assert np.array_equal(shown, cv2.imread(str(out / f"curve.{method}.{metric}.png")))
        assert len(pictures[method]) == 2
    assert len(pictures["input"]) == 2
    assert str((inputs / "a.png").resolve()) in text and "Model and preprocessing" in text
    assert "mean=" in text and "GlobalAveragePool" not in text  # the description's summary, not the op table
    data = json.loads(text.split('id="cnnviz-data">')[1].split("</script>")[0])
    assert data["ranking"] == {metric: page.ranking[metric] for metric in METRICS}


def test_the_page_after_a_resume_still_shows_every_method(inputs, tmp_path):
    out = tmp_path / "eval"
    args = ["--method", "gradcam,saliency", "--metric", "deletion", *STEP[:2]]
    assert evaluate(inputs, out, *args).exit_code == 0
    result = evaluate(inputs, out, *args, "--resume", "--json")
    assert json.loads(result.stdout)["computed"] == 0
    page = PageParser()
    page.feed((out / "report.html").read_text())
    alts = [alt for alt, _ in page.images]
    assert alts.count("gradcam") == 2 and alts.count("saliency") == 2 and alts.count("input") == 2


def test_render_escapes_names_and_needs_no_run():
    pic = np.zeros((8, 8, 3), np.uint8)
    text = evaluation_page.render(
        model={"model": "m<1>.onnx"}, preprocessing={"size": [8, 8]}, images=1, ci_formula="f",
        summary=[{"method": "<b>", "metric": "deletion", "mean": 0.5, "std": 0.0, "n": 1, "ci95_low": 0.5,
                  "ci95_high": 0.5, "higher_is_better": False, "output": "score"}],
        ranking={"deletion": ["<b>"]}, metrics={"deletion": {"title": "Deletion AUC", "higher_is_better": False}},
        curves={("<b>", "deletion"): pic},
        examples=[evaluation_page.ExampleRow("x&y.png", pic, 1, "cat", 0.25, [("<b>", pic)])])
    assert "&lt;b&gt;" in text and "m&lt;1&gt;.onnx" in text and "x&amp;y.png" in text
    assert "data-method=\"<b>\"" not in text


def test_the_page_in_chromium(run, tmp_path):
    browser = chromium.find()
    if browser is None:
        pytest.skip("Chromium is not installed")
    _, out, _ = run
    seen = chromium.open_page(browser, out / "report.html")
    assert seen["images"] and all(complete and width > 0 for complete, width, _ in seen["images"])
    assert seen["marker"] == f"{len(seen['images'])}/{len(seen['images'])}"
    assert not seen["console"] and not seen["exceptions"] and not seen["log"]


def test_a_rerun_over_its_own_output_folder_does_not_evaluate_its_curves(inputs, tmp_path):
    """Images read from the folder the results go to: the second run (--resume) finds the same two pictures, not
    also the curve.METHOD.METRIC.png pictures the first run wrote there."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes((inputs / name).read_bytes())
    args = ("evaluate", inputs / "model.onnx", folder, "--preprocess", "imagenet", "--out", folder, "--json",
            "--method", "gradcam", "--metric", "insertion", *STEP[2:])
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert (folder / "curve.gradcam.insertion.png").is_file()
    again = invoke(*args, "--resume")
    assert again.exit_code == 0, again.output
    document = json.loads(again.stdout)
    assert {r["image"].rsplit("/", 1)[-1] for r in document["results"]} == {"a.png", "b.png"}
    assert document["kept"] == 2 and document["computed"] == 0
