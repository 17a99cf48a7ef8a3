"""``cnnviz evaluate`` and a detector's task (the committed shapes detector): --task classifier keeps the classifier's
refusal in one typed line that names --task detector, before any output is written; --task segmenter / text is
refused (evaluate measures classifiers and detectors); --target and --ray, which have no per-detection meaning here,
are refused naming why. The per-detection run itself: tests/cli/test_evaluate_detections.py."""
from __future__ import annotations

import cv2
import pytest

from tests.conftest import REPO, load_script

from . import invoke, one_line_error

DETECTOR = REPO / "models" / "shapes_detector.onnx"


@pytest.fixture
def image(tmp_path):
    sdet = load_script(REPO / "models" / "shapes_detection.py")
    picture, _, _ = sdet.make_image(sdet.TEST_SEED, 0)
    cv2.imwrite(str(tmp_path / "im.png"), picture[..., ::-1])
    return tmp_path / "im.png"


def test_a_detector_declared_a_classifier_is_refused_naming_task_detector(image, tmp_path):
    result = invoke("evaluate", DETECTOR, image, "--task", "classifier", "--out", tmp_path / "out")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "this is a detector" in line and "--task detector" in line
    assert "Load it with task=" not in line  # the library's advice; the command's flag is --task
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ["segmenter", "text"])
def test_a_dense_task_is_refused(image, tmp_path, task):
    result = invoke("evaluate", DETECTOR, image, "--task", task, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert f"--task {task} is not evaluated" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, words", [(["--target", "1"], "--target chooses a classifier's class"),
                                          (["--region-class", "1"], "--region-class chooses a segmenter's region"),
                                          (["--ray"], "a detector's evaluation runs in one process")])
def test_options_without_a_per_detection_meaning_are_refused(image, tmp_path, flags, words):
    result = invoke("evaluate", DETECTOR, image, *flags, "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert words in result.stderr
    assert not (tmp_path / "out").exists()
