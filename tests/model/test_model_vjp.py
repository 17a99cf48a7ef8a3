"""Model.vjp: the backward pass seeded at any tensor."""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError


def test_vjp_at_score_equals_run(squeezenet_path, kitten_x):
    m = cv.load(squeezenet_path)
    seed = np.zeros((1, m.num_classes), np.float32)
    seed[0, 281], seed[0, 285] = 1.0, -0.5
    a = m.vjp(kitten_x, m.score_name, seed).grads[m.input_name]
    b = m.run(kitten_x, wrt=[m.input_name], score_weights=seed).grads[m.input_name]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


def test_vjp_chain_rule(squeezenet_path, kitten_x):
    """Seeding at a layer with G = dS_c/dT gives dS_c/dx: vjp(T, G) == run(wrt=input) (the chain rule)."""
    m = cv.load(squeezenet_path)
    layer = "fire3/concat_1"
    g_layer = m.run(kitten_x, wrt=[layer], targets=281).grads[layer]
    res = m.vjp(kitten_x, layer, g_layer, outputs=["conv1_2"])
    assert set(res.outputs) == {layer, "conv1_2"} and res.scores is None
    ref = m.run(kitten_x, wrt=[m.input_name], targets=281).grads[m.input_name]
    np.testing.assert_allclose(res.grads[m.input_name], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_vjp_linear_layer_finite_difference(squeezenet_path):
    """On the first (linear) convolution, <dL/dx, v> is the directional derivative of L(x) = <seed, T(x)>."""
    m = cv.load(squeezenet_path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32) * 50
    seed = rng.standard_normal((2, *m.layer("conv1_1").shape[1:])).astype(np.float32)
    g = m.vjp(x, "conv1_1", seed, batch_size=1).grads[m.input_name].astype(np.float64)
    v = rng.standard_normal(x.shape).astype(np.float32)

    def loss(x):
        return float((m.run(x, outputs=["conv1_1"]).outputs["conv1_1"].astype(np.float64) * seed).sum())

    fd = (loss(x + v) - loss(x - v)) / 2
    assert abs(fd - (g * v).sum()) <= 1e-3 * abs(fd)


def test_vjp_seed_shape_checked(squeezenet_path, kitten_x):
    m = cv.load(squeezenet_path)
    with pytest.raises(InputError, match="cotangent must have shape"):
        m.vjp(kitten_x, "conv1_2", np.zeros((1, 3), np.float32))
