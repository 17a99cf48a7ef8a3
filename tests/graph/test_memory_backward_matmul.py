"""The MatMul rule reads a 2-D weight in place for ``dA = G B^T`` (a Gemm with ``transB``) instead of storing a
transposed copy of it in the backward graph (graph/autodiff/rules/linear.py; issue 26: 0.2 GB of copies for
mvitv2_base_cls, shared by its sessions but beside the weights). Checked on the graph itself; the gradient against
finite differences is in tests/graph/test_rules.py's MatMul cases; here it must equal the Transpose form's.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

import onnx_cnnviz as cv
from tests.graph.test_held import _bigger_classifier

pytestmark = pytest.mark.quick


def test_the_backward_graph_holds_no_transposed_copy_of_a_matmul_weight():
    model = _bigger_classifier()  # an NHWC channel-mixing MatMul by 'proj' (8 x 64)
    m = cv.load(model, device="cpu")
    graph = m.build_graph(wrt=(m.input_name,)).graph
    proj = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "proj")
    copies = [t.name for t in graph.initializer if tuple(t.dims) == proj.T.shape]
    assert copies == []  # no (64, 8) constant: B^T is read from 'proj' itself
    gemm = [n for n in graph.node if n.op_type == "Gemm" and "proj" in n.input]
    assert gemm and all(any(a.name == "transB" and a.i == 1 for a in n.attribute) for n in gemm)


def test_the_input_gradient_through_the_matmul_is_unchanged():
    # The same model with its MatMul reading the weight through an Identity: no longer a constant to the rule, which
    # then writes B^T as a Transpose node (the form checked against finite differences in test_rules.py).
    model = _bigger_classifier()
    through = _bigger_classifier()
    mix = next(n for n in through.graph.node if n.name == "mix")
    mix.input[1] = "proj_read"
    through.graph.node.insert(0, helper.make_node("Identity", ["proj"], ["proj_read"], name="read"))
    m, reference = cv.load(model, device="cpu"), cv.load(through, device="cpu")
    graph = reference.build_graph(wrt=(reference.input_name,)).graph
    assert any(n.op_type == "Transpose" and n.input[0] == "proj_read" for n in graph.node)
    x = np.random.default_rng(4).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(cv.gradients(m, x, targets=[1, 3]), cv.gradients(reference, x, targets=[1, 3]),
                               rtol=1e-5, atol=1e-6)
