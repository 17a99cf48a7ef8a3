"""A detector whose NMS is inside the graph carries no class count (``num_classes`` None: its outputs are boxes,
scores and labels, as torchvision's exports): everything that reads a class count or class names takes None as "not
known". A tiny torchvision-style detector (a few convolutions, score threshold, ``batched_nms``; random weights,
exported by ``torch.onnx.export`` in seconds) stands for SSD / RetinaNet, which tests/tasks/test_nms_heads.py checks
at full size: loaded by the runs as it is exported (recognised and joined by :func:`onnx_cnnviz.tasks.nms_head`), its
detections' records, pictures and report, the ground-truth box checks of the detection metrics, and the methods
that need class vectors (D-RISE, the similarity score), refused in one typed line."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz import metrics
from onnx_cnnviz.errors import ModelStructureError
from onnx_cnnviz.image import Preprocessing
from onnx_cnnviz.metrics import Box
from onnx_cnnviz.runs.detection_run import check_task_methods
from onnx_cnnviz.runs.detections import TaskOptions, find_targets, load_for_task, target_record
from onnx_cnnviz.runs.task_report import make_task_report, targets_picture
from onnx_cnnviz.tasks import NMS_OUTPUT, detect, drise, explain
from onnx_cnnviz.tasks.decoders import gives_vectors
from tests.tiny_models import write_png

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

SIZE, CLASSES, STRIDE = 64, 3, 8


class TinyNmsDetector(torch.nn.Module):
    """One (3, 64, 64) image -> boxes (D, 4), scores (D,), labels (D,): per anchor of an 8x8 grid a box (centre
    moved by tanh of two deltas, half-size 8 exp(delta)) and three sigmoid class scores; the (anchor, class) pairs
    scoring above 0.2, torchvision's class-aware ``batched_nms`` at IoU 0.5, the first 20 kept (the post-processing
    of torchvision's SSD and RetinaNet, small)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 8, 3, stride=4, padding=1), torch.nn.ReLU())
        self.cls = torch.nn.Conv2d(8, CLASSES, 1)
        self.box = torch.nn.Conv2d(8, 4, 1)
        torch.nn.init.normal_(self.cls.weight, 0.0, 1.0)  # scores that differ between classes and anchors
        rows, cols = torch.meshgrid(torch.arange(SIZE // STRIDE), torch.arange(SIZE // STRIDE), indexing="ij")
        self.register_buffer("centres", (torch.stack([cols, rows], -1).reshape(-1, 2).float() + 0.5) * STRIDE)

    def forward(self, image):
        f = self.features(image[None])
        scores = torch.sigmoid(self.cls(f))[0].flatten(1).T
        deltas = self.box(f)[0].flatten(1).T
        centre, half = self.centres + 4 * torch.tanh(deltas[:, :2]), 8 * torch.exp(deltas[:, 2:].clamp(max=2))
        anchors = len(centre)
        boxes = torch.cat([centre - half, centre + half], 1)[:, None].expand(anchors, CLASSES, 4).reshape(-1, 4)
        labels = torch.arange(CLASSES)[None].expand(anchors, CLASSES).reshape(-1)
        scores = scores.reshape(-1)
        keep = torch.nonzero(scores > 0.2)[:, 0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)[:20]
        return boxes[keep], scores[keep], labels[keep]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch module, ONNX path, model loaded by the runs, one image (1, 3, 64, 64))."""
    net = TinyNmsDetector().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    path = tmp_path_factory.mktemp("nms") / "tiny_nms.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(3, SIZE, SIZE),), str(path), opset_version=17, dynamo=False,
                          input_names=["image"], output_names=["boxes", "scores", "labels"],
                          dynamic_axes={n: {0: "D"} for n in ("boxes", "scores", "labels")})
    x = np.random.default_rng(1).random((1, 3, SIZE, SIZE), dtype=np.float32)
    return net, path, load_for_task(path, "auto", device="cpu"), x


def test_loaded_as_exported_without_a_class_count(tiny):
    """The runs recognise the three outputs; a detection's input gradient is torch autograd's (the selections
    differentiated at the forward's indices)."""
    net, path, m, x = tiny
    assert m.task == "detector" and m.score_name == NMS_OUTPUT and m.num_classes is None
    assert load_for_task(path, "detector", device="cpu").num_classes is None
    assert cv.load(_joined(path), device="cpu", task="detector", labels=["a", "b"]).labels == ["a", "b"]
    found = detect(m, x, conf=0.0)[0]
    boxes, scores, labels = (t.numpy() for t in net(torch.from_numpy(x[0])))
    assert len(found) == len(scores) and len({d.cls for d in found}) > 1
    np.testing.assert_allclose([d.score for d in found], scores, rtol=1e-5)
    ours = explain(cv.gradients, m, x, found[:2])
    for k, mine in enumerate(ours):
        xt = torch.from_numpy(x[0].copy()).requires_grad_(True)
        net(xt)[1][k].backward()
        ref = xt.grad.numpy()
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(mine, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def _joined(path):
    from onnx_cnnviz.tasks import nms_head

    return nms_head(path)


def test_records_pictures_and_report_without_a_class_count(tiny, tmp_path):
    """Class names are looked up where given and long enough; the report's header says the count is unknown."""
    _, _, m, x = tiny
    found = find_targets(m, x, TaskOptions(conf=0.0, max_det=4))[0]
    assert len(found) == 4
    for d in found:
        assert target_record(d)["class_name"] is None
        assert target_record(d, [f"n{c}" for c in range(CLASSES)])["class_name"] == f"n{d.cls}"
        assert target_record(d, ["only0"])["class_name"] == ("only0" if d.cls == 0 else None)
    view = (x[0].transpose(1, 2, 0) * 255).astype(np.uint8)
    for names in (None, ["only0"]):
        drawn = targets_picture(view, found, names)
        assert drawn.shape == view.shape and (drawn != view).any()
    write_png(tmp_path / "im.png", size=SIZE, seed=3)
    page = make_task_report(m, [tmp_path / "im.png"], ["saliency"], Preprocessing(scale=1 / 255),
                            TaskOptions(conf=0.0, max_det=2), labels=["n0", "n1", "n2"])
    assert "class count not in the output (labels only)" in page and "None classes" not in page
    info = json.loads(page.split('id="cnnviz-data">')[1].split("</script>")[0])
    assert info["classes"] is None and info["output"] == NMS_OUTPUT
    check_task_methods(m, ["gradcam", "saliency", "eigencam"])  # the methods of a detector apply


def test_box_checks_and_class_vectors_without_a_class_count(tiny):
    """A ground-truth label is not checked against a class count the model does not give; the metrics' element
    score runs, the similarity score and D-RISE (which compare class vectors) are refused in one typed line."""
    _, _, m, x = tiny
    found = detect(m, x, conf=0.0, max_det=3)[0]
    maps = explain(cv.saliency, m, x, found)
    inside = [tuple(float(np.clip(v, 0, SIZE)) for v in d.box) for d in found]
    boxes = [[Box(*b, label=d.cls) for b, d in zip(inside, found)] + [Box(0, 0, 8, 8, label=50)]]
    result = metrics.detection_pointing_game(m, x, maps, found, boxes)
    assert len(result.values) == len(found)
    curves = metrics.detection_deletion(m, x, maps, found, score="element", pixels_per_step=512)
    assert np.all(np.isfinite(curves.values))
    assert not gives_vectors(m.decoder)
    for call in (lambda: metrics.detection_deletion(m, x, maps, found, pixels_per_step=512),
                 lambda: drise(m, x, found, n_masks=4)):
        with pytest.raises(ModelStructureError, match=r"^this detector's head \(a detector with NMS in the graph.*"
                                                      r"gives no class vectors.*score='element'") as caught:
            call()
        assert "\n" not in str(caught.value)
