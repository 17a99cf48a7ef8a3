"""The selection rules (TopK, NonMaxSuppression, Concat of run-time lengths) and GatherElements with indices computed
in the forward run, against central finite differences (the harness of tests/graph/test_rules.py).

A selection's gradient holds the forward's choice fixed (as max-pool's winners): the inputs are drawn with distinct,
well separated values so that no choice flips over the finite-difference stencil."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnx_cnnviz.errors import UnsupportedOpError

from .test_rules import Case, check, distinct, gradient_graph, node


@pytest.mark.parametrize("axis, largest, k", [(-1, 1, 3), (1, 1, 2), (1, 0, 4), (2, 1, 1), (0, 1, 2)])
def test_topk_values(axis, largest, k):
    """Y = TopK(X, k).values: dX scatters dY back to the chosen elements (axis 0, the batch, is refused)."""
    case = Case([node("TopK", ["X", "k"], ("Y", "I"), axis=axis, largest=largest)],
                {"X": distinct((2, 5, 4), seed=k)}, {"k": np.array([k], np.int64)},
                shape_fixes={"Y": (None, 5, 4)} if axis == 0 else {})
    if axis == 0:
        with pytest.raises(UnsupportedOpError, match="batch axis"):
            gradient_graph(case)
        return
    check(case)


def test_topk_with_k_computed_at_run_time_then_gathered():
    """k from the data (as torchvision's min(topk_candidates, number above the threshold)): the values' length is
    unknown until run time; a constant Gather after them makes the (N, 3) score."""
    x = distinct((2, 6), seed=3)
    nodes = [node("TopK", ["X", "k"], ("V", "I"), axis=1),
             node("Gather", ["V", "take"], ("Y",), axis=1)]
    check(Case(nodes, {"X": x, "k": np.array([4], np.int64)}, {"take": np.array([0, 2, 3], np.int64)},
               dims={"k": [1]}))


def test_gather_elements_with_topk_indices():
    """GatherElements reading the indices a TopK chose in the forward run (a second tensor picked at the winners)."""
    nodes = [node("TopK", ["X", "k"], ("V", "I"), axis=1),
             node("GatherElements", ["Z", "I"], ("G",), axis=1),
             node("Add", ["G", "V"], ("Y",))]
    case = Case(nodes, {"X": distinct((2, 5, 3), seed=5), "Z": distinct((2, 5, 3), seed=6)},
                {"k": np.array([2], np.int64)}, wrt=("X", "Z"))
    check(case)


def test_concat_of_run_time_lengths():
    """Concat along an axis whose pieces' lengths come from TopK's run-time k: dY split at the forward's lengths."""
    nodes = [node("TopK", ["X", "k1"], ("A", "IA"), axis=1),
             helper.make_node("TopK", ["Z", "k2"], ["B", "IB"], name="second_topk", axis=1),
             node("Concat", ["A", "B"], ("C",), axis=1),
             node("Gather", ["C", "take"], ("Y",), axis=1)]
    case = Case(nodes, {"X": distinct((2, 6), seed=7), "Z": distinct((2, 5), seed=8),
                        "k1": np.array([3], np.int64), "k2": np.array([4], np.int64)},
                {"take": np.array([0, 2, 3, 6, 5], np.int64)}, wrt=("X", "Z"), dims={"k1": [1], "k2": [1]})
    check(case)


def test_non_max_suppression_then_gather_of_kept_scores():
    """Y = the scores NonMaxSuppression keeps (gathered by its selected indices, as torchvision's export does): the
    kept scores' gradient is one at the kept boxes, zero elsewhere; the indices are the forward run's. The boxes get
    no gradient through the integer indices."""
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 20, (1, 8, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 10, (1, 8, 2))], axis=2)
    scores = (np.linspace(0.9, 0.2, 8)[rng.permutation(8)]).reshape(1, 1, 8)
    nodes = [node("NonMaxSuppression", ["B", "S", "max_out", "iou"], ("sel",)),
             node("Gather", ["sel", "col"], ("box_index",), axis=1),
             node("Reshape", ["S", "flat"], ("S8",)),
             helper.make_node("Gather", ["S8", "box_index"], ["kept"], name="gather_kept", axis=0),
             # the kept scores written from the start of a fixed (8,) row, as onnx_cnnviz.tasks.nms_head pads them
             node("Shape", ["kept"], ("count",)),
             node("Squeeze", ["count"], ("count0",)),
             node("Range", ["zero", "count0", "one"], ("slots",)),
             node("Unsqueeze", ["slots", "last"], ("slot_index",)),
             node("ScatterND", ["padding", "slot_index", "kept"], ("padded",)),
             helper.make_node("Reshape", ["padded", "row"], ["Y"], name="to_row")]
    inits = {"max_out": np.array([8], np.int64), "iou": np.array([0.3], np.float32),
             "col": np.array(2, np.int64), "flat": np.array([8], np.int64), "zero": np.array(0, np.int64),
             "one": np.array(1, np.int64), "last": np.array([1], np.int64), "padding": np.zeros(8, np.float32),
             "row": np.array([1, 8], np.int64)}
    case = Case(nodes, {"B": boxes, "S": scores}, inits, wrt=("S",), dims={"B": [1, 8, 4], "S": [1, 1, 8]})
    check(case)
