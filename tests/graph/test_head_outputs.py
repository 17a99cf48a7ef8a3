"""Choosing the class-score output among several (graph/head.py choose_score) and saying why (``cnnviz inspect``).

Deployed classifiers often return more than the scores: ``probs = Softmax(logits)`` beside ``logits``, a label
``ArgMax(probs)``, a TopK. When every output is computed from one tensor through views, normalisers and selections,
the class vector among them is chosen without asking; two outputs computed from different tensors (two heads) still
ask, listing what each output is. Every model here is tests/tiny_models.py's GAP classifier (x -> conv -> relu ->
GAP -> flatten -> Gemm 'logits', 5 classes) with outputs added.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.errors import ModelStructureError
from onnx_cnnviz.graph import load as graph_load
from onnx_cnnviz.graph.head import choose_score, find_score, output_roles

from ..cli import invoke, one_line_error
from ..tiny_models import CLASSES, gap_classifier, save

INT_OUTPUTS = {"label", "label_1d", "top_idx"}


def head_model(nodes, outputs, keep_logits=True, inits=()):
    """The GAP classifier with ``nodes`` appended after 'logits' and ``outputs`` as its outputs (after 'logits'
    unless ``keep_logits`` is False)."""
    model = gap_classifier()
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    if not keep_logits:
        del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(
        name, TensorProto.INT64 if name in INT_OUTPUTS else TensorProto.FLOAT, None) for name in outputs)
    return model


def k_init(k=3):
    return numpy_helper.from_array(np.array([k], dtype=np.int64), "k")


SOFTMAX = helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax")
ARGMAX = helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0, name="argmax")
TOPK = helper.make_node("TopK", ["logits", "k"], ["top_val", "top_idx"], axis=1, name="topk")

# name -> (model, expected (output, score tensor, skipped), expected summary of the outputs)
UNAMBIGUOUS = {
    "logits_and_probs": (
        lambda: head_model([SOFTMAX], ["probs"]),
        ("logits", "logits", None), "outputs: logits, probs = Softmax(logits)"),
    "probs_first": (  # the order of the outputs does not matter: the raw scores win
        lambda: _reordered(head_model([SOFTMAX], ["probs"])),
        ("logits", "logits", None), "outputs: probs = Softmax(logits), logits"),
    "probs_and_label": (
        lambda: head_model([SOFTMAX, ARGMAX], ["probs", "label"], keep_logits=False),
        ("probs", "logits", "Softmax"), "outputs: probs = Softmax(logits), label = ArgMax(probs)"),
    "logits_probs_label": (
        lambda: head_model([SOFTMAX, ARGMAX], ["probs", "label"]),
        ("logits", "logits", None), "outputs: logits, probs = Softmax(logits), label = ArgMax(probs)"),
    "logits_and_topk": (
        lambda: head_model([TOPK], ["top_val", "top_idx"], inits=[k_init()]),
        ("logits", "logits", None),
        "outputs: logits, top_val = TopK(logits).values, top_idx = TopK(logits).indices"),
    "topk_only": (  # nothing but selections: the tensor they select from holds the class scores
        lambda: head_model([TOPK], ["top_val", "top_idx"], keep_logits=False, inits=[k_init()]),
        ("logits", "logits", None), "outputs: top_val = TopK(logits).values, top_idx = TopK(logits).indices"),
    "label_only": (
        lambda: head_model([helper.make_node("ArgMax", ["logits"], ["label"], axis=-1, keepdims=0)], ["label"],
                           keep_logits=False),
        ("logits", "logits", None), "outputs: label = ArgMax(logits)"),
    "views_between": (  # exporters put reshapes between the normaliser, the selection and the outputs
        lambda: head_model([
            helper.make_node("LogSoftmax", ["logits"], ["logp_2d"], axis=1),
            helper.make_node("Reshape", ["logp_2d", "shape"], ["log_probs"]),
            helper.make_node("ArgMax", ["log_probs"], ["label_2d"], axis=1, keepdims=1),
            helper.make_node("Squeeze", ["label_2d", "one"], ["label_1d"]),
            helper.make_node("ReduceMax", ["log_probs"], ["confidence"], axes=[1], keepdims=0),
        ], ["log_probs", "label_1d", "confidence"], keep_logits=False,
            inits=[numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
                   numpy_helper.from_array(np.array([1], np.int64), "one")]),
        ("log_probs", "logits", "LogSoftmax"),
        "outputs: log_probs = LogSoftmax(logits), label_1d = ArgMax(log_probs), "
        "confidence = ReduceMax(log_probs)"),
    "copy_of_probs": (  # an Identity of the probabilities is probabilities, not raw scores
        lambda: head_model([SOFTMAX, helper.make_node("Identity", ["probs"], ["probs_copy"])],
                           ["probs", "probs_copy"], keep_logits=False),
        ("probs", "logits", "Softmax"), "outputs: probs = Softmax(logits), probs_copy = probs"),
}


def _reordered(model):
    outputs = list(model.graph.output)
    del model.graph.output[:]
    model.graph.output.extend(reversed(outputs))
    return model


@pytest.mark.parametrize("name", list(UNAMBIGUOUS))
def test_unambiguous_outputs_are_chosen(name):
    make, expected, summary = UNAMBIGUOUS[name]
    model = graph_load.normalise(make())
    choice = choose_score(model)
    assert (choice.output, choice.tensor, choice.skipped) == expected
    assert find_score(model) == expected
    assert choice.summary() == summary
    assert choice.reason in ("the other outputs are computed from its class scores",
                             "every output selects from the class scores 'logits'")


@pytest.mark.parametrize("name", ["probs_and_label", "logits_and_topk", "topk_only", "views_between"])
def test_loaded_model_explains_the_chosen_scores(name):
    """The whole engine on such a model: the scores are the logits, gradients equal a model with the one output."""
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    m = cv.load(UNAMBIGUOUS[name][0](), device="cpu")
    plain = cv.load(gap_classifier(), device="cpu")
    assert m.score_name == "logits" and m.num_classes == CLASSES
    np.testing.assert_allclose(m.scores(x), plain.scores(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cv.gradients(m, x, targets=[1, 3]), cv.gradients(plain, x, targets=[1, 3]),
                               rtol=1e-6, atol=1e-7)


def _second_head(normaliser=None):
    """logits and a second, independent Gemm head over the same pooled features (optionally normalised)."""
    w2 = np.random.default_rng(5).standard_normal((CLASSES, 4)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["flat", "fc2_w"], ["aux"], transB=1, name="fc2")]
    out = "aux"
    if normaliser:
        nodes.append(helper.make_node(normaliser, ["aux"], ["aux_probs"], name="aux_norm"))
        out = "aux_probs"
    return head_model(nodes, [out], inits=[numpy_helper.from_array(w2, "fc2_w")])


@pytest.mark.parametrize("normaliser", [None, "Sigmoid"])
def test_independent_heads_still_ask(normaliser):
    model = _second_head(normaliser)
    other = "aux_probs" if normaliser else "aux"
    with pytest.raises(ModelStructureError) as err:
        choose_score(graph_load.normalise(model))
    message = str(err.value)
    assert f"several outputs (logits, {other})" in message and "output=NAME" in message
    assert "logits (class scores, computed by Gemm 'fc')" in message
    if normaliser:
        assert "aux_probs = Sigmoid(aux) (sigmoid probabilities, aux computed by Gemm 'fc2')" in message
    else:
        assert "aux (class scores, computed by Gemm 'fc2')" in message
    with pytest.raises(ModelStructureError, match="several outputs"):
        cv.load(model, device="cpu")
    m = cv.load(model, device="cpu", output=other)
    assert m.score_name == "aux" and m.softmax_skipped == normaliser


def test_named_output_must_hold_class_scores():
    model = graph_load.normalise(head_model([SOFTMAX, ARGMAX], ["probs", "label"]))
    assert find_score(model, "probs") == ("probs", "logits", "Softmax")
    with pytest.raises(ModelStructureError, match=r"'label' holds labels \(label = ArgMax\(probs\)\), not a class "
                                                  r"vector.*output=NAME"):
        choose_score(model, "label")
    assert choose_score(model, "probs").reason == "named with output=NAME (--output)"


def test_global_max_pool_is_not_a_selection():
    """ReduceMax over H and W is a global max pool: its output is the class scores themselves (a 1x1 conv head)."""
    w = np.random.default_rng(1).standard_normal((CLASSES, 4, 1, 1)).astype(np.float32)
    model = gap_classifier()
    del model.graph.node[-3:]  # pool, flatten, Gemm
    model.graph.node.extend([helper.make_node("Conv", ["relu1", "cls_w"], ["cls_map"], name="cls"),
                             helper.make_node("ReduceMax", ["cls_map"], ["logits"], axes=[2, 3], keepdims=0)])
    model.graph.initializer.append(numpy_helper.from_array(w, "cls_w"))
    roles = output_roles(model)
    assert [(r.name, r.kind, r.root) for r in roles] == [("logits", "class scores", "logits")]
    assert find_score(model) == ("logits", "logits", None)


def test_inspect_says_which_output_and_why(tmp_path):
    path = save(head_model([SOFTMAX, ARGMAX], ["probs", "label"]), tmp_path / "three_outputs.onnx")
    result = invoke("inspect", path, "--preprocess", "none")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("score "))
    assert lines[at].split() == ["score", "logits,", "5", "classes"]
    assert lines[at + 1].strip() == ("from logits (outputs: logits, probs = Softmax(logits), label = ArgMax(probs)): "
                                     "the other outputs are computed from its class scores")
    info = json.loads(invoke("--json", "inspect", path, "--preprocess", "none").stdout)
    assert info["score"]["output"] == "logits" and info["score"]["tensor"] == "logits"
    assert info["score_choice"] == {
        "output": "logits", "reason": "the other outputs are computed from its class scores",
        "summary": "outputs: logits, probs = Softmax(logits), label = ArgMax(probs)",
        "outputs": [
            {"name": "logits", "kind": "class scores", "computed_from": None,
             "expression": "logits (class scores, computed by Gemm 'fc')"},
            {"name": "probs", "kind": "probabilities", "computed_from": "logits",
             "expression": "probs = Softmax(logits)"},
            {"name": "label", "kind": "labels", "computed_from": "probs", "expression": "label = ArgMax(probs)"}]}


def test_inspect_of_one_output_adds_no_line_and_names_the_reason(tmp_path):
    path = save(gap_classifier(), tmp_path / "one_output.onnx")
    result = invoke("inspect", path, "--preprocess", "none")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("score "))
    assert not lines[at + 1].startswith(" ")
    info = json.loads(invoke("--json", "inspect", path, "--preprocess", "none").stdout)
    assert info["score_choice"]["reason"] == "the model's only output"


def test_inspect_of_independent_heads_is_one_line_error(tmp_path):
    path = save(_second_head("Sigmoid"), tmp_path / "two_heads.onnx")
    result = invoke("inspect", path, "--preprocess", "none")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "--output NAME" in line and "aux_probs = Sigmoid(aux)" in line
    result = invoke("inspect", path, "--preprocess", "none", "--output", "aux_probs")
    assert result.exit_code == 0, result.output
    assert "input of the final Sigmoid, which is skipped" in result.stdout
    assert "named with output=NAME (--output)" in result.stdout
