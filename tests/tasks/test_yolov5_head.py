"""The YOLOv5-style head (N, A, 5 + C): a small model with YOLOv5's detection layer (grid offsets, anchors, sigmoid
objectness and class probabilities, one output), exported by torch.onnx.export; a detection's score is objectness x
class probability and its input gradient equals torch autograd of that product."""
from __future__ import annotations


import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.tasks import YoloV5Decoder, detect, explain
from tests.exporting import export_torchscript

torch = pytest.importorskip("torch")

CLASSES, SIZE, STRIDE = 4, 64, 8
ANCHORS = ((10.0, 13.0), (16.0, 30.0), (33.0, 23.0))  # YOLOv5's P3 anchors


def yolov5_like(seed: int = 0):
    """Conv-SiLU backbone to stride 8 and YOLOv5's ``Detect`` decoding (yolov5/models/yolo.py, export mode)."""
    torch.manual_seed(seed)
    nn = torch.nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.SiLU(),
                                      nn.Conv2d(32, 32, 3, 2, 1), nn.SiLU())
            self.m = nn.Conv2d(32, len(ANCHORS) * (5 + CLASSES), 1)
            g = SIZE // STRIDE
            yv, xv = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
            self.register_buffer("grid", torch.stack((xv, yv), 2).view(1, 1, g, g, 2).float())
            self.register_buffer("anchor_grid", torch.tensor(ANCHORS).view(1, len(ANCHORS), 1, 1, 2))

        def forward(self, x):
            p = self.m(self.body(x))
            n, _, h, w = p.shape
            p = p.view(n, len(ANCHORS), 5 + CLASSES, h, w).permute(0, 1, 3, 4, 2).sigmoid()
            xy = (p[..., :2] * 2 - 0.5 + self.grid) * STRIDE
            wh = (p[..., 2:4] * 2) ** 2 * self.anchor_grid
            return torch.cat((xy, wh, p[..., 4:]), -1).view(n, -1, 5 + CLASSES)

    return Head().eval()


@pytest.fixture(scope="module")
def v5(tmp_path_factory):
    module = yolov5_like()
    path = tmp_path_factory.mktemp("v5") / "v5.onnx"
    export_torchscript(module, torch.zeros(1, 3, SIZE, SIZE), path, input="images", output="output0")
    return module, cv.load(path, device="cpu", task="detector")


def test_yolov5_head_detections_and_gradients_equal_torch(v5):
    module, m = v5
    assert isinstance(m.decoder, YoloV5Decoder) and m.num_classes == CLASSES
    x = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    found = detect(m, x, conf=0.1, max_det=3)
    flat = [d for dets in found for d in dets]
    assert len(flat) == 6
    head = module(torch.from_numpy(x)).detach().numpy()
    for d in flat:
        anchor, column = divmod(d.element, 5 + CLASSES)
        assert column == 5 + d.cls and d.factor == anchor * (5 + CLASSES) + 4
        np.testing.assert_allclose(d.score, head[d.image, anchor, 4] * head[d.image, anchor, 5:].max(), rtol=1e-4)
    ours = explain(cv.gradients, m, x, found)
    for d, mine in zip(flat, ours):
        xt = torch.from_numpy(x[d.image:d.image + 1].copy()).requires_grad_(True)
        out = module(xt)
        anchor = d.element // (5 + CLASSES)
        (out[0, anchor, 4] * out[0, anchor, 5 + d.cls]).backward()
        ref = xt.grad[0].numpy()
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(mine, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())
