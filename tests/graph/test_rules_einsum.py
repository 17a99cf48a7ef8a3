"""The Einsum rule against central finite differences (the harness of tests/graph/test_rules.py), one node per
equation: contractions, batch dimensions, broadcasting of labels and of the ellipsis, labels summed by one operand
alone, diagonals and traces, implicit outputs, the same tensor twice, and every operand of a three-way product.

The reference is a float64 copy of the same one-node model run by onnxruntime (its Einsum has a double kernel), so
the tolerance is 1e-5 of the largest gradient entry; the equations are also checked against ``numpy.einsum`` so that
a case cannot pass by testing a different function than the one named.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnx_cnnviz.errors import UnsupportedOpError
from onnx_cnnviz.graph.autodiff.rules.einsum import parse_equation

from .test_rules import Case, build, check, feeds, gradient_graph, rand, session


def einsum_case(equation: str, *shapes, wrt=None, batch: bool = False, inits=()) -> Case:
    """``Y = Einsum(equation)(X0, X1, ...)`` viewed as (first dim, -1), with inputs of ``shapes``; ``inits``: operand
    indices given as weights (initializers) instead of graph inputs; ``batch``: the first dim of every input is the
    symbolic N (else every dim is static)."""
    names = [f"X{i}" for i in range(len(shapes))]
    values = {n: rand(s, seed=i) for i, (n, s) in enumerate(zip(names, shapes))}
    inputs = {n: v for i, (n, v) in enumerate(values.items()) if i not in inits}
    weights = {n: v for i, (n, v) in enumerate(values.items()) if i in inits}
    dims = {} if batch else {n: list(v.shape) for n, v in inputs.items()}
    nodes = [helper.make_node("Einsum", names, ["E"], name="einsum_node", equation=equation),
             helper.make_node("Reshape", ["E", "flat"], ["Y"], name="flatten")]
    weights["flat"] = np.array([0, -1], dtype=np.int64)
    return Case(nodes, inputs, weights, wrt=tuple(wrt or inputs), dims=dims)


def _matches_numpy(case: Case, equation: str):
    """The one-node model computes numpy's einsum of the same operands (the case tests what it names)."""
    model = build(case, np.float64)
    model.graph.output.append(helper.make_tensor_value_info("E", 11, None))
    got = session(model).run(["E"], feeds(case, np.float64))[0]
    operands = [case.inputs.get(n, case.inits.get(n)) for n in case.nodes[0].input]
    np.testing.assert_allclose(got, np.einsum(equation, *operands), rtol=1e-10, atol=1e-10)


CASES = {
    # name: (equation, shapes, options)
    "matmul": ("ij,jk->ik", [(2, 3), (3, 4)], {}),
    "batched_attention_scores": ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)], {"batch": True}),
    "attention_values": ("bhqk,bhkd->bhqd", [(2, 2, 3, 5), (2, 2, 5, 4)], {"batch": True}),
    "maxvit_relative": ("bhwc,hkc->bhwk", [(2, 3, 4, 5), (3, 6, 5)], {}),
    "implicit_output": ("ij,jk", [(2, 3), (3, 4)], {}),
    "transpose_only": ("ijk->kji", [(2, 3, 4)], {}),
    "outer_product": ("i,j->ij", [(2,), (3,)], {}),
    "summed_by_one_operand": ("ij,ik->ik", [(2, 3), (2, 4)], {}),
    "full_contraction": ("ij,ij->i", [(2, 3), (2, 3)], {}),
    "reduction_single_operand": ("ijk->ik", [(2, 3, 4)], {}),
    "three_operands": ("bi,ij,bj->bj", [(2, 3), (3, 4), (2, 4)], {}),
    "broadcast_label": ("ij,ij->ij", [(2, 3), (1, 3)], {}),
    "broadcast_contracted_label": ("ij,jk->ik", [(2, 1), (3, 4)], {}),
    "broadcast_batch_label": ("bij,bjk->bik", [(2, 2, 3), (1, 3, 4)], {}),
    "broadcast_over_symbolic_batch": ("bij,bjk->bik", [(2, 2, 3), (1, 3, 4)], {"inits": (1,), "batch": True}),
    "ellipsis": ("...ij,...jk->...ik", [(2, 2, 3, 4), (2, 2, 4, 5)], {}),
    "ellipsis_broadcast": ("...ij,...jk->...ik", [(2, 1, 3, 4), (2, 3, 4, 5)], {}),
    "ellipsis_middle": ("i...j,j->i...", [(2, 3, 4, 5), (5,)], {}),
    "ellipsis_implicit": ("...ij,...jk", [(2, 3, 4), (2, 4, 5)], {}),
    "diagonal": ("bii->bi", [(2, 3, 3)], {}),
    "trace": ("bii->b", [(2, 3, 3)], {}),
    "diagonal_summed_label": ("biij->bj", [(2, 3, 3, 4)], {}),
    "ellipsis_with_diagonal": ("...ii->...i", [(2, 3, 3)], {}),
    "uppercase_labels": ("bIj,jK->bIK", [(2, 3, 4), (4, 5)], {}),
    "weight_operand": ("bhwc,hkc->bhwk", [(2, 3, 4, 5), (3, 6, 5)], {"inits": (1,), "batch": True}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_einsum(name):
    equation, shapes, options = CASES[name]
    case = einsum_case(equation, *shapes, **options)
    _matches_numpy(case, equation)
    check(case)


def test_einsum_same_tensor_twice():
    """X used as both operands (a Gram matrix): the two contributions add up."""
    nodes = [helper.make_node("Einsum", ["X", "X"], ["E"], name="einsum_node", equation="bij,bkj->bik"),
             helper.make_node("Reshape", ["E", "flat"], ["Y"], name="flatten")]
    check(Case(nodes, {"X": rand((2, 3, 4))}, {"flat": np.array([0, -1], dtype=np.int64)}))


def test_einsum_label_summed_alone_over_batch():
    """A label only one operand has, over a dimension that follows the batch: the ones are built at run time."""
    case = einsum_case("bi,ij->j", (2, 3), (3, 4), wrt=["X0", "X1"])
    case.dims = {"X0": ["N", 3], "X1": [3, 4]}
    case.inits["flat"] = np.array([1, -1], dtype=np.int64)
    check(case)


@pytest.mark.parametrize("equation,shapes", [("ii->i", [(3, 3)]), ("ij->", [(2, 3)]), ("Ij,jK->IK", [(2, 3), (3, 4)])])
def test_parse_equation_writes_the_implicit_output(equation, shapes):
    terms, out = parse_equation(equation, [len(s) for s in shapes])
    operands = [np.zeros(s) for s in shapes]
    explicit = ",".join("".join(t) for t in terms) + "->" + "".join(out)
    assert np.einsum(explicit, *operands).shape == np.einsum(equation, *operands).shape


def test_parse_equation_reads_implicit_order_like_numpy():
    terms, out = parse_equation("kj,ji", [2, 2])
    assert out == ["i", "k"]  # alphabetical, as numpy and onnxruntime write it
    assert parse_equation("...ij,...jk", [3, 3])[1] == ["...", "i", "k"]


def test_einsum_diagonal_over_the_batch_is_refused():
    """A diagonal needs an identity of a known size; over a dimension that follows the batch it is refused."""
    nodes = [helper.make_node("Einsum", ["X"], ["E"], name="einsum_node", equation="ii->i"),
             helper.make_node("Unsqueeze", ["E", "ax"], ["Y"], name="to_scores")]
    case = Case(nodes, {"X": rand((2, 2))}, {"ax": np.array([1], dtype=np.int64)}, dims={"X": ["N", "N"]})
    with pytest.raises(UnsupportedOpError) as err:
        gradient_graph(case)
    assert "'einsum_node'" in str(err.value) and "op_type Einsum" in str(err.value)
    assert "diagonal" in str(err.value)


# --------------------------------------------------------------------------------------------------------------------
# The norms (ReduceSumSquare, ReduceL2): contractions of a tensor with itself
# --------------------------------------------------------------------------------------------------------------------

def _reduce(op, x, axes, keepdims, opset=18):
    nodes = [helper.make_node(op, ["X", "ax"], ["R"], name=f"{op}_node", keepdims=keepdims),
             helper.make_node("Reshape", ["R", "flat"], ["Y"], name="flatten")]
    return Case(nodes, {"X": x}, {"ax": np.array(axes, dtype=np.int64), "flat": np.array([0, -1], dtype=np.int64)},
                opset=opset)


@pytest.mark.parametrize("op", ["ReduceSumSquare", "ReduceL2"])
@pytest.mark.parametrize("axes,keepdims", [([-1], 1), ([1, 2], 0), ([2], 0)])
def test_norms(op, axes, keepdims):
    check(_reduce(op, rand((2, 3, 4)), axes, keepdims))


def test_l2_normalise_as_swin_v2_exports_it():
    """F.normalize(x, dim=-1) = x / max(||x||, eps): ReduceL2 -> Clip -> Div, the TorchScript export."""
    nodes = [helper.make_node("ReduceL2", ["X", "ax"], ["n"], name="norm", keepdims=1),
             helper.make_node("Clip", ["n", "eps"], ["c"], name="clip"),
             helper.make_node("Div", ["X", "c"], ["d"], name="div"),
             helper.make_node("Reshape", ["d", "flat"], ["Y"], name="flatten")]
    check(Case(nodes, {"X": rand((2, 3, 4))}, {"ax": np.array([-1], dtype=np.int64), "eps": np.array(1e-12),
                                               "flat": np.array([0, -1], dtype=np.int64)}, opset=18))


def test_l2_gradient_is_zero_at_a_zero_norm():
    """The norm has no derivative at 0; like torch, the rule gives 0 there rather than NaN."""
    x = rand((2, 3, 4))
    x[0, 1] = 0.0
    case = _reduce("ReduceL2", x, [-1], 1)
    gg = gradient_graph(case)
    w = np.ones((2, 3), dtype=np.float32)
    out = session(gg.model).run([gg.gradients["X"]], {"X": x.astype(np.float32), gg.seed_input: w})[0]
    assert np.isfinite(out).all() and not out[0, 1].any()
    assert np.abs(out[1]).max() > 0
