"""The options whose work grows without bound stream it, ``batch_size`` rows at a time (issue 15 point 5), and report
their progress in units of work (issue 11 point 6).

* top-k (k classes), SmoothGrad (``samples`` noisy copies), Integrated Gradients (``steps`` path points), occlusion
  (windows; stride 1 is the worst case) and Score-CAM (masked images) give the same result whatever the batch size,
  and the same as the computation that made all the rows at once (written out here as it was before streaming);
* their peak memory, measured in a child process, stays that of a batch while the old code's grew with the work;
* ``progress(done, total)`` is called with increasing ``done`` ending at ``total``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.graph.occlusion import window_positions
from onnx_cnnviz.methods import attribution, registry
from onnx_cnnviz.methods.top_k import class_maps, top_k

from ..tiny_models import gap_classifier, make_model, save

REPO = Path(__file__).resolve().parents[2]


def wide_classifier(size: int = 12, classes: int = 200, seed: int = 0):
    """gap_classifier's network with ``classes`` outputs: x (1, 3, S, S) -> Conv(3->4, 3x3, pad 1) 'conv1' -> Relu
    'relu1' -> GlobalAveragePool -> Flatten -> Gemm(->classes) 'logits'."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((classes, 4)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
             helper.make_node("GlobalAveragePool", ["relu1"], ["pool"], name="pool"),
             helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)


@pytest.fixture(scope="module")
def wide():
    m = cv.load(wide_classifier(size=12, classes=200))
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 12)).astype(np.float32)
    return m, x


def same(a, b):
    """Equal up to float reassociation (in practice bit for bit)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.abs(a - b).max() <= 1e-6 * max(np.abs(b).max(), 1e-30), np.abs(a - b).max()


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, done, total):
        assert isinstance(done, (int, np.integer)) and isinstance(total, (int, np.integer))
        self.calls.append((int(done), int(total)))

    def check(self, total: int, at_least: int = 2):
        done = [d for d, _ in self.calls]
        assert len(self.calls) >= at_least, self.calls
        assert {t for _, t in self.calls} == {total}, self.calls
        assert all(b > a for a, b in zip(done, done[1:])) and done[0] > 0 and done[-1] == total, self.calls


# --- (a) the same numbers, streamed or not --------------------------------------------------------------------------
def test_smoothgrad_many_samples_equals_all_copies_at_once(wide):
    m, x = wide
    samples, noise, seed = 300, 0.2, 5
    rec = Recorder()
    small = cv.smoothgrad(m, x, samples=samples, noise=noise, seed=seed, batch_size=7, progress=rec)
    rec.check(len(x) * samples, at_least=len(x) * samples // 7)
    big = cv.smoothgrad(m, x, samples=samples, noise=noise, seed=seed, batch_size=1000)
    np.testing.assert_array_equal(small, big)
    # Before streaming: every image's copies drawn at once from one generator, one gradient call, mean in float64.
    t = m.scores(x).argmax(axis=1)
    rng = np.random.default_rng(seed)
    span = (x.reshape(2, -1).max(axis=1) - x.reshape(2, -1).min(axis=1)).astype(np.float32)
    eps = rng.standard_normal((2, samples) + x.shape[1:], dtype=np.float32)
    noisy = (x[:, None] + (noise * span).reshape(2, 1, 1, 1, 1) * eps).reshape((-1,) + x.shape[1:])
    g = cv.gradients(m, noisy, np.repeat(t, samples), batch_size=1000).reshape((2, samples) + x.shape[1:])
    same(small, g.mean(axis=1, dtype=np.float64).astype(np.float32))
    same(cv.smoothgrad(m, x, samples=samples, noise=noise, seed=seed, magnitude=True, batch_size=11),
         (g * g).mean(axis=1, dtype=np.float64).astype(np.float32))


def test_integrated_gradients_many_steps_equals_all_steps_at_once(wide):
    m, x = wide
    steps = 300
    rec = Recorder()
    small = cv.integrated_gradients(m, x, [3, 7], baseline="mean", steps=steps, batch_size=9, progress=rec)
    rec.check(len(x) * steps, at_least=len(x) * steps // 9)
    np.testing.assert_array_equal(
        small, cv.integrated_gradients(m, x, [3, 7], baseline="mean", steps=steps, batch_size=1000))
    # Before streaming: the whole path at once, the weighted gradients summed over the steps in float32.
    alphas, weights = attribution.ig_steps(steps)
    base = x.mean(axis=(2, 3), keepdims=True)
    a32 = alphas.astype(np.float32).reshape(1, -1, 1, 1, 1)
    w32 = weights.astype(np.float32).reshape(1, -1, 1, 1, 1)
    path = (base[:, None] + a32 * (x - base)[:, None]).reshape((-1,) + x.shape[1:])
    g = cv.gradients(m, path, np.repeat([3, 7], steps), batch_size=1000).reshape((2, steps) + x.shape[1:])
    same(small, (g * w32).sum(axis=1) * (x - base))


def test_many_gauss_legendre_steps_need_no_steps_squared_matrix():
    """Above DENSE_LEGGAUSS_MAX steps the nodes come from Newton's method (numpy's leggauss would solve a dense
    (steps x steps) eigenvalue problem: 32 MB and seconds at 2000 steps): still the Gauss-Legendre rule, exact for
    polynomials of degree < 2 * steps, symmetric, and equal to leggauss where both run."""
    for steps in (attribution.DENSE_LEGGAUSS_MAX + 1, 3001):
        alphas, weights = attribution.ig_steps(steps)
        assert alphas.shape == weights.shape == (steps,) and np.all(np.diff(alphas) > 0)
        assert 0 < alphas[0] and alphas[-1] < 1 and np.all(weights > 0)
        np.testing.assert_allclose(alphas + alphas[::-1], 1.0, rtol=0, atol=1e-15)
        for degree in (0, 1, 7, 40, 2 * steps - 1):
            assert abs(weights @ alphas ** degree - 1 / (degree + 1)) <= 1e-13, (steps, degree)
    nodes, weights = attribution._leggauss_newton(200)
    dense = np.polynomial.legendre.leggauss(200)
    np.testing.assert_allclose(nodes, dense[0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(weights, dense[1], rtol=1e-10)  # leggauss's own error grows with the steps


@pytest.mark.parametrize("incremental", [True, False])
@pytest.mark.parametrize("mode", ["score", "probability"])
def test_occlusion_stride_1_equals_every_window_scored_at_once(wide, incremental, mode):
    m, x = wide
    window = (3, 4)
    positions = window_positions(x.shape[2:], window, (1, 1))
    rec = Recorder()
    small = cv.occlusion(m, x, [5, 9], window=window, stride=1, mode=mode, batch_size=13, incremental=incremental,
                         progress=rec)
    rec.check(len(x) * len(positions), at_least=len(x) * len(positions) // 13)
    same(small, cv.occlusion(m, x, [5, 9], window=window, stride=1, mode=mode, batch_size=10_000,
                             incremental=incremental))
    # The definition, with the occluded images made in numpy and (windows, H) / (windows, W) membership matrices.
    h, w = x.shape[2:]
    for i, t in enumerate([5, 9]):
        occluded = np.repeat(x[i:i + 1], len(positions), axis=0)
        for row, (top, left) in enumerate(positions):
            occluded[row, :, top:top + window[0], left:left + window[1]] = 0.0
        scores = m.scores(occluded).astype(np.float64)
        if mode == "score":
            per_window = float(m.scores(x[i:i + 1])[0, t]) - scores[:, t]
        else:
            e = np.exp(scores - scores.max(axis=1, keepdims=True))
            per_window = (e / e.sum(axis=1, keepdims=True))[:, t]
        in_rows = ((np.arange(h) >= positions[:, :1]) & (np.arange(h) < positions[:, :1] + window[0])).astype(float)
        in_cols = ((np.arange(w) >= positions[:, 1:]) & (np.arange(w) < positions[:, 1:] + window[1])).astype(float)
        ref = (in_rows.T @ (per_window[:, None] * in_cols)) / (in_rows.T @ in_cols)
        np.testing.assert_allclose(small[i], ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("method", ["gradcam", "smoothgrad", "occlusion", "scorecam"])
def test_top_k_many_classes_equals_all_rows_at_once(wide, method):
    m, x = wide
    k = 150 if method == "gradcam" else 40
    params = {"gradcam": {}, "smoothgrad": {"samples": 3, "seed": 4}, "scorecam": {"layer": "relu1"},
              "occlusion": {"window": 4, "stride": 2}}[method]
    rec = Recorder()
    maps, classes = top_k(method, m, x, k=k, batch_size=16, progress=rec, **params)
    rec.check(len(x) * k, at_least=len(x) * k // 16)
    assert maps.shape[:2] == (2, k) and classes.shape == (2, k)
    np.testing.assert_array_equal(classes, np.argsort(-m.scores(x), axis=1, kind="stable")[:, :k])
    func = registry.get(method).func
    # Before streaming: the image repeated k times, one call (one noise generator for SmoothGrad).
    same(maps, func(m, np.repeat(x, k, axis=0), targets=classes.reshape(-1), **params).reshape(maps.shape))
    same(maps, top_k(method, m, x, k=k, batch_size=1000, **params)[0])


def test_top_k_passes_the_methods_own_progress_on_in_class_units(wide):
    """Within one (image, class) row, a method's own progress is reported scaled to maps: whole maps, each once."""
    m, x = wide
    rec = Recorder()
    top_k("occlusion", m, x[:1], k=2, window=2, stride=1, batch_size=1, progress=rec)
    rec.check(2, at_least=2)
    inner = []
    class_maps(cv.smoothgrad, m, x, np.array([[1, 2, 3], [4, 5, 6]]), samples=40, batch_size=6,
               progress=lambda d, t: inner.append((d, t)))
    assert inner[-1] == (6, 6) and [d for d, _ in inner] == sorted({d for d, _ in inner})


def test_score_cam_streams_its_channels():
    m = cv.load(gap_classifier(size=16))
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    rec = Recorder()
    one = cv.score_cam(m, x, layer=["conv1", "relu1"], batch_size=1, progress=rec)
    rec.check(3 * (4 + 4), at_least=3 * (4 + 4))
    same(one, cv.score_cam(m, x, layer=["conv1", "relu1"], batch_size=64))


def test_progress_is_keyword_only_and_optional():
    import inspect

    for func in (cv.occlusion, cv.score_cam, cv.smoothgrad, cv.integrated_gradients, cv.top_k):
        param = inspect.signature(func).parameters["progress"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is None, func


# --- (b) peak memory: a batch's worth, not the whole work's -----------------------------------------------------------
CHILD = r"""
import json, resource, sys
import numpy as np
import onnx_cnnviz as cv
spec = json.loads(sys.argv[1])
m = cv.load(spec["model"])
x = np.random.default_rng(0).standard_normal((spec["n"], 3, spec["size"], spec["size"])).astype(np.float32)
func = {"top_k": lambda **kw: cv.top_k("gradcam", m, x, **kw)[0], "smoothgrad": lambda **kw: cv.smoothgrad(m, x, **kw),
        "ig": lambda **kw: cv.integrated_gradients(m, x, **kw), "occlusion": lambda **kw: cv.occlusion(m, x, **kw)}
run = func[spec["option"]]
run(**spec["warm"])  # the sessions and their arenas, at the batch size
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = run(**spec["large"])
print(json.dumps({"before": before, "after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "shape": out.shape, "finite": bool(np.isfinite(out).all())}))
"""


def peak_growth_mib(spec: dict) -> float:
    """MiB the peak RSS grew by from the warm-up run (same batch size, little work) to the large one."""
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["finite"]
    return (result["after"] - result["before"]) / 1024


@pytest.fixture(scope="module")
def memory_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streaming")
    return {"gap128": str(save(wide_classifier(size=128, classes=5), folder / "gap128.onnx")),
            "wide96": str(save(wide_classifier(size=96, classes=200), folder / "wide96.onnx")),
            "wide64": str(save(wide_classifier(size=64, classes=5000), folder / "wide64.onnx"))}


def test_smoothgrad_2000_samples_in_bounded_memory(memory_models):
    """SmoothGrad, 2000 samples of one 3x128x128 image, batch size 16. Before streaming, every copy was made at once
    (the noise, the noisy copies and their gradients: 2000 x 192 KiB each): the peak grew by 1.6 GiB. Streamed: by
    about 15 MiB."""
    growth = peak_growth_mib({"model": memory_models["gap128"], "option": "smoothgrad", "n": 1, "size": 128,
                              "warm": {"samples": 16, "batch_size": 16}, "large": {"samples": 2000, "batch_size": 16}})
    assert growth < 200, growth


def test_integrated_gradients_2000_steps_in_bounded_memory(memory_models):
    """IG, 2000 steps on one 3x128x128 image, batch size 16. Before streaming, the whole path and its gradients were
    made at once, and numpy's leggauss solved a dense 2000 x 2000 eigenvalue problem: the peak grew by 1.5 GiB.
    Streamed: by about 15 MiB."""
    growth = peak_growth_mib({"model": memory_models["gap128"], "option": "ig", "n": 1, "size": 128,
                              "warm": {"steps": 16, "batch_size": 16}, "large": {"steps": 2000, "batch_size": 16}})
    assert growth < 200, growth


def test_top_k_100_in_bounded_memory(memory_models):
    """Grad-CAM top-100 of eight 3x96x96 images (800 maps), batch size 16. Before streaming, the images were repeated
    100 times and the activations and gradients of all 800 rows held at once: the peak grew by 790 MiB. Streamed: by
    about 30 MiB, the result (800 maps of 36 KiB: 28 MiB) included."""
    growth = peak_growth_mib({"model": memory_models["wide96"], "option": "top_k", "n": 8, "size": 96,
                              "warm": {"k": 2, "batch_size": 16}, "large": {"k": 100, "batch_size": 16}})
    assert growth < 200, growth


def test_occlusion_stride_1_in_bounded_memory(memory_models):
    """Occlusion at stride 1 of one 3x64x64 image, window 4 (3721 windows), 5000 classes, batch size 64. Before
    streaming, every window's scores for every class were kept, as float32 and as float64 (3721 x 5000 x 12 B), and
    (windows x H) and (windows x W) membership matrices built: the peak grew by 285 MiB. Streamed: by about 11 MiB."""
    growth = peak_growth_mib({"model": memory_models["wide64"], "option": "occlusion", "n": 1, "size": 64,
                              "warm": {"window": 4, "stride": 6, "batch_size": 64},
                              "large": {"window": 4, "stride": 1, "batch_size": 64}})
    assert growth < 100, growth
