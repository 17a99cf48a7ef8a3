"""``cnnviz evaluate`` per detection on the committed shapes detector (models/shapes_detector.onnx), on held-out
images rendered with their known boxes (models/shapes_detection.py) and a blank picture where nothing is detected.

The journal's rows are checked against an independent path through the library: the images preprocessed, the
detections found (:func:`onnx_cnnviz.tasks.detect`), all of them explained in one batched run
(:func:`onnx_cnnviz.tasks.explain`) and scored by :func:`onnx_cnnviz.metrics.detection_pointing_game` and
:func:`~onnx_cnnviz.metrics.detection_deletion` / :func:`~onnx_cnnviz.metrics.detection_insertion`. Also: an
unmatched detection's row is undefined with its reason, the summary averages over detections and says how many,
--resume recomputes nothing, a classifier-only metric is refused naming those that apply, and a run where nothing
is detected is a typed error."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz import metrics
from onnx_cnnviz.image import Preprocessing, preprocess
from onnx_cnnviz.methods import registry
from onnx_cnnviz.tasks import detect, explain
from tests.conftest import REPO, load_script

from . import invoke, one_line_error

DETECTOR = REPO / "models" / "shapes_detector.onnx"
METHODS = ("gradcam", "saliency")
STEP = 256  # pixels per deletion/insertion step: 16 points on a 64x64 image keep the test short


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Three held-out images with their boxes in boxes.csv, and a blank grey picture (one box in the file, since
    every image needs an entry, but nothing the detector finds)."""
    folder = tmp_path_factory.mktemp("scene")
    sdet = load_script(REPO / "models" / "shapes_detection.py")
    rows = ["image,x0,y0,x1,y1,label"]
    truth = {}
    for k in range(3):
        picture, labels, boxes = sdet.make_image(sdet.TEST_SEED, k)
        cv2.imwrite(str(folder / f"im{k}.png"), picture[..., ::-1])
        truth[f"im{k}.png"] = [metrics.Box(*(int(v) for v in b), label=int(c)) for b, c in zip(boxes, labels)]
        rows += [f"im{k}.png,{b[0]},{b[1]},{b[2]},{b[3]},{c}" for b, c in zip(boxes, labels)]
    cv2.imwrite(str(folder / "blank.png"), np.full((64, 64, 3), 128, np.uint8))
    rows.append("blank.png,0,0,4,4,0")
    (folder / "boxes.csv").write_text("\n".join(rows) + "\n")
    return folder, truth


def evaluate(folder, out, *more):
    images = [folder / f"im{k}.png" for k in range(3)] + [folder / "blank.png"]
    return invoke("--json", "evaluate", DETECTOR, *images, "--boxes", folder / "boxes.csv", "-m", ",".join(METHODS),
                  "--metric", "deletion,insertion,pointing-game", "--metric-param", f"deletion.pixels_per_step={STEP}",
                  "--metric-param", f"insertion.pixels_per_step={STEP}", "--out", out, "--device", "cpu",
                  # 2: images read two at a time, explained two detections per run, an image of 3 detections alone
                  "--batch-size", "2", *more)


def journal(out) -> list:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def test_rows_per_detection_equal_the_library_and_resume_recomputes_nothing(scene, tmp_path):
    folder, truth = scene
    out = tmp_path / "out"
    result = evaluate(folder, out)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["task"] == "detector"
    assert [item["image"] for item in document["nothing_found"]] == [str((folder / "blank.png").resolve())]
    assert "no detection scores at least --conf 0.25" in document["nothing_found"][0]["reason"]
    assert "blank.png: no detection scores at least --conf 0.25; skipped" in result.stderr

    # The independent path: the library's detections, explained in one batched run, scored by its metrics.
    m = cv.load(DETECTOR, task="detector", device="cpu")
    names = [f"im{k}.png" for k in range(3)]
    x = preprocess([folder / name for name in names], preset=Preprocessing.from_metadata(m.metadata))
    found = detect(m, x)
    flat = [d for image in found for d in image]
    gt = [truth[name] for name in names]
    matched, _ = metrics.match_detections(flat, gt)
    assert 0 < (matched >= 0).sum() < len(flat)  # both kinds of row are exercised: matched and false positives
    rows = {(r["image"], r["detection"], r["method"], r["metric"]): r for r in journal(out)}
    assert len(rows) == len(flat) * len(METHODS) * 3
    for method in METHODS:
        maps = explain(lambda mm, xx, targets: registry.explain(mm, method, xx, targets), m, x, found)
        pointing = metrics.detection_pointing_game(m, x, maps, flat, gt)
        expected = {
            "pointing-game": dict(zip(pointing.details["detection"].tolist(), pointing.values.tolist())),
            "deletion": dict(enumerate(metrics.detection_deletion(m, x, maps, flat, pixels_per_step=STEP).values)),
            "insertion": dict(enumerate(metrics.detection_insertion(m, x, maps, flat, pixels_per_step=STEP).values)),
        }
        for k, d in enumerate(flat):
            image = str((folder / names[d.image]).resolve())
            number = found[d.image].index(d) + 1
            for metric, values in expected.items():
                row = rows[(image, number, method, metric)]
                assert row["class"] == d.cls and row["detections"] == len(found[d.image])
                np.testing.assert_allclose(row["box"], d.box, rtol=1e-6)
                if k in values:
                    assert row["value"] == pytest.approx(values[k], rel=1e-5, abs=1e-6), (method, metric, k)
                else:  # a false positive: no box to point at, said, not dropped
                    assert metric == "pointing-game" and matched[k] < 0
                    assert row["value"] is None and "no ground-truth box of class" in row["reason"]

    # The summary averages over detections and says how many were scored.
    assert document["detections"] == {"scored": len(flat), "images": 3, "nothing_found": 1}
    summary = {(r["method"], r["metric"]): r for r in document["summary"]}
    for method in METHODS:
        deletion = [rows[key]["value"] for key in rows if key[2] == method and key[3] == "deletion"]
        assert summary[(method, "deletion")]["n"] == len(flat)
        assert summary[(method, "deletion")]["mean"] == pytest.approx(np.mean(deletion))
        assert summary[(method, "pointing-game")]["n"] + summary[(method, "pointing-game")]["undefined"] == len(flat)
    assert f"{len(flat)} detection(s) of 3 image(s) scored; 1 image(s) had no detection" in result.stderr
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header.startswith("image,detection,box,score,method,metric,value")
    assert f"{len(flat)} detection(s) scored" in (out / "report.html").read_text()
    assert "blank.png: no detection scores at least --conf 0.25" in (out / "report.html").read_text()

    lines = (out / "results.jsonl").read_text()
    again = evaluate(folder, out, "--resume")
    assert again.exit_code == 0, again.output
    redone = json.loads(again.stdout)
    assert redone["computed"] == 0 and redone["kept"] == len(rows)
    assert (out / "results.jsonl").read_text() == lines
    assert redone["summary"] == document["summary"]
    # The page's examples (each image's best detection, its box drawn, every method's map) are made again.
    page = (out / "report.html").read_text()
    assert page.count("detection #1") == 3 and page.count('alt="saliency"') == 3

    # One detection's line lost (a kill mid-append): its image x method x metric is recomputed, for all of that
    # image's detections, and nothing else.
    biggest = max(range(3), key=lambda k: len(found[k]))
    image = str((folder / names[biggest]).resolve())
    kept = [line for line in lines.splitlines()
            if not (json.loads(line)["image"] == image and json.loads(line)["method"] == "saliency"
                    and json.loads(line)["metric"] == "insertion" and json.loads(line)["detection"] == 2)]
    assert len(kept) == len(lines.splitlines()) - 1
    (out / "results.jsonl").write_text("\n".join(kept) + "\n")
    third = evaluate(folder, out, "--resume")
    assert third.exit_code == 0, third.output
    assert json.loads(third.stdout)["computed"] == len(found[biggest]) > 1
    means = [r["mean"] for r in json.loads(third.stdout)["summary"]]
    assert means == pytest.approx([r["mean"] for r in document["summary"]], rel=1e-5)


def test_element_score_and_a_classifier_metric(scene, tmp_path):
    folder, _ = scene
    out = tmp_path / "out"
    result = invoke("--json", "evaluate", DETECTOR, folder / "im0.png", "-m", "saliency", "--metric", "deletion",
                    "--metric-param", "deletion.score=element", "--metric-param", f"deletion.pixels_per_step={STEP}",
                    "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    m = cv.load(DETECTOR, task="detector", device="cpu")
    x = preprocess([folder / "im0.png"], preset=Preprocessing.from_metadata(m.metadata))
    found = detect(m, x)
    maps = explain(lambda mm, xx, targets: registry.explain(mm, "saliency", xx, targets), m, x, found)
    values = metrics.detection_deletion(m, x, maps, found, score="element", pixels_per_step=STEP).values
    rows = sorted(journal(out), key=lambda r: r["detection"])
    assert [r["settings"]["parameters"]["score"] for r in rows] == ["element"] * len(values)
    np.testing.assert_allclose([r["value"] for r in rows], values, rtol=1e-5, atol=1e-6)

    refused = invoke("evaluate", DETECTOR, folder / "im0.png", "--metric", "deletion,average-drop",
                     "--out", tmp_path / "other", "--device", "cpu")
    assert refused.exit_code == 2
    assert "average-drop measure(s) a classifier's class" in refused.stderr
    assert "deletion, insertion, pointing-game" in refused.stderr
    assert not (tmp_path / "other").exists()

    wrong = invoke("evaluate", DETECTOR, folder / "im0.png", "--metric", "deletion", "--metric-param",
                   "deletion.output=score", "--out", tmp_path / "third", "--device", "cpu")
    assert wrong.exit_code == 2 and "on a detector takes score, baseline, pixels_per_step, channels" in wrong.stderr
    beyond = invoke("evaluate", DETECTOR, folder / "im0.png", "--metric", "pointing-game", "--boxes",
                    folder / "boxes.csv", "--metric-param", "pointing-game.iou_threshold=2", "--out",
                    tmp_path / "fourth", "--device", "cpu")
    assert beyond.exit_code == 2 and "pointing-game.iou_threshold is a number in (0, 1], not 2" in beyond.stderr
    assert not (tmp_path / "fourth").exists()


def test_nothing_detected_anywhere_is_a_typed_error(scene, tmp_path):
    folder, _ = scene
    result = invoke("evaluate", DETECTOR, folder / "blank.png", "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "nothing to evaluate: no detection scores at least --conf 0.25 in any of the 1 image(s)" in line
    assert not (tmp_path / "out" / "results.csv").exists()


def test_a_detector_only_parameter_on_a_classifier_is_a_usage_error(scene, tmp_path):
    folder, _ = scene
    result = invoke("evaluate", REPO / "models" / "gap_cnn.onnx", folder / "im0.png", "--metric", "deletion",
                    "--metric-param", "deletion.score=element", "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 2
    assert "metric 'deletion' takes no parameter 'score'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_model_randomisation_per_detection_equals_the_library(scene, tmp_path):
    folder, _ = scene
    out = tmp_path / "out"
    result = invoke("--json", "evaluate", DETECTOR, folder / "im0.png", "-m", "saliency", "--metric",
                    "model-randomisation", "--metric-param", "model-randomisation.stages=2", "--out", out,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    m = cv.load(DETECTOR, task="detector", device="cpu")
    x = preprocess([folder / "im0.png"], preset=Preprocessing.from_metadata(m.metadata))
    found = detect(m, x)
    sanity = metrics.detection_randomisation(m, x, found, methods=("saliency",), stages=2)
    expected = sanity.values("spearman_abs")["saliency"][-1]  # after the last stage, one per detection
    rows = sorted(journal(out), key=lambda r: r["detection"])
    assert len(rows) == len(found[0]) == len(expected)
    np.testing.assert_allclose([r["value"] for r in rows], expected, rtol=1e-5, atol=1e-6)
    assert all(len(r["curve"]) == 2 for r in rows)


def test_a_similarity_auc_interval_is_clipped_to_the_unit_range():
    from types import SimpleNamespace

    from onnx_cnnviz.runs.detection_evaluate import similarity_bounds
    from onnx_cnnviz.runs.evaluate_tables import Results, summary_row

    results = Results(values={("saliency", "deletion"): [0.0, 0.0, 0.9], ("saliency", "insertion"): [0.0, 0.0, 0.9]})
    job = SimpleNamespace(params={"deletion": {}, "insertion": {"score": "element"}})
    output = "the detection's D-RISE similarity"
    row = summary_row("saliency", "deletion", results.values[("saliency", "deletion")], output)
    assert row["ci95_low"] < 0 and not row["ci95_clipped"]  # the classifier's table reads it as an unbounded score
    clipped = similarity_bounds(job, row, results)
    assert clipped["ci95_low"] == 0.0 and clipped["ci95_clipped"] and clipped["mean"] == row["mean"]
    element = summary_row("saliency", "insertion", results.values[("saliency", "insertion")], "score")
    assert similarity_bounds(job, element, results) == element  # a head element's AUC has no such bound


def test_the_library_run_evaluates_a_detector_as_the_command(scene, tmp_path):
    from onnx_cnnviz import runs

    folder, _ = scene
    document = runs.evaluate_images(DETECTOR, [folder / "im0.png"], tmp_path / "lib", methods=["saliency"],
                                    metrics=["deletion"], metric_params={"deletion": {"pixels_per_step": STEP}},
                                    device="cpu", batch_size=2)
    command = invoke("--json", "evaluate", DETECTOR, folder / "im0.png", "-m", "saliency", "--metric", "deletion",
                     "--metric-param", f"deletion.pixels_per_step={STEP}", "--out", tmp_path / "cli", "--device",
                     "cpu", "--batch-size", "2")
    assert command.exit_code == 0, command.output
    assert document["task"] == "detector" and document["detections"]["scored"] >= 1
    assert [r["value"] for r in document["results"]] == [r["value"] for r in json.loads(command.stdout)["results"]]
