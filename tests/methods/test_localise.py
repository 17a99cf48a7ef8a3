"""Weakly supervised localisation: threshold rule, GrabCut from saliency, and the kitten on the real SqueezeNet."""
from __future__ import annotations

import cv2
import numpy as np

import onnx_cnnviz as cv
from onnx_cnnviz import image as im
from onnx_cnnviz.methods import localise as L

from ..conftest import KITTEN

KITTEN_BOX = (35, 15, 212, 212)  # the kitten in kitten_224.png, (x0, y0, x1, y1)


def test_threshold_rule_keeps_largest_component():
    h = np.zeros((50, 60), np.float32)
    h[5:25, 10:40] = 1.0  # big blob at the max
    h[40:45, 50:55] = 0.9  # small blob, above 20% too
    h[30:32, 0:3] = 0.1  # below 20%
    mask, box = L.box_from_map(h)
    assert box == (10, 5, 40, 25) and mask.sum() == 20 * 30
    assert L.box_from_map(np.zeros((4, 4)))[1] == (0, 0, 0, 0)
    assert L.iou((0, 0, 10, 10), (5, 0, 15, 10)) == 1 / 3


def test_grabcut_from_saliency_segments_object():
    """A red disc on a textured green background; saliency only at the disc's centre: GrabCut recovers the disc."""
    rng = np.random.default_rng(0)
    picture = np.zeros((96, 96, 3), np.uint8)
    picture[..., 1] = rng.integers(80, 160, (96, 96))
    cv2.circle(picture, (40, 52), 22, (220, 30, 30), -1)
    sal = np.zeros((96, 96), np.float32)
    cv2.circle(sal, (40, 52), 10, 1.0, -1)
    sal = cv2.GaussianBlur(sal, (0, 0), 4) + rng.uniform(0, 0.02, sal.shape).astype(np.float32)
    mask, box = L.grabcut_from_saliency(picture, sal)
    assert L.iou(box, (18, 30, 63, 75)) > 0.85
    again = L.grabcut_from_saliency(picture, sal)[0]
    np.testing.assert_array_equal(mask, again)


def test_kitten_box_on_squeezenet(squeezenet_path, kitten_x, tmp_path):
    """CAM (Zhou) and saliency + GrabCut (Simonyan) boxes on kitten_224.png cover the kitten; saved as images."""
    m = cv.load(squeezenet_path)
    picture = im.read_image(KITTEN)
    cam_loc = L.localise(m, kitten_x, "cam", top=2)[0]
    assert [r.target for r in cam_loc] == [281, 285]  # tabby, Egyptian cat
    box = cam_loc[0].box
    assert L.iou(box, KITTEN_BOX) > 0.7
    inter = (min(box[2], KITTEN_BOX[2]) - max(box[0], KITTEN_BOX[0])) * (min(box[3], KITTEN_BOX[3]) -
                                                                       max(box[1], KITTEN_BOX[1]))
    assert inter / ((KITTEN_BOX[2] - KITTEN_BOX[0]) * (KITTEN_BOX[3] - KITTEN_BOX[1])) > 0.9  # covers the kitten
    sal_loc = L.localise(m, kitten_x, "saliency", preprocess="caffe")[0][0]
    assert sal_loc.target == 281 and L.iou(sal_loc.box, KITTEN_BOX) > 0.5
    gc_loc = L.localise(m, kitten_x, "gradcam", targets=281)[0][0]
    assert L.iou(gc_loc.box, KITTEN_BOX) > 0.7
    drawn = L.draw_boxes(picture, [box, sal_loc.box], labels=["CAM tabby", "saliency+GrabCut"])
    path = im.save_image(tmp_path / "kitten_cam_box.png", drawn)
    assert path.stat().st_size > 1000 and not np.array_equal(drawn, picture)
