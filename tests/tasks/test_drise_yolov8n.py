"""D-RISE on ultralytics yolov8n against Microsoft's ``vision-explanation-methods`` 0.1.1 (``DRISE_saliency``) given
the same masks.

Both sides run the same ONNX file in onnxruntime (ours batched, theirs one masked image at a time through a
``GeneralObjectDetectionModelWrapper``), so the scores and boxes are the same numbers and only D-RISE itself (the
masking, the similarity ``IoU x objectness x class cosine``, the mean-centred weighted sum and the min-max scaling)
is compared. The model has random weights (built from its yaml, nothing downloaded): it keeps hundreds of boxes on a
masked image, so both sides run NMS without a cap (``max_det`` above the candidates). Its class branches' last
convolutions are scaled up (x 5e6): at random weights their inputs are about 1e-6, every class score is 0.5 to within
float32's rounding and NMS would choose among tied scores; scaled, the scores spread (0.5 to 0.99) and both NMS keep
the same boxes. Kept cheap: 8 masks on a 320x320 image.
"""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.tasks import detect
from onnx_cnnviz.tasks.drise import drise, drise_masks

from tests.conftest import CACHE

from .conftest import SIZE, HeadOutput, export_torchscript, images, ultralytics_net

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
vem = pytest.importorskip("vision_explanation_methods.explanations.drise",
                          reason="pip install --no-deps vision-explanation-methods==0.1.1")

CONF, IOU, UNCAPPED = 0.6, 0.5, 100_000


@pytest.fixture(scope="module")
def yolov8n():
    """(ONNX path, model): yolov8n with its class scores spread (see the module), exported once."""
    path = CACHE / f"yolov8n_spread_torchscript_{SIZE}.onnx"
    if not path.exists():
        _, net = ultralytics_net("yolov8n.yaml")
        for branch in net.model[-1].cv3:
            branch[-1].weight.data *= 5e6
        export_torchscript(HeadOutput(net), path)
    return path, cv.load(path, device="cpu", task="detector")


def microsoft_drise(path, x: np.ndarray, found, masks: np.ndarray) -> np.ndarray:
    """``DRISE_saliency`` with its random masks replaced by ``masks`` in order, on a wrapper that runs the file in
    onnxruntime, decodes the (1, 84, A) head (cx, cy, w, h -> corners; the best class's score) and keeps the anchors
    scoring ``CONF`` through torchvision's class-aware ``batched_nms``; class vectors: the anchor's 80 scores."""
    import onnxruntime as ort
    from torchvision.ops import batched_nms
    from vision_explanation_methods.explanations.common import DetectionRecord, GeneralObjectDetectionModelWrapper

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def decode(image: np.ndarray):
        head = torch.from_numpy(session.run(None, {name: image[None].astype(np.float32)})[0][0])
        cx, cy, w, h = head[:4]
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
        return boxes, head[4:].T

    class Wrapper(GeneralObjectDetectionModelWrapper):
        def predict(self, batch):
            records = []
            for image in batch.numpy():
                boxes, scores = decode(image)
                best, cls = scores.max(dim=1)
                ok = torch.nonzero(best >= CONF)[:, 0]
                keep = ok[batched_nms(boxes[ok], best[ok], cls[ok], IOU)]
                records.append(DetectionRecord(boxes[keep], torch.ones(len(keep)), scores[keep]))
            return records

    _, scores = decode(x[0])
    anchors = [d.element % scores.shape[0] for d in found]
    targets = [DetectionRecord(torch.tensor([d.box for d in found]), torch.ones(len(found)), scores[anchors])]
    queue = [torch.from_numpy(mk).repeat(3, 1, 1) for mk in masks]
    original = vem.generate_mask
    vem.generate_mask = lambda *args, **kwargs: queue.pop(0)
    try:
        with torch.no_grad():
            out = vem.DRISE_saliency(Wrapper(), torch.from_numpy(x), targets, len(masks))
    finally:
        vem.generate_mask = original
    assert not queue
    return np.stack([rec["detection"][0].numpy() for rec in out[0]])


def test_yolov8n_drise_equals_microsofts_given_the_same_masks(yolov8n):
    """Three detections of one image, 8 masks on a 16x16 grid (Microsoft's default): the same maps."""
    path, m = yolov8n
    x = images(1, seed=21)
    found = detect(m, x, conf=CONF, iou=IOU, max_det=3)[0]
    assert len(found) == 3
    masks = drise_masks(8, (SIZE, SIZE), seed=4)
    ours = drise(m, x, found, masks=masks, conf=CONF, iou=IOU, max_det=UNCAPPED, batch_size=4)
    ref = microsoft_drise(path, x, found, masks)
    assert ours.shape == ref.shape == (3, SIZE, SIZE)
    assert all(np.ptp(r) > 0 for r in ref)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
