"""The rules of Pad in its copying modes (reflect, edge, wrap) and of ScatterND, against central finite differences
(the harness of tests/graph/test_rules.py), one node per variant.

Pad: several pad widths per mode, ranks 2 to 5, pads on the batch-free axes only, negative pads (crops) on one or
both sides, the ``axes`` input of Pad-18, and pads as wide as the axis allows. Each case is also checked against
``numpy.pad`` so that it tests the function it names (onnxruntime's reflect/edge/wrap on positive pads are numpy's).
"""
from __future__ import annotations

import numpy as np
import pytest

from onnx_cnnviz.errors import UnsupportedOpError
from onnx_cnnviz.graph.autodiff.rules.shape import pad_sources

from .test_rules import build, check, feeds, gradient_graph, one, rand, session


def _i64(values):
    return np.array(values, dtype=np.int64)


def pad_case(mode: str, shape: tuple, pads: list, axes: list | None = None, seed: int = 0):
    """``Y = Pad(X, pads[, axes], mode)``; opset 19 for wrap (Pad-19 added it) and for ``axes``, else 17."""
    inits = {"p": _i64(pads)}
    inputs = ["X", "p"]
    if axes is not None:
        inits["ax"] = _i64(axes)
        inputs += ["", "ax"]
    opset = 19 if mode == "wrap" or axes is not None else 17
    return one("Pad", rand(shape, seed=seed), inits, inputs, opset=opset, mode=mode)


PAD_CASES = {
    # 4-D maps as BlurPool pads them (1 on each side of H and W), and wider
    "4d_1": ((2, 2, 4, 5), [0, 0, 1, 1, 0, 0, 1, 1]),
    "4d_asymmetric": ((2, 2, 4, 5), [0, 0, 2, 1, 0, 0, 3, 2]),
    "4d_widest": ((1, 2, 4, 5), [0, 0, 3, 4, 0, 0, 3, 4]),  # reflect allows at most size - 1
    "4d_one_axis": ((2, 3, 4, 4), [0, 0, 0, 2, 0, 0, 0, 1]),
    "4d_channels": ((2, 4, 3, 3), [0, 1, 0, 0, 0, 2, 0, 0]),
    "2d": ((3, 6), [0, 2, 0, 3]),
    "3d": ((2, 3, 5), [0, 1, 2, 0, 0, 1]),
    "5d": ((1, 2, 3, 3, 4), [0, 0, 1, 0, 2, 0, 0, 2, 1, 1]),
    "negative_begin": ((2, 2, 5, 5), [0, 0, -1, 2, 0, 0, 1, 1]),
    "negative_end": ((2, 2, 5, 5), [0, 0, 1, 1, 0, 0, 2, -2]),
    "negative_both": ((2, 2, 6, 5), [0, 0, -2, 0, 0, 0, -1, 0]),
}


@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap"])
@pytest.mark.parametrize("name", list(PAD_CASES))
def test_pad_modes_match_finite_differences(mode, name):
    shape, pads = PAD_CASES[name]
    case = pad_case(mode, shape, pads)
    if not any(p < 0 for p in pads):  # positive pads: the one-node model is numpy.pad in that mode
        rank = len(shape)
        width = list(zip(pads[:rank], pads[rank:]))
        got = session(build(case, np.float64)).run(["Y"], feeds(case, np.float64))[0]
        np.testing.assert_allclose(got, np.pad(case.inputs["X"], width, mode={"edge": "edge", "reflect": "reflect",
                                                                                "wrap": "wrap"}[mode]))
    check(case)


@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap"])
def test_pad_modes_with_axes_input(mode):
    check(pad_case(mode, (2, 2, 4, 5), [1, 2, 2, 0], axes=[-1, 2]))


def test_pad_sources_are_the_copied_positions():
    """The measured source indices of one axis, against numpy.pad of arange (positive pads)."""
    for mode in ("reflect", "edge", "wrap"):
        for begin, end in ((1, 1), (2, 0), (0, 3), (3, 2)):
            expected = np.pad(np.arange(4), (begin, end), mode=mode)
            np.testing.assert_array_equal(pad_sources(mode, 4, begin, end), expected)


def test_reflect_wider_than_the_axis_is_refused_by_name():
    """onnxruntime refuses reflect pads of the axis's length or more; the rule says so with the node's name (the
    forward model itself runs only with the pads within bounds, so the graph is built without running it)."""
    case = pad_case("reflect", (2, 2, 3, 3), [0, 0, 0, 3, 0, 0, 0, 0])
    with pytest.raises(UnsupportedOpError) as err:
        gradient_graph(case)
    assert "'Pad_node'" in str(err.value) and "reflect" in str(err.value)


# --------------------------------------------------------------------------------------------------------------------
# ScatterND
# --------------------------------------------------------------------------------------------------------------------

def scatter_case(shape: tuple, indices: np.ndarray, update_shape: tuple, reduction: str | None = None,
                 batch: bool = True):
    """``Y = ScatterND(X, I, U)`` with X and U graph inputs (both differentiated) and constant indices I;
    ``batch``: the first dim of X and U is the symbolic N (else every dim is static)."""
    from onnx import helper

    attrs = {} if reduction is None else {"reduction": reduction}
    node = helper.make_node("ScatterND", ["X", "I", "U"], ["Y"], name="ScatterND_node", **attrs)
    from .test_rules import Case
    inputs = {"X": rand(shape, seed=1), "U": rand(update_shape, seed=2)}
    dims = {} if batch else {n: list(v.shape) for n, v in inputs.items()}
    return Case([node], inputs, {"I": _i64(indices)}, wrt=("X", "U"), dims=dims, opset=18 if reduction else 17)


def _numpy_scatter(x, indices, updates, reduction):
    out = x.copy()
    depth = indices.shape[-1]
    for pos, upd in zip(indices.reshape(-1, depth), updates.reshape(-1, *x.shape[depth:])):
        if reduction == "add":
            out[tuple(pos)] += upd
        else:
            out[tuple(pos)] = upd
    return out


SCATTER_CASES = {
    # whole elements of a (N, C, L) tensor: indices of depth 3, one batch entry each
    "elements": ((2, 3, 4), [[[0, 1, 2], [1, 0, 3], [1, 2, 0]]], (1, 3), None, False),
    # rows of the non-batch axes written for both samples (depth 1 over a static leading axis)
    "rows_depth1": ((3, 2, 4), [[2], [0]], (2, 2, 4), None, False),
    # blocks: depth 2 (sample, channel), the whole spatial slice written: as MViTv2 writes its attention map
    "slices_depth2": ((2, 3, 2, 3), [[0, 2], [1, 0], [1, 2]], (3, 2, 3), None, True),
    # negative indices count from the end
    "negative": ((2, 4, 3), [[-1, 1], [0, -3]], (2, 3), None, True),
    # add: a position written twice receives both updates (and both updates its g)
    "add_repeated": ((2, 3, 4), [[0, 1], [0, 1], [1, 2]], (3, 4), "add", True),
    "add_elements": ((2, 3), [[0, 2], [1, 1], [0, 2]], (3,), "add", True),
}


@pytest.mark.parametrize("name", list(SCATTER_CASES))
def test_scatter_nd_matches_finite_differences(name):
    shape, indices, update_shape, reduction, batch = SCATTER_CASES[name]
    case = scatter_case(shape, np.array(indices), update_shape, reduction, batch)
    got = session(build(case, np.float64)).run(["Y"], feeds(case, np.float64))[0]
    expected = _numpy_scatter(case.inputs["X"], np.where(np.array(indices) < 0,
                                                         np.array(indices) + np.array(shape[:len(indices[0])]),
                                                         np.array(indices)),
                              case.inputs["U"], reduction)
    np.testing.assert_allclose(got, expected)  # the case computes the scatter it names
    check(case)


def test_scatter_nd_data_only_and_updates_only():
    """Only the wanted inputs get a gradient (a constant data tensor, constant updates)."""
    case = scatter_case((2, 3, 4), np.array([[0, 1], [1, 2]]), (2, 4))
    case.wrt = ("U",)
    check(case)
    case.wrt = ("X",)
    check(case)


@pytest.mark.parametrize("reduction", ["mul", "max", "min"])
def test_scatter_nd_other_reductions_are_refused_by_name(reduction):
    case = scatter_case((2, 3), np.array([[0, 1]]), (1,), reduction)
    with pytest.raises(UnsupportedOpError) as err:
        gradient_graph(case)
    assert "'ScatterND_node'" in str(err.value) and reduction in str(err.value)
