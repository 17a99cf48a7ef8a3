"""Weights the graph computes from its stored ones are folded once at load (graph/loading/weights.py's
``fold_computed_weights_inplace``; issue 26).

timm's NFNets standardise every convolution kernel at run time (``ScaledStdConv2d``), and a ``Linear`` exported as
``Transpose(W) -> MatMul`` transposes its matrix at run time. onnxruntime's constant folding stored the computed
weights in every session it built, a private copy each: nfnet_f1's resident size grew by its weights' size per
method. The model here has one of each, small, and the checks are deterministic: the graph every session gets
computes no weight, the weights onnxruntime's optimiser adds to a session (its optimised model file) are none, and
the stored weights the fold replaced leave graph/held.py's store.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.errors import ModelLoadError
from onnx_cnnviz.graph import held
from onnx_cnnviz.graph.loading import normalise_passes
from onnx_cnnviz.graph.loading import weights
from onnx_cnnviz.graph.loading.weights import computed_weights, fold_computed_weights_inplace
from tests.tiny_models import make_model

pytestmark = pytest.mark.quick

SIZE = 16
EPS = 1e-5


def _standardised(w: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Weight standardisation per output channel (Qiao et al. 2019), what the graph computes:
    gain * (W - mean(W)) / sqrt(var(W) + eps), the mean and (biased) variance over each kernel."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    mean = flat.mean(axis=1, keepdims=True)
    var = ((flat - mean) ** 2).mean(axis=1, keepdims=True)
    return (gain.reshape(-1, 1) * (flat - mean) / np.sqrt(var + EPS)).reshape(w.shape).astype(np.float32)


def standardised_model(seed: int = 0, folded_by_hand: bool = False) -> onnx.ModelProto:
    """x (B, 3, 16, 16) -> Conv(standardise(W1)) -> Relu -> Conv(standardise(W2)) -> Relu -> GlobalAveragePool ->
    Flatten -> MatMul(Transpose(fc)) -> + b: two kernels standardised as timm's export writes it (ReduceMean, Sub,
    Mul, ReduceMean, Add, Sqrt, Div, Mul), and a matrix transposed at run time. ``folded_by_hand``: the same model
    with the computed weights stored instead (numpy, float64)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)  # 18 KiB: held when everything 1 KiB and up is
    g1, g2 = (rng.uniform(0.5, 1.5, (n, 1, 1, 1)).astype(np.float32) for n in (16, 32))
    fc = rng.standard_normal((5, 32)).astype(np.float32)
    inits = [numpy_helper.from_array(np.array(EPS, np.float32), "eps"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fc_b")]
    nodes = []
    if folded_by_hand:
        inits += [numpy_helper.from_array(_standardised(w1, g1), "k1"),
                  numpy_helper.from_array(_standardised(w2, g2), "k2"),
                  numpy_helper.from_array(np.ascontiguousarray(fc.T), "fc_t")]
    else:
        inits += [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (g1, "g1"), (g2, "g2"),
                                                             (fc, "fc"))]
        for k in ("1", "2"):
            nodes += [helper.make_node("ReduceMean", ["w" + k], ["mean" + k], axes=[1, 2, 3], keepdims=1),
                      helper.make_node("Sub", ["w" + k, "mean" + k], ["centred" + k]),
                      helper.make_node("Mul", ["centred" + k, "centred" + k], ["square" + k]),
                      helper.make_node("ReduceMean", ["square" + k], ["var" + k], axes=[1, 2, 3], keepdims=1),
                      helper.make_node("Add", ["var" + k, "eps"], ["var_eps" + k]),
                      helper.make_node("Sqrt", ["var_eps" + k], ["std" + k]),
                      helper.make_node("Div", ["centred" + k, "std" + k], ["unit" + k]),
                      helper.make_node("Mul", ["unit" + k, "g" + k], ["k" + k])]
        nodes.append(helper.make_node("Transpose", ["fc"], ["fc_t"], perm=[1, 0]))
    nodes += [helper.make_node("Conv", ["x", "k1"], ["conv1"], pads=[1, 1, 1, 1], name="conv1"),
              helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
              helper.make_node("Conv", ["relu1", "k2"], ["conv2"], pads=[1, 1, 1, 1], name="conv2"),
              helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
              helper.make_node("GlobalAveragePool", ["relu2"], ["pool"], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
              helper.make_node("MatMul", ["flat", "fc_t"], ["fc_out"], name="fc"),
              helper.make_node("Add", ["fc_out", "fc_b"], ["logits"], name="fc_bias")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)


@pytest.fixture(params=["inline", "held"])
def holding(request, monkeypatch):
    """Both homes of a weight: in the graph (a small model) and held beside it (graph/held.py, 1 KiB and up)."""
    if request.param == "held":
        monkeypatch.setattr(held, "HOLD_ABOVE_BYTES", 0)
        monkeypatch.setattr(held, "HOLD_MIN_BYTES", 1024)
    return request.param


def _x(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)


def _added_by_optimiser(model: onnx.ModelProto, tmp_path) -> list[tuple[str, int]]:
    """(name, bytes) of every float initializer of 1 KiB or more that onnxruntime's optimiser adds to a session built
    over ``model`` (read from the optimised model it writes): what each session holds as a private copy."""
    path = tmp_path / "optimised.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # constant folding included
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(held.inlined(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimised = onnx.load(str(path))
    own = {t.name for t in model.graph.initializer}
    return [(t.name, held.declared_bytes(t)) for t in optimised.graph.initializer
            if t.name not in own and t.data_type == TensorProto.FLOAT and held.declared_bytes(t) >= 1024]


def test_the_file_as_exported_gives_each_session_its_own_computed_weights(tmp_path):
    # The mechanism the fold removes, shown on the model as written: onnxruntime stores both standardised kernels
    # and the transposed matrix in the session it builds.
    added = dict(_added_by_optimiser(standardised_model(), tmp_path))
    assert {"k1", "k2"} <= set(added) and added["k2"] == 32 * 16 * 9 * 4


def test_loading_folds_the_computed_weights_and_sessions_add_none(holding, tmp_path):
    m = cv.load(standardised_model(), device="cpu")
    record = {r.name: r for r in m.load_passes}["constants"]
    assert record.changed and record.details["computed_weights_folded"] == 3
    assert "3 weights computed from the stored ones folded" in record.summary
    model = m.spec((SIZE, SIZE)).model  # the graph every session is built from
    graph = model.graph
    assert computed_weights(model) == ([], [])
    assert not {n.op_type for n in graph.node} & {"ReduceMean", "Sqrt", "Div", "Transpose"}
    inits = {t.name: t for t in graph.initializer}
    assert {"k1", "k2", "fc_t"} <= set(inits) and not {"w1", "w2", "g1", "g2", "fc"} & set(inits)
    assert held.is_held(inits["k2"]) == (holding == "held")
    assert _added_by_optimiser(model, tmp_path) == []


def test_folded_weights_compute_what_the_graph_computed(holding, monkeypatch):
    x = _x()
    m = cv.load(standardised_model(), device="cpu")
    with monkeypatch.context() as patch:
        patch.setattr(weights, "_WEIGHT_SLOTS", {})  # nothing is a weight: nothing folded
        unfolded = cv.load(standardised_model(), device="cpu")
    assert "computed_weights_folded" not in {r.name: r for r in unfolded.load_passes}["constants"].details
    # Bit for bit: the fold runs the onnxruntime kernels each session's own constant folding ran.
    np.testing.assert_array_equal(m.scores(x), unfolded.scores(x))
    session = ort.InferenceSession(standardised_model().SerializeToString(), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    np.testing.assert_allclose(m.scores(x), expected, rtol=1e-5, atol=1e-5)  # the file, as onnxruntime runs it
    # And the weights are the standardised ones (numpy in float64 as the reference).
    by_hand = cv.load(standardised_model(folded_by_hand=True), device="cpu")
    np.testing.assert_allclose(m.scores(x), by_hand.scores(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cv.gradients(m, x), cv.gradients(by_hand, x), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cv.grad_cam(m, x), cv.grad_cam(by_hand, x), atol=1e-4)


def test_the_stored_weights_the_fold_replaced_leave_the_store(monkeypatch):
    monkeypatch.setattr(held, "HOLD_ABOVE_BYTES", 0)
    monkeypatch.setattr(held, "HOLD_MIN_BYTES", 1024)
    model = standardised_model()
    held.hold_inplace(model)
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    raw_key, holding = held.key_of(w2), held.holding_of(w2)
    assert raw_key is not None
    try:
        normal, _ = normalise_passes(model, copy=False)  # a model nobody else holds: its replaced weights go
        with pytest.raises(ModelLoadError, match="released"):
            held.value(w2)  # the placeholder read before the fold: its array is gone
        k2 = next(t for t in normal.graph.initializer if t.name == "k2")
        assert held.holding_of(k2) == holding  # the folded weight lives as long as the model's other weights
    finally:
        held.release(holding)


def test_a_copy_keeps_what_the_original_reads(monkeypatch):
    monkeypatch.setattr(held, "HOLD_ABOVE_BYTES", 0)
    monkeypatch.setattr(held, "HOLD_MIN_BYTES", 1024)
    model = standardised_model()
    holding = held.hold_inplace(model)
    try:
        normal, _ = normalise_passes(model, copy=True)
        assert "k2" in {t.name for t in normal.graph.initializer}
        w2 = next(t for t in model.graph.initializer if t.name == "w2")
        assert held.value(w2).shape == (32, 16, 3, 3)  # the caller's model still reads its weights
    finally:
        held.release(holding)


def test_only_float_weights_computed_from_weights_alone_are_folded():
    # A kernel computed from the image (a dynamic convolution) and one through DequantizeLinear (onnxruntime fuses
    # it into an integer convolution) stay as they are.
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.integers(-5, 5, (4, 3, 3, 3)).astype(np.int8), "q"),
             numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
             numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("DequantizeLinear", ["q", "scale"], ["kq"]),
             helper.make_node("Conv", ["x", "kq"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[0, 1, 2, 3], keepdims=0),
             helper.make_node("Mul", ["w", "m"], ["kd"]),
             helper.make_node("Conv", ["a", "kd"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    assert computed_weights(model) == ([], [])
    folded = fold_computed_weights_inplace(model)
    assert folded.weights == 0 and len(model.graph.node) == 5


def test_a_weight_passed_on_unchanged_keeps_its_name():
    # Cast to the type the weight has (what a float16 model's Casts become once its weights are float32) and
    # Identity: onnxruntime drops them without a copy, so there is nothing to fold. A Reshape is a copy: folded.
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([4, 3, 3, 3], np.int64), "shape")]
    nodes = [helper.make_node("Cast", ["w"], ["w32"], to=TensorProto.FLOAT),
             helper.make_node("Identity", ["w32"], ["k"]),
             helper.make_node("Conv", ["x", "k"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    assert computed_weights(model) == ([], [])
    model.graph.node[1].op_type = "Reshape"
    model.graph.node[1].input.append("shape")
    assert computed_weights(model)[0] == ["k"]
    assert fold_computed_weights_inplace(model).weights == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"] and [t.name for t in model.graph.initializer] == ["k"]

