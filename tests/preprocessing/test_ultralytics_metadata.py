"""A file ultralytics exported records its input size (``imgsz``) and nothing of its pixels: its preprocessing is
RGB / 255 at that size, read from ``author``/``imgsz`` when the file holds no ``cnnviz.preprocess.*`` key."""
from __future__ import annotations

import pytest

from onnx_cnnviz.image import Preprocessing

pytestmark = pytest.mark.quick

ULTRALYTICS = {"author": "Ultralytics", "imgsz": "[320, 416]", "stride": "32", "task": "detect",
               "names": "{0: 'person'}"}


def test_ultralytics_metadata_gives_rgb_over_255_at_imgsz():
    pre = Preprocessing.from_metadata(ULTRALYTICS)
    assert pre.size == (320, 416) and pre.scale == pytest.approx(1 / 255)
    assert pre.mean is None and pre.std is None and pre.order == "RGB" and pre.resize == "squash"


def test_a_square_int_imgsz_and_unreadable_ones():
    assert Preprocessing.from_metadata({**ULTRALYTICS, "imgsz": "640"}).size == (640, 640)
    for bad in ("[640]", "big", "[0, 640]", "[1.5, 2]", "{1: 2}"):
        assert Preprocessing.from_metadata({**ULTRALYTICS, "imgsz": bad}) is None, bad


def test_other_authors_and_our_own_keys_win():
    assert Preprocessing.from_metadata({**ULTRALYTICS, "author": "someone"}) is None
    ours = Preprocessing.from_metadata({**ULTRALYTICS, "cnnviz.preprocess.preset": "imagenet"})
    assert ours.mean is not None  # the cnnviz keys are what the file says, ultralytics' are not read then
