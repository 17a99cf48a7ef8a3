"""DETR-style queries: a small DETR-like torch model (a conv backbone, a transformer decoder over learned queries,
a class head of C + 1 logits and a sigmoid box head, random weights) exported by torch.onnx.export with its two
outputs, (N, Q, 4) boxes and (N, Q, C + 1) logits, read through :func:`onnx_cnnviz.tasks.detr_head`: the detections
are transformers' post-processing's, and each detection's input gradient equals torch autograd of its probability."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError, ModelStructureError
from onnx_cnnviz.tasks import DETR_OUTPUT, detect, detr_head, explain

from tests.conftest import CACHE
from tests.reference import onnx_kink_pattern, pinned
from tests.tiny_models import gap_classifier

torch = pytest.importorskip("torch")
nn = torch.nn

SIZE, QUERIES, CLASSES = 64, 12, 5


class TinyDetr(nn.Module):
    """Carion et al.'s layout at toy size: backbone -> tokens + positions -> decoder over learned queries -> a
    linear class head (C + 1 logits, the last "no object") and a 3-layer MLP box head with a sigmoid."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, d, 3, 2, 1), nn.ReLU())
        self.position = nn.Parameter(torch.randn(1, (SIZE // 8) ** 2, d) * 0.1)
        self.queries = nn.Parameter(torch.randn(1, QUERIES, d))
        layer = nn.TransformerDecoderLayer(d, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers=2)
        self.classes = nn.Linear(d, CLASSES + 1)
        self.boxes = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4))

    def forward(self, x):
        memory = self.backbone(x).flatten(2).transpose(1, 2) + self.position
        hidden = self.decoder(self.queries.expand(x.shape[0], -1, -1), memory)
        return self.boxes(hidden).sigmoid(), self.classes(hidden)


@pytest.fixture(scope="module")
def detr():
    # torch's fused attention kernel (the eval-mode fast path) neither exports nor calls F.relu, which the pinned
    # reference patches: the plain path, the same function, for the whole module.
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield _detr()
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _detr():
    torch.manual_seed(0)
    module = TinyDetr().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    path = CACHE / f"tiny_detr_{SIZE}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.zeros(1, 3, SIZE, SIZE),), str(path), opset_version=17, dynamo=False,
                              input_names=["pixel_values"], output_names=["pred_boxes", "logits"],
                              dynamic_axes={n: {0: "N"} for n in ("pixel_values", "pred_boxes", "logits")})
    x = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    return module, cv.load(detr_head(path), device="cpu", task="detector"), x


def post_process(boxes, logits, threshold):
    """transformers' DetrImageProcessor.post_process_object_detection (softmax, drop "no object", best class,
    boxes from relative cx, cy, w, h to pixels), one list of (score, label, box) per image."""
    probs = torch.softmax(logits, -1)[..., :-1]
    scores, labels = probs.max(-1)
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * SIZE
    return [[(float(s), int(c), b.tolist()) for s, c, b in zip(sc, lb, bx) if s > threshold]
            for sc, lb, bx in zip(scores, labels, xyxy)]


def test_detections_equal_transformers_post_processing(detr):
    module, m, x = detr
    assert m.score_name == DETR_OUTPUT and m.num_classes == CLASSES and m.decoder.nms_inside
    ref = post_process(*module(torch.from_numpy(x)), threshold=0.0)
    found = detect(m, x, conf=0.0, max_det=QUERIES)
    for dets, want in zip(found, ref):
        assert len(dets) == QUERIES
        want = sorted(want, key=lambda t: -t[0])
        for d, (score, label, box) in zip(dets, want):
            assert d.cls == label and d.score == pytest.approx(score, rel=1e-4, abs=1e-6)
            np.testing.assert_allclose(d.box, box, rtol=1e-4, atol=1e-3)


def test_detection_gradients_equal_torch_autograd(detr):
    """Every query of two images explained in one batched run; each against torch autograd of its probability
    (ReLU and max-pool decisions pinned to onnxruntime's, tests/reference.py)."""
    module, m, x = detr
    found = detect(m, x, conf=0.0, max_det=3)
    ours = explain(cv.gradients, m, x, found)
    flat = [d for dets in found for d in dets]
    assert len(flat) == 6 == len(ours)
    pattern = onnx_kink_pattern(m, x)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    with pinned(module, pattern):
        boxes, logits = module(xt)
    probs = torch.softmax(logits, -1)
    for d, mine in zip(flat, ours):
        xt.grad = None
        q, c = divmod(d.element, 4 + CLASSES + 1)
        probs[d.image, q, c - 4].backward(retain_graph=True)
        ref = xt.grad[d.image].numpy()
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(mine, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_box_coordinate_gradient_equals_torch(detr):
    """A box coordinate is an element of the head output too: x1 of a query, in pixels."""
    module, m, x = detr
    d = detect(m, x[:1], conf=0.0, max_det=1)[0][0]
    q = d.element // (4 + CLASSES + 1)
    ours = cv.gradients(m, x[:1], targets=cv.OutputElement(None, (q, 0)))
    xt = torch.from_numpy(x[:1].copy()).requires_grad_(True)
    with pinned(module, onnx_kink_pattern(m, x[:1])):
        boxes, _ = module(xt)
    ((boxes[0, q, 0] - boxes[0, q, 2] / 2) * SIZE).backward()
    ref = xt.grad.numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_detr_head_errors():
    with pytest.raises(ModelStructureError, match="not a DETR-style head.*\\(N, Q, 4\\) boxes"):
        detr_head(gap_classifier())
    with pytest.raises(InputError, match="'softmax' \\(DETR\\) or 'sigmoid'"):
        detr_head(gap_classifier(), scores="max")
