"""Issue 24 points 4, 5 and 6 for ground-truth boxes: a label that is no class of the model is refused (it scored
0.0 everywhere without a word), a boxes file is capped as a labels file is and keeps only the run's images as the
rows arrive, and a JSON file nested 100,000 deep is a typed error, not a RecursionError.

Model: tests/tiny_models.py's gap_classifier (8x8 input, CLASSES = 5).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.metrics import boxes as box_io
from onnx_cnnviz.metrics import pointing
from onnx_cnnviz.metrics.boxes import Box, read_boxes
from tests.tiny_models import CLASSES, gap_classifier


@pytest.fixture(scope="module")
def model():
    return cv.load(gap_classifier(size=8))


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("metric", [pointing.pointing_game, pointing.energy_pointing_game,
                                    pointing.localisation_accuracy])
@pytest.mark.parametrize("label", [CLASSES, 7, 10 ** 20])
def test_a_label_outside_the_models_classes_is_refused(model, x, metric, label):
    maps = np.random.default_rng(1).random((2, 8, 8)).astype(np.float32)
    boxes = [[Box(0, 0, 4, 4, 0)], [Box(2, 2, 6, 6, label)]]
    with pytest.raises(InputError, match=f"image 1, box 0: label {label} is not a class of the model, which has "
                                         f"{CLASSES} classes"):
        metric(model, x, maps, boxes=boxes)


def test_labels_of_the_models_classes_still_score(model, x):
    maps = np.zeros((2, 8, 8), np.float32)
    maps[:, 1, 1] = 1.0
    boxes = [[Box(0, 0, 4, 4, label)] for label in np.argmax(model.scores(x), axis=1)]
    assert pointing.pointing_game(model, x, maps, boxes=boxes).values.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("name,text", [
    ("b.csv", "image,x0,y0,x1,y1,label\na.png,1,2,3,4,2\nb.png,1,2,3,4,5\n"),
    ("b.json", '{"a.png": [{"box": [1, 2, 3, 4], "label": 2}], "b.png": [{"box": [1, 2, 3, 4], "label": 5}]}'),
])
def test_read_boxes_refuses_a_label_of_no_class(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    assert read_boxes(tmp_path / name)["b.png"][0].label == 5  # without the class count: read as written
    with pytest.raises(InputError, match="label 5 is not a class of the model, which has 5 classes") as err:
        read_boxes(tmp_path / name, num_classes=CLASSES)
    assert ("line 3" if name.endswith("csv") else "image 'b.png', box 0") in str(err.value)


def test_check_labels_on_a_table():
    box_io.check_labels({"a.png": [Box(0, 0, 1, 1, 4), Box(0, 0, 1, 1)]}, CLASSES)
    with pytest.raises(InputError, match="image 'a.png', box 1: label 1e\\+20|image 'a.png', box 1: label 10"):
        box_io.check_labels({"a.png": [Box(0, 0, 1, 1, 4), Box(0, 0, 1, 1, 10 ** 20)]}, CLASSES)


@pytest.mark.parametrize("depth", [100_000, 5_000])
def test_deeply_nested_json_is_a_typed_error(tmp_path, depth):
    path = tmp_path / "deep.json"
    path.write_text('{"a.png": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(InputError, match="nests its brackets too deep to parse") as err:
        read_boxes(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_boxes_file_over_the_byte_cap_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "wb") as handle:
        handle.write(b"image,x0,y0,x1,y1\n")
        handle.truncate(box_io.MAX_BOXES_BYTES + 1)  # sparse: nothing written but the header
    with pytest.raises(InputError, match="is 67,108,865 bytes, more than the 67,108,864 allowed"):
        read_boxes(path)


def test_a_boxes_file_over_the_box_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(box_io, "MAX_BOXES", 3)
    (tmp_path / "b.csv").write_text("image,x0,y0,x1,y1\n" + "a.png,1,2,3,4\n" * 4)
    with pytest.raises(InputError, match="holds more than 3 boxes"):
        read_boxes(tmp_path / "b.csv")
    (tmp_path / "b.json").write_text(json.dumps({"a.png": [[1, 2, 3, 4]] * 2, "b.png": [[1, 2, 3, 4]] * 2}))
    with pytest.raises(InputError, match="holds more than 3 boxes"):
        read_boxes(tmp_path / "b.json")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "b.csv"
    os.mkfifo(path)
    with pytest.raises(InputError, match="is a FIFO \\(named pipe\\), not a regular file"):
        read_boxes(path)


@pytest.mark.parametrize("name", ["b.csv", "b.json"])
def test_only_the_runs_images_are_kept_as_the_rows_arrive(tmp_path, name):
    rows = [("run/a.png", 1), ("other/z.png", 2), ("b.png", 3), ("elsewhere/c.png", 4)]
    if name.endswith(".csv"):
        text = "image,x0,y0,x1,y1\n" + "".join(f"{k},0,0,{v},{v}\n" for k, v in rows)
    else:
        text = json.dumps({k: [[0, 0, v, v]] for k, v in rows})
    (tmp_path / name).write_text(text)
    # The run's images: a path as given, a file name matched by name, and one with no box at all.
    table = read_boxes(tmp_path / name, images=["run/a.png", "pics/b.png", "pics/d.png"])
    assert table == {"run/a.png": [Box(0, 0, 1, 1)], "b.png": [Box(0, 0, 3, 3)]}
    assert box_io.lookup(table, "pics/b.png") == [Box(0, 0, 3, 3)]


def test_rows_of_other_images_are_not_parsed(tmp_path):
    # A malformed row of an image outside the run does not stop the run's boxes from being read.
    (tmp_path / "b.csv").write_text("image,x0,y0,x1,y1\na.png,1,2,3,4\nz.png,1,two,3,4\n")
    assert read_boxes(tmp_path / "b.csv", images=["a.png"]) == {"a.png": [Box(1, 2, 3, 4)]}
