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


@pytest.mark.parametrize("opset,axis", [(17, -1), (17, 1), (18, -2)])
def test_layer_norm_statistics_run_on_openvino(opset, axis):
    """OpenVINO refuses a LayerNormalization with its Mean and InvStdDev outputs (the backward rule reads them);
    runtime.for_openvino computes them beside it: every output equals the CPU provider's."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(opset)
    shape = [2, 5, 6]
    rank_axis = axis % len(shape)
    norm_shape = shape[rank_axis:]
    node = helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y", "mean", "inv_std"], axis=axis,
                            epsilon=1e-3)
    stat_shape = shape[:rank_axis] + [1] * (len(shape) - rank_axis)
    graph = helper.make_graph(
        [node], "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("mean", TensorProto.FLOAT, stat_shape),
         helper.make_tensor_value_info("inv_std", TensorProto.FLOAT, stat_shape)],
        [numpy_helper.from_array(rng.standard_normal(norm_shape).astype(np.float32), "scale"),
         numpy_helper.from_array(rng.standard_normal(norm_shape).astype(np.float32), "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    cpu = runtime.Session(model, ["CPUExecutionProvider"]).run({"x": x})
    ov = runtime.Session(model, runtime.providers_for("openvino")).run({"x": x})
    assert len(runtime.for_openvino(model).graph.node) > 1 and len(model.graph.node) == 1
    for name in ("y", "mean", "inv_std"):
        np.testing.assert_allclose(ov[name], cpu[name], rtol=1e-5, atol=1e-5)


def test_vit_like_gradients_match():
    """A token model (patchify Conv, LayerNormalization, Softmax attention, residual, mean pooling) through the
    backward graphs on OpenVINO: saliency and Grad-CAM at the token layer equal the CPU provider's."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    d = 8
    inits = {"patch_w": rng.standard_normal((d, 3, 4, 4)) * 0.3, "patch_b": rng.standard_normal(d) * 0.1,
             "tok_shape": np.array([0, d, -1], np.int64), "scale": np.ones(d), "bias": np.zeros(d),
             "wq": rng.standard_normal((d, d)) * 0.3, "wk": rng.standard_normal((d, d)) * 0.3,
             "wv": rng.standard_normal((d, d)) * 0.3, "head": rng.standard_normal((d, 4)) * 0.5,
             "scale_qk": np.array(d ** -0.5)}
    nodes = [helper.make_node("Conv", ["x", "patch_w", "patch_b"], ["patches"], strides=[4, 4]),
             helper.make_node("Reshape", ["patches", "tok_shape"], ["flat"]),
             helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1]),
             helper.make_node("LayerNormalization", ["tokens", "scale", "bias"], ["ln"], axis=-1),
             helper.make_node("MatMul", ["ln", "wq"], ["q"]), helper.make_node("MatMul", ["ln", "wk"], ["k"]),
             helper.make_node("MatMul", ["ln", "wv"], ["v"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]), helper.make_node("Mul", ["qk", "scale_qk"], ["qks"]),
             helper.make_node("Softmax", ["qks"], ["att"], axis=-1), helper.make_node("MatMul", ["att", "v"], ["o"]),
             helper.make_node("Add", ["o", "tokens"], ["res"]),
             helper.make_node("ReduceMean", ["res"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "head"], ["logits"])]
    graph = helper.make_graph(nodes, "vit", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(np.asarray(v, np.int64 if k == "tok_shape" else np.float32), k)
                               for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    cpu, ov = cv.load(model, device="cpu"), cv.load(model, device="openvino")
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    for method in (cv.saliency, cv.grad_cam):
        ours, theirs = method(cpu, x, [1, 3]), method(ov, x, [1, 3])
        assert np.abs(ours).max() > 0
        np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5)


def test_inspect_names_the_provider(tmp_path):
    """`cnnviz inspect --device openvino` says which execution provider runs the model, in text and in JSON."""
    from click.testing import CliRunner

    import onnx

    from onnx_cnnviz.cli.main import cli

    path = tmp_path / "small.onnx"
    onnx.save(small_cnn(), path)
    done = CliRunner().invoke(cli, ["inspect", str(path), "--device", "openvino"])
    assert done.exit_code == 0, done.output
    assert "device       openvino (onnxruntime's OpenVINOExecutionProvider)" in done.output
    done = CliRunner().invoke(cli, ["inspect", str(path), "--device", "openvino", "--json"])
    assert '"provider": "OpenVINOExecutionProvider"' in done.output
