"""A malformed Einsum equation is a typed error: ModelStructureError from the parser, UnsupportedOpError naming the
node when the backward rule meets it (never a bare ValueError)."""
from __future__ import annotations

import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import ModelStructureError, UnsupportedOpError
from onnx_cnnviz.graph.autodiff.rules.einsum import parse_equation
from tests.graph.test_rules import gradient_graph, one, rand


@pytest.mark.parametrize("equation, ranks, cause", [
    ("ij,jk->ik", [2], "has 2 operands, the node 1"),
    ("ijk->i", [2], "do not fit an operand of rank 2"),
    ("ij->ii", [2], "repeat a label"),
    ("i1->i", [2], "is not a subscript label"),
])
def test_a_malformed_equation_is_a_model_structure_error(equation, ranks, cause):
    with pytest.raises(ModelStructureError, match=cause) as info:
        parse_equation(equation, ranks)
    assert isinstance(info.value, cv.CnnvizError)
    assert "re-export" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("equation, cause", [
    ("ij->ij,", "is not a subscript label"),
    ("ijk->i", "do not fit an operand of rank 2"),
    ("ij,jk->ik", "has 2 operands, the node 1"),
    ("ij->ii", "repeat a label"),
])
def test_the_rule_turns_a_malformed_equation_into_an_unsupported_op_naming_the_node(equation, cause):
    """ONNX shape inference gives such a node no output shape, so the case fixes Y's shape to reach the rule."""
    case = one("Einsum", rand((2, 3)), equation=equation)
    case.shape_fixes = {"Y": (2, 3)}
    with pytest.raises(UnsupportedOpError, match=cause) as info:
        gradient_graph(case)
    assert info.value.node_name == "Einsum_node" and info.value.op_type == "Einsum"
