"""The metrics against hand computations on tiny hand-built ONNX models (tests/tiny_models.py), where the peers'
conventions differ or do not apply: the RISE blur, the step and area convention of deletion / insertion, the
readout (probability, score, a model whose output already is a probability), ROAD's imputation equations,
infidelity and sensitivity-max from their definitions, streaming in bounded batches, the registry, and every bad
input as a typed error.

The hand computations read the model through onnx's numpy reference evaluator in float64 (tests/reference.py's
``float64_scores``), an implementation independent of onnxruntime.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz import metrics
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.metrics import curves, imputation, registry

from ..reference import float64_scores
from ..tiny_models import CLASSES, gap_classifier, make_model

S = 8  # image side: 64 pixels


@pytest.fixture(scope="module")
def tiny():
    """(Model, x (3, 3, 8, 8), float64 reference scores) of the GAP classifier."""
    m = cv.load(gap_classifier(S, seed=1), device="cpu")
    x = np.random.default_rng(0).standard_normal((3, 3, S, S)).astype(np.float32)
    return m, x, float64_scores(m, (S, S))


def _maps(n, seed=2, ties=True):
    maps = np.random.default_rng(seed).random((n, S, S)).astype(np.float32)
    if ties:
        maps[:, :3] = 0.0  # a ReLU'd CAM's zeros: ranked in raster order
    return maps


def _softmax(s):
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _hand_order(v):
    """Pixels by decreasing value, equal values in raster order."""
    flat = v.reshape(-1)
    return sorted(range(flat.size), key=lambda p: (-float(flat[p]), p))


def _with_head(model, nodes, out_name, out_dims):
    """``model`` with ``nodes`` appended after its 'logits' and ``out_name`` as the only output."""
    model.graph.node.extend(nodes)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_dims))
    return model


def _normalised_by_hand():
    """The GAP classifier with a softmax written as Exp / ReduceSum / Div: no Softmax node to skip, so the
    model's output already is a probability."""
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    model = gap_classifier(S, seed=1)
    model.graph.initializer.append(axes)
    return _with_head(model, [helper.make_node("Exp", ["logits"], ["e"], name="exp"),
                              helper.make_node("ReduceSum", ["e", "axes"], ["z"], keepdims=1, name="sum"),
                              helper.make_node("Div", ["e", "z"], ["probs"], name="div")], "probs", None)


def _linear(classes=CLASSES, seed=0):
    """x (1, 3, 8, 8) -> Flatten -> Gemm: S(x) = W x + b, so the gradient predicts every perturbation exactly."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((classes, 3 * S * S)).astype(np.float32) * 0.1, "w"),
             numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "b")]
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], name="flat"),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1, name="fc")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, S, S])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)


# --- the RISE blur ------------------------------------------------------------------------------------------------
def test_rise_kernel_is_scipys_filtered_impulse():
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1
    k1 = curves.rise_kernel_1d()
    np.testing.assert_allclose(np.outer(k1, k1), gaussian_filter(impulse, 5), rtol=0, atol=1e-15)
    assert abs(k1.sum() - 1) < 1e-12


def test_blur_is_a_zero_padded_convolution():
    from scipy.ndimage import convolve, gaussian_filter

    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1
    kern = gaussian_filter(impulse, 5)
    image = np.random.default_rng(1).standard_normal((2, 20, 17)).astype(np.float32)
    expected = np.stack([convolve(c.astype(np.float64), kern, mode="constant", cval=0.0) for c in image])
    np.testing.assert_allclose(curves.blur(image), expected, rtol=0, atol=1e-5)


# --- deletion / insertion ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["deletion", "insertion"])
def test_curve_and_auc_by_hand(tiny, kind):
    """5 pixels per step of 64: points at 0, 5, ..., 60, 64 (the last step shorter), area by the trapezoid rule over
    the fraction perturbed; deletion pastes a per-channel baseline, insertion restores pixels into the blur."""
    m, x, f = tiny
    maps = _maps(len(x))
    targets = [1, 4, 0]
    baseline = [0.5, -1.0, 0.25] if kind == "deletion" else "blur"
    func = getattr(metrics, kind)
    ours = func(m, x, maps, targets, baseline=baseline, pixels_per_step=5, batch_size=4)
    counts = list(range(0, 64, 5)) + [64]
    np.testing.assert_array_equal(ours.axis, np.array(counts) / 64)
    for i in range(len(x)):
        order = _hand_order(maps[i])
        if kind == "deletion":
            start, fill = x[i].astype(np.float64), np.broadcast_to(np.array(baseline)[:, None, None], x[i].shape)
        else:
            start, fill = curves.blur(x[i]).astype(np.float64), x[i].astype(np.float64)
        images = []
        for count in counts:
            img = start.copy().reshape(3, -1)
            img[:, order[:count]] = np.asarray(fill).reshape(3, -1)[:, order[:count]]
            images.append(img.reshape(x[i].shape))
        curve = _softmax(f(np.stack(images)))[:, targets[i]]
        np.testing.assert_allclose(ours.curve[i], curve, rtol=1e-5)
        area = sum((curve[j] + curve[j + 1]) / 2 * (counts[j + 1] - counts[j]) / 64 for j in range(len(counts) - 1))
        np.testing.assert_allclose(ours.values[i], area, rtol=1e-5)
    assert ours.higher_is_better is (kind == "insertion")
    assert ours.output == "probability (softmax of the scores)"


def test_attributions_are_summed_over_channels(tiny):
    m, x, _ = tiny
    attributions = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    ours = metrics.deletion(m, x, attributions, pixels_per_step=7)
    summed = metrics.deletion(m, x, attributions.sum(axis=1), pixels_per_step=7)
    np.testing.assert_array_equal(ours.values, summed.values)
    by_max = metrics.deletion(m, x, attributions, pixels_per_step=7, channels="max-abs")
    np.testing.assert_array_equal(by_max.values,
                                  metrics.deletion(m, x, np.abs(attributions).max(1), pixels_per_step=7).values)


def test_streams_in_batches_and_does_not_depend_on_them(tiny, monkeypatch):
    """No onnxruntime run holds more than ``batch_size`` perturbed images (3 images x 16 steps here), consecutive
    images share runs, and the result does not depend on the batch size."""
    m, x, _ = tiny
    maps = _maps(len(x))
    seen = []
    original = m.scores

    def spy(images, batch_size=None):
        seen.append(len(images))
        return original(images, batch_size=batch_size)

    monkeypatch.setattr(m, "scores", spy)
    results = {}
    for bs in (1, 5, 100):
        seen.clear()
        results[bs] = metrics.insertion(m, x, maps, pixels_per_step=4, batch_size=bs)
        perturbed = seen[1:]  # the first run scores the clean images
        assert sum(perturbed) == 3 * 16 and max(perturbed) == min(bs, 48)
    for bs in (1, 100):
        np.testing.assert_allclose(results[bs].values, results[5].values, rtol=1e-6)


def test_score_output(tiny):
    m, x, f = tiny
    maps = _maps(len(x))
    ours = metrics.deletion(m, x, maps, [2, 2, 2], pixels_per_step=64, output="score")
    assert ours.curve.shape == (3, 2) and ours.output.startswith("score")
    np.testing.assert_allclose(ours.curve[:, 0], f(x)[:, 2], rtol=1e-5)
    np.testing.assert_allclose(ours.curve[:, 1], f(np.zeros_like(x))[:, 2], rtol=1e-5)


def test_model_with_softmax_head_reads_its_own_probability(tiny):
    import onnxruntime as ort

    m_plain, x, _ = tiny
    model = _with_head(gap_classifier(S, seed=1), [helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
                       "probs", None)
    m = cv.load(model, device="cpu")
    assert m.softmax_skipped == "Softmax"
    ours = metrics.deletion(m, x, _maps(3), [0, 1, 2], pixels_per_step=64)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probs = np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(ours.curve[:, 0], probs[[0, 1, 2], [0, 1, 2]], rtol=1e-5)
    assert "own Softmax head" in ours.output


def test_output_already_a_probability_is_not_softmaxed_again(tiny):
    _, x, _ = tiny
    m = cv.load(_normalised_by_hand(), device="cpu")
    assert m.softmax_skipped is None
    probs = m.scores(x)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    ours = metrics.deletion(m, x, _maps(3), [0, 1, 2], pixels_per_step=64)
    np.testing.assert_allclose(ours.curve[:, 0], probs[[0, 1, 2], [0, 1, 2]], rtol=1e-6)
    assert ours.output.startswith("probability (the model's own output, already normalised")
    as_score = metrics.deletion(m, x, _maps(3), [0, 1, 2], pixels_per_step=64, output="score")
    np.testing.assert_array_equal(as_score.curve, ours.curve)
    assert "already a probability" in as_score.output


def test_single_output_model_has_no_probability():
    rng = np.random.default_rng(0)
    m = cv.load(_linear(classes=1), device="cpu")
    x = rng.standard_normal((2, 3, S, S)).astype(np.float32)
    with pytest.raises(InputError, match="single output.*output='score'"):
        metrics.deletion(m, x, _maps(2), pixels_per_step=64)
    assert metrics.deletion(m, x, _maps(2), pixels_per_step=64, output="score").curve.shape == (2, 2)


# --- average drop / increase in confidence ----------------------------------------------------------------------
def test_average_drop_and_increase_by_hand(tiny):
    m, x, f = tiny
    maps = _maps(len(x))
    maps[2] = 1.0  # keeps the whole image: no drop, no increase
    targets = [3, 0, 2]
    drop, increase = metrics.confidence_change(m, x, maps, targets, batch_size=2)
    idx = np.arange(3)
    y = _softmax(f(x))[idx, targets]
    o = _softmax(f(maps[:, None] * x.astype(np.float64)))[idx, targets]
    np.testing.assert_allclose(drop.values, np.maximum(y - o, 0) / y, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(increase.values, (o > y).astype(float))
    assert drop.values[2] < 1e-6 and increase.values[2] == 0
    assert metrics.average_drop(m, x, maps, targets).mean() == pytest.approx(drop.mean())
    assert metrics.increase_in_confidence(m, x, maps, targets).mean() == increase.mean()


def test_average_drop_refuses_maps_outside_unit_range_and_nonpositive_scores(tiny):
    m, x, f = tiny
    maps = _maps(len(x))
    maps[1, 0, 0] = 1.5
    with pytest.raises(InputError, match="image 1 spans .* must lie in \\[0, 1\\]"):
        metrics.average_drop(m, x, maps)
    scores = f(x)
    negative = [int(np.argmin(scores[i])) for i in range(3)]
    with pytest.raises(InputError, match="must be positive: use output='probability'"):
        metrics.average_drop(m, x, _maps(3), negative, output="score")


# --- ROAD -------------------------------------------------------------------------------------------------------
def test_imputation_solves_the_neighbour_equations():
    """Without noise every removed pixel equals the weighted mean of its in-image neighbours (removed ones taking
    their imputed values), the ROAD paper's definition; kept pixels are untouched."""
    rng = np.random.default_rng(3)
    image = rng.standard_normal((2, 9, 7)).astype(np.float32)
    removed = rng.random((9, 7)) < 0.6
    out = imputation.impute(image, removed, noise=0.0).astype(np.float64)
    np.testing.assert_array_equal(out[:, ~removed], image[:, ~removed])
    for r, c in zip(*np.nonzero(removed)):
        total, weight = np.zeros(2), 0.0
        for (dy, dx), w in imputation.NEIGHBOURS:
            if 0 <= r + dy < 9 and 0 <= c + dx < 7:
                total += w * out[:, r + dy, c + dx]
                weight += w
        np.testing.assert_allclose(out[:, r, c], total / weight, rtol=1e-5, atol=1e-6)


def test_imputation_of_a_fully_removed_image_is_noise():
    """No pixel left: scipy's solver returns 0 for the singular system (pytorch-grad-cam's result); ours skips it."""
    from scipy.sparse.linalg import spsolve

    image = np.random.default_rng(4).standard_normal((3, 6, 5)).astype(np.float32)
    removed = np.ones((6, 5), bool)
    a, b, _ = imputation.linear_system(image, removed)
    assert np.abs(spsolve(a, b)).max() == 0
    np.testing.assert_array_equal(imputation.impute(image, removed, noise=0), 0)
    noisy = imputation.impute(image, removed, noise=0.5, draw=lambda shape: np.ones(shape, np.float32))
    np.testing.assert_array_equal(noisy, 0.5)
    zeros = np.zeros((6, 5), np.float32)
    zeros[0, 0] = 1  # a CAM that is zero almost everywhere: MoRF at 50 removes every pixel
    assert imputation.removed_mask(zeros, 50, "morf").all()


def test_road_percentiles_remove_what_pytorch_grad_cam_removes():
    v = np.arange(100, dtype=np.float32).reshape(10, 10) / 99
    assert imputation.removed_mask(v, 80, "morf").sum() == 20  # ROADMostRelevantFirst(80): the top 20% go
    assert imputation.removed_mask(v, 80, "morf")[9].all()
    assert imputation.removed_mask(v, 20, "lerf").sum() == 80  # ROADLeastRelevantFirst(20): all but the top 20%
    assert not imputation.removed_mask(v, 20, "lerf")[8:].any()


def test_road_by_hand_and_independent_of_batches(tiny):
    m, x, f = tiny
    maps = _maps(len(x), ties=False)
    targets = [1, 2, 3]
    ours = metrics.road(m, x, maps, targets, percentiles=[30, 70], seed=4, batch_size=5)
    idx = np.arange(3)
    y = _softmax(f(x))[idx, targets]
    for k, p in enumerate([30, 70]):
        imputed = np.stack([imputation.impute(x[i], imputation.removed_mask(maps[i], p, "morf"), 0.01,
                                              lambda shape, i=i: imputation.noise_for(4, i, k, "morf", shape))
                            for i in range(3)])
        np.testing.assert_allclose(ours.curve[:, k], _softmax(f(imputed))[idx, targets] - y, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(ours.values, ours.curve.mean(1))
    again = metrics.road(m, x, maps, targets, percentiles=[30, 70], seed=4, batch_size=1)
    np.testing.assert_allclose(again.values, ours.values, rtol=1e-6)
    combined = metrics.road_combined(m, x, maps, targets, percentiles=[30, 70], seed=4)
    lerf = metrics.road_least_relevant_first(m, x, maps, targets, percentiles=[30, 70], seed=4)
    np.testing.assert_allclose(combined.values, (lerf.values - ours.values) / 2, rtol=1e-6)


# --- infidelity / sensitivity-max --------------------------------------------------------------------------------
def test_infidelity_of_the_gradient_of_a_linear_model_is_zero():
    """S(x) = W x + b: the gradient W predicts S(x) - S(x - I) = W I exactly; twice the gradient has
    infidelity E[(W I)^2] unnormalised and 0 normalised (beta = 1/2)."""
    m = cv.load(_linear(), device="cpu")
    x = np.random.default_rng(1).standard_normal((2, 3, S, S)).astype(np.float32)
    g = cv.gradients(m, x, [1, 3])
    exact = metrics.infidelity(m, x, g, [1, 3], samples=6, noise=0.1, batch_size=4)
    assert exact.values.max() < 1e-8
    doubled = metrics.infidelity(m, x, 2 * g, [1, 3], samples=6, noise=0.1, batch_size=4, seed=2)
    rng = np.random.default_rng(2)
    expected = [np.mean([float((rng.normal(0, 0.1, (3, S, S)).astype(np.float32) * g[i]).sum()) ** 2
                         for _ in range(6)]) for i in range(2)]
    np.testing.assert_allclose(doubled.values, expected, rtol=1e-4)
    normalised = metrics.infidelity(m, x, 2 * g, [1, 3], samples=6, noise=0.1, normalize=True)
    assert normalised.values.max() < 1e-8
    np.testing.assert_allclose(normalised.details["beta"], 0.5, rtol=1e-4)


def test_infidelity_spreads_a_map_over_channels(tiny):
    m, x, _ = tiny
    maps = _maps(len(x))
    spread = metrics.infidelity(m, x, maps, samples=3)
    full = metrics.infidelity(m, x, np.repeat(maps[:, None], 3, axis=1), samples=3)
    np.testing.assert_allclose(spread.values, full.values, rtol=1e-12)


def test_sensitivity_max_by_hand(tiny):
    """With the explanation ``x`` itself, sensitivity is ``max_j ||d_j|| / ||x||`` over the uniform draws."""
    m, x, _ = tiny
    ours = metrics.sensitivity_max(m, x, lambda xb, tb: xb, samples=5, radius=0.1, seed=3, batch_size=2)
    rng = np.random.default_rng(3)
    for i in range(len(x)):
        ratios = []
        for start in (0, 2, 4):
            k = min(2, 5 - start)
            moved = x[i] + rng.uniform(-0.1, 0.1, (k,) + x.shape[1:]).astype(np.float32)
            ratios += list(np.linalg.norm((moved - x[i]).reshape(k, -1), axis=1) / np.linalg.norm(x[i]))
        np.testing.assert_allclose(ours.curve[i], ratios, rtol=1e-5)
        np.testing.assert_allclose(ours.values[i], max(ratios), rtol=1e-5)


def test_sensitivity_max_of_a_registry_method(tiny):
    """By name, the method runs as the registry runs it (Grad-CAM, min-max normalised maps)."""
    m, x, _ = tiny
    ours = metrics.sensitivity_max(m, x, "gradcam", [0, 1, 2], samples=2, radius=0.05)
    base = cv.grad_cam(m, x, [0, 1, 2])
    np.testing.assert_allclose(ours.details["explanations"], base.reshape(3, -1), rtol=1e-6)
    assert ours.values.shape == (3,) and (ours.values >= 0).all()


# --- the registry -----------------------------------------------------------------------------------------------
def test_registry_runs_every_metric_by_name(tiny):
    m, x, _ = tiny
    maps = _maps(len(x))
    assert registry.names() == ["deletion", "insertion", "average-drop", "increase-in-confidence", "road-morf",
                                "road-lerf", "road-combined", "infidelity", "sensitivity-max", "pointing-game",
                                "energy-pointing-game", "localisation-accuracy", "model-randomisation"]
    small = {"deletion": {"pixels_per_step": 16}, "insertion": {"pixels_per_step": 16},
             "road-morf": {"percentiles": [50]}, "road-lerf": {"percentiles": [50]},
             "road-combined": {"percentiles": [50]}, "infidelity": {"samples": 2}, "sensitivity-max": {"samples": 2},
             "model-randomisation": {"stages": 1}}
    for name in registry.names():
        metric = registry.get(name)
        explanation = "saliency" if metric.takes == "method" else maps
        boxes = [[(0, 0, 4, 4)]] * 3 if metric.needs_boxes else None
        result = registry.evaluate(name, m, x, explanation, [0, 1, 2], params=small.get(name), boxes=boxes)
        assert result.metric == name and result.values.shape == (3,) and np.isfinite(result.values).all()
        assert result.higher_is_better is metric.higher_is_better
    direct = metrics.deletion(m, x, maps, [0, 1, 2], pixels_per_step=16)
    via = registry.evaluate("deletion", m, x, maps, [0, 1, 2], params={"pixels_per_step": 16, "baseline": None})
    np.testing.assert_array_equal(direct.values, via.values)


def test_registry_register_and_errors():
    def toy(m, x, maps, targets=None, *, batch_size=None, progress=None, k=1):
        return k

    registry.register(registry.Metric("toy", "Toy", toy, "maps", True, params={"k": 1}))
    try:
        assert registry.evaluate("toy", None, None, None, params={"k": 3}) == 3
        with pytest.raises(InputError, match="already registered"):
            registry.register(registry.Metric("toy", "Toy", toy, "maps", True))
    finally:
        registry.unregister("toy")
    with pytest.raises(InputError, match="unknown metric 'pointing'; choose from deletion, insertion"):
        registry.get("pointing")
    with pytest.raises(InputError, match="takes no parameter 'steps'; its parameters: baseline, pixels_per_step"):
        registry.parameters("deletion", {"steps": 3})
    with pytest.raises(InputError, match="takes must be one of"):
        registry.Metric("x", "X", toy, "images", True)
    with pytest.raises(InputError, match="one word"):
        registry.Metric("a,b", "X", toy, "maps", True)


# --- bad input: typed errors with a one-line cause -----------------------------------------------------------------
BAD = [
    ("maps wrong size", "deletion", {"maps": np.zeros((3, 4, 4), np.float32)}, "are 4x4, the images 8x8; upsample"),
    ("maps per image", "deletion", {"maps": np.zeros((2, S, S), np.float32)}, "hold 2 maps for 3 images"),
    ("maps 2-D", "deletion", {"maps": np.zeros((S, S), np.float32)}, "must have shape \\(3, 8, 8\\)"),
    ("maps channels", "insertion", {"maps": np.zeros((3, 2, S, S), np.float32)}, "have 2 channels"),
    ("maps NaN", "deletion", {"maps": "nan"}, "image 1 contain NaN or Inf"),
    ("maps strings", "deletion", {"maps": np.full((3, S, S), "a")}, "must be numeric"),
    ("maps missing", "deletion", {"maps": None}, "are required"),
    ("output", "deletion", {"output": "logit"}, "output must be one of probability, score"),
    ("channels", "deletion", {"channels": "mean"}, "channels must be one of sum, abs-sum, max-abs"),
    ("step", "deletion", {"pixels_per_step": 0}, "pixels_per_step must be a positive int"),
    ("baseline", "deletion", {"baseline": "black"}, "baseline must be"),
    ("batch", "insertion", {"batch_size": -1}, "batch_size must be a positive int"),
    ("target", "deletion", {"targets": [0, 1, 9]}, "target class 9 is out of range"),
    ("percentile", "road", {"percentiles": [50, 101]}, "percentiles must be numbers in \\[0, 100\\]"),
    ("no percentile", "road", {"percentiles": []}, "one or more numbers"),
    ("noise", "road", {"noise": -0.1}, "noise must be a finite number >= 0"),
    ("order", "road", {"order": "random"}, "order must be one of morf, lerf, combined"),
    ("samples", "infidelity", {"samples": 0}, "samples must be a positive int"),
    ("perturbation", "infidelity", {"perturbation": lambda xr, rng: xr}, "must return \\(perturbation, perturbed"),
    ("perturbation shape", "infidelity", {"perturbation": lambda xr, rng: (xr[:1], xr[:1])}, "returned an array of "
                                                                                              "shape"),
    ("radius", "sensitivity_max", {"radius": 0}, "radius must be a positive number"),
    ("method", "sensitivity_max", {"method": "nope"}, "unknown method 'nope'"),
    ("method output", "sensitivity_max", {"method": lambda xb, tb: xb[:1]}, "one explanation per image"),
    ("seed", "road", {"seed": 1.5}, "seed must be an int"),
    ("method params", "sensitivity_max", {"method": lambda xb, tb: xb, "method_params": {"samples": 3}},
     "apply to a registry method"),
    ("baseline word", "insertion", {"baseline": "white"}, "'mean', 'blur' or an array"),
    ("x", "deletion", {"x": np.zeros((3, 1, S, S), np.float32)}, "the model takes 3 channels"),
]


@pytest.mark.parametrize("case,func,change,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_typed_error(tiny, case, func, change, message):
    m, x, _ = tiny
    args = {"x": x, "maps": _maps(len(x)), "targets": None}
    if func == "sensitivity_max":
        args = {"x": x, "method": "saliency", "targets": None, "samples": 2}
    args.update(change)
    if isinstance(args.get("maps"), str):
        maps = _maps(len(x))
        maps[1, 2, 3] = np.nan
        args["maps"] = maps
    first = args.pop("x")
    second = args.pop("maps", None) if func != "sensitivity_max" else args.pop("method")
    with pytest.raises(InputError, match=message) as info:
        getattr(metrics, func)(m, first, second, **args)
    assert "\n" not in str(info.value)
