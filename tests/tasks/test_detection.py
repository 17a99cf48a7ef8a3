"""Detectors: ultralytics yolov8n / yolo11n heads decoded, each detection explained as a target, checked against torch
autograd and pytorch-grad-cam on the same torch model (random weights built from the yaml, nothing downloaded)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError, ModelStructureError
from onnx_cnnviz.tasks import Detection, NotAClassifierError, box_iou, detect, explain, nms

from .conftest import SIZE, images

pytest.importorskip("ultralytics")
torch = pytest.importorskip("torch")


def torch_detection_grads(module, x: np.ndarray, detections) -> np.ndarray:
    """d s / d x for each detection's score element, one torch backward per detection (the peers' way)."""
    out = []
    for d in detections:
        xt = torch.from_numpy(x[d.image:d.image + 1].copy()).requires_grad_(True)
        head = module(xt)
        row, anchor = divmod(d.element, head.shape[2])
        head[0, row, anchor].backward()
        out.append(xt.grad[0].numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def yolov8n(yolov8n_torchscript):
    module, path = yolov8n_torchscript
    return module, cv.load(path, device="cpu", task="detector")


def test_yolov8n_detections_match_torch(yolov8n):
    """The decoded boxes and scores are those of the torch head output; NMS keeps no two overlapping boxes of one
    class."""
    module, m = yolov8n
    x = images(2)
    found = detect(m, x, conf=0.25, iou=0.45, max_det=20)
    assert all(found) and m.num_classes == 80 and m.decoder.anchors == 2100
    head = module(torch.from_numpy(x)).numpy()
    for dets in found:
        for d in dets:
            row, anchor = divmod(d.element, head.shape[2])
            assert row == 4 + d.cls
            np.testing.assert_allclose(d.score, head[d.image, row, anchor], rtol=1e-4, atol=1e-5)
            assert d.score == pytest.approx(head[d.image, 4:, anchor].max(), rel=1e-4, abs=1e-5)
            cx, cy, w, h = head[d.image, :4, anchor]
            np.testing.assert_allclose(d.box, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-4, atol=1e-2)
        boxes = np.array([d.box for d in dets])
        for i, d in enumerate(dets):
            same = [j for j, e in enumerate(dets) if j > i and e.cls == d.cls]
            if same:
                assert box_iou(boxes[i], boxes[same]).max() <= 0.45
        assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)


def test_yolov8n_detection_gradients_equal_torch_autograd_in_one_batch(yolov8n):
    """Every detection of two images explained in one batched run (one cotangent row per detection) equals torch
    autograd of that detection's class score, one backward each (yolov8n is smooth: SiLU, no kink to pin)."""
    module, m = yolov8n
    x = images(2, seed=1)
    found = detect(m, x, conf=0.25, max_det=3)
    flat = [d for dets in found for d in dets]
    assert len(flat) == 6
    ours = explain(cv.gradients, m, x, found)
    ref = torch_detection_grads(module, x, flat)
    assert ours.shape == (6, 3, SIZE, SIZE)
    for a, b in zip(ours, ref):
        assert np.abs(b).max() > 0
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-4 * np.abs(b).max())


def test_detection_target_seeds_its_score_element(yolov8n):
    """A Detection equals OutputElement at its element and OutputWeights with a one-hot row: one seed path."""
    module, m = yolov8n
    x = images(1, seed=2)
    d = detect(m, x, conf=0.25, max_det=1)[0][0]
    a = cv.gradients(m, x, targets=d)
    b = cv.gradients(m, x, targets=cv.OutputElement(None, d.element))
    w = np.zeros(m.score_size, np.float32)
    w[d.element] = 1.0
    c = cv.gradients(m, x, targets=cv.OutputWeights("output0", w))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_yolov8n_pyramid_levels_and_per_detection_grad_cam_equal_pytorch_grad_cam(yolov8n):
    """The three pyramid levels are the maps ultralytics' Detect reads (model.15, .18, .21); per-detection Grad-CAM
    at each detection's own level (the default for detections: its anchor's level, ``tasks.levels.own_levels``), at
    the coarsest level and over all three levels equals pytorch-grad-cam's GradCAM on the torch model with the same
    target (the detection's score element). At its own level no detection's map is blank."""
    from pytorch_grad_cam import GradCAM

    from onnx_cnnviz.tasks.levels import own_levels

    module, m = yolov8n
    assert [m.layer(n).shape[2:] for n in m.levels] == [(40, 40), (20, 20), (10, 10)]
    assert all(f"/model.{i}/" in name for i, name in zip((15, 18, 21), m.levels))
    assert m.default_layer == m.levels[-1]
    x = images(1, seed=3)
    dets = detect(m, x, conf=0.25, max_det=2)[0]
    net = module.inner
    blocks = dict(zip(m.levels, (net.model[15], net.model[18], net.model[21])))
    own = own_levels(m, dets)
    for p in net.parameters():  # pytorch-grad-cam backpropagates from the output: it needs a graph
        p.requires_grad_(True)
    default = explain(cv.grad_cam, m, x, dets)
    assert all(np.ptp(mine) > 0 for mine in default)
    cases = [([[blocks[level]] for level in own], default),
             ([[net.model[21]]] * len(dets), explain(cv.grad_cam, m, x, dets, layer=m.levels[-1])),
             ([[net.model[15], net.model[18], net.model[21]]] * len(dets), explain(cv.grad_cam, m, x, dets,
                                                                                    layer=m.levels))]
    for layers, ours in cases:
        for d, mine, layer in zip(dets, ours, layers):
            row, anchor = divmod(d.element, m.decoder.anchors)
            with GradCAM(model=module, target_layers=layer) as peer:
                ref = peer(input_tensor=torch.from_numpy(x), targets=[lambda out, r=row, a=anchor: out[r, a]])[0]
            np.testing.assert_allclose(mine, ref, atol=5e-4)  # min-max scaled maps: float32 rounding only
    for p in net.parameters():
        p.requires_grad_(False)


@pytest.mark.parametrize("stem, exporter", [("yolov8n", "ultralytics"), ("yolo11n", "ultralytics"),
                                            ("yolo11n", "torchscript")])
def test_exported_detector_gradients_equal_torch(ultralytics_onnx, stem, exporter):
    """yolov8n and yolo11n exported by ultralytics' own exporter (static batch 1, Conv+BN fused by it) and yolo11n by
    torch.onnx.export load as detectors; each detection's input gradient equals torch autograd on the torch model."""
    module, path = ultralytics_onnx(stem, exporter)
    m = cv.load(path, device="cpu", task="detector")
    x = images(2, seed=4)
    found = detect(m, x, conf=0.25, max_det=2)
    flat = [d for dets in found for d in dets]
    assert len(flat) == 4 and len(m.levels) == 3
    ours = explain(cv.gradients, m, x, found)
    ref = torch_detection_grads(module, x, flat)
    for a, b in zip(ours, ref):
        assert np.abs(b).max() > 0
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(b).max())


def test_detector_loaded_as_classifier_says_it_is_a_detector(yolov8n_torchscript):
    _, path = yolov8n_torchscript
    with pytest.raises(NotAClassifierError,
                       match="^this is a detector: its output 'output0' has shape .*task='detector'"):
        cv.load(path, device="cpu")


def test_unknown_head_names_outputs_and_decoder_interface(yolov8n_torchscript, tmp_path):
    """A detector head no decoder knows: the error names the output, its shape and how to add a decoder."""
    _, path = yolov8n_torchscript
    model = onnx.load(str(path))
    graph = model.graph
    # The head flattened to (N, 84 * A), a layout no built-in decoder reads.
    last = graph.output[0].name
    graph.node.append(onnx.helper.make_node("Flatten", [last], ["flipped"], axis=1))
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info("flipped", onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(tmp_path / "odd.onnx"))
    with pytest.raises(ModelStructureError, match="no known detector head reads the output 'flipped'.*"
                                                  "subclass onnx_cnnviz.tasks.Decoder"):
        cv.load(tmp_path / "odd.onnx", device="cpu", task="detector")


def test_no_detection_above_threshold_says_so(yolov8n):
    _, m = yolov8n
    x = images(1)
    found = detect(m, x, conf=1.0)
    assert found == [[]]
    with pytest.raises(InputError, match="nothing scored above the detection threshold"):
        explain(cv.grad_cam, m, x, found)
    with pytest.raises(InputError, match="a detector has no top-1 class"):
        cv.grad_cam(m, x)
    with pytest.raises(InputError, match="target 3 is a class score, but this is a detector"):
        cv.grad_cam(m, x, targets=3)
    with pytest.raises(InputError, match="top_k explains a classifier's k best classes"):
        cv.top_k("gradcam", m, x, k=2)
    with pytest.raises(InputError, match="detect needs a detector"):
        detect(cv.load(_classifier_proto(), device="cpu"), np.zeros((1, 3, 8, 8), np.float32))


def _classifier_proto():
    from tests.tiny_models import gap_classifier

    return gap_classifier()


def test_nms_greedy_class_aware():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, classes), [0, 2, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, None), [0, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, classes, max_det=2), [0, 2])


def test_detection_is_a_target():
    d = Detection(0, (0.0, 0.0, 1.0, 1.0), 3, 0.5, 7)
    assert isinstance(d, cv.Target) and d.class_index == 3


def test_yolov8n_eigen_cam_equals_pytorch_grad_cam(yolov8n):
    """EigenCAM (class-agnostic, no gradient) at each pyramid level equals pytorch-grad-cam's EigenCAM on the torch
    model, the method of its YOLO tutorial."""
    from pytorch_grad_cam import EigenCAM

    module, m = yolov8n
    x = images(2, seed=6)
    net = module.inner
    for name, index in zip(m.levels, (15, 18, 21)):
        with EigenCAM(model=module, target_layers=[net.model[index]]) as peer:
            ref = peer(input_tensor=torch.from_numpy(x), targets=[lambda out: out.sum()] * 2)  # unused: no gradient
        np.testing.assert_allclose(cv.eigen_cam(m, x, layer=name), ref, atol=1e-4)


def test_any_registry_method_explains_detections_in_one_call(yolov8n):
    """Path and noise methods keep each row's detection along their copies: explaining all detections in one call
    equals explaining each alone."""
    _, m = yolov8n
    x = images(2, seed=7)
    found = detect(m, x, conf=0.25, max_det=2)
    flat = [d for dets in found for d in dets]
    together = explain(cv.integrated_gradients, m, x, found, steps=2)
    alone = np.concatenate([cv.integrated_gradients(m, x[d.image:d.image + 1], targets=d, steps=2) for d in flat])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6 * np.abs(alone).max())
    assert explain(cv.saliency, m, x, found).shape == (len(flat), SIZE, SIZE)
