"""Gradient attributions against captum on torchvision models with fixed random weights.

Saliency, guided backprop, deconvnet, input x gradient and Integrated Gradients must equal captum's numbers (relative
error <= 1e-4 of the largest value; IG <= 1e-3) with the same targets; SmoothGrad is checked for its definition
(deterministic with a seed, the plain gradient when there is no noise) and against torch autograd on the same noisy
copies.

The references run with the ONNX forward's kink decisions pinned (tests/reference.py says why: on random-weight
networks a few float32 pre-activations per batch sit so close to a ReLU kink that torch and onnxruntime decide them
differently, and the two gradients then differ by up to ~10% next to that unit). Pinning is active during the
reference's forward only: captum's guided backprop / deconvnet hooks call ``F.relu`` on gradients in the backward
pass, which must stay the real ReLU.
"""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.methods.attribution import ig_steps

from ..conftest import rel_err
from ..reference import onnx_kink_pattern, pinned, rectifier_rule_hooks

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

TARGETS = [5, 321, 987]


@pytest.fixture(scope="module")
def loaded(loaded_batch):
    """name -> (torch model, cnnviz Model, x (3, 3, S, S))"""
    return lambda name: loaded_batch(name, len(TARGETS), seed=1)


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def pinned_forward(model, m, batch: np.ndarray):
    """``model`` as a module whose (single) forward on ``batch`` takes its kink decisions from onnxruntime."""
    pattern = onnx_kink_pattern(m, np.ascontiguousarray(batch, dtype=np.float32))

    class Pinned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, inp):
            with pinned(self.model, pattern):
                return self.model(inp)

    return Pinned().eval()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_saliency_matches_captum(loaded, name):
    model, m, x = loaded(name)
    ours = cv.saliency(m, x, TARGETS, normalize=False)
    ref = captum_attr.Saliency(pinned_forward(model, m, x)).attribute(_t(x), target=TARGETS, abs=True)
    ref = ref.detach().numpy()
    assert ours.shape == (len(TARGETS), *x.shape[2:])
    assert rel_err(ours, ref.max(axis=1)) <= 1e-4


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "squeezenet1_1"])
@pytest.mark.parametrize("rule,reference", [("guided", "GuidedBackprop"), ("deconvnet", "Deconvolution")])
def test_relu_rules_match_captum(loaded, name, rule, reference):
    # captum overrides nn.ReLU modules only; our rule sets also treat ReLU6 (mobilenet_v2's Clip(0, 6)) as a
    # rectifier, so the reference adds the same rule at the other rectifier modules.
    model, m, x = loaded(name)
    ours = cv.gradients(m, x, TARGETS, rule=rule)
    with rectifier_rule_hooks(model, rule, include_relu=False):
        ref = getattr(captum_attr, reference)(pinned_forward(model, m, x)).attribute(_t(x), target=TARGETS)
    ref = ref.detach().numpy()
    assert rel_err(ours, ref) <= 1e-4


def test_input_x_gradient_matches_captum(loaded):
    model, m, x = loaded("resnet18")
    ours = cv.input_x_gradient(m, x, TARGETS)
    ref = captum_attr.InputXGradient(pinned_forward(model, m, x)).attribute(_t(x), target=TARGETS)
    ref = ref.detach().numpy()
    assert ours.shape == x.shape and ours.dtype == np.float32
    assert rel_err(ours, ref) <= 1e-4


def test_top1_targets_come_from_the_clean_image(loaded):
    _, m, x = loaded("resnet18")
    top1 = m.scores(x).argmax(axis=1)
    np.testing.assert_array_equal(cv.input_x_gradient(m, x), cv.input_x_gradient(m, x, top1))
    np.testing.assert_array_equal(cv.integrated_gradients(m, x, steps=4, integration="riemann_left"),
                                  cv.integrated_gradients(m, x, top1, steps=4, integration="riemann_left"))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_middle",
                                    "riemann_right"])
@pytest.mark.parametrize("steps", [2, 7, 50])
def test_ig_steps_are_captums(method, steps):
    from captum.attr._utils.approximation_methods import approximation_parameters

    sizes, alphas = approximation_parameters(method)
    a, w = ig_steps(steps, method)
    np.testing.assert_array_equal(a, np.asarray(alphas(steps)))
    np.testing.assert_allclose(w, np.asarray(sizes(steps)), rtol=1e-15, atol=0)


@pytest.mark.parametrize("name,method,steps,baseline", [
    ("resnet18", "riemann_trapezoid", 8, 0.0),
    ("mobilenet_v2", "gausslegendre", 6, "channels"),
    ("squeezenet1_1", "gausslegendre", 50, 0.0),  # captum's defaults, on a small model
])
def test_integrated_gradients_match_captum(loaded, name, method, steps, baseline):
    model, m, x = loaded(name)
    x, targets = x[:2], TARGETS[:2]
    if baseline == "channels":
        ours_base = np.array([0.1, -0.2, 0.3], dtype=np.float32)
        ref_base = _t(ours_base.reshape(1, 3, 1, 1))
    else:
        ours_base, ref_base = baseline, baseline
    ours = cv.integrated_gradients(m, x, targets, baseline=ours_base, steps=steps, integration=method)
    # captum's single forward: every step's interpolated batch, step-major, computed in float32 as captum does.
    b = np.asarray(ours_base, dtype=np.float32).reshape(-1, 1, 1) if baseline == "channels" else np.float32(baseline)
    path = np.concatenate([b + np.float32(a) * (x - b) for a in ig_steps(steps, method)[0]])
    ref = captum_attr.IntegratedGradients(pinned_forward(model, m, path)).attribute(
        _t(x), baselines=ref_base, target=targets, n_steps=steps, method=method).detach().numpy()
    assert ours.shape == x.shape
    assert rel_err(ours, ref) <= 1e-3


def test_smoothgrad_is_deterministic_and_noise_free_equals_gradient(loaded):
    _, m, x = loaded("resnet18")
    x = x[:2]
    a = cv.smoothgrad(m, x, samples=4, seed=3)
    b = cv.smoothgrad(m, x, samples=4, seed=3)
    c = cv.smoothgrad(m, x, samples=4, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == x.shape and a.dtype == np.float32
    plain = cv.gradients(m, x, m.scores(x).argmax(axis=1))
    assert rel_err(cv.smoothgrad(m, x, samples=3, noise=0.0), plain) <= 1e-6
    assert rel_err(cv.smoothgrad(m, x, samples=3, noise=0.0, magnitude=True), plain ** 2) <= 1e-6


def test_smoothgrad_averages_gradients_of_the_noisy_copies(loaded):
    """Against torch autograd on the same noisy copies (noise drawn as documented: default_rng(seed), per image
    N(0, 1) * noise * (max - min))."""
    model, m, x = loaded("resnet18")
    x, targets, samples, noise = x[:2], TARGETS[:2], 3, 0.2
    ours = cv.smoothgrad(m, x, targets, samples=samples, noise=noise, seed=7)
    rng = np.random.default_rng(7)
    span = (x.reshape(2, -1).max(axis=1) - x.reshape(2, -1).min(axis=1)).astype(np.float32)
    eps = rng.standard_normal((2, samples) + x.shape[1:], dtype=np.float32)
    noisy = _t((x[:, None] + (noise * span).reshape(2, 1, 1, 1, 1) * eps).reshape((-1,) + x.shape[1:]))
    noisy.requires_grad_(True)
    out = pinned_forward(model, m, noisy.detach().numpy())(noisy)
    out[np.arange(2 * samples), np.repeat(targets, samples)].sum().backward()
    ref = noisy.grad.numpy().reshape((2, samples) + x.shape[1:]).mean(axis=1)
    assert rel_err(ours, ref) <= 1e-4


def test_bad_arguments(loaded):
    _, m, x = loaded("resnet18")
    with pytest.raises(cv.InputError):
        cv.integrated_gradients(m, x, steps=1, integration="riemann_trapezoid")
    with pytest.raises(cv.InputError):
        cv.integrated_gradients(m, x, integration="simpson")
    with pytest.raises(cv.InputError):
        cv.integrated_gradients(m, x, baseline=np.zeros((5, 5), dtype=np.float32))
    with pytest.raises(cv.InputError):
        cv.smoothgrad(m, x, samples=0)


def test_automatic_batch_size_follows_the_memory_available(loaded, monkeypatch):
    """Batches are sized from the model's per-image memory; on a machine short of memory they shrink."""
    from onnx_cnnviz.methods import attribution

    _, m, _ = loaded("resnet18")
    roomy = attribution.auto_batch_size(m, (112, 112), 500, backward=False)
    monkeypatch.setattr(attribution, "available_memory", lambda: 64 << 20)
    tight = attribution.auto_batch_size(m, (112, 112), 500, backward=False)
    monkeypatch.setattr(attribution, "available_memory", lambda: None)  # a platform that cannot tell
    unknown = attribution.auto_batch_size(m, (112, 112), 500, backward=False)
    assert 1 <= tight < roomy and unknown >= roomy
