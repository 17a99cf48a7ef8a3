"""The classifier head (graph/head.py): the score, CAM's class weights and the other walks back from the score, on
small hand-built graphs and on the shared SqueezeNet."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_cnnviz.errors import ModelStructureError
from onnx_cnnviz.graph import load as graph_load
from onnx_cnnviz.graph import shapes as graph_shapes
from onnx_cnnviz.graph.head import (cam_head, constant_value, find_score, penultimate_input, producing_conv,
                                    spatial_head, walk_back)
from onnx_cnnviz.graph.ops import ORDER_KEEPING_VIEWS
from onnx_cnnviz.graph.structure import producers

RNG = np.random.default_rng(0)
W_CONV = RNG.standard_normal((6, 3, 3, 3)).astype(np.float32)
W_FC = RNG.standard_normal((4, 6)).astype(np.float32)  # (classes, channels)


def _model(head_nodes, inits, size=8, output="out"):
    """x (N, 3, size, size) -> Conv 3x3 pad 1 -> Relu "feat" -> head_nodes -> ``output``."""
    nodes = [helper.make_node("Conv", ["x", "w_conv"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["conv"], ["feat"], name="relu"), *head_nodes]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W_CONV, "w_conv"), *inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    graph_load.set_input_shape_inplace(model, "x", (3, size, size))
    return model, graph_shapes.infer(model)


def _gap_gemm(*, transposed_weight=False, softmax=True):
    nodes = [helper.make_node("GlobalAveragePool", ["feat"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], axis=1, name="flatten")]
    inits = [numpy_helper.from_array(np.zeros(4, np.float32), "b_fc")]
    if transposed_weight:  # the weight stored (C, K) and transposed in the graph
        inits.append(numpy_helper.from_array(np.ascontiguousarray(W_FC.T), "w_fc_t"))
        nodes.append(helper.make_node("Transpose", ["w_fc_t"], ["w_fc"], perm=[1, 0], name="transpose_w"))
    else:
        inits.append(numpy_helper.from_array(W_FC, "w_fc"))
    nodes.append(helper.make_node("Gemm", ["flat", "w_fc", "b_fc"], ["logits"], transB=1, alpha=2.0, name="fc"))
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"))
        nodes.append(helper.make_node("Reshape", ["probs", "shape"], ["out"], name="reshape"))
        inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), "shape"))
    else:
        nodes.append(helper.make_node("Identity", ["logits"], ["out"], name="identity"))
    return _model(nodes, inits)


def test_find_score_skips_the_normaliser_behind_views():
    model, _ = _gap_gemm()
    assert find_score(model) == ("out", "logits", "Softmax")
    assert find_score(model, "flat") == ("flat", "flat", None)
    plain, _ = _gap_gemm(softmax=False)
    assert find_score(plain) == ("out", "out", None)
    with pytest.raises(ModelStructureError, match="no output or tensor named 'nope'"):
        find_score(model, "nope")


@pytest.mark.parametrize("transposed", [False, True])
def test_cam_head_gap_gemm(transposed):
    model, info = _gap_gemm(transposed_weight=transposed)
    head = cam_head(model, info, "logits", 4)
    assert head.layer == "feat" and head.aliases == ("feat",)
    np.testing.assert_allclose(head.weights, 2.0 * W_FC)  # Gemm's alpha scales the weights
    assert head.form == "GlobalAveragePool -> Gemm (4 classes x 6 channels)"
    with pytest.raises(ModelStructureError, match="has 4 rows but the model scores 5 classes"):
        cam_head(model, info, "logits", 5)


def test_cam_head_reduce_mean_matmul_add_and_aliases():
    nodes = [helper.make_node("Dropout", ["feat"], ["feat_drop"], name="dropout"),
             helper.make_node("ReduceMean", ["feat_drop", "axes"], ["pooled"], keepdims=0, name="mean"),
             helper.make_node("MatMul", ["pooled", "w_mm"], ["mm"], name="matmul"),
             helper.make_node("Add", ["mm", "b"], ["out"], name="bias")]
    inits = [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.ascontiguousarray(W_FC.T), "w_mm"),
             numpy_helper.from_array(np.ones(4, np.float32), "b")]
    model, info = _model(nodes, inits)
    head = cam_head(model, info, "out", 4)
    assert head.layer == "feat_drop" and head.aliases == ("feat_drop", "feat")
    np.testing.assert_allclose(head.weights, W_FC)
    assert head.form == "ReduceMean -> MatMul + Add (4 classes x 6 channels)"


def test_cam_head_conv_classifier():
    """SqueezeNet's form: 1x1 Conv -> Relu -> GlobalAveragePool -> Flatten; the CAM layer is the conv's input."""
    nodes = [helper.make_node("Conv", ["feat", "w_cls"], ["cls"], name="classifier"),
             helper.make_node("Relu", ["cls"], ["cls_relu"], name="cls_relu"),
             helper.make_node("GlobalAveragePool", ["cls_relu"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["out"], axis=1, name="flatten")]
    model, info = _model(nodes, [numpy_helper.from_array(W_FC[:, :, None, None], "w_cls")])
    head = cam_head(model, info, "out", 4)
    assert head.layer == "feat" and head.form == "Conv 1x1 -> Relu -> GlobalAveragePool (4 classes x 6 channels)"
    np.testing.assert_allclose(head.weights, W_FC)
    assert penultimate_input(model, "out", "x") == "feat"


def test_cam_head_refuses_other_heads_naming_the_walk():
    nodes = [helper.make_node("GlobalMaxPool", ["feat"], ["gmp"], name="gmp"),
             helper.make_node("Flatten", ["gmp"], ["flat"], axis=1, name="flatten"),
             helper.make_node("Gemm", ["flat", "w_fc"], ["out"], transB=1, name="fc")]
    model, info = _model(nodes, [numpy_helper.from_array(W_FC, "w_fc")])
    walk = r"not a global average pool.*score <- Gemm <- Flatten <- GlobalMaxPool"
    with pytest.raises(ModelStructureError, match=walk):
        cam_head(model, info, "out", 4)


def test_other_walks():
    model, info = _gap_gemm(transposed_weight=True)
    graph = model.graph
    made_by = producers(graph)
    inits = {t.name: t for t in graph.initializer}
    np.testing.assert_array_equal(constant_value("w_fc", inits, made_by), W_FC)
    assert constant_value("flat", inits, made_by) is None
    assert walk_back("flat", made_by, ORDER_KEEPING_VIEWS)[0] == "gap"
    assert penultimate_input(model, "logits", "x") == "flat"
    assert producing_conv(model, "feat").name == "conv" and producing_conv(model, "gap") is None
    spatial, head = spatial_head(model, "logits", info)
    assert spatial == "feat" and [n.name for n in head] == ["gap", "flatten", "fc"]


def test_squeezenet(squeezenet_path):
    model = graph_load.normalise(onnx.load(str(squeezenet_path)))
    output, score, skipped = find_score(model)
    graph_load.set_input_shape_inplace(model, "data", (3, 224, 224))
    head = cam_head(model, graph_shapes.infer(model), score, 1000)
    assert skipped == "Softmax"
    assert head.layer == "fire9/concat_2" and "Relu" in head.form and head.weights.shape == (1000, 512)
    assert head.aliases == ("fire9/concat_2", "fire9/concat_1")
    assert penultimate_input(model, score, "data") == "fire9/concat_2"
