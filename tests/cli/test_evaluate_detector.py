"""``cnnviz evaluate`` on a detector (the committed shapes detector): refused in one typed line that says it is a
detector and names the library's per-detection metrics, before any output is written; a classifier still runs."""
from __future__ import annotations

import cv2

from tests.conftest import REPO, load_script

from . import invoke, one_line_error

DETECTOR = REPO / "models" / "shapes_detector.onnx"


def test_evaluate_on_a_detector_names_the_detection_metrics(tmp_path):
    sdet = load_script(REPO / "models" / "shapes_detection.py")
    image, _, _ = sdet.make_image(sdet.TEST_SEED, 0)
    cv2.imwrite(str(tmp_path / "im.png"), image[..., ::-1])
    result = invoke("evaluate", DETECTOR, tmp_path / "im.png", "--out", tmp_path / "out")
    assert result.exit_code != 0
    line = one_line_error(result)
    assert "this is a detector" in line and "detection_pointing_game" in line and "detection_deletion" in line
    assert "Load it with task=" not in line  # evaluate has no --task: the library's advice would mislead here
    assert not (tmp_path / "out").exists()
