"""``device="openvino"``: onnxruntime's OpenVINO execution provider (onnxruntime-openvino) runs every method's graph
and gives the CPU provider's numbers.

Runs in ``.venv-openvino`` (see .ci/run: onnxruntime-openvino replaces onnxruntime-gpu, so it cannot share the main
venv); skipped where this onnxruntime has no OpenVINO provider. The main venv runs ``test_openvino_missing.py``
instead.
"""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz import runtime
from onnx_cnnviz.methods import registry
from onnx_cnnviz.methods.reciprocam import reciprocam

from .small_models import small_cnn

pytestmark = pytest.mark.skipif(not runtime.openvino_available(),
                                reason="needs onnxruntime-openvino (.venv-openvino, see .ci/run)")

#: Occlusion's window fitted to the 16x16 test images; every other method runs with its defaults.
PARAMS = {"occlusion.window": (4, 4), "occlusion.stride": (2, 2)}
TOL = 1e-5


@pytest.fixture(scope="module")
def models():
    model = small_cnn()
    return cv.load(model, device="cpu"), cv.load(model, device="openvino")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)


def test_sessions_run_on_openvino(models, x):
    _, ov = models
    assert ov.providers == ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    assert runtime.device_of(ov.providers) == "openvino"
    session = ov.new_session(ov.build_graph(wrt=["x"]))
    assert session.provider == "OpenVINOExecutionProvider"
    assert ov.scores(x).shape == (2, 5)


@pytest.mark.parametrize("method", registry.names() + ["reciprocam"])
def test_method_matches_the_cpu_provider(models, x, method):
    cpu, ov = models
    if method == "reciprocam" and method not in registry.names():
        ours, theirs = reciprocam(cpu, x, [1, 3]), reciprocam(ov, x, [1, 3])
    else:
        ours = registry.explain(cpu, method, x, [1, 3], params=PARAMS, shared=True)
        theirs = registry.explain(ov, method, x, [1, 3], params=PARAMS, shared=True)
    assert ours.shape == theirs.shape
    assert np.abs(ours).max() > 0  # a map, not zeros that would match anything
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=TOL * max(1.0, float(np.abs(ours).max())))


def test_hardsigmoid_beta_zero_is_read_right():
    """OpenVINO reads HardSigmoid's beta=0 as unset (0.5); runtime.for_openvino rewrites it, so the ReLU masks of
    the backward graphs are 0 where the ReLU is off (without it, saliency was 100% off on this model)."""
    from onnx import TensorProto, helper

    node = helper.make_node("HardSigmoid", ["x"], ["y"], alpha=2.0 ** 126, beta=0.0)
    graph = helper.make_graph([node], "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    fixed = runtime.for_openvino(model)
    assert fixed is not model and model.graph.node[0].attribute[1].f == 0.0  # the caller's model is untouched
    session = runtime.Session(model, runtime.providers_for("openvino"))
    y = session.run({"x": np.array([[0.0, -1.0, 1e-20, 3.0]], np.float32)})["y"]
    np.testing.assert_array_equal(y, [[0.0, 0.0, 1.0, 1.0]])
