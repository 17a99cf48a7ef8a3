"""OpenVINO reads a ``Gemm`` with ``transB=1`` wrong when another node also reads its weight (the MatMul rule's
``dA = G B^T`` does: graph/autodiff/rules/linear.py); ``runtime.for_openvino`` rewrites it to a Transpose and a MatMul.
Runs in ``.venv-openvino``; skipped where this onnxruntime has no OpenVINO provider."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_cnnviz import runtime

pytestmark = pytest.mark.skipif(not runtime.openvino_available(),
                                reason="needs onnxruntime-openvino (.venv-openvino, see .ci/run)")


def shared_weight_model():
    """y1 = a @ w (MatMul), y2 = c @ w^T (Gemm transB=1): one weight, two readers."""
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["R", 8]) for n in ("a", "c", "y1", "y2")]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y1"]),
                               helper.make_node("Gemm", ["c", "w"], ["y2"], transB=1)], "g", io[:2], io[2:],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, w


@pytest.mark.parametrize("rewritten", [False, True])
def test_a_transposed_gemm_over_a_shared_weight(rewritten):
    model, w = shared_weight_model()
    rng = np.random.default_rng(1)
    a, c = rng.standard_normal((2, 32, 8)).astype(np.float32)
    graph = runtime.for_openvino(model) if rewritten else model
    if rewritten:
        assert [n.op_type for n in graph.graph.node].count("Gemm") == 0
    y1, y2 = ort.InferenceSession(graph.SerializeToString(), providers=["OpenVINOExecutionProvider"]).run(
        None, {"a": a, "c": c})
    np.testing.assert_allclose(y1, a @ w, rtol=1e-5, atol=1e-5)
    if rewritten:
        np.testing.assert_allclose(y2, c @ w.T, rtol=1e-5, atol=1e-5)
    else:  # the reader's bug this rewrite works around; if it is fixed upstream, this fails and the rewrite can go
        assert np.abs(y2 - c @ w.T).max() > 1e-3
