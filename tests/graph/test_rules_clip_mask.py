"""The rectifying Clip's gradient through blocked-layout masks (rules/activations.py ``clip``, ``below_mask``):
ReLU6 = Clip(0, 6) multiplies g by ``HardSigmoid`` masks instead of Greater/Less/And/Where (issue 25: the backward
pass stays in onnxruntime's NCHWc layout). Checked against finite differences, exactly at and next to the bounds,
in both of Clip's forms (bounds as inputs from opset 11, attributes before) and for bounds outside the masks' range.
"""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv

from tests.graph.test_rules import check, gradient_graph, one, rand, run_gradients
from tests.tiny_models import gap_classifier


def _clip_case(x, lo, hi):
    inits = {"lo": np.array(lo)} | ({"hi": np.array(hi)} if hi is not None else {})
    return one("Clip", x, inits, ["X", "lo", "hi"] if hi is not None else ["X", "lo"])


def test_clip_with_attribute_bounds_takes_the_same_masks():
    """Before opset 11 Clip's bounds are attributes: the same masks, the same gradient as with input bounds."""
    x = np.random.default_rng(6).standard_normal((1, 3, 8, 8)).astype(np.float32) * 4
    grads = []
    for opset in (10, 17):
        m = cv.load(gap_classifier(activation="Clip6", opset=opset), device="cpu")
        ops = {n.op_type for n in m.build_graph(wrt=[m.input_name]).graph.node}
        assert "HardSigmoid" in ops and "Where" not in ops, ops
        grads.append(cv.gradients(m, x, targets=[1]))
    np.testing.assert_array_equal(grads[0], grads[1])


@pytest.mark.parametrize("hi", [6.0, 1.5, None])
def test_rectifying_clip_matches_finite_differences(hi):
    x = rand((2, 16, 3, 3), scale=4.0, kinks=(0.0,) + ((hi,) if hi is not None else ()), seed=3)
    case = _clip_case(x, 0.0, hi)
    ops = {n.op_type for n in gradient_graph(case).model.graph.node}
    assert "HardSigmoid" in ops and "Where" not in ops, ops
    check(case)


@pytest.mark.parametrize("hi", [6.0, 2.0 ** -60, 2.0 ** 20])
def test_mask_is_exact_at_and_next_to_the_bounds(hi):
    """g passes where 0 < y < hi and is stopped at y = 0 and y = hi, also one float away from either bound (the
    smallest normal float above 0; below it, subnormal activations pass a fraction, as :func:`relu_mask` says)."""
    hi32 = np.float32(hi)
    below = np.nextafter(hi32, np.float32(0))
    values = np.array([0.0, 2.0 ** -126, hi32 / 2, below, hi32, hi32 * 2, -1.0, 3.0], np.float32)
    x = np.tile(values, 2).reshape(1, 16, 1, 1)
    case = _clip_case(x, 0.0, hi)
    _, grads = run_gradients(case, np.ones((1, 16), np.float32))
    got = grads["X"]
    want = ((x > 0) & (x < hi32)).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_other_bounds_keep_the_comparisons():
    """A Clip whose lower bound is not 0, or whose upper bound is outside the masks' range, is not a rectifier
    for these masks: it keeps Greater/Less and Where, and the same values."""
    x = rand((2, 16, 3, 3), scale=4.0, kinks=(0.0, 2.0 ** 21), seed=4)
    case = _clip_case(x, 0.0, 2.0 ** 21)
    assert "Where" in {n.op_type for n in gradient_graph(case).model.graph.node}
    check(case)
    x = rand((2, 16, 3, 3), kinks=(-0.5, 0.7), seed=5)
    case = _clip_case(x, -0.5, 0.7)
    assert "Where" in {n.op_type for n in gradient_graph(case).model.graph.node}
    check(case)
