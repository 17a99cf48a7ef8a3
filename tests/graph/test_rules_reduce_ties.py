"""ReduceMax / ReduceMin with ties (issue 24, point 7: hiera's max-pool over mask units is a ReduceMax).

Away from ties the rule is checked against finite differences in tests/graph/test_rules.py. At an exact tie the
function has no derivative, and a convention decides: torch's ``amax``/``amin`` (which timm's Hiera calls, and which
exports as ReduceMax) share the gradient evenly between the tied elements. The rule must give exactly that, so
these cases compare with torch autograd and with the closed form ``g * (x == y) / count``; a rule that gave every
tied element the whole ``g`` (the old one) fails them.
"""
from __future__ import annotations

import numpy as np
import pytest

from .test_rules import check, distinct, one, run_gradients

torch = pytest.importorskip("torch")


def tied(shape, seed=0):
    """Small integers (many exact ties in every group), some groups constant."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, shape).astype(np.float32)
    x.reshape(-1, shape[-1])[::3] = 1.0  # every third row along the last axis all tied
    return x


CASES = [("ReduceMax", [1], 1), ("ReduceMax", [1], 0), ("ReduceMax", [2, 3], 0), ("ReduceMax", [-1], 1),
         ("ReduceMin", [3], 0), ("ReduceMin", [1, 2], 1)]


def torch_reference(op, x, axes, keepdims, w):
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    fn = torch.amax if op == "ReduceMax" else torch.amin
    y = fn(xt, dim=tuple(axes), keepdim=bool(keepdims))
    (torch.from_numpy(w.astype(np.float64)).reshape(y.shape) * y).sum().backward()
    return xt.grad.numpy()


@pytest.mark.parametrize("op,axes,keepdims", CASES, ids=str)
def test_ties_share_the_gradient_as_torch_amax(op, axes, keepdims):
    x = tied((2, 3, 4, 5), seed=len(axes) + keepdims)
    case = one(op, x, axes=axes, keepdims=keepdims)
    out_shape = _out_shape(x.shape, axes, keepdims)
    w = np.random.default_rng(7).normal(size=(x.shape[0], int(np.prod(out_shape[1:])))).astype(np.float32)
    _, grads = run_gradients(case, w)
    expected = torch_reference(op, x, axes, keepdims, w)
    np.testing.assert_allclose(grads["X"], expected, rtol=1e-6, atol=1e-7)
    # The closed form, independently of torch: each group's gradient sums to its g, spread over its ties.
    ax = tuple(a % x.ndim for a in axes)
    extreme = x.max(axis=ax, keepdims=True) if op == "ReduceMax" else x.min(axis=ax, keepdims=True)
    mask = (x == extreme).astype(np.float64)
    g = w.reshape(_out_shape(x.shape, axes, 1))
    np.testing.assert_allclose(grads["X"], g * mask / mask.sum(axis=ax, keepdims=True), rtol=1e-6, atol=1e-7)
    assert (mask.sum(axis=ax) > 1).any(), "degenerate test: no ties"


def _out_shape(shape, axes, keepdims):
    ax = {a % len(shape) for a in axes}
    return tuple(1 if i in ax else d for i, d in enumerate(shape)) if keepdims else \
        tuple(d for i, d in enumerate(shape) if i not in ax)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_without_ties_matches_finite_differences(op):
    check(one(op, distinct((2, 3, 4, 5), seed=8), axes=[1, 3], keepdims=0))
