"""Weights held outside the protobuf (onnx_cnnviz/graph/held.py): models of 1 GiB of weights or more.

Protobuf cannot copy or serialise a message of 2 GiB or more, so torchvision's vit_h_14 and regnet_y_128gf (2.5 GB)
could not be loaded. Their large weights are now held as arrays beside the graph. Most tests here lower the
thresholds so that small real models take the same path and must give exactly what the plain path gives; one builds
a real model of over 2 GiB.
"""
from __future__ import annotations

import copy
import gc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError, ModelLoadError
from onnx_cnnviz import runtime
from onnx_cnnviz.graph import held
from onnx_cnnviz.graph import load as graph_load
from onnx_cnnviz.methods.registry import explain
from onnx_cnnviz.graph.loading import read as loading_read
from tests.conftest import CACHE, rel_err
from tests.exporting import torchvision_model
from tests.tiny_models import gap_classifier, make_model, save


@pytest.fixture
def hold_everything(monkeypatch):
    """Every model's initializers of 1 KiB and up are held, whatever the model's size."""
    monkeypatch.setattr(held, "HOLD_ABOVE_BYTES", 0)
    monkeypatch.setattr(held, "HOLD_MIN_BYTES", 1024)


def _held_count(m) -> int:
    return sum(held.is_held(t) for t in m.graph_proto.graph.initializer)


def _bigger_classifier(seed: int = 0) -> onnx.ModelProto:
    """gap_classifier (16 x 16) with a middle conv (4 -> 8) and a channel-mixing MatMul in NHWC (8 -> 64): weights of
    1 KiB and more, held when everything is; their backward paths then read them in place (ConvTranspose, Gemm)."""
    rng = np.random.default_rng(seed)

    def mid(last):
        inits = [numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.3, "w2"),
                 numpy_helper.from_array(rng.standard_normal((8, 64)).astype(np.float32) * 0.3, "proj")]
        nodes = [helper.make_node("Conv", [last, "w2"], ["conv2"], pads=[1, 1, 1, 1], name="conv2"),
                 helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
                 helper.make_node("Transpose", ["relu2"], ["nhwc"], perm=[0, 2, 3, 1], name="to_nhwc"),
                 helper.make_node("MatMul", ["nhwc", "proj"], ["mixed"], name="mix"),
                 helper.make_node("Transpose", ["mixed"], ["back"], perm=[0, 3, 1, 2], name="to_nchw"),
                 helper.make_node("Relu", ["back"], ["relu3"], name="relu3")]
        return nodes, inits, "relu3"

    model = gap_classifier(size=16, mid=mid)
    fc = next(t for t in model.graph.initializer if t.name == "fc_w")
    fc.CopyFrom(numpy_helper.from_array(rng.standard_normal((5, 64)).astype(np.float32), "fc_w"))
    return model


def test_a_held_model_holds_its_weights_outside_and_frees_them_with_the_model(hold_everything):
    before = held.held_bytes()
    m = cv.load(_bigger_classifier(), device="cpu")
    assert _held_count(m) >= 2
    assert held.held_bytes() > before
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    m.scores(x)
    del m
    gc.collect()
    assert held.held_bytes() == before


def test_a_graph_whose_model_was_freed_says_so():
    model = _bigger_classifier()
    tensor = model.graph.initializer[0]
    holding = held.new_holding()
    held.put(tensor, numpy_helper.to_array(tensor), holding)
    assert held.value(tensor).shape == tuple(tensor.dims)
    held.release(holding)
    with pytest.raises(ModelLoadError, match="released with the model"):
        held.value(tensor)


def test_every_source_kind_is_held_and_left_unchanged(hold_everything, tmp_path):
    """A ModelProto (copied one initializer at a time), bytes, a file with inline weights and a file with external
    data (read straight into arrays) give the same model; the ModelProto given is not touched."""
    model = _bigger_classifier()
    before = model.SerializeToString()
    external = tmp_path / "ext" / "m.onnx"
    external.parent.mkdir()
    # onnx.save converts the model it is given to external data: it gets a copy
    onnx.save(copy.deepcopy(model), str(external), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.data", size_threshold=0)
    assert (external.parent / "m.data").is_file()
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with pytest.MonkeyPatch.context() as plain:
        plain.setattr(held, "HOLD_ABOVE_BYTES", 2 ** 62)  # the plain path, for reference
        ref = cv.load(model, device="cpu")
        ref_grads = cv.gradients(ref, x, targets=[0, 3, 4])
    assert _held_count(ref) == 0
    for source in (model, model.SerializeToString(), save(model, tmp_path / "inline.onnx"), external):
        m = cv.load(source, device="cpu")
        assert _held_count(m) >= 2, type(source)
        np.testing.assert_allclose(m.scores(x), ref.scores(x), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(cv.gradients(m, x, targets=[0, 3, 4]), ref_grads, rtol=1e-5, atol=1e-7)
    assert model.SerializeToString() == before
    from onnx_cnnviz.report import describe  # `cnnviz inspect`: the file's structure, its weights not read again

    summary = describe(m, external)
    assert summary["inputs"][0]["name"] == "x" and summary["gradient_path"]["error"] is None


def test_build_graph_is_a_plain_model_and_save_writes_external_data(hold_everything, tmp_path):
    import onnxruntime as ort

    m = cv.load(_bigger_classifier(), device="cpu")
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    plain = m.build_graph(wrt=(m.input_name,))
    assert not held.any_held(plain)
    kept = m.build_graph(wrt=(m.input_name,), inline_weights=False)
    assert held.any_held(kept)
    seed = np.eye(m.num_classes, dtype=np.float32)[[1, 2]]
    feeds = {m.input_name: x, "cnnviz/seed": seed}
    want = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = held.session(kept, ort.SessionOptions(), ["CPUExecutionProvider"]).run(None, feeds)
    for a, b in zip(want, got):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    path = held.save(kept, tmp_path / "graph.onnx")
    assert (tmp_path / "graph.onnx.data").is_file()
    from_file = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    for a, b in zip(want, from_file):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(InputError, match="exists"):
        held.save(kept, path)
    (tmp_path / "other.onnx.data").write_bytes(b"mine")
    with pytest.raises(InputError, match="exists"):
        held.save(kept, tmp_path / "other.onnx")
    assert (tmp_path / "other.onnx.data").read_bytes() == b"mine" and not (tmp_path / "other.onnx").exists()
    with pytest.raises(InputError, match="file name"):
        held.save(kept, tmp_path / "third.onnx", data_name="../third.data")


def test_float16_weights_are_held_as_float32(hold_everything, monkeypatch):
    monkeypatch.setattr(held, "HOLD_MIN_BYTES", 512)  # w2 in float16 is 576 bytes
    model = _bigger_classifier()
    ref = cv.load(model, device="cpu")
    for tensor in model.graph.initializer:
        if tensor.name in ("w2", "proj"):
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for node in [n for n in model.graph.node if n.name in ("conv2", "mix")]:
        weight = node.input[1]
        node.input[1] = weight + "_f32"
        model.graph.node.insert(0, helper.make_node("Cast", [weight], [weight + "_f32"], to=TensorProto.FLOAT))
    m = cv.load(model, device="cpu")
    tensors = {t.name: t for t in m.graph_proto.graph.initializer}
    assert held.is_held(tensors["w2"]) and held.value(tensors["w2"]).dtype == np.float32
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert rel_err(m.scores(x), ref.scores(x)) < 1e-2  # float16 weights: float16 precision


def test_randomised_models_of_a_held_model_stay_held(hold_everything):
    from onnx_cnnviz.metrics import sanity

    m = cv.load(_bigger_classifier(), device="cpu")
    groups = list(sanity.randomised_models(m, stages="layers", seed=0))
    last = groups[-1][1]
    assert held.any_held(last)
    randomised = cv.load(last, device="cpu")
    x = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert not np.allclose(randomised.scores(x), m.scores(x))
    original = {t.name: held.value(t).copy() for t in m.graph_proto.graph.initializer if held.is_held(t)}
    for t in last.graph.initializer:
        if held.is_held(t) and t.name in original:
            assert not np.array_equal(held.value(t), original[t.name]), t.name


def test_only_what_cannot_be_held_counts_against_protobufs_limit(monkeypatch, tmp_path):
    """A model of over 2 GiB is held, not refused (the limit is lowered here to a tiny model's size); weights of a
    type numpy cannot hold (bfloat16) still count against the limit and are refused with a typed error."""
    monkeypatch.setattr(held, "HOLD_ABOVE_BYTES", 0)
    monkeypatch.setattr(held, "HOLD_MIN_BYTES", 16)
    monkeypatch.setattr(loading_read, "PROTOBUF_LIMIT", 200)
    model = gap_classifier()
    assert cv.load(save(model, tmp_path / "m.onnx"), device="cpu").num_classes == 5
    assert cv.load(model, device="cpu").num_classes == 5
    odd = numpy_helper.from_array(np.zeros(300, dtype=np.float32), "unused")
    odd.data_type = TensorProto.BFLOAT16
    odd.raw_data = np.zeros(300, dtype=np.uint16).tobytes()
    model.graph.initializer.append(odd)
    with pytest.raises(ModelLoadError, match="cannot be held outside the graph"):
        cv.load(model, device="cpu")


# --- real models through the held path: the same maps as the plain path ------------------------------------------
def _real_models():
    """(label, path maker) for a representative set: a TorchScript CNN with BatchNorm, a dynamo static ConvNeXt
    (as_strided Gather, LayerNorm), a dynamo static ViT (attention reshapes rewritten to batch:
    graph/loading/unbake.py), an NHWC wrapper and a uint8 raw-pixel wrapper (graph/layout.py)."""
    torch = pytest.importorskip("torch")
    from tests.exporting import export_torchscript
    from tests.architectures.test_dynamo_export import dynamo_export
    from tests.graph.test_layouts import ChannelsLast, RawPixels
    from tests.architectures.test_transformers_gradients import SIZE as T_SIZE

    def torchscript(name, module=None, dummy=None, size=64):
        def make():
            path = CACHE / f"held_{name}_{size}.onnx"
            if not path.exists():
                net = module() if module else torchvision_model(name)
                export_torchscript(net, dummy if dummy is not None else torch.zeros(1, 3, size, size), path)
            return path
        return make

    def dynamo(name, build, size):
        def make():
            path = CACHE / f"held_{name}_{size}_static.onnx"
            return path if path.exists() else dynamo_export(build(), path, "static", size=size)
        return make

    def small_vit():
        from tests.architectures.test_transformers_gradients import BUILDERS

        torch.manual_seed(0)
        return BUILDERS["vit"]()[0].eval()

    return {
        "resnet18": torchscript("resnet18"),
        "nhwc": torchscript("resnet18_nhwc", lambda: ChannelsLast(torchvision_model("resnet18")),
                            torch.zeros(1, 64, 64, 3)),
        "uint8": torchscript("resnet18_uint8", lambda: RawPixels(torchvision_model("resnet18")).eval(),
                             torch.zeros(1, 64, 64, 3, dtype=torch.uint8)),
        "convnext": dynamo("convnext_tiny", lambda: torchvision_model("convnext_tiny"), 32),
        "vit": dynamo("vit", small_vit, T_SIZE),
    }


@pytest.mark.slow
@pytest.mark.parametrize("label", ["resnet18", "nhwc", "uint8", "convnext", "vit"])
def test_real_models_give_the_same_maps_held_or_not(label, monkeypatch):
    path = _real_models()[label]()
    # The plain reference runs with the held sessions' optimisers (BatchNorm unfused, no NCHWc): what is compared is
    # holding the weights, not onnxruntime's fusions, whose float32 rounding flips near-zero ReLUs of a random model
    # (saliency 0.7% apart on ResNet-18 with onnxruntime 1.2x's default fusions).
    monkeypatch.setattr(runtime, "DISABLED_OPTIMIZERS", list(runtime.HELD_DISABLED_OPTIMIZERS))
    plain = cv.load(path, device="cpu")
    monkeypatch.setattr(held, "HOLD_ABOVE_BYTES", 0)
    monkeypatch.setattr(held, "HOLD_MIN_BYTES", 4096)
    m = cv.load(path, device="cpu")
    assert _held_count(m) > 0
    assert (m.static_batch, m.default_layer, [la.name for la in m.layers]) == \
        (plain.static_batch, plain.default_layer, [la.name for la in plain.layers])
    size = plain.spec().info[plain.input_name].shape[2]
    x = np.random.default_rng(5).standard_normal((2, 3, size, size)).astype(np.float32)
    targets = [1, 7]
    np.testing.assert_allclose(m.scores(x), plain.scores(x), rtol=1e-5, atol=1e-5)
    # An occlusion map is a difference of two scores, so its error is measured against the scores, not the map.
    score_scale = float(np.abs(plain.scores(x)).max())
    for method, params in (("saliency", {}), ("gradcam", {}), ("gradcampp", {}),
                           ("occlusion", {"window": size // 4, "stride": size // 4})):
        ours, ref = explain(m, method, x, targets, params=params), explain(plain, method, x, targets, params=params)
        for a, b in zip(ours, ref):
            a, b = np.asarray(a), np.asarray(b)
            if method == "occlusion":
                assert np.abs(a - b).max() <= 1e-5 * score_scale, (label, method)
            else:
                assert rel_err(a, b) <= 1e-5, (label, method)


# --- a real model of over 2 GiB ------------------------------------------------------------------------------------
WIDE = 16384  # two WIDE x WIDE float32 layers: 2 GiB, with the rest over protobuf's limit


@pytest.mark.slow
def test_a_model_of_over_2_gib_loads_and_its_gradients_are_exact(tmp_path):
    """An MLP head of 2.15 GB of weights (saved as external data, as torch does past 2 GiB) behind a conv stem: it
    loads with the default thresholds, batches, and its input gradients equal the hand-written backward pass."""
    rng = np.random.default_rng(0)
    arrays = {"w1": rng.standard_normal((8, 3, 3, 3), dtype=np.float32) * 0.3,
              "fc1": rng.standard_normal((8, WIDE), dtype=np.float32) * 0.3,
              "fc2": rng.standard_normal((WIDE, WIDE), dtype=np.float32) * WIDE ** -0.5,
              "fc3": rng.standard_normal((WIDE, WIDE), dtype=np.float32) * WIDE ** -0.5,
              "fc4": rng.standard_normal((WIDE, 10), dtype=np.float32) * WIDE ** -0.5}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"])]
    last = "f"
    for i, name in enumerate(("fc1", "fc2", "fc3", "fc4")):
        nodes.append(helper.make_node("MatMul", [last, name], [f"h{i}"]))
        last = f"h{i}"
        if name != "fc4":
            nodes.append(helper.make_node("Relu", [last], [f"a{i}"]))
            last = f"a{i}"
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                       [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", 10])], [])
    holding = held.new_holding()
    for name, array in arrays.items():
        held.put(model.graph.initializer.add(), array, holding)
        model.graph.initializer[-1].name = name
    path = held.save(model, tmp_path / "wide.onnx")
    held.release(holding)
    assert sum(a.nbytes for a in arrays.values()) > graph_load.PROTOBUF_LIMIT

    m = cv.load(path, device="cpu")
    assert not m.static_batch and m.num_classes == 10
    x = rng.standard_normal((2, 3, 16, 16), dtype=np.float32)
    targets = [3, 8]
    ours = cv.gradients(m, x, targets=targets)

    # The reference: torch autograd over the same weights (the same memory), each ReLU pinned to onnxruntime's
    # decisions (16384-wide sums in float32 flip a few units whose input is within rounding of 0).
    import torch
    import torch.nn.functional as F

    pre = m.run(x, outputs=["c", "h0", "h1", "h2"]).outputs
    masks = {k: torch.from_numpy((pre[k] > 0).astype(np.float32)) for k in pre}
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    xt = torch.from_numpy(x).requires_grad_(True)
    h = (F.conv2d(xt, t["w1"], padding=1) * masks["c"]).mean(dim=(2, 3))
    for i, name in enumerate(("fc1", "fc2", "fc3")):
        h = (h @ t[name]) * masks[f"h{i}"]
    scores = h @ t["fc4"]
    np.testing.assert_allclose(m.scores(x), scores.detach().numpy(), rtol=1e-4, atol=1e-5)
    scores[torch.arange(2), torch.tensor(targets)].sum().backward()
    ref = xt.grad.numpy()
    for i in range(2):
        assert rel_err(ours[i], ref[i]) <= 1e-4


def test_a_malformed_threshold_setting_is_a_typed_error(monkeypatch):
    """The setting is read when a model is loaded (onnx_cnnviz.settings), not at import: importing works, loading
    says what is wrong in one line."""
    monkeypatch.setenv("CNNVIZ_HOLD_ABOVE_BYTES", "1GB")
    with pytest.raises(InputError, match="CNNVIZ_HOLD_ABOVE_BYTES must be a whole number of bytes.*not '1GB'"):
        cv.load(gap_classifier(), device="cpu")
