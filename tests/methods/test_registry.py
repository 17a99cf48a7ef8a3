"""The method registry: one entry per method, every function with the one map-function shape, typed errors."""
import inspect

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.methods import registry

from ..tiny_models import gap_classifier


@pytest.mark.parametrize("name", registry.names())
def test_every_method_has_the_one_public_shape(name):
    meth = registry.get(name)
    params = inspect.signature(meth.func).parameters
    assert list(params)[:4] == ["m", "x", "targets", "layer"], name
    for keyword in ("upsample", "normalize", "batch_size", *meth.params):
        assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY, (name, keyword)
    assert params["targets"].default is None and params["layer"].default is None


@pytest.mark.parametrize("name", registry.names())
def test_every_method_runs_through_the_registry(name):
    m = cv.load(gap_classifier(size=8))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    params = {"window": (4, 4), "stride": (4, 4), "samples": 2, "steps": 4}
    out = registry.explain(m, name, x, np.array([1, 2]), params=params, shared=True)
    meth = registry.get(name)
    assert out.shape == ((2, 8, 8) if meth.kind in ("map", "gray") else (2, 3, 8, 8)), name
    assert np.isfinite(out).all()
    if not meth.signed:
        assert out.min() >= 0 and out.max() <= 1


def test_input_methods_refuse_a_layer():
    m = cv.load(gap_classifier(size=8))
    x = np.zeros((1, 3, 8, 8), np.float32)
    for func in (cv.saliency, cv.gradients, cv.input_x_gradient, cv.smoothgrad, cv.integrated_gradients,
                 cv.occlusion):
        with pytest.raises(cv.InputError, match="takes no layer"):
            func(m, x, 0, "conv1")


def test_signed_normalisation_keeps_zero_and_sign():
    m = cv.load(gap_classifier(size=8))
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    raw = cv.integrated_gradients(m, x, 1, steps=4)
    scaled = cv.integrated_gradients(m, x, 1, steps=4, normalize=True)
    top = np.abs(raw).reshape(2, -1).max(axis=1).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(scaled, raw / top, rtol=1e-6)
    assert np.abs(scaled).max() == pytest.approx(1.0)


def test_bad_layers_and_names_are_typed():
    m = cv.load(gap_classifier(size=8))
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(cv.InputError):
        cv.grad_cam(m, x, layer=3)
    with pytest.raises(cv.UnknownLayerError):
        cv.grad_cam(m, x, layer="nope")
    with pytest.raises(cv.InputError, match="unknown method"):
        registry.get("grad_cam")
    with pytest.raises(cv.InputError, match="already registered"):
        registry.register(registry.get("gradcam"))
    with pytest.raises(cv.InputError, match="kind"):
        registry.Method("x", "X", cv.grad_cam, "heatmap", True)
    with pytest.raises(cv.InputError, match="rule set"):
        cv.gradients(m, x, rule="x")
    with pytest.raises(cv.InputError, match="rule set"):
        m.run(x, wrt=[m.input_name], rule="x")


def test_top_k_takes_a_name_and_refuses_class_agnostic_methods():
    m = cv.load(gap_classifier(size=8))
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    by_name, classes = cv.top_k("gradcam", m, x, k=2)
    by_func, classes2 = cv.top_k(cv.grad_cam, m, x, k=2)
    np.testing.assert_array_equal(by_name, by_func)
    np.testing.assert_array_equal(classes, classes2)
    with pytest.raises(cv.InputError, match="does not depend on the class"):
        cv.top_k("eigencam", m, x, k=2)
