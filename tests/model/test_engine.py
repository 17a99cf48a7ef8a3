"""The engine on real deployed models and awkward graphs: loading, normalising, batching, runtime behaviour."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv

from tests.reference import directional_derivative_check
from tests.tiny_models import make_model, save

RAPIDOCR_WHEEL = "rapidocr-onnxruntime==1.4.4"
RAPIDOCR_PACKAGE = "rapidocr_onnxruntime"
PADDLE_CLS = "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- the real ImageNet SqueezeNet: float16, opset 7, IR 3, static batch, softmax output ---------------------------
def test_squeezenet_loads_predicts_and_differentiates(squeezenet_path, kitten_x):
    before = sha256(squeezenet_path)
    m = cv.load(squeezenet_path, device="cpu")
    assert m.softmax_skipped == "Softmax"
    assert m.input_shape == (3, 224, 224) and m.num_classes == 1000
    scores = m.scores(kitten_x)
    assert scores.shape == (1, 1000) and scores.dtype == np.float32
    assert int(scores.argmax()) == 281
    p = np.exp(scores - scores.max())
    p /= p.sum()
    assert abs(p.max() - 0.94) < 0.01  # the README's known result, through our float32 copy of the fp16 model

    rng = np.random.default_rng(0)
    batch = np.repeat(kitten_x, 8, axis=0) + rng.normal(0, 8, (8, 3, 224, 224)).astype(np.float32)
    targets = np.array([281, 282, 285, 1, 2, 3, 389, 999])
    grads = cv.gradients(m, batch, targets=targets)
    directional_derivative_check(m, batch[:2], targets[:2], rng, h=1e-3)
    assert grads.shape == (8, 3, 224, 224) and np.isfinite(grads).all()
    # One batched run equals eight single runs.
    singles = np.concatenate([cv.gradients(m, batch[i:i + 1], targets=int(targets[i])) for i in range(8)])
    np.testing.assert_allclose(grads, singles, rtol=1e-5, atol=1e-6 * np.abs(singles).max())
    assert not m.static_batch
    assert sha256(squeezenet_path) == before  # the user's file is never touched


# --- PaddlePaddle export: weights as Constant nodes ---------------------------------------------------------------
@pytest.fixture(scope="session")
def paddle_cls_model() -> Path:
    """The text-direction classifier shipped in the installed ``rapidocr-onnxruntime`` package (a project test
    dependency): its file is read where pip put it, the package itself is never imported (its ``__init__`` needs
    ``pyclipper``, which the tests do not)."""
    spec = importlib.util.find_spec(RAPIDOCR_PACKAGE)
    assert spec is not None and spec.origin, (
        f"the {RAPIDOCR_PACKAGE} package is a test dependency ({RAPIDOCR_WHEEL}, installed with --no-deps)")
    path = Path(spec.origin).parent / PADDLE_CLS
    assert path.is_file(), f"{path} is missing from the installed {RAPIDOCR_WHEEL}"
    return path


def test_paddle_model_with_constant_node_weights(paddle_cls_model):
    raw = onnx.load(str(paddle_cls_model))
    assert not raw.graph.initializer and sum(n.op_type == "Constant" for n in raw.graph.node) > 100
    m = cv.load(paddle_cls_model, device="cpu", input_size=(48, 192))
    assert m.num_classes == 2 and m.softmax_skipped == "Softmax"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 48, 192)).astype(np.float32)
    import onnxruntime as ort

    plain = ort.InferenceSession(str(paddle_cls_model), providers=["CPUExecutionProvider"])
    probs = plain.run(None, {plain.get_inputs()[0].name: x})[0]
    ours = m.scores(x)
    ours_p = np.exp(ours - ours.max(1, keepdims=True))
    np.testing.assert_allclose(ours_p / ours_p.sum(1, keepdims=True), probs, atol=1e-5)
    directional_derivative_check(m, x, np.array([0, 1, 0, 1]), rng)
    for rule in ("guided", "deconvnet"):
        assert np.isfinite(cv.gradients(m, x, targets=[0, 1, 0, 1], rule=rule)).all()
    # The model takes any H, W: without input_size its layers are listed at 224x224 and each run specialises.
    anysize = cv.load(paddle_cls_model, device="cpu")
    assert anysize.input_shape == (3, None, None)
    np.testing.assert_allclose(anysize.scores(x), ours, rtol=1e-5, atol=1e-6)
    assert anysize.layer(anysize.default_layer).shape[2:] != m.layer(m.default_layer).shape[2:]


# --- small hand-built graphs ------------------------------------------------------------------------------------
def tiny_classifier(batch=1, reshape_shape=(1, -1), head_op=None, mid_op=None, opset=17) -> onnx.ModelProto:
    """Conv(3->4, 3x3) -> Relu [-> mid_op] -> Reshape(reshape_shape) -> Gemm(->5) [-> head_op]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((5, 4 * 4 * 4)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.asarray(reshape_shape, dtype=np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu")]
    last = "r"
    if mid_op:
        nodes.append(helper.make_node(mid_op, ["r"], ["mid"], name="mid"))
        last = "mid"
    nodes += [helper.make_node("Reshape", [last, "shape"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1, name="fc")]
    out = "logits"
    if head_op:
        nodes.append(helper.make_node(head_op, ["logits"], ["probs"], axis=1, name="head"))
        nodes.append(helper.make_node("Flatten", ["probs"], ["out"], name="trailing_flatten"))
        out = "out"
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 4])],
                       [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits, opset=opset)
    return model


def numpy_tiny(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The same classifier in numpy (scores before the head)."""
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((len(x), 4, 4, 4), dtype=np.float64)
    for i in range(4):
        for j in range(4):
            conv[:, :, i, j] = np.einsum("nchw,ochw->no", pad[:, :, i:i + 3, j:j + 3], w["w"])
    return np.maximum(conv, 0).reshape(len(x), -1) @ w["fc"].T


def test_static_batch_reshape_is_rewritten_so_batches_run_in_one_call():
    model = tiny_classifier(batch=1, reshape_shape=(1, -1))
    m = cv.load(model, device="cpu")
    assert not m.static_batch
    x = np.random.default_rng(2).standard_normal((5, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(m.scores(x), numpy_tiny(model, x), rtol=1e-5, atol=1e-5)
    assert m.scores(x).shape == (5, 5)


def test_unrewritable_static_batch_falls_back_to_one_sample_per_run():
    model = tiny_classifier(batch=1, reshape_shape=(64,), mid_op=None)
    # Reshape to [64] then Unsqueeze: the batch of 1 is baked in where no leading 1 can be rewritten.
    graph = model.graph
    graph.node[-1].input[0] = "flat_b"
    graph.node.insert(len(graph.node) - 1, helper.make_node("Unsqueeze", ["flat", "axis0"], ["flat_b"]))
    graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"))
    m = cv.load(model, device="cpu")
    assert m.static_batch
    x = np.random.default_rng(3).standard_normal((3, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(m.scores(x), numpy_tiny(model, x), rtol=1e-5, atol=1e-5)
    grads = cv.gradients(m, x, targets=[0, 1, 2])
    assert grads.shape == x.shape and np.abs(grads).max() > 0


@pytest.mark.parametrize("head", ["Softmax", "LogSoftmax"])
def test_score_is_taken_before_a_final_softmax_even_behind_a_reshape(head):
    m = cv.load(tiny_classifier(head_op=head), device="cpu")
    assert m.softmax_skipped == head and m.score_name == "logits"
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(m.scores(x), numpy_tiny(tiny_classifier(), x), rtol=1e-5, atol=1e-5)


def test_modelproto_source_is_not_modified():
    model = tiny_classifier(head_op="Softmax")
    before = model.SerializeToString()
    m = cv.load(model, device="cpu")
    cv.gradients(m, np.ones((2, 3, 4, 4), dtype=np.float32))
    assert model.SerializeToString() == before


def test_external_data_is_loaded_and_missing_data_is_a_clear_error(tmp_path):
    path = tmp_path / "model.onnx"
    # save_model moves the weights out of the proto it is given: hand it a copy.
    onnx.save_model(tiny_classifier(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").stat().st_size > 4 * 3 * 3 * 3 * 4
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(cv.load(path, device="cpu").scores(x), numpy_tiny(tiny_classifier(), x),
                               rtol=1e-5, atol=1e-5)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(cv.ModelLoadError, match="weights.bin"):
        cv.load(path, device="cpu")


def test_missing_rule_on_the_path_names_node_and_op_but_forward_still_works():
    m = cv.load(tiny_classifier(mid_op="Sin"), device="cpu")
    x = np.ones((1, 3, 4, 4), dtype=np.float32)
    assert m.scores(x).shape == (1, 5)  # the forward pass never needs a rule
    with pytest.raises(cv.UnsupportedOpError) as info:
        cv.gradients(m, x)
    message = str(info.value)
    assert "'mid'" in message and "Sin" in message and "issue" in message
    assert info.value.op_type == "Sin" and info.value.node_name == "mid"
    # Gradients at a layer after the unsupported node do not need its rule.
    assert m.run(x, wrt=["mid"]).grads["mid"].shape == (1, 4, 4, 4)


def test_ceil_mode_pool_whose_last_window_starts_in_padding_gets_its_real_shape(tmp_path):
    torch = pytest.importorskip("torch")
    from tests.exporting import export_torchscript

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.pool = torch.nn.MaxPool2d(2, 2, padding=1, ceil_mode=True)
            self.fc = torch.nn.Linear(4, 5)

        def forward(self, x):
            return self.fc(self.pool(torch.relu(self.conv(x))).mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 3, 5, 5)
    m = cv.load(export_torchscript(net, x, tmp_path / "ceil.onnx"), device="cpu")
    assert m.layer(m.default_layer).shape == (None, 4, 3, 3)  # onnx shape inference alone says 4x4
    xt = x.clone().requires_grad_(True)
    net(xt)[torch.arange(2), torch.tensor([1, 2])].sum().backward()
    np.testing.assert_allclose(cv.gradients(m, x.numpy(), targets=[1, 2]), xt.grad.numpy(), atol=1e-6)


# --- layers ----------------------------------------------------------------------------------------------------
def test_layers_and_default_layer(torchvision_onnx, squeezenet_path):
    _, path, _ = torchvision_onnx("resnet18")
    m = cv.load(path, device="cpu")
    assert m.default_layer == "/layer4/layer4.1/relu_1/Relu_output_0"
    assert m.layers[0].op_type == "Conv" and all(layer.shape[0] is None for layer in m.layers)
    assert m.layers[-1].shape[2:] == (1, 1)  # the global pool output is a layer too, after the default
    with pytest.raises(cv.UnknownLayerError, match="Did you mean"):
        m.layer("/layer4/layer4.1/relu_1/Relu_output")

    _, path, _ = torchvision_onnx("convnext_tiny")
    m = cv.load(path, device="cpu")
    # The channels-last block internals (LayerNorm, Linear, GELU on (N, h, w, C)) are layers seen as NCHW.
    nhwc = [layer for layer in m.layers if layer.view is not None]
    assert nhwc and all(layer.view.kind == "NHWC" for layer in nhwc)
    assert {layer.op_type for layer in nhwc} >= {"LayerNormalization", "MatMul"}
    assert m.default_layer.startswith("/features/features.7/")

    squeeze = cv.load(squeezenet_path, device="cpu")
    assert squeeze.layer(squeeze.default_layer).shape == (None, 1000, 13, 13)


# --- runtime ---------------------------------------------------------------------------------------------------
def test_auto_device_is_silent_without_cuda(capfd, torchvision_onnx):
    from onnx_cnnviz import runtime

    _, path, size = torchvision_onnx("squeezenet1_1")
    m = cv.load(path, device="auto")
    cv.gradients(m, np.zeros((1, 3, size, size), dtype=np.float32))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    if not runtime.cuda_available():
        assert m.device == "cpu"
        with pytest.raises(cv.RuntimeFailure, match="CUDA"):
            cv.load(path, device="cuda")
        assert capfd.readouterr() == ("", "")


def test_input_checks():
    m = cv.load(tiny_classifier(), device="cpu")
    with pytest.raises(cv.InputError, match="batch axis"):
        m.scores(np.zeros((3, 4, 4), dtype=np.float32))
    with pytest.raises(cv.InputError, match="channels"):
        m.scores(np.zeros((1, 1, 4, 4), dtype=np.float32))
    with pytest.raises(cv.InputError, match="4x4"):
        m.scores(np.zeros((1, 3, 8, 8), dtype=np.float32))
    with pytest.raises(cv.InputError, match="NaN"):
        m.scores(np.full((1, 3, 4, 4), np.nan, dtype=np.float32))
    with pytest.raises(cv.InputError, match="out of range"):
        cv.gradients(m, np.zeros((1, 3, 4, 4), dtype=np.float32), targets=5)
    with pytest.raises(cv.InputError, match="one per image"):
        cv.gradients(m, np.zeros((2, 3, 4, 4), dtype=np.float32), targets=[1, 2, 3])


def test_integer_shape_arithmetic_on_the_path_needs_no_rule():
    """Exporters compute Reshape targets with Shape -> Gather -> Concat; those integer branches are never
    differentiated, and `cnnviz inspect` must not report them as missing rules."""
    from onnx_cnnviz.report import describe

    model = tiny_classifier()
    graph = model.graph
    reshape = next(n for n in graph.node if n.op_type == "Reshape")
    graph.initializer.extend([numpy_helper.from_array(np.array([0], dtype=np.int64), "zero_idx"),
                              numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one")])
    shape_nodes = [helper.make_node("Shape", ["r"], ["r_shape"]),
                   helper.make_node("Gather", ["r_shape", "zero_idx"], ["batch"], axis=0),
                   helper.make_node("Concat", ["batch", "minus_one"], ["target_shape"], axis=0)]
    position = list(graph.node).index(reshape)
    for offset, node in enumerate(shape_nodes):
        graph.node.insert(position + offset, node)
    reshape.input[1] = "target_shape"
    m = cv.load(model, device="cpu")
    info = describe(m, model)
    assert info["gradient_path"]["missing_rules"] == []
    assert "Shape" not in info["gradient_path"]["ops"]
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(m.scores(x), numpy_tiny(tiny_classifier(), x), rtol=1e-5, atol=1e-5)
    assert np.abs(cv.gradients(m, x)).max() > 0


def test_a_zero_pad_before_max_pool_keeps_its_zeros(tmp_path):
    """onnxruntime's Pad_Fusion would fold Pad(0) into the MaxPool, which pads with -inf (runtime.DISABLED_OPTIMIZERS):
    the border windows of an all-negative map must see the padded zeros (BiT's stem)."""
    from onnx import TensorProto, helper

    pads = helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 1, 1, 0, 0, 1, 1])
    nodes = [helper.make_node("Pad", ["x", "pads"], ["padded"]),
             helper.make_node("MaxPool", ["padded"], ["pooled"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Flatten", ["pooled"], ["logits"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], [pads])
    m = cv.load(save(model, tmp_path / "padpool.onnx"), device="cpu")
    x = -np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)
    padded = np.pad(x[0, 0], 1)
    expected = [padded[i:i + 3, j:j + 3].max() for i in (0, 2) for j in (0, 2)]
    np.testing.assert_array_equal(m.scores(x)[0], expected)


@pytest.mark.parametrize("shape, trans_a, batches", [([1, 48], 0, True), ([48, 1], 1, False)])
def test_a_graph_declared_any_batch_that_bakes_batch_one(tmp_path, shape, trans_a, batches):
    """Declared (N, 3, 4, 4) but reshaped to a constant [1, 48]: the reshape is rewritten to follow the batch
    (graph/loading/unbake.py) and the model batches. Reshaped to [48, 1] and multiplied transposed, no reshape can
    carry the batch (a Transpose would): the loader runs images one at a time instead of failing inside onnxruntime
    at the first batch. Scores and gradients exact either way."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 48)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w"], ["logits"], transA=trans_a, transB=1)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
                       [numpy_helper.from_array(w, "w"),
                        numpy_helper.from_array(np.array(shape, dtype=np.int64), "shape")])
    m = cv.load(save(model, tmp_path / "baked.onnx"), device="cpu")
    assert m.static_batch is not batches
    x = rng.standard_normal((3, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(m.scores(x), np.maximum(x, 0).reshape(3, 48) @ w.T, rtol=1e-5, atol=1e-5)
    g = m.run(x, wrt=[m.input_name], targets=[0, 1, 2]).grads[m.input_name]
    np.testing.assert_allclose(g, (w[[0, 1, 2]] * (x.reshape(3, 48) > 0)).reshape(x.shape), rtol=1e-5, atol=1e-6)
