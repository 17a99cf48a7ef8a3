"""Detectors with their NMS inside the graph: torchvision ``ssdlite320_mobilenet_v3_large`` and
``retinanet_resnet50_fpn`` (random weights, nothing downloaded) exported by ``torch.onnx.export`` (TorchScript
exporter; outputs boxes, scores, labels), read through :func:`onnx_cnnviz.tasks.nms_head`.

The gradient path of a detection's score crosses the graph's score threshold (NonZero + GatherND), per-class TopK,
Concat of run-time lengths and the Gather of NonMaxSuppression's kept indices: every selection is differentiated at
the forward run's indices, so each detection's input gradient equals torch autograd of that detection's score."""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError, ModelStructureError
from onnx_cnnviz.tasks import NMS_OUTPUT, detect, explain, nms_head

from tests.conftest import CACHE
from tests.reference import onnx_kink_pattern, pinned
from tests.tiny_models import gap_classifier

pytestmark = pytest.mark.slow  # two torchvision detectors exported, explained and replayed in torch: minutes

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

#: model -> (input size, std of the class logits' conv weights: large enough for scores that differ, small enough
#: that the sigmoid / softmax does not saturate at 1, where every gradient vanishes).
MODELS = {"ssdlite320": (320, 0.1), "retinanet": (160, 0.03)}


class Detections(torch.nn.Module):
    """A torchvision detector taking one (C, H, W) image and returning its boxes, scores and labels (the tuple
    ``torch.onnx.export(model, ([image],))`` writes)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, image):
        out = self.net([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def build(name: str):
    torch.manual_seed(0)
    size, std = MODELS[name]
    det = torchvision.models.detection
    if name == "ssdlite320":
        net = det.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
        logits = net.head.classification_head
    else:
        net = det.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5, min_size=size,
                                         max_size=size)
        logits = net.head.classification_head.cls_logits
    # Untrained BatchNorm statistics (mean 0, variance 1) let the activations die out in the deep levels, whose
    # every location then scores the same: ties that NMS breaks one way in torch and another in onnxruntime. The
    # backbone's statistics are set from a few random images instead, so every level has live features.
    for layer in net.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None
            layer.reset_running_stats()
    net.backbone.train()
    with torch.no_grad():
        batch, _ = net.transform(list(torch.rand(4, 3, size, size)))
        net.backbone(batch.tensors)
    for p in logits.parameters():
        p.data.normal_(0.0, std)
    module = Detections(net).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module, size


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request):
    module, size = build(request.param)
    path = CACHE / f"nms_{request.param}_{size}.onnx"
    if not path.exists():
        export(module, size, path)
    module.eval()  # the exporter hands the module back in the mode it found it in
    image = np.random.default_rng(1).random((1, 3, size, size), dtype=np.float32)
    return module, cv.load(nms_head(path), device="cpu", task="detector"), image


def export(module, size, path):
    """torch.onnx.export (TorchScript exporter, opset 17) with the three outputs named and their length dynamic."""
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(3, size, size),), str(path), opset_version=17, dynamo=False,
                          input_names=["image"], output_names=["boxes", "scores", "labels"],
                          dynamic_axes={n: {0: "D"} for n in ("boxes", "scores", "labels")})


def matching(out, d) -> int:
    """The index of torch's detection that is ``d`` (same label, nearest box and score: tied scores may be listed
    in another order)."""
    boxes, scores, labels = (t.detach().numpy() for t in out)
    cost = np.abs(boxes - np.array(d.box)).sum(1) + np.abs(scores - d.score) + 1e6 * (labels != d.cls)
    return int(np.argmin(cost))


def rectifier_pattern(m, x: np.ndarray) -> dict:
    """onnx_kink_pattern without the post-processing's Clips (``torch.clamp`` of the box deltas, which torch does not
    call through ``F.hardtanh``): only the Clips from 0 (ReLU6) are pinned."""
    from onnx import numpy_helper

    pattern = onnx_kink_pattern(m, x)
    graph = m.spec(tuple(x.shape[2:])).model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    clips = [n for n in graph.node if n.op_type == "Clip"]
    rectifiers = [i for i, n in enumerate(clips)
                  if len(n.input) > 1 and n.input[1] in values and float(values[n.input[1]]) == 0.0]
    pattern["Clip"] = [pattern["Clip"][i] for i in rectifiers]
    return pattern


def test_detections_equal_torchvisions(exported):
    module, m, x = exported
    assert m.decoder.nms_inside and m.score_name == NMS_OUTPUT
    found = detect(m, x, conf=0.0, max_det=300)[0]
    boxes, scores, labels = (t.numpy() for t in module(torch.from_numpy(x[0])))
    assert len(found) == len(scores) > 3  # conf=0: every detection, never a padding row
    # the best 50 scores agree (at the detections_per_img cap, which of many tied scores make the list is the
    # sort's choice, torch's and onnxruntime's differ)
    np.testing.assert_allclose([d.score for d in found[:50]], np.sort(scores)[::-1][:50], rtol=1e-4, atol=1e-5)
    for d in found[:20]:
        j = matching((torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels)), d)
        np.testing.assert_allclose(d.box, boxes[j], atol=1e-2)
        assert d.cls == labels[j] and d.score == pytest.approx(float(scores[j]), rel=1e-4, abs=1e-5)
        assert d.element == found.index(d) * 6 + 4


def test_detection_gradients_equal_torch_autograd(exported):
    """Three detections in one batched run (one cotangent row each) against one torch backward each, torch's ReLU,
    ReLU6, max-pool and hard-activation decisions pinned to onnxruntime's (tests/reference.py: float32 rounding
    flips a few units near their kink, and each framework is then exact in a different linear region)."""
    module, m, x = exported
    found = detect(m, x, conf=0.0, max_det=3)[0]
    assert len(found) == 3 and max(d.score for d in found) < 0.999  # unsaturated: gradients far from zero
    ours = explain(cv.gradients, m, x, found)
    pattern = rectifier_pattern(m, x)
    xt = torch.from_numpy(x[0].copy()).requires_grad_(True)
    with pinned(module, pattern) as stats:
        out = module(xt)  # one forward; each detection's score backpropagated from it
    assert stats["relu_flips"] <= 1e-4 * max(stats["relu_units"], 1), stats
    for d, mine in zip(found, ours):
        xt.grad = None
        out[1][matching(out, d)].backward(retain_graph=True)
        ref = xt.grad.numpy()
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(mine, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_nms_head_refuses_other_outputs_and_bad_max_det():
    with pytest.raises(ModelStructureError, match="not a detector's post-processed detections.*\\(D, 4\\) boxes"):
        nms_head(gap_classifier())
    with pytest.raises(InputError, match="max_det must be a positive int"):
        nms_head(gap_classifier(), max_det=0)
