"""Methods on a detector whose structure rules them out, refused before any file is written in one line
(:func:`onnx_cnnviz.runs.detection_run.check_task_methods`): CAM on the committed shapes detector (its head is not a
classifier's pooled linear layer), and Recipro-CAM on yolov8n (its head reads the anchor grid, sized by the batch,
from before the layer; random weights, exported by torch.onnx.export, cached), where it used to fail after the first
boxes picture. On the shapes detector, whose head runs from its layer on, Recipro-CAM applies and runs."""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest

from onnx_cnnviz.errors import InputError
from onnx_cnnviz.runs.detection_run import check_task_methods
from onnx_cnnviz.runs.detections import load_for_task
from tests.conftest import REPO, load_script
from tests.tiny_models import gap_classifier

from . import invoke, one_line_error

DETECTOR = REPO / "models" / "shapes_detector.onnx"


@pytest.fixture
def images(tmp_path):
    sdet = load_script(REPO / "models" / "shapes_detection.py")
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        picture, _, _ = sdet.make_image(sdet.TEST_SEED, i)
        cv2.imwrite(str(folder / f"im{i}.png"), picture[..., ::-1])
    return folder


def test_cam_is_refused_before_anything_is_written(images, tmp_path):
    for methods in ("cam", "cam,reciprocam", "gradcam,cam"):
        out = tmp_path / f"out-{methods}"
        result = invoke("explain", DETECTOR, images, "--methods", methods, "--out", out, "--device", "cpu")
        assert result.exit_code != 0, result.output
        line = one_line_error(result)
        assert "CAM" in line and "gradcam" in line.replace("grad_cam", "gradcam")
        assert not out.exists()


def test_the_detectors_report_names_the_methods_that_apply(images, tmp_path):
    out = tmp_path / "report"
    result = invoke("report", DETECTOR, images, "--methods", "cam,gradcam", "--out", out, "--device", "cpu")
    assert result.exit_code == 1, result.output
    text = one_line_error(result)
    assert "cam cannot explain this detector's detections: CAM needs the class score to be a linear layer" in text
    applying = set(text.split("The methods that apply to it: ")[1].split(".")[0].split(", "))
    assert {"gradcam", "eigencam", "reciprocam", "saliency", "occlusion"} <= applying and "cam" not in applying
    assert not out.exists()


def test_reciprocam_on_yolo_is_refused_before_the_first_picture(tmp_path):
    pytest.importorskip("ultralytics")
    pytest.importorskip("torch")
    from tests.runs.detector_models import yolo_path
    from tests.tiny_models import write_png

    picture = write_png(tmp_path / "in" / "im.png", size=320, seed=10)
    out = tmp_path / "out"
    result = invoke("explain", yolo_path(gain=3e6), picture, "--preprocess", "none", "--conf", "0.6", "--methods",
                    "reciprocam", "--out", out, "--device", "cpu")
    assert result.exit_code == 1, result.output
    line = one_line_error(result)
    assert line.startswith("cnnviz: error: reciprocam cannot explain this detector's detections: the network after "
                           "layer ") and "computed before the layer from the batch size" in line
    applying = set(line.split("The methods that apply to it: ")[1].split(".")[0].split(", "))
    assert {"gradcam", "eigencam", "saliency"} <= applying and not applying & {"cam", "reciprocam"}
    assert not out.exists() or not any(out.iterdir())


def test_reciprocam_applies_to_a_detector(images, tmp_path):
    """Recipro-CAM reruns the head from its layer on (the other pyramid inputs held): a detection's score."""
    out = tmp_path / "out"
    result = invoke("--json", "explain", DETECTOR, images / "im0.png", "--methods", "reciprocam", "--max-det", "2",
                    "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["task"] == "detector" and document["results"]
    for r in document["results"]:
        picture = np.load(r["outputs"]["array"])
        assert picture.shape == (64, 64) and picture.max() > picture.min()


def test_check_task_methods(tmp_path):
    m = load_for_task(DETECTOR, "auto", device="cpu")
    check_task_methods(m, ["gradcam", "reciprocam", "eigencam", "saliency"])  # all apply: nothing raised
    with pytest.raises(InputError, match=r"^cam cannot explain this detector's detections: .*The methods that "
                                         r"apply to it: gradcam, .*reciprocam") as caught:
        check_task_methods(m, ["gradcam", "cam"])
    assert caught.value.option == "--methods" and "\n" not in str(caught.value)
    # a wrong --layer stays the run's own error about --layer, not a method that "cannot apply"
    check_task_methods(m, ["gradcam"], layer="no such layer")
    onnx.save(gap_classifier(), tmp_path / "gap.onnx")
    check_task_methods(load_for_task(tmp_path / "gap.onnx", "classifier", device="cpu"), ["cam"])  # not checked
