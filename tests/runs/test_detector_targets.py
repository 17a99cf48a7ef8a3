"""runs.detections: the task a run loads (declared or recognised from the head) and the targets of each image
(a detector's detections, a segmenter's predicted-class regions), on a real yolov8n head and torchvision LR-ASPP."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnx_cnnviz.errors import InputError
from onnx_cnnviz.runs.detections import (ClassRegion, TaskOptions, find_targets, labels_from_names, load_for_task,
                                         target_record)
from onnx_cnnviz.tasks import Detection, NotAClassifierError, detect

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def yolo_path():
    from tests.runs.detector_models import yolo_path

    return yolo_path()


@pytest.fixture(scope="module")
def segmenter_path():
    from tests.runs.detector_models import lraspp_path

    return lraspp_path()


@pytest.mark.parametrize("field, value, flag", [("task", "tracker", "--task"), ("conf", 1.5, "--conf"),
                                                ("iou", -0.1, "--iou"), ("max_det", 0, "--max-det"),
                                                ("conf", True, "--conf")])
def test_task_options_refuse_bad_values_naming_the_flag(field, value, flag):
    with pytest.raises(InputError) as err:
        TaskOptions(**{field: value}).check()
    assert err.value.option == flag


def test_ultralytics_names_metadata_gives_the_class_names():
    assert labels_from_names({"names": "{0: 'person', 1: 'bicycle'}"}) == ["person", "bicycle"]
    assert labels_from_names({"names": "{1: 'a'}"}) is None  # not consecutive from 0
    assert labels_from_names({"names": "__import__('os')"}) is None
    assert labels_from_names({}) is None


def test_auto_recognises_a_yolo_head_and_finds_its_detections(yolo_path):
    m = load_for_task(yolo_path, "auto", device="cpu")
    assert m.task == "detector" and m.num_classes == 80
    x = np.random.default_rng(0).random((2, 3, 320, 320), dtype=np.float32)
    opts = TaskOptions(conf=0.5, iou=0.45, max_det=4)
    found = find_targets(m, x, opts)
    assert found == detect(m, x, conf=0.5, iou=0.45, max_det=4)
    flat = [d for per in found for d in per]
    assert flat and all(isinstance(d, Detection) and d.score >= 0.5 for d in flat)
    assert all(len(per) <= 4 for per in found)
    record = target_record(flat[0], [f"k{i}" for i in range(80)])
    assert record["class_name"] == f"k{flat[0].cls}" and record["box"] == list(flat[0].box)
    assert find_targets(m, x, TaskOptions(conf=1.0)) == [[], []]


def test_auto_never_loads_a_dense_map_as_a_classifier(segmenter_path):
    with pytest.raises(NotAClassifierError, match="task='segmenter'"):
        load_for_task(segmenter_path, "auto", device="cpu")


def test_segmenter_regions_are_the_predicted_class_masks(segmenter_path):
    m = load_for_task(segmenter_path, "segmenter", device="cpu")
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    out = m.scores(x).reshape(m.tensor_shape(m.score_name, (64, 64))[1:])
    predicted = out.argmax(axis=0)
    regions = find_targets(m, x, TaskOptions(task="segmenter"))[0]
    assert sorted(r.cls for r in regions) == sorted(np.unique(predicted).tolist())
    for r in regions:
        assert isinstance(r, ClassRegion) and r.image == 0
        np.testing.assert_array_equal(r.mask, predicted == r.cls)
        assert r.score == pytest.approx(float(out[r.cls][r.mask].mean()), rel=1e-6)
    assert [r.area for r in regions] == sorted((r.area for r in regions), reverse=True)
    absent = next(c for c in range(out.shape[0]) if c not in predicted)
    assert find_targets(m, x, TaskOptions(task="segmenter", region_class=absent)) == [[]]
    with pytest.raises(InputError) as err:
        find_targets(m, x, TaskOptions(task="segmenter", region_class=out.shape[0]))
    assert err.value.option == "--region-class"


def test_library_run_explains_a_segmenters_regions_into_files(segmenter_path, tmp_path):
    from onnx_cnnviz import runs
    from tests.tiny_models import write_png

    image = write_png(tmp_path / "in" / "s.png", size=64, seed=3)
    doc = runs.explain_images(segmenter_path, image, tmp_path / "out", methods=["saliency"], preprocess="none",
                              task="segmenter", max_det=2, device="cpu", reporter=runs.SilentReporter())
    assert doc["task"] == "segmenter" and doc["task_options"] == {"task": "segmenter", "class": None, "max_det": 2}
    index = json.loads((tmp_path / "out" / "s.regions.json").read_text())
    classes = [t["class"] for t in index["targets_found"]]
    predicted = predicted_classes(segmenter_path, image)
    assert sorted(classes) == sorted(np.unique(predicted).tolist())  # random weights: one or two classes
    assert sorted(Path(r["json"]).name for r in doc["results"]) == sorted(f"s.saliency.c{c}.json" for c in classes)
    assert doc["files"][str(image.resolve())][:2] == [str((tmp_path / "out" / f"s.regions.{s}").resolve())
                                                      for s in ("png", "json")]
    absent = next(c for c in range(21) if c not in predicted)
    # --overwrite where the class asked for is not predicted: nothing to explain, and the earlier run's files of
    # the image (which the new settings no longer describe) are gone, not left beside nothing
    with pytest.raises(InputError, match=f"no pixel is predicted as class {absent}"):
        runs.explain_images(segmenter_path, image, tmp_path / "out", methods=["saliency"], preprocess="none",
                            task="segmenter", region_class=absent, overwrite=True, device="cpu",
                            reporter=runs.SilentReporter())
    assert list((tmp_path / "out").iterdir()) == []


def predicted_classes(path, image):
    """The classes the segmenter predicts on ``image`` (its argmax map)."""
    from onnx_cnnviz.image import preprocess

    m = load_for_task(path, "segmenter", device="cpu")
    x = preprocess([image], preset="none")
    return m.scores(x).reshape(m.tensor_shape(m.score_name, x.shape[2:])[1:]).argmax(axis=0)
