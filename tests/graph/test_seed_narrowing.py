"""A seed inside one input of a Concat starts the backward pass at that input (graph/seed_narrowing.py): the same
gradient as the seed at the Concat's output (``Model.vjp`` there, which never narrows), and no narrowing where the
seed spans two inputs."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.graph.seed_narrowing import SeedPaths, narrow_seed
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


def two_level_head():
    """A two-level detector head in the ultralytics layout: x (N, 3, 6, 6) -> Conv -> Relu "r1" (N, 4, 6, 6), and
    r1 -> Conv stride 2 -> Relu "r2" (N, 4, 3, 3) (the neck path to the coarser level). Each level: box (2 ch) and
    class (3 ch) convolutions, Concat, Reshape to (N, 5, anchors); the levels' Concat (N, 5, 45), Split into box and
    class parts, the boxes doubled (Mul), the classes through a Sigmoid, Concat, Transpose "out" (N, 45, 5)."""
    rng = np.random.default_rng(0)
    shapes = {"w1": (4, 3, 3, 3), "w2": (4, 4, 3, 3), "wb0": (2, 4, 1, 1), "wc0": (3, 4, 1, 1),
              "wb1": (2, 4, 1, 1), "wc1": (3, 4, 3, 3)}
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in shapes.items()]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n)
              for n, v in (("flat0", [0, 5, 36]), ("flat1", [0, 5, 9]), ("sizes", [2, 3]))]
    inits.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"])]
    for level, (src, ks) in enumerate((("r1", 1), ("r2", 3))):
        nodes += [helper.make_node("Conv", [src, f"wb{level}"], [f"box{level}"]),
                  helper.make_node("Conv", [src, f"wc{level}"], [f"cls{level}"], pads=[ks // 2] * 4),
                  helper.make_node("Concat", [f"box{level}", f"cls{level}"], [f"cat{level}"], axis=1),
                  helper.make_node("Reshape", [f"cat{level}", f"flat{level}"], [f"lvl{level}"])]
    nodes += [helper.make_node("Concat", ["lvl0", "lvl1"], ["levels"], axis=2),
              helper.make_node("Split", ["levels", "sizes"], ["box", "logit"], axis=1),
              helper.make_node("Mul", ["box", "two"], ["box2"]),
              helper.make_node("Sigmoid", ["logit"], ["score"]),
              helper.make_node("Concat", ["box2", "score"], ["head"], axis=1),
              helper.make_node("Transpose", ["head"], ["out"], perm=[0, 2, 1])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                      [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 45, 5])], inits, opset=18)


def _two_level(tmp_path):
    return cv.load(save(two_level_head(), tmp_path / "levels.onnx"), device="cpu", task="segmenter",
                   input_size=(6, 6))


def test_dead_branches_of_a_seed_are_left_out_with_the_same_gradients(tmp_path):
    m = _two_level(tmp_path)
    paths = SeedPaths(m.spec().model, m.spec().info)
    x = np.random.default_rng(1).standard_normal((3, 3, 6, 6)).astype(np.float32)
    seed = np.zeros((3, 45, 5), np.float32)
    seed[0, 7, 3] = 1.0  # level 0 (anchors 0-35), a class score
    seed[1, 20, 4] = 1.0
    seed[2, 30, 2] = -0.5
    at, rows = paths.narrow("out", seed.reshape(3, -1))
    assert at == "out"  # a Transpose, not a Concat: the seed stays where it is
    dead = paths.dead(at, rows)
    # every box branch, the coarser level's class branch and the neck path that feeds only the coarser level
    assert {"box0", "box1", "cls1", "cat1", "lvl1", "box", "box2", "c2", "r2"} <= dead
    assert not dead & {"r1", "c1", "cls0", "cat0", "lvl0", "levels", "logit", "score", "head"}
    wrt = [m.input_name, "r1", "r2"]
    targets = [cv.OutputWeights("out", s.reshape(-1)) for s in seed]
    pruned = m.run(x, wrt=wrt, targets=targets).grads
    whole = m.vjp(x, "out", seed, wrt=wrt).grads
    for name in wrt:
        np.testing.assert_allclose(pruned[name], whole[name], rtol=1e-6, atol=1e-7)
    assert np.abs(whole["r1"]).max() > 0 and not np.any(pruned["r2"])  # r2 is dead: zeros, as the whole graph's
    full = m._graph(wrt=tuple(wrt), at="out")
    lean = m._graph(wrt=tuple(wrt), at="out", dead=dead)
    # the backward convolutions of c2, box0, box1 and cls1 are gone (those of c1 and cls0 remain)
    convs = [sum(n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") for n in g.graph.node) for g in (full, lean)]
    assert convs[0] - convs[1] >= 4, convs


def test_a_seed_on_the_coarser_level_keeps_the_neck_path_and_drops_the_finer_head(tmp_path):
    m = _two_level(tmp_path)
    paths = SeedPaths(m.spec().model, m.spec().info)
    seed = np.zeros((2, 45, 5), np.float32)
    seed[:, 40, 3] = 1.0  # level 1 (anchors 36-44)
    dead = paths.dead("out", seed.reshape(2, -1))
    assert {"box0", "cls0", "cat0", "lvl0", "box1"} <= dead and not dead & {"r1", "r2", "c2", "cls1"}
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    targets = [cv.OutputWeights("out", s.reshape(-1)) for s in seed]
    pruned = m.run(x, wrt=[m.input_name, "r1"], targets=targets).grads
    whole = m.vjp(x, "out", seed, wrt=[m.input_name, "r1"]).grads
    for name in pruned:
        np.testing.assert_allclose(pruned[name], whole[name], rtol=1e-6, atol=1e-7)


def test_a_seed_over_both_levels_and_boxes_leaves_nothing_out(tmp_path):
    m = _two_level(tmp_path)
    paths = SeedPaths(m.spec().model, m.spec().info)
    seed = np.random.default_rng(3).standard_normal((2, 45 * 5)).astype(np.float32)
    dead = paths.dead("out", seed)
    assert not dead & {"box0", "cls0", "box1", "cls1", "r1", "r2", "c2", "box", "score"}
    assert paths.dead("out", np.zeros_like(seed)) == frozenset()
