"""Issue 22, point 5: ``cnnviz evaluate`` on a detector runs on Ray
(:func:`onnx_cnnviz.dataset.pipeline.evaluate_on_ray` with a :class:`~onnx_cnnviz.runs.detection_evaluate.DetectionJob`)
and gives the single-process run's journal rows, tables, skipped images and page, on a local Ray cluster
(tests/dataset/conftest.py's, 2 CPUs); resumed on Ray, it computes nothing again.

Model: the committed shapes detector (models/shapes_detector.onnx) on three held-out images rendered with their
known boxes (models/shapes_detection.py) and a blank picture where nothing is detected, as
tests/cli/test_evaluate_detections.py sets them up. The Ray run goes through the steps ``cnnviz evaluate --ray`` runs
(:func:`onnx_cnnviz.runs.evaluate.prepare`, :func:`~onnx_cnnviz.dataset.pipeline.evaluate_on_ray`,
:func:`onnx_cnnviz.runs.evaluate.finish`); the single-process run is :func:`onnx_cnnviz.runs.evaluate_images`.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO, load_script

pytest.importorskip("ray")

DETECTOR = REPO / "models" / "shapes_detector.onnx"
METHODS = ["gradcam", "saliency"]
METRICS = ["deletion", "insertion", "pointing-game"]
STEP = 256  # pixels per deletion/insertion step: 16 points on a 64x64 image keep the test short
PARAMS = {"deletion": {"pixels_per_step": STEP}, "insertion": {"pixels_per_step": STEP}, "pointing-game": {}}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Three held-out images with their boxes in boxes.csv, a blank grey picture (an entry in the file, nothing the
    detector finds) between them, and an unreadable file."""
    folder = tmp_path_factory.mktemp("scene")
    sdet = load_script(REPO / "models" / "shapes_detection.py")
    rows = ["image,x0,y0,x1,y1,label"]
    for k in range(3):
        picture, labels, boxes = sdet.make_image(sdet.TEST_SEED, k)
        cv2.imwrite(str(folder / f"im{k}.png"), picture[..., ::-1])
        rows += [f"im{k}.png,{b[0]},{b[1]},{b[2]},{b[3]},{c}" for b, c in zip(boxes, labels)]
    cv2.imwrite(str(folder / "blank.png"), np.full((64, 64, 3), 128, np.uint8))
    rows.append("blank.png,0,0,4,4,0")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    rows.append("broken.png,0,0,4,4,0")
    (folder / "boxes.csv").write_text("\n".join(rows) + "\n")
    images = [folder / "im0.png", folder / "blank.png", folder / "im1.png", folder / "broken.png",
              folder / "im2.png"]
    return folder, images


class Said:
    """A reporter that keeps what it is told."""

    def __init__(self):
        from onnx_cnnviz.runs.reporting import Reporter

        self.lines: list = []
        self.reporter = Reporter(on_info=self.lines.append, on_warning=lambda message, once: self.lines.append(message))


def options(images: list, out: Path) -> dict:
    """The command's options, as ``cnnviz evaluate`` (and :func:`onnx_cnnviz.runs.evaluate_images`) builds them."""
    return {"model": str(DETECTOR), "images": [str(p) for p in images], "out_dir": str(out), "recursive": False,
            "device": "cpu", "input_name": None, "output_name": None, "input_size": None, "max_nodes": None,
            "preprocess": None, "mean": None, "std": None, "size": None, "order": None, "scale": None,
            "labels": None, "target": None, "layer": None, "overwrite": False, "resume": False, "batch_size": 2,
            "rows_per_run": None, "method_params": {}, "task": "auto", "conf": 0.25, "iou": 0.45, "max_det": 300,
            "ray_address": None}


def on_ray(images: list, boxes: Path, out: Path, said: Said, resume: bool = False) -> tuple:
    """``cnnviz evaluate --ray``'s steps: plan, evaluate on Ray, write the tables. Returns (document, tally)."""
    from onnx_cnnviz.dataset.pipeline import evaluate_on_ray
    from onnx_cnnviz.runs import evaluate as runs_evaluate
    from onnx_cnnviz.runs.evaluate_plan import JOURNAL

    params = runs_evaluate.check_metrics(METRICS, PARAMS, boxes, said.reporter)
    opts = {**options(images, out), "resume": resume}
    m, job, paths, outputs, work = runs_evaluate.prepare(opts, METHODS, METRICS, params, boxes, said.reporter)
    tally = evaluate_on_ray(job, paths, work, outputs[JOURNAL], opts, said.reporter, progress=False)
    document, _ = runs_evaluate.finish(m, job, outputs, paths, work, tally, DETECTOR.name, said.reporter)
    return document, tally


def journal(out: Path) -> list:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def rows_by_key(out: Path) -> dict:
    rows = {(r["image"], r["detection"], r["method"], r["metric"]): r for r in journal(out)}
    assert len(rows) == len(journal(out))  # each row once
    return rows


@pytest.fixture(scope="module")
def runs(cluster, scene, tmp_path_factory):
    """The single-process run and the Ray run of the same request: (folder, document, what was said) each, and the
    Ray run's tally."""
    from onnx_cnnviz.runs import evaluate_images

    folder, images = scene
    base = tmp_path_factory.mktemp("runs")
    single_said, ray_said = Said(), Said()
    single = evaluate_images(DETECTOR, images, base / "single", methods=METHODS, metrics=METRICS,
                             metric_params=PARAMS, boxes=folder / "boxes.csv", device="cpu", batch_size=2,
                             reporter=single_said.reporter)
    document, tally = on_ray(images, folder / "boxes.csv", base / "ray", ray_said)
    return (base / "single", single, single_said), (base / "ray", document, ray_said), tally


def test_ray_evaluation_of_a_detector_equals_the_single_process_run(runs, scene):
    folder, images = scene
    (single_out, single, _), (ray_out, document, ray_said), tally = runs

    # The same journal rows: every (image, detection, method, metric) with the same box, class, score, settings,
    # value (null with the same reason where undefined) and curve.
    a, b = rows_by_key(single_out), rows_by_key(ray_out)
    assert a.keys() == b.keys() and len(a) >= 3 * len(METHODS) * len(METRICS)
    assert {key[0] for key in a} == {str(p.resolve()) for p in images if p.stem.startswith("im")}
    for key, ra in a.items():
        rb = b[key]
        for field in ("detections", "class", "settings", "output", "reason", "ground_truth", "axis", "axis_name"):
            assert ra[field] == rb[field], (key, field)
        np.testing.assert_allclose(rb["box"], ra["box"], rtol=1e-6)
        assert rb["score"] == pytest.approx(ra["score"], rel=1e-6)
        assert (ra["value"] is None) == (rb["value"] is None), key
        if ra["value"] is not None:
            assert rb["value"] == pytest.approx(ra["value"], rel=1e-5, abs=1e-6), key
        assert (ra["curve"] is None) == (rb["curve"] is None), key
        if ra["curve"] is not None:
            np.testing.assert_allclose(rb["curve"], ra["curve"], rtol=1e-5, atol=1e-6)
    values = {round(r["value"], 6) for r in a.values() if r["value"] is not None and r["metric"] != "pointing-game"}
    assert len(values) > len(a) // 3  # rows that differ: a swapped detection, method or metric would show
    assert any(r["value"] is None for r in a.values())  # a false positive's pointing game: undefined, said

    # The same skipped images, in the pictures' order, and the same counts; the Ray run said them as it went.
    blank, broken = (str((folder / name).resolve()) for name in ("blank.png", "broken.png"))
    assert [f["image"] for f in document["nothing_found"]] == [blank]
    assert document["nothing_found"] == single["nothing_found"]
    assert [f["image"] for f in document["failed"]] == [f["image"] for f in single["failed"]] == [broken]
    assert document["failed"] == single["failed"]
    assert document["detections"] == single["detections"] and document["detections"]["nothing_found"] == 1
    assert document["computed"] == single["computed"] == tally.computed == len(a)
    assert any(line == f"{folder / 'blank.png'}: no detection scores at least --conf 0.25; skipped (lower --conf "
               "to evaluate weaker detections)" for line in ray_said.lines), ray_said.lines
    assert any(line.startswith("skipped: ") and "broken.png" in line for line in ray_said.lines), ray_said.lines

    # The same tables and page.
    for name in ("results.csv", "summary.csv"):
        with open(single_out / name, newline="") as fa, open(ray_out / name, newline="") as fb:
            ta, tb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
        assert len(ta) == len(tb) and ta and ta[0].keys() == tb[0].keys(), name
        for ra, rb in zip(ta, tb):
            for column in ra:
                try:
                    same = float(rb[column]) == pytest.approx(float(ra[column]), rel=1e-5, abs=1e-6)
                except ValueError:
                    same = ra[column] == rb[column]
                assert same, (name, column, ra, rb)
    assert document["ranking"] == single["ranking"]
    page = (ray_out / "report.html").read_text()
    assert f"{len({k[:2] for k in a})} detection(s) scored" in page
    assert "blank.png: no detection scores at least --conf 0.25" in page


def test_resume_on_ray_after_a_detector_run_recomputes_nothing(runs, scene, tmp_path):
    """A finished detector run resumed on Ray computes no row (every detection's rows are kept; the blank and the
    unreadable picture are read again and skipped again) and writes the same tables."""
    import shutil

    folder, images = scene
    (_, _, _), (ray_out, first, _), _ = runs
    out = tmp_path / "again"
    shutil.copytree(ray_out, out)
    before = (out / "results.jsonl").read_bytes()
    document, tally = on_ray(images, folder / "boxes.csv", out, Said(), resume=True)
    assert tally.computed == 0 and document["computed"] == 0 and document["kept"] == len(journal(ray_out))
    assert (out / "results.jsonl").read_bytes() == before
    assert document["nothing_found"] == first["nothing_found"] and document["failed"] == first["failed"]
    assert (out / "results.csv").read_text() == (ray_out / "results.csv").read_text()
    assert (out / "summary.csv").read_text() == (ray_out / "summary.csv").read_text()
