"""``cnnviz evaluate`` and a detector's task (the committed shapes detector): --task classifier keeps the classifier's
refusal in one typed line that names --task detector, before any output is written; --task segmenter / text is
refused (evaluate measures classifiers and detectors); --target and --region-class, which have no per-detection
meaning here, are refused naming why; a head without class vectors (NMS inside the graph) is refused the default
D-RISE similarity before any work, and runs with score=element. The per-detection run itself:
tests/cli/test_evaluate_detections.py."""
from __future__ import annotations

import json
import warnings

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
                                          (["--region-class", "1"], "--region-class chooses a segmenter's region")])
def test_options_without_a_per_detection_meaning_are_refused(image, tmp_path, flags, words):
    result = invoke("evaluate", DETECTOR, image, *flags, "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert words in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_head_without_class_vectors_is_scored_by_its_element(tmp_path):
    """A detector whose NMS is inside the graph gives no class vectors (tests/tasks/test_nms_head_classes.py's
    tiny torchvision-style export): the default D-RISE similarity is refused before any image is read, naming
    score=element, which runs."""
    pytest.importorskip("torch")
    import torch

    from tests.tasks.test_nms_head_classes import SIZE, TinyNmsDetector
    from tests.tiny_models import write_png

    net = TinyNmsDetector().eval()
    path = tmp_path / "tiny_nms.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(3, SIZE, SIZE),), str(path), opset_version=17, dynamo=False,
                          input_names=["image"], output_names=["boxes", "scores", "labels"],
                          dynamic_axes={n: {0: "D"} for n in ("boxes", "scores", "labels")})
    write_png(tmp_path / "im.png", size=SIZE, seed=1)
    common = ["evaluate", path, tmp_path / "im.png", "--preprocess", "none", "-m", "saliency", "--metric",
              "deletion", "--device", "cpu", "--conf", "0.2"]
    refused = invoke(*common, "--out", tmp_path / "refused")
    assert refused.exit_code == 2
    assert "gives none" in refused.stderr and "deletion.score=element" in refused.stderr
    assert not (tmp_path / "refused").exists()
    scored = invoke("--json", *common, "--metric-param", "deletion.score=element", "--metric-param",
                    "deletion.pixels_per_step=256", "--out", tmp_path / "element")
    assert scored.exit_code == 0, scored.output
    rows = json.loads(scored.stdout)["results"]
    assert rows and all(r["value"] is not None for r in rows)


def test_a_text_detector_recognised_under_auto_is_refused_in_one_line(tmp_path):
    from tests.cli.test_text_cli import one_channel_map
    from tests.tiny_models import write_png

    model = one_channel_map(tmp_path / "dbnet_like.onnx")
    image = write_png(tmp_path / "in" / "p.png", size=32, seed=1)
    result = invoke("evaluate", model, image, "--preprocess", "none", "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "dbnet_like.onnx is a text detector" in line and "cnnviz evaluate measures a classifier's or a" in line
    assert not (tmp_path / "out").exists()
