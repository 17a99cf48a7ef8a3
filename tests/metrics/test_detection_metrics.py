"""Metrics per detection (issue 22 point 4) on the committed shapes detector (``models/shapes_detector.onnx``), each
against a reference computed here independently: matching and the pointing game by a plain loop, deletion and
insertion of a detection's D-RISE similarity (and of its head element) from an onnxruntime session of the file
decoded and suppressed by hand, and the sanity check from randomised copies loaded and explained here.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz import metrics
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.image import Preprocessing, preprocess
from onnx_cnnviz.metrics import Box
from onnx_cnnviz.metrics.detections import (detection_deletion, detection_insertion, detection_pointing_game,
                                            detection_randomisation, match_detections)
from onnx_cnnviz.tasks import Detection, detect, explain
from tests.conftest import REPO, load_script

MODEL = REPO / "models" / "shapes_detector.onnx"


@pytest.fixture(scope="module")
def shapes():
    sdet = load_script(REPO / "models" / "shapes_detection.py")
    images, labels, boxes = sdet.make_dataset(6, sdet.TEST_SEED)
    m = cv.load(MODEL, task="detector", device="cpu")
    x = preprocess(images, Preprocessing.from_metadata(m.metadata))
    found = detect(m, x)
    gt = [[Box(*map(int, b), label=int(c)) for b, c in zip(bb, ll)] for bb, ll in zip(boxes, labels)]
    flat = [d for image in found for d in image]
    assert len(flat) >= 6
    return m, x, flat, gt


# --- references -----------------------------------------------------------------------------------------------------
def ref_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def ref_match(flat, gt, threshold=0.5):
    """VOC's greedy rule, written out: best score first, the unmatched same-class box of highest IoU."""
    matched = [-1] * len(flat)
    taken = set()
    for k in sorted(range(len(flat)), key=lambda k: (-flat[k].score, k)):
        d = flat[k]
        options = [(ref_iou(d.box, g.coords), j) for j, g in enumerate(gt[d.image])
                   if (d.image, j) not in taken and g.label == d.cls]
        if options:
            best = max(options, key=lambda t: (t[0], -t[1]))
            if best[0] >= threshold:
                matched[k] = best[1]
                taken.add((d.image, best[1]))
    return matched


def ref_detections(out, conf=0.25, iou=0.45):
    """One image's (10, 256) head: kept boxes (xyxy), class vectors, best classes, by hand (class-aware greedy NMS)."""
    cx, cy, w, h = out[:4]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).astype(np.float64)
    cls = out[4:].T.astype(np.float64)
    best, score = cls.argmax(1), cls.max(1)
    keep = []
    for c in np.unique(best):
        idx = [i for i in np.argsort(-score, kind="stable") if best[i] == c and score[i] >= conf]
        while idx:
            top, idx = idx[0], idx[1:]
            keep.append(top)
            idx = [i for i in idx if ref_iou(boxes[top], boxes[i]) <= iou]
    keep = np.array(keep, dtype=np.int64)
    return boxes[keep], cls[keep]


def ref_similarity(d: Detection, clean_out, out) -> float:
    boxes, cls = ref_detections(out)
    if not len(boxes):
        return 0.0
    anchor = d.element % clean_out.shape[1]
    p = clean_out[4:, anchor].astype(np.float64)
    return max(ref_iou(d.box, b) * float(p @ q) / (np.linalg.norm(p) * np.linalg.norm(q)) for b, q in zip(boxes, cls))


def ref_curve(d, image, heat, step, mode, value, substrate):
    """The curve of one detection, one onnxruntime run per point, pixels ranked by a stable descending sort."""
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    c, h, w = image.shape
    order = np.argsort(-heat.ravel(), kind="stable")
    counts = list(range(0, h * w, step)) + [h * w]
    clean_out = session.run(None, {"images": image[None]})[0][0]
    curve = []
    for k in counts:
        on = np.zeros(h * w, bool)
        on[order[:k]] = True
        on = on.reshape(h, w)
        img = np.where(on, substrate, image) if mode == "deletion" else np.where(on, image, substrate)
        out = session.run(None, {"images": img[None].astype(np.float32)})[0][0]
        curve.append(value(d, clean_out, out))
    fractions = np.array(counts) / (h * w)
    return np.array(curve), float(np.trapezoid(curve, fractions))


# --- matching and the pointing game ---------------------------------------------------------------------------------
def test_matching_is_the_voc_rule(shapes):
    m, x, flat, gt = shapes
    matched, ious = match_detections(flat, gt)
    assert matched.tolist() == ref_match(flat, gt)
    for k, j in enumerate(matched):
        assert ious[k] == (pytest.approx(ref_iou(flat[k].box, gt[flat[k].image][j].coords)) if j >= 0 else 0.0)
    assert (matched >= 0).sum() >= 4  # the detector finds most objects of the held-out images


def test_matching_by_hand():
    """Two detections on one box: the better one takes it; another class never matches; an unlabelled box does."""
    def det(image, box, cls, score):
        return Detection(image, box, cls, score, 0)
    dets = [det(0, (10, 10, 30, 30), 1, 0.5), det(0, (11, 10, 30, 31), 1, 0.9), det(0, (10, 10, 30, 30), 2, 0.8),
            det(1, (0, 0, 8, 8), 4, 0.3), det(1, (40, 40, 50, 50), 4, 0.3)]
    boxes = [[Box(10, 10, 30, 30, label=1)], [Box(0, 0, 9, 8)]]
    matched, ious = match_detections(dets, boxes)
    assert matched.tolist() == [-1, 0, -1, 0, -1]
    assert ious[1] == pytest.approx(19 * 20 / (20 * 20 + 19 * 21 - 19 * 20))
    assert ious[3] == pytest.approx(64 / 72)


def test_pointing_game_per_detection_equals_a_loop(shapes):
    m, x, flat, gt = shapes
    maps = explain(cv.grad_cam, m, x, flat)
    result = detection_pointing_game(m, x, maps, flat, gt, tolerance=3)
    matched = ref_match(flat, gt)
    rows = [k for k, j in enumerate(matched) if j >= 0]
    assert result.details["detection"].tolist() == rows
    assert result.details["unmatched"] == len(flat) - len(rows)
    hits, energy = [], []
    for k in rows:
        x0, y0, x1, y1 = (int(v) for v in gt[flat[k].image][matched[k]].coords)
        py, px = np.unravel_index(np.argmax(maps[k]), maps[k].shape)
        dx = px - min(max(px, x0), x1 - 1)
        dy = py - min(max(py, y0), y1 - 1)
        hits.append(float(dx * dx + dy * dy < 9))
        pos = np.maximum(maps[k], 0).astype(np.float64)
        energy.append(pos[y0:y1, x0:x1].sum() / pos.sum())
    np.testing.assert_array_equal(result.values, hits)
    np.testing.assert_allclose(result.details["energy"], energy, rtol=1e-9)
    assert result.targets.tolist() == [flat[k].cls for k in rows]
    assert result.mean() >= 0.5  # Grad-CAM of a trained detector points at its own objects


def test_pointing_game_points_at_the_matched_box_only(shapes):
    """A map peaked at the centre of another object of the same picture is a miss, even of the same class."""
    m, x, flat, gt = shapes
    matched = ref_match(flat, gt)
    k = next(k for k, j in enumerate(matched) if j >= 0)
    d = flat[k]
    own = gt[d.image][matched[k]].coords
    maps = np.zeros((1,) + x.shape[2:], np.float32)
    maps[0, int((own[1] + own[3]) // 2), int((own[0] + own[2]) // 2)] = 1.0
    assert detection_pointing_game(m, x, maps, [d], gt, tolerance=0).values.tolist() == [1.0]
    maps[:] = 0
    far = [(cy, cx) for cy in range(x.shape[2]) for cx in range(x.shape[3])
           if not own[0] - 2 <= cx < own[2] + 2 and not own[1] - 2 <= cy < own[3] + 2]
    maps[0][far[0]] = 1.0
    assert detection_pointing_game(m, x, maps, [d], gt, tolerance=0).values.tolist() == [0.0]


def test_pointing_game_needs_a_match_and_known_labels(shapes):
    m, x, flat, gt = shapes
    d = flat[0]
    maps = np.ones((1,) + x.shape[2:], np.float32)
    wrong = [[Box(*b.coords, label=(b.label + 1) % 6) for b in image] for image in gt]
    with pytest.raises(InputError, match="no detection matches a ground-truth box"):
        detection_pointing_game(m, x, maps, [d], wrong)
    bad = [[Box(*b.coords, label=7) for b in image] for image in gt]
    with pytest.raises(InputError, match="7"):
        detection_pointing_game(m, x, maps, [d], bad)


# --- deletion / insertion of a detection ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["deletion", "insertion"])
def test_curves_of_the_similarity_equal_the_reference(shapes, kind):
    m, x, flat, gt = shapes
    dets = flat[:2]
    maps = explain(cv.grad_cam, m, x, dets)
    step = 512  # 8 steps of the 64x64 images
    func = detection_deletion if kind == "deletion" else detection_insertion
    result = func(m, x, maps, dets, pixels_per_step=step, baseline=0.0)
    assert result.metric == f"detection-{kind}"
    for r, d in enumerate(dets):
        curve, area = ref_curve(d, x[d.image], maps[r], step, kind, ref_similarity, np.zeros_like(x[d.image]))
        np.testing.assert_allclose(result.curve[r], curve, atol=1e-5)
        assert result.values[r] == pytest.approx(area, abs=1e-6)
    assert (result.curve[:, 0 if kind == "deletion" else -1] == pytest.approx(1.0, abs=1e-6))  # itself: similarity 1


def test_deletion_of_the_head_element_equals_the_reference(shapes):
    m, x, flat, gt = shapes
    dets = flat[:2]
    maps = explain(cv.saliency, m, x, dets)
    result = detection_deletion(m, x, maps, dets, score="element", pixels_per_step=512)

    def element(d, clean_out, out):
        return float(out.reshape(-1)[d.element])

    for r, d in enumerate(dets):
        curve, area = ref_curve(d, x[d.image], maps[r], 512, "deletion", element, np.zeros_like(x[d.image]))
        np.testing.assert_allclose(result.curve[r], curve, atol=1e-5)
        assert result.values[r] == pytest.approx(area, abs=1e-6)
    assert result.curve[0, 0] == pytest.approx(dets[0].score, abs=1e-6)


def test_a_faithful_map_deletes_faster_than_its_reverse(shapes):
    m, x, flat, gt = shapes
    dets = flat[:4]
    maps = explain(cv.grad_cam, m, x, dets)
    good = detection_deletion(m, x, maps, dets, pixels_per_step=256)
    bad = detection_deletion(m, x, -maps, dets, pixels_per_step=256)
    assert good.mean() < bad.mean()


def test_detection_curves_refuse_a_classifier_and_bad_scores(shapes):
    m, x, flat, gt = shapes
    maps = np.ones((1,) + x.shape[2:], np.float32)
    with pytest.raises(InputError, match="score must be one of"):
        detection_deletion(m, x, maps, flat[:1], score="box")
    gap = cv.load(REPO / "models" / "gap_cnn.onnx", device="cpu")
    with pytest.raises(InputError, match="need a detector"):
        detection_insertion(gap, x, maps, flat[:1])


# --- the sanity check on a detector ---------------------------------------------------------------------------------
def test_randomisation_check_on_the_detector_equals_maps_made_here(shapes):
    """Each stage's rank correlation equals scipy's on maps made here from randomised copies loaded as detectors.
    Grad-CAM of the detections decorrelates once the detector is random; saliency does not (0.98 on this detector,
    the failure Adebayo et al. report for guided backprop): the sanity check tells them apart."""
    from scipy.stats import spearmanr

    from onnx_cnnviz.graph.randomise import randomisation_groups, randomise, stage_layers, learnable_layers
    import onnx

    m, x, flat, gt = shapes
    dets = flat[:3]
    methods = {"saliency": cv.saliency, "gradcam": cv.grad_cam}
    result = detection_randomisation(m, x, dets, tuple(methods), stages=2, seed=3)
    assert result.targets.tolist() == [d.cls for d in dets]
    proto = onnx.load(str(MODEL))
    groups = randomisation_groups(learnable_layers(proto), 2)
    for name, func in methods.items():
        trained = explain(func, m, x, dets)
        for k in range(2):
            rand = cv.load(randomise(proto, stage_layers(groups, k, "cascading"), 3, "normal"), task="detector",
                           device="cpu")
            maps = explain(func, rand, x, dets)
            for r in range(len(dets)):
                ref = spearmanr(np.abs(trained[r]).ravel(), np.abs(maps[r]).ravel())[0]
                got = result.spearman_abs[name][k, r]
                assert (np.isnan(got) and np.isnan(ref)) or got == pytest.approx(ref, abs=1e-6), (name, k, r)
    assert np.nanmean(result.spearman_abs["gradcam"][-1]) < 0.5
    assert np.nanmean(result.spearman_abs["saliency"][-1]) > 0.9
    with pytest.raises(InputError, match="retarget"):
        detection_randomisation(m, x, dets, ("saliency",), stages=2, retarget=True)


def test_metrics_package_exports_the_detection_metrics():
    for name in ("match_detections", "detection_pointing_game", "detection_deletion", "detection_insertion",
                 "detection_randomisation"):
        assert callable(getattr(metrics, name))


def test_the_committed_detector_is_read_by_the_ultralytics_decoder(shapes):
    """The file says what it is (task, classes, preprocessing, how it was made), its head is the v8 layout, and its
    default layer is the backbone's last map (16x16), not a slice of the head."""
    from onnx_cnnviz.tasks import UltralyticsDecoder

    m, x, flat, gt = shapes
    assert isinstance(m.decoder, UltralyticsDecoder) and m.num_classes == 6
    assert m.metadata["cnnviz.task"] == "detector"
    assert m.metadata["cnnviz.labels"].split("\n")[:2] == ["circle", "square"]
    assert "build_shapes_detector.py" in m.metadata["cnnviz.source"]
    assert m.default_layer.endswith("Relu_output_0") and m.tensor_shape(m.default_layer)[2:] == (16, 16)
