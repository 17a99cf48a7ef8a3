"""yolo11n-seg exported by ultralytics' own exporter (``YOLO(model).export(format="onnx")``: static batch 1, Conv+BN
fused, outputs ``output0`` (1, 116, A) and ``output1`` (1, 32, h, w) fully declared), random weights built from its
yaml (nothing downloaded).

The file as the exporter writes it loads as a detector in the runs (``--task detector`` and ``auto``: its two
outputs are recognised and joined by :func:`onnx_cnnviz.tasks.yolo_seg_head`); the library's own ``load`` says how
to join them. Each detection's class score and mask mass (ultralytics' process_mask before the threshold, summed over
its box) has the input gradient of torch autograd on the torch model.

Untrained BatchNorm statistics (mean 0, variance 1) let the activations die out with depth (about 1e-11 at the
coarsest level): every class score is then 0.5 and every box the anchor's prior, to float32's rounding. The
statistics are set from a few random images instead (as tests/tasks/test_nms_heads.py does), so the scores and the
boxes spread. SiLU throughout; SPPF's max-pool ties do not occur on random images: no kink to pin. The mask crop is a
comparison of the box with pixel indices, held at the forward's box on both sides; a detection whose box edge lies
within 1e-3 of a pixel boundary (where float32 rounding could flip a column in or out) is not used."""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import ModelStructureError
from onnx_cnnviz.runs.detections import load_for_task
from onnx_cnnviz.tasks import YOLO_SEG_OUTPUT, NotAClassifierError, detect, mask_target

from tests.conftest import CACHE

from .conftest import SIZE, HeadOutput, export_ultralytics, images, ultralytics_net

pytest.importorskip("ultralytics")
torch = pytest.importorskip("torch")
# After the skips: test_yolo_seg imports torch at module level.
from .test_yolo_seg import assert_gradients_equal_torch, torch_mask_mass  # noqa: E402

pytestmark = pytest.mark.slow  # builds yolo11n-seg, calibrates and exports it: about half a minute on 2 cores


def calibrated_net():
    """(YOLO, net): yolo11n-seg with its BatchNorm statistics measured on four random images (seeded), and its
    class and box branches' last convolutions scaled by 0.3: calibrated, their outputs spread with std 3 to 5, the
    best class scores saturate at 1.0 (where the gradient vanishes) and the boxes overflow the image."""
    yolo, net = ultralytics_net("yolo11n-seg.yaml")
    for layer in net.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None  # a cumulative average over the calibration batch
            layer.reset_running_stats()
    torch.manual_seed(1)
    net.train()
    with torch.no_grad():
        net(torch.rand(4, 3, SIZE, SIZE))
    net.eval()
    for branch in (*net.model[-1].cv3, *net.model[-1].cv2):
        branch[-1].weight.data *= 0.3
    return yolo, net


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(torch module returning head and prototypes, the exporter's file)."""
    yolo, net = calibrated_net()
    path = CACHE / f"yolo11n-seg_calibrated03_ultralytics_{SIZE}.onnx"
    if not path.exists():
        export_ultralytics(yolo, path, tmp_path_factory.mktemp("ultralytics"))
    net.eval()  # the exporter works on a copy; this one stays as calibrated
    return HeadOutput(net), path


@pytest.fixture(scope="module")
def seg(exported):
    module, path = exported
    return module, load_for_task(path, "detector", device="cpu")


def clear_of_pixel_edges(d, h: int, w: int) -> bool:
    """Whether every edge of the detection's box, at the prototypes' resolution, is 1e-3 away from a pixel index."""
    x1, y1, x2, y2 = d.box
    edges = (x1 * w / SIZE, y1 * h / SIZE, x2 * w / SIZE, y2 * h / SIZE)
    return all(abs(e - round(e)) > 1e-3 for e in edges)


def test_exporters_file_is_recognised_as_a_segmentation_detector(exported):
    """The runs join the two outputs by themselves (declared detector and auto); the library's load, as a
    classifier or a detector, names the join instead of treating either output as the scores."""
    _, path = exported
    for task in ("detector", "auto"):
        m = load_for_task(path, task, device="cpu")
        assert m.task == "detector" and m.score_name == YOLO_SEG_OUTPUT
        assert m.num_classes == 80 and m.decoder.anchors == 2100 and len(m.levels) == 3
    with pytest.raises(NotAClassifierError, match=r"^this is a detector: its outputs \(output0, output1\) are an "
                                                  r"ultralytics segmentation head's.*yolo_seg_head\(path\)"):
        cv.load(path, device="cpu")
    with pytest.raises(ModelStructureError, match=r"ultralytics segmentation head's.*yolo_seg_head\(path\), "
                                                  "task='detector'"):
        cv.load(path, device="cpu", task="detector")


def test_detections_and_mask_mass_equal_torch(seg):
    module, m = seg
    x = images(1, seed=5)
    found = detect(m, x, conf=0.25, max_det=5)[0]
    assert len(found) == 5
    y, protos = module(torch.from_numpy(x))
    scores = y[0, 4:84].numpy()
    assert scores.max() - scores.min() > 0.5, "the calibrated model's class scores should spread"
    head = m.scores(x)[0]
    for d in found:
        anchor = d.element % m.decoder.anchors
        assert d.element // m.decoder.anchors == 4 + d.cls
        assert d.score == pytest.approx(float(y[0, 4 + d.cls, anchor]), rel=1e-4, abs=1e-5)
        cx, cy, w, h = y[0, :4, anchor].numpy()
        np.testing.assert_allclose(d.box, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-4, atol=1e-2)
        if clear_of_pixel_edges(d, *protos.shape[2:]):
            mass = head[mask_target(m, d).element]
            assert mass > 0
            assert mass == pytest.approx(float(torch_mask_mass(y, protos, 0, anchor)), rel=1e-3)
    boxes = np.array([d.box for d in found])
    assert np.ptp(boxes[:, 2] - boxes[:, 0]) > 1.0, "the calibrated model's boxes should differ in size"


def test_class_score_and_mask_gradients_equal_torch_autograd(seg):
    """Two detections, each by its class score and by its mask mass: four rows of one batched explanation (the
    exporter's file takes batch 1: the rows run one at a time)."""
    module, m = seg
    x = images(1, seed=6)
    h, w = module(torch.from_numpy(x))[1].shape[2:]
    found = [d for d in detect(m, x, conf=0.25, max_det=10)[0] if clear_of_pixel_edges(d, h, w)][:2]
    assert len(found) == 2
    assert_gradients_equal_torch(module, m, x, found)
