"""A seed inside one input of a Concat starts the backward pass at that input (graph/seed_narrowing.py): the same
gradient as the seed at the Concat's output (``Model.vjp`` there, which never narrows), and no narrowing where the
seed spans two inputs."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.graph.seed_narrowing import narrow_seed
from tests.tiny_models import make_model, save


def two_branch_head():
    """x (N, 3, 6, 6) -> Conv 3x3 -> Relu -> [Conv 1x1 -> 2 ch "box", Conv 1x1 -> Sigmoid -> 3 ch "cls"] ->
    Concat(axis 1) -> (N, 5, 6, 6) -> Reshape (N, 5, 36) "out"."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w", (4, 3, 3, 3)), ("wb", (2, 4, 1, 1)), ("wc", (3, 4, 1, 1)))]
    inits.append(numpy_helper.from_array(np.array([0, 5, 36], np.int64), "flat"))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "wb"], ["box"]),
             helper.make_node("Conv", ["r", "wc"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["cls"]),
             helper.make_node("Concat", ["box", "cls"], ["cat"], axis=1),
             helper.make_node("Reshape", ["cat", "flat"], ["out"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                      [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 5, 36])], inits)


def test_a_seed_in_one_part_starts_there_with_the_same_gradient(tmp_path):
    m = cv.load(save(two_branch_head(), tmp_path / "head.onnx"), device="cpu", task="segmenter",
                input_size=(6, 6))
    spec = m.spec()
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    seed = np.zeros((2, 5, 36), np.float32)
    seed[0, 3, 7] = 1.0
    seed[1, 2, 30] = 2.0
    at, rows = narrow_seed(spec.model, spec.info, "cat", seed.reshape(2, -1))
    assert at == "cls" and rows.shape == (2, 3 * 36)
    np.testing.assert_array_equal(rows.reshape(2, 3, 36), seed[:, 2:])
    targets = [cv.OutputWeights("cat", s.reshape(-1)) for s in seed]
    narrowed = m.run(x, wrt=[m.input_name], targets=targets).grads[m.input_name]
    whole = m.vjp(x, "cat", seed.reshape(2, 5, 6, 6)).grads[m.input_name]
    assert np.abs(whole).max() > 0
    np.testing.assert_allclose(narrowed, whole, rtol=1e-6, atol=1e-7)


def test_a_seed_across_parts_stays_where_it_is(tmp_path):
    m = cv.load(save(two_branch_head(), tmp_path / "head.onnx"), device="cpu", task="segmenter",
                input_size=(6, 6))
    spec = m.spec()
    seed = np.zeros((1, 5 * 36), np.float32)
    seed[0, [10, 100]] = 1.0  # channel 0 (box) and channel 2 (cls)
    assert narrow_seed(spec.model, spec.info, "cat", seed)[0] == "cat"
    assert narrow_seed(spec.model, spec.info, "cat", np.zeros_like(seed))[0] == "cat"
