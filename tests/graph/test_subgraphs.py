"""Control flow on the gradient path (issue 15): nothing lost, nothing silently wrong.

A subgraph (an ``If`` branch, a ``Loop`` or ``Scan`` body) may read a tensor of the main graph by name without listing
it among the node's inputs. Before, every walk looked at ``node.input`` only: the branch's use of the feature map was
invisible, so gradients came out wrong or the image seemed not to reach the score at all. Now

* an ``If`` whose condition is known once the input size is fixed (an initializer, a ``Constant``, shape arithmetic)
  is folded to its branch and differentiated like any other graph: checked here against float64 central finite
  differences of the *original* model (the If included) run by onnxruntime;
* an ``If`` whose condition depends on the image's values, and any ``Loop``/``Scan`` on the path, raise
  ``UnsupportedOpError`` naming the node, and ``inspect``'s gradient report does not say ok.

The models are hand-made: x (N, 3, 4, 4) -> Mul by a per-channel scale 'scale' -> a (the layer) -> If 'branchy'
(then: ReduceMean(a * a) over H, W; else: ReduceMean(a)) -> (N, 3) -> Gemm -> logits (N, 5).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.graph.structure import consumers, downstream, upstream
from onnx_cnnviz.graph.subgraphs import fold_constant_ifs, node_inputs
from onnx_cnnviz.report import describe

from .test_rules import session

CLASSES = 5
FD_EPS, FD_TOL = 1e-5, 1e-6  # float64 reference: central differences are exact to ~1e-10 here


def _head(elem, dtype, name: str, square: bool):
    """A branch: (N, 3) features from the outer tensor 'a' (squared first in the then branch)."""
    nodes, src = [], "a"
    if square:
        nodes.append(helper.make_node("Mul", ["a", "a"], [f"{name}_sq"], name=f"{name}_sq"))
        src = f"{name}_sq"
    nodes.append(helper.make_node("ReduceMean", [src], [f"{name}_out"], axes=[2, 3], keepdims=0,
                                  name=f"{name}_mean"))
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_out", elem, None)])


def if_model(cond: str = "initializer", value: bool = True, dtype=np.float32, nested: bool = False,
             batch="N") -> onnx.ModelProto:
    """``cond``: "initializer" | "constant" (a Constant node) | "shape" (Shape(x)[2] == 4) | "data" (sum(x) > 0).
    ``nested``: the then branch holds a second If (condition a Constant node inside the branch: True)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 1.5, (1, 3, 1, 1)).astype(dtype), "s"),
             numpy_helper.from_array(rng.standard_normal((CLASSES, 3)).astype(dtype), "W")]
    nodes = [helper.make_node("Mul", ["x", "s"], ["a"], name="scale")]
    if cond == "initializer":
        inits.append(numpy_helper.from_array(np.array(value), "flag"))
    elif cond == "constant":
        nodes.append(helper.make_node("Constant", [], ["flag"], value=numpy_helper.from_array(np.array(value)),
                                      name="flag_const"))
    elif cond == "shape":
        inits += [numpy_helper.from_array(np.array(2, dtype=np.int64), "two"),
                  numpy_helper.from_array(np.array(4 if value else 5, dtype=np.int64), "size")]
        nodes += [helper.make_node("Shape", ["x"], ["shp"], name="shp"),
                  helper.make_node("Gather", ["shp", "two"], ["h"], axis=0, name="geth"),
                  helper.make_node("Equal", ["h", "size"], ["flag"], name="eq")]
    else:
        inits.append(numpy_helper.from_array(np.array(0, dtype=dtype), "zero"))
        nodes += [helper.make_node("ReduceSum", ["x"], ["tot"], keepdims=0, name="tot"),
                  helper.make_node("Greater", ["tot", "zero"], ["flag"], name="gt")]
    then_g = _head(elem, dtype, "then", square=True)
    if nested:
        inner = helper.make_node("If", ["inner_flag"], ["then_out"], name="inner",
                                 then_branch=_head(elem, dtype, "deep", square=True),
                                 else_branch=_head(elem, dtype, "shallow", square=False))
        flag = helper.make_node("Constant", [], ["inner_flag"], value=numpy_helper.from_array(np.array(True)),
                                name="inner_flag")
        then_g = helper.make_graph([flag, inner], "then", [], [helper.make_tensor_value_info("then_out", elem, None)])
    nodes += [helper.make_node("If", ["flag"], ["feat"], name="branchy", then_branch=then_g,
                               else_branch=_head(elem, dtype, "else", square=False)),
              helper.make_node("Gemm", ["feat", "W"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "if_model", [helper.make_tensor_value_info("x", elem, [batch, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def loop_model(kind: str) -> onnx.ModelProto:
    """x -> a -> Loop (2 trips) | Scan (2 steps) whose body adds mean(a) (read from outer scope) to its state."""
    elem = TensorProto.FLOAT
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 1.5, (1, 3, 1, 1)).astype(np.float32), "s"),
             numpy_helper.from_array(rng.standard_normal((CLASSES, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros((1, 3), np.float32), "v0")]
    nodes = [helper.make_node("Mul", ["x", "s"], ["a"], name="scale")]
    mean = helper.make_node("ReduceMean", ["a"], ["m"], axes=[2, 3], keepdims=0, name="mean")
    if kind == "Loop":
        body = helper.make_graph(
            [mean, helper.make_node("Add", ["v_in", "m"], ["v_out"], name="acc"),
             helper.make_node("Identity", ["c_in"], ["c_out"], name="keep_going")], "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_in", elem, None)],
            [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_out", elem, None)])
        inits.append(numpy_helper.from_array(np.array(2, dtype=np.int64), "trips"))
        nodes.append(helper.make_node("Loop", ["trips", "", "v0"], ["feat"], body=body, name="looper"))
    else:
        body = helper.make_graph(
            [mean, helper.make_node("Mul", ["m", "e"], ["me"], name="weigh"),
             helper.make_node("Add", ["v_in", "me"], ["v_out"], name="acc")], "body",
            [helper.make_tensor_value_info("v_in", elem, None), helper.make_tensor_value_info("e", elem, [1])],
            [helper.make_tensor_value_info("v_out", elem, None)])
        inits.append(numpy_helper.from_array(np.array([[1.0], [2.0]], dtype=np.float32), "seq"))
        nodes.append(helper.make_node("Scan", ["v0", "seq"], ["feat"], body=body, num_scan_inputs=1,
                                      name="scanner"))
    nodes.append(helper.make_node("Gemm", ["feat", "W"], ["logits"], transB=1, name="fc"))
    graph = helper.make_graph(nodes, "loop_model", [helper.make_tensor_value_info("x", elem, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def x_of(n=2, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 4, 4)).astype(np.float32)


def finite_difference_gradient(model64: onnx.ModelProto, x: np.ndarray, targets) -> np.ndarray:
    """d logits[n, targets[n]] / dx by float64 central differences on the original model (If and all)."""
    sess = session(model64)
    base = x.astype(np.float64)
    rows = np.arange(len(base))

    def loss(v):
        return sess.run(["logits"], {"x": v})[0][rows, targets].sum()

    grad = np.zeros_like(base)
    for idx in np.ndindex(base.shape):
        plus, minus = base.copy(), base.copy()
        plus[idx] += FD_EPS
        minus[idx] -= FD_EPS
        grad[idx] = (loss(plus) - loss(minus)) / (2 * FD_EPS)
    return grad


# --------------------------------------------------------------------------------------------------------------------
# Walks see what subgraphs read
# --------------------------------------------------------------------------------------------------------------------

def test_walks_count_what_a_branch_reads_from_outer_scope():
    graph = if_model("data").graph
    branchy = next(n for n in graph.node if n.name == "branchy")
    assert list(branchy.input) == ["flag"]  # 'a' is read only inside the branches
    assert node_inputs(branchy) == ["flag", "a"]
    assert "feat" in downstream(graph, ["a"]) and "logits" in downstream(graph, ["a"])
    assert "a" in upstream(graph, ["logits"])
    assert branchy in consumers(graph)["a"]


# --------------------------------------------------------------------------------------------------------------------
# Constant conditions: folded, then exact gradients
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cond,value,nested", [("initializer", True, False), ("initializer", False, False),
                                               ("constant", True, False), ("shape", True, False),
                                               ("shape", False, False), ("initializer", True, True)])
def test_constant_if_is_folded_and_gradients_equal_finite_differences(cond, value, nested):
    m = cv.load(if_model(cond, value, nested=nested), device="cpu")
    spec = m.spec()
    assert not any(n.op_type == "If" for n in spec.model.graph.node), "the If should be folded"
    # The layer inside the taken branch is a layer now, and 'a' is listed (before: no layers at all).
    names = [layer.name for layer in m.layers]
    squared = value  # the then branch squares a: its product is the last spatial map
    inner = "branchy/inner/deep_sq" if nested else "branchy/then_sq"
    assert names == (["a", inner] if squared else ["a"])
    assert m.default_layer == names[-1]
    x, targets = x_of(), np.array([0, 3])
    got = cv.gradients(m, x, targets=targets)
    expected = finite_difference_gradient(if_model(cond, value, np.float64, nested=nested), x, targets)
    scale = np.abs(expected).max()
    assert scale > 1e-3
    assert np.abs(got - expected).max() / scale < FD_TOL, (got, expected)
    # The scores are the original model's.
    reference = session(if_model(cond, value, nested=nested)).run(["logits"], {"x": x})[0]
    np.testing.assert_allclose(m.scores(x), reference, rtol=1e-6, atol=1e-6)
    # Grad-CAM at 'a' runs (it goes through the folded branch) and the gradient report says ok.
    assert cv.grad_cam(m, x, targets=targets).shape == (2, 4, 4)
    assert describe(m)["gradient_path"]["ok"]


def test_the_shape_condition_is_folded_per_input_size():
    """Shape(x)[2] == 4: the then branch at 4x4, the else branch at 5x5, each differentiated correctly."""
    model = if_model("shape", True)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    m = cv.load(model, device="cpu", input_size=(4, 4))
    for size in (4, 5):
        x = np.random.default_rng(size).standard_normal((1, 3, size, size)).astype(np.float32)
        model64 = if_model("shape", True, np.float64)
        model64.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
        model64.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
        expected = finite_difference_gradient(model64, x, np.array([2]))
        got = cv.gradients(m, x, targets=2)
        assert np.abs(got - expected).max() / np.abs(expected).max() < FD_TOL
    # At 5x5 the else branch (a plain mean) is linear in x: the gradient is the same at every pixel of a channel.
    g5 = cv.gradients(m, np.ones((1, 3, 5, 5), np.float32), targets=2)
    assert np.allclose(g5, g5[:, :, :1, :1])


def test_fold_constant_ifs_renames_what_the_branch_defines():
    """Inlined names never collide: two Ifs whose branches use the same local names, both folded."""
    model = if_model("initializer", True)
    graph = model.graph
    second = onnx.NodeProto()
    second.CopyFrom(next(n for n in graph.node if n.name == "branchy"))
    second.name, second.output[0] = "branchy2", "feat2"
    graph.node.insert(len(graph.node) - 1, second)
    graph.node[-1].input[0] = "feat2"  # the Gemm now reads the second If; the first one's output is unused
    folded, count = fold_constant_ifs(model)
    assert count == 2
    outputs = [o for n in folded.graph.node for o in n.output]
    assert len(outputs) == len(set(outputs))
    x = x_of()
    np.testing.assert_allclose(session(folded).run(["logits"], {"x": x})[0],
                               session(model).run(["logits"], {"x": x})[0], rtol=1e-6)
    assert sum(n.op_type == "If" for n in model.graph.node) == 2  # the input model is not edited


# --------------------------------------------------------------------------------------------------------------------
# Data-dependent control flow: refused, never a silent wrong map
# --------------------------------------------------------------------------------------------------------------------

def test_data_dependent_if_on_the_path_is_refused_naming_the_node():
    m = cv.load(if_model("data"), device="cpu")
    x = x_of()
    # The forward pass is the model's own.
    np.testing.assert_allclose(m.scores(x), session(if_model("data")).run(["logits"], {"x": x})[0], rtol=1e-6)
    assert [layer.name for layer in m.layers] == ["a"]
    for method in (cv.saliency, cv.grad_cam, cv.gradients):
        with pytest.raises(cv.UnsupportedOpError) as info:
            method(m, x)
        assert info.value.node_name == "branchy" and info.value.op_type == "If"
        message = str(info.value)
        assert "'branchy'" in message and "If" in message and "condition 'flag'" in message
    report = describe(m)["gradient_path"]
    assert not report["ok"] and "branchy" in report["error"]
    assert report["ops"].get("If") == 1


@pytest.mark.parametrize("kind,node", [("Loop", "looper"), ("Scan", "scanner")])
def test_loop_or_scan_on_the_path_is_refused(kind, node):
    m = cv.load(loop_model(kind), device="cpu")
    x = x_of(1)
    for method in (cv.saliency, cv.grad_cam):
        with pytest.raises(cv.UnsupportedOpError) as info:
            method(m, x)
        assert info.value.node_name == node and info.value.op_type == kind
        assert f"'{node}'" in str(info.value)
    assert not describe(m)["gradient_path"]["ok"]


def test_incremental_occlusion_is_not_planned_through_a_branch_reading_feature_maps():
    """The incremental rewrite renames the inputs it recomputes; a branch reading 'a' by name would see the
    unoccluded map. The plan says why and the plain occlusion graph is used: its scores are the model's own."""
    from onnx_cnnviz.graph import occlusion_incremental

    m = cv.load(if_model("data"), device="cpu")
    spec = m.spec()
    plan = occlusion_incremental.plan(spec.model, spec.info, "x", m.score_name, (2, 2), (2, 2))
    assert not plan.incremental and not plan.worthwhile and "branchy" in plan.reason
    x = x_of(1)
    drops = cv.occlusion(m, x, targets=0, window=(2, 2), stride=(2, 2), upsample=False, normalize=False)
    sess = session(if_model("data"))
    base = sess.run(["logits"], {"x": x})[0][0, 0]
    occluded = x.copy()
    occluded[:, :, :2, :2] = 0.0
    assert np.isclose(drops[0, 0, 0], base - sess.run(["logits"], {"x": occluded})[0][0, 0], atol=1e-5)


def test_values_computed_from_image_values_are_not_taken_for_constants():
    """A probe on zeros gives ReduceSum(x) > 0 the same value at batch 1 and 2; it still is not a constant."""
    from onnx_cnnviz.graph.shapes import batch_independent_values

    model = if_model("shape")
    graph = model.graph
    graph.node.insert(1, helper.make_node("ReduceSum", ["x"], ["tot"], keepdims=0, name="tot"))
    graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.float32), "zero"))
    graph.node.insert(2, helper.make_node("Greater", ["tot", "zero"], ["positive"], name="gt"))
    values = batch_independent_values(model, ["flag", "h", "positive"], "x", (3, 4, 4))
    assert set(values) == {"flag", "h"} and bool(values["flag"]) and int(values["h"]) == 4
