"""Lean sessions over graphs of large activations run without the process's CPU arena (onnx_cnnviz/runtime.py's
``ARENA_MAX_ACTIVATION_BYTES``; issue 26).

The process's arena grows by every request it cannot place and never shrinks: after five methods on
mvitv2_base_cls (1.2 GB of float tensors per image) it held 3.95 GB where each method alone peaks near 2.3 GB. The
choice is made from the graph's declared shapes, checked here without measuring memory; the results must not depend
on it.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_cnnviz as cv
from onnx_cnnviz import runtime
from tests.tiny_models import gap_classifier

pytestmark = pytest.mark.quick


def test_activation_bytes_count_declared_float_tensors_per_image():
    model = gap_classifier(size=8)
    model.graph.value_info.extend([
        helper.make_tensor_value_info("conv1", TensorProto.FLOAT, ["N", 4, 8, 8]),
        helper.make_tensor_value_info("relu1", TensorProto.FLOAT, [None, 4, 8, 8]),
        helper.make_tensor_value_info("pool", TensorProto.DOUBLE, ["N", 4, 1, 1]),
        helper.make_tensor_value_info("shape", TensorProto.INT64, [4]),  # not a float: not an activation
        helper.make_tensor_value_info("unknown", TensorProto.FLOAT, None)])
    assert runtime.activation_bytes_per_image(model) == 2 * 4 * 8 * 8 * 4 + 4 * 8


def test_graphs_of_large_activations_run_without_the_process_arena(share_everything, monkeypatch):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 3, 8, 8)).astype(np.float32) for n in (3, 1)]
    m = cv.load(gap_classifier(size=8), device="cpu")
    graph = m.build_graph()
    assert runtime.activation_bytes_per_image(graph) > 0  # the loaded graph declares its shapes
    assert m.new_session(graph).process_arena
    with_arena = [cv.saliency(m, x) for x in xs] + [m.scores(x) for x in xs]
    monkeypatch.setattr(runtime, "ARENA_MAX_ACTIVATION_BYTES", runtime.activation_bytes_per_image(graph))
    m = cv.load(gap_classifier(size=8), device="cpu")
    session = m.new_session(m.build_graph())
    assert session.lean and not session.process_arena
    without = [cv.saliency(m, x) for x in xs] + [m.scores(x) for x in xs]
    for a, b in zip(with_arena, without):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
