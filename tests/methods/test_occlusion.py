"""Occlusion with the occluded images made inside the graph: the prefix, the graph, and parity with captum.

captum's ``Occlusion`` with a window spanning all channels gives the same map on every channel; ours is that map
(relative error <= 1e-4 of the map's largest absolute value, per image). The forward pass is continuous, so no kink
pinning is needed here (compare tests/methods/test_attribution.py).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.graph import held
from onnx_cnnviz.graph.occlusion import (BASELINE, IMAGE, OUTPUT, POSITIONS, WINDOW, occlusion_graph,
                                         window_positions)
from onnx_cnnviz.methods.occlusion import incremental_plan

from ..conftest import rel_err

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

TARGETS = [3, 250, 999]


@pytest.fixture(scope="module")
def loaded(loaded_batch):
    """name -> (torch model, cnnviz Model, x (3, 3, S, S))"""
    return lambda name: loaded_batch(name, len(TARGETS), seed=2)


def numpy_occluded(image: np.ndarray, top: int, left: int, window, fill) -> np.ndarray:
    out = image.copy()
    out[:, top:top + window[0], left:left + window[1]] = np.asarray(fill, dtype=np.float32).reshape(-1, 1, 1)
    return out


@pytest.mark.parametrize("name,window,stride,baseline", [
    ("resnet18", (32, 32), (16, 16), 0.0),
    ("resnet18", (16, 16), (8, 8), 0.0),  # incremental: only the boxes each window changes are recomputed
    ("mobilenet_v2", (28, 20), (20, 16), [0.5, -1.0, 0.25]),  # the last windows reach past the border: clipped
    ("squeezenet1_1", (24, 24), (12, 12), "mean"),
])
def test_matches_captum(loaded, name, window, stride, baseline):
    model, m, x = loaded(name)
    ours = cv.occlusion(m, x, TARGETS, window=window, stride=stride, baseline=baseline)
    if window == (16, 16):
        assert incremental_plan(m, x.shape[2:], window, stride).worthwhile
    if baseline == "mean":
        ref_base = torch.from_numpy(x.mean(axis=(2, 3), keepdims=True))
    elif isinstance(baseline, list):
        ref_base = torch.tensor(baseline, dtype=torch.float32).reshape(1, 3, 1, 1)
    else:
        ref_base = baseline
    with torch.no_grad():
        ref = captum_attr.Occlusion(model).attribute(
            torch.from_numpy(x), sliding_window_shapes=(3, *window), strides=(3, *stride), baselines=ref_base,
            target=TARGETS, perturbations_per_eval=64).numpy()
    assert np.abs(ref - ref[:, :1]).max() <= 1e-6 * np.abs(ref).max()  # captum's map is equal across channels
    assert ours.shape == (len(TARGETS), *x.shape[2:]) and ours.dtype == np.float32
    for i in range(len(x)):
        assert rel_err(ours[i], ref[i, 0]) <= 1e-4, f"{name} image {i}: {rel_err(ours[i], ref[i, 0]):.2e}"


@pytest.mark.parametrize("size,window,stride", [((112, 112), (16, 16), (8, 8)), ((112, 96), (28, 20), (16, 12)),
                                                ((20, 20), (20, 7), (5, 3)), ((9, 30), (4, 4), (4, 4))])
def test_window_positions_are_captums(size, window, stride):
    """The masks captum builds for each perturbation equal our windows clipped at the border."""
    occ = captum_attr.Occlusion(lambda t: t)
    inp = torch.zeros((1, 1, *size))
    shift_counts = tuple(int(np.ceil((s - w) / st)) + 1 for s, w, st in zip((1, *size), (1, *window), (1, *stride)))
    ones = torch.ones((1, *window))
    positions = window_positions(size, window, stride)
    assert len(positions) == int(np.prod(shift_counts))
    ours = {numpy_occluded(np.zeros((1, *size), np.float32), t, left, window, [1.0]).tobytes()
            for t, left in positions}
    theirs = {occ._occlusion_mask(inp, k, ones, (1, *stride), shift_counts, False).numpy().astype(np.float32)
              .reshape(1, *size).tobytes() for k in range(len(positions))}
    assert ours == theirs


def test_prefix_makes_exactly_the_occluded_images(loaded):
    _, m, x = loaded("resnet18")
    h, w = x.shape[2:]
    graph = occlusion_graph(m.spec((h, w)).model, m.input_name, m.score_name, expose_images=True)
    session = held.session(graph, ort.SessionOptions(), ["CPUExecutionProvider"])
    positions = np.array([[0, 0], [100, 100], [50, 7], [-5, 90], [h, w]], dtype=np.int64)
    window, fill = (24, 32), np.array([0.5, -1.5, 2.0], dtype=np.float32)
    scores, images = session.run([OUTPUT, m.input_name], {IMAGE: x[:1], POSITIONS: positions,
                                                          WINDOW: np.array(window, dtype=np.int64), BASELINE: fill})
    for p, (top, left) in enumerate(positions):
        expected = numpy_occluded(x[0], max(top, 0), max(left, 0),
                                  (window[0] + min(top, 0), window[1] + min(left, 0)), fill)
        np.testing.assert_array_equal(images[p], expected)
    np.testing.assert_array_equal(images[-1], x[0])  # a window outside the image leaves it untouched
    assert scores.shape == (len(positions), m.num_classes)
    assert rel_err(scores, m.scores(images)) <= 1e-5


@pytest.mark.parametrize("mode", ["score", "probability"])
def test_graph_is_valid_standard_onnx(loaded, mode):
    _, m, x = loaded("mobilenet_v2")
    graph = occlusion_graph(m.spec(x.shape[2:]).model, m.input_name, m.score_name, mode=mode)
    onnx.checker.check_model(graph, full_check=True)
    assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}
    assert {o.domain for o in graph.opset_import} <= {"", "ai.onnx"}
    assert [i.name for i in graph.graph.input] == [IMAGE, POSITIONS, WINDOW, BASELINE]
    assert [o.name for o in graph.graph.output] == [OUTPUT]


def test_probability_mode(loaded):
    """Windows that tile the image once: each pixel's value is the softmax probability of its one occluded copy."""
    _, m, x = loaded("resnet18")
    x = x[:2]
    maps = cv.occlusion(m, x, [7, 8], window=56, stride=56, baseline=0.0, mode="probability")
    assert maps.shape == (2, 112, 112) and np.all(maps >= 0) and np.all(maps <= 1)
    for i, target in enumerate([7, 8]):
        copies = np.stack([numpy_occluded(x[i], t, left, (56, 56), [0.0] * 3)
                           for t, left in window_positions((112, 112), (56, 56), (56, 56))])
        s = m.scores(copies).astype(np.float64)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p = (p / p.sum(axis=1, keepdims=True))[:, target]
        expected = np.kron(p.reshape(2, 2), np.ones((56, 56)))
        np.testing.assert_allclose(maps[i], expected, rtol=1e-4, atol=1e-7)
    default = cv.occlusion(m, x, window=56, stride=56, mode="probability")
    assert np.all((default >= 0) & (default <= 1))


def test_top1_and_batching(loaded):
    _, m, x = loaded("squeezenet1_1")
    top1 = m.scores(x).argmax(axis=1)
    a = cv.occlusion(m, x, window=32, stride=16)
    np.testing.assert_allclose(a, cv.occlusion(m, x, top1, window=32, stride=16), rtol=0, atol=1e-6)
    np.testing.assert_allclose(a, cv.occlusion(m, x, top1, window=32, stride=16, batch_size=5),
                               rtol=0, atol=1e-5 * np.abs(a).max())


def test_bad_arguments(loaded):
    _, m, x = loaded("squeezenet1_1")
    with pytest.raises(cv.InputError):
        cv.occlusion(m, x, window=(200, 8))
    with pytest.raises(cv.InputError):
        cv.occlusion(m, x, mode="logit")
    with pytest.raises(cv.InputError):
        cv.occlusion(m, x, baseline="median")
    with pytest.raises(cv.InputError):
        cv.occlusion(m, x, baseline=[0.0, 1.0])
    with pytest.raises(cv.InputError):
        cv.occlusion(m, x, stride=0)
