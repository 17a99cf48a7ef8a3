"""yolo11n-seg (ultralytics, random weights built from its yaml, nothing downloaded) exported by torch.onnx.export with
its two outputs, the (N, 4 + C + 32, A) head and the (N, 32, h, w) prototypes, read through
:func:`onnx_cnnviz.tasks.yolo_seg_head`: a detection's class score and its mask mass (sigmoid(coefficients .
prototypes) summed over its box, ultralytics' process_mask before the threshold) have the input gradients of torch
autograd (SiLU throughout: no kink to pin)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError, ModelStructureError
from onnx_cnnviz.tasks import YOLO_SEG_OUTPUT, detect, explain, mask_target, yolo_seg_head

from tests.conftest import CACHE
from tests.tiny_models import gap_classifier

from .conftest import SIZE, HeadOutput, images, ultralytics_net

pytest.importorskip("ultralytics")
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # builds and exports yolo11n-seg: about a minute on the shared machine


@pytest.fixture(scope="module")
def yolo_seg():
    _, net = ultralytics_net("yolo11n-seg.yaml")
    module = HeadOutput(net)  # a segmentation model's head output is the pair (head, prototypes)
    path = CACHE / f"yolo11n-seg_torchscript_{SIZE}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.zeros(1, 3, SIZE, SIZE),), str(path), opset_version=17, dynamo=False,
                              input_names=["images"], output_names=["output0", "output1"],
                              dynamic_axes={n: {0: "N"} for n in ("images", "output0", "output1")})
    return module, cv.load(yolo_seg_head(path), device="cpu", task="detector")


def torch_mask_mass(y, protos, image: int, anchor: int) -> torch.Tensor:
    """ultralytics' process_mask for one anchor, summed: sigmoid(k . P) cropped to the box scaled to the prototypes'
    resolution (crop_mask: column j inside when x1 <= j < x2)."""
    classes = y.shape[1] - 4 - protos.shape[1]
    k = y[image, 4 + classes:, anchor]
    _, h, w = protos.shape[1:]
    mask = torch.sigmoid(k @ protos[image].reshape(protos.shape[1], -1)).reshape(h, w)
    cx, cy, bw, bh = y[image, :4, anchor].detach()
    x1, x2 = (cx - bw / 2) * w / SIZE, (cx + bw / 2) * w / SIZE
    y1, y2 = (cy - bh / 2) * h / SIZE, (cy + bh / 2) * h / SIZE
    cols = torch.arange(w, dtype=torch.float32)[None, :]
    rows = torch.arange(h, dtype=torch.float32)[:, None]
    crop = ((cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)).float()
    return (mask * crop).sum()


def test_detections_and_mask_mass_equal_torch(yolo_seg):
    module, m = yolo_seg
    assert m.score_name == YOLO_SEG_OUTPUT and m.num_classes == 80 and len(m.levels) == 3
    x = images(1, seed=5)
    found = detect(m, x, conf=0.25, max_det=3)[0]
    assert len(found) == 3
    y, protos = module(torch.from_numpy(x))
    head = m.scores(x)[0]
    for d in found:
        anchor = d.element % m.decoder.anchors
        assert d.score == pytest.approx(float(y[0, 4 + d.cls, anchor]), rel=1e-4, abs=1e-5)
        mass = head[mask_target(m, d).element]
        assert mass > 0
        assert mass == pytest.approx(float(torch_mask_mass(y, protos, 0, anchor)), rel=1e-3)


def test_class_score_and_mask_gradients_equal_torch_autograd(yolo_seg):
    """Two detections, each by its class score and by its mask mass, four rows of one batched run."""
    module, m = yolo_seg
    x = images(1, seed=6)
    assert_gradients_equal_torch(module, m, x, detect(m, x, conf=0.25, max_det=2)[0])


def assert_gradients_equal_torch(module, m, x, found: list) -> None:
    """The detections ``found`` of image ``x`` (batch 1), each by its class score and by its mask mass, explained in
    one batched run: each row's input gradient equals torch autograd's of the same value on ``module`` (the head and
    the prototypes: ``tests/tasks/conftest.HeadOutput``)."""
    targets = found + [mask_target(m, d) for d in found]
    ours = explain(cv.gradients, m, x, targets)
    for i, (t, mine) in enumerate(zip(targets, ours)):
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        y, protos = module(xt)
        anchor = t.element % m.decoder.anchors
        value = y[0, 4 + t.cls, anchor] if i < len(found) else torch_mask_mass(y, protos, 0, anchor)
        value.backward()
        ref = xt.grad.numpy()[0]
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(mine, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_errors():
    with pytest.raises(ModelStructureError, match="not an ultralytics segmentation head"):
        yolo_seg_head(gap_classifier())
    with pytest.raises(InputError, match="mask_target needs a model loaded from"):
        mask_target(cv.load(gap_classifier(), device="cpu"), None)
