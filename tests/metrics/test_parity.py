"""The metrics against the peers on a real architecture: torchvision ResNet-18 (fixed random weights) at 112x112,
exported once (tests/conftest.py's torchvision_onnx), the torch model for the peers, the same maps fed to both.

* deletion / insertion AUC and their curves = torchcam 0.5's ``DeletionInsertionMetric`` (deletion with its zero
  baseline, insertion with RISE's blur as its baseline, the blur computed torch's way from RISE's own kernel code);
  the deletion curve = Quantus 0.6's ``PixelFlipping`` curve from its second point on;
* average drop / increase in confidence = torchcam's ``ClassificationMetric``;
* ROAD = pytorch-grad-cam 1.5.7's ``ROADMostRelevantFirst`` / ``ROADLeastRelevantFirst``, their averages and
  ``ROADCombined``, with the imputation noise drawn as ours draws it;
* infidelity / sensitivity-max = captum 0.9's with the same perturbations from the same seed.

The peers read the torch model, we read the ONNX export: the forward passes agree to ~1e-6 relative, so numbers are
compared at 1e-4 relative to their scale (the probabilities of a random-weight 1000-class network are ~1e-3).
Torch-side gradients (sensitivity-max re-explains perturbed images) run with ONNX's kink decisions pinned
(tests/reference.py).
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz import metrics
from onnx_cnnviz.metrics import imputation
from onnx_cnnviz.metrics.curves import ranks_of

from ..conftest import rel_err
from ..reference import onnx_kink_pattern, pinned

torch = pytest.importorskip("torch")

TARGETS = [5, 321]
RTOL = 1e-4

# The peers' own warnings: pytorch-grad-cam hands torch tensors to numpy, captum's Saliency sets requires_grad.
pytestmark = [pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients:UserWarning")]


@pytest.fixture(scope="module")
def setup(loaded_batch):
    """(torch model, cnnviz Model, x (2, 3, 112, 112), Grad-CAM maps, saliency maps), computed once."""
    net, m, x = loaded_batch("resnet18", len(TARGETS), seed=3)
    cam = cv.grad_cam(m, x, TARGETS)
    sal = cv.saliency(m, x, TARGETS)
    return net, m, x, cam, sal


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


class FixedMaps:
    """A torchcam CAM extractor that returns given maps: torchcam then evaluates exactly our maps."""

    def __init__(self, model, maps):
        self.model = model
        self.maps = _t(maps)

    def __call__(self, class_idx=None, scores=None, normalized=True, *, targets=None, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self):
        yield


def _softmax(t):
    return torch.softmax(t, dim=-1)


def rise_blur_torch(x):
    """RISE's blur as its code writes it: ``gkern(11, 5)`` from scipy's gaussian_filter of an impulse, then
    ``conv2d(x, kern, padding=5)`` per channel."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1
    k = gaussian_filter(impulse, 5)
    kern = np.zeros((3, 3, 11, 11))
    for c in range(3):
        kern[c, c] = k
    return torch.nn.functional.conv2d(x, torch.from_numpy(kern.astype("float32")), padding=5)


def _assert_close(ours, peer, rtol=RTOL):
    ours, peer = np.asarray(ours, dtype=np.float64), np.asarray(peer, dtype=np.float64)
    assert ours.shape == peer.shape
    assert rel_err(ours, peer) <= rtol, (ours, peer)


# --- deletion / insertion -------------------------------------------------------------------------------------
@pytest.mark.parametrize("output", ["probability", "score"])
def test_deletion_insertion_match_torchcam(setup, output):
    from torchcam.metrics import DeletionInsertionMetric

    net, m, x, cam, _ = setup
    step = 8 * 112  # torchcam's steps=14 makes ceil(12544 / 14) = 896-pixel steps: the same points
    logits_fn = _softmax if output == "probability" else None
    dele = metrics.deletion(m, x, cam, TARGETS, pixels_per_step=step, output=output, batch_size=8)
    ins = metrics.insertion(m, x, cam, TARGETS, pixels_per_step=step, output=output, batch_size=8)
    assert dele.curve.shape == (2, 15) and ins.curve.shape == (2, 15)
    aucs = {}
    for name, baseline in (("deletion", None), ("insertion", rise_blur_torch)):
        peer = DeletionInsertionMetric(FixedMaps(net, cam), logits_fn, steps=14, baseline=baseline, batch_size=16)
        peer.update(_t(x), class_idx=TARGETS)
        aucs[name] = peer.summary()[f"{name}_auc"]
    _assert_close(dele.mean(), aucs["deletion"])
    _assert_close(ins.mean(), aucs["insertion"])
    # The endpoints are the clean image and the all-baseline / blurred image, read the peers' way.
    with torch.no_grad():
        clean = net(_t(x))
        blurred = net(rise_blur_torch(_t(x)))
        if output == "probability":
            clean, blurred = _softmax(clean), _softmax(blurred)
    idx = np.arange(2)
    _assert_close(dele.curve[:, 0], clean.numpy()[idx, TARGETS])
    _assert_close(ins.curve[:, 0], blurred.numpy()[idx, TARGETS])
    _assert_close(ins.curve[:, -1], clean.numpy()[idx, TARGETS])


def test_per_image_curves_match_torchcam(setup):
    """The AUC of each image, not only the mean: torchcam run one image at a time."""
    from torchcam.metrics import DeletionInsertionMetric

    net, m, x, cam, _ = setup
    ours = metrics.deletion(m, x, cam, TARGETS, pixels_per_step=896, batch_size=5)
    for i in range(2):
        peer = DeletionInsertionMetric(FixedMaps(net, cam[i:i + 1]), _softmax, steps=14)
        peer.update(_t(x[i:i + 1]), class_idx=[TARGETS[i]])
        _assert_close(ours.values[i], peer.summary()["deletion_auc"])


def test_deletion_curve_matches_quantus_pixel_flipping(setup):
    """Quantus flips *features* (C values per pixel) by descending attribution, ``features_in_step`` at a time, with
    no point at 0, and integrates with dx = 1. It requires ``features_in_step`` to divide H*W, and 3 * 896 does not
    divide 112*112, so it flips 896 features (a third of 896 pixels) per step: its every third point has flipped
    exactly our 896, 1792, ... whole pixels. Quantus's sort is not stable, so the saliency map is made tie-free first
    (its own order, equal values in raster order, as ours breaks ties) and each pixel's copies stay together."""
    quantus = pytest.importorskip("quantus")
    net, m, x, _, sal = setup
    sal = (1 - ranks_of(sal) / sal[0].size).reshape(sal.shape).astype(np.float32)
    assert len(np.unique(sal[0])) == sal[0].size
    ours = metrics.deletion(m, x, sal, TARGETS, pixels_per_step=896)
    metric = quantus.PixelFlipping(features_in_step=896, perturb_baseline=0.0, disable_warnings=True,
                                   display_progressbar=False)
    peer = np.asarray(metric(model=net, x_batch=x, y_batch=np.asarray(TARGETS), a_batch=sal[:, None],
                             channel_first=True, softmax=True, device="cpu", batch_size=2))
    assert peer.shape == (2, 42)
    _assert_close(ours.curve[:, 1:], peer[:, 2::3])


# --- average drop / increase in confidence ----------------------------------------------------------------------
def test_average_drop_and_increase_match_torchcam(setup):
    """Each image twice: for its listed class (whose confidence rises when the map masks the image: an increase,
    no drop) and for its top-1 class (a drop of ~75%, no increase), so both branches are compared."""
    from torchcam.metrics import ClassificationMetric

    net, m, x, _, _ = setup
    images = np.concatenate([x, x])
    targets = TARGETS + [int(t) for t in m.scores(x).argmax(1)]
    cam = cv.grad_cam(m, images, targets)
    drop, increase = metrics.confidence_change(m, images, cam, targets, batch_size=3)
    assert (drop.values[:2] == 0).all() and (drop.values[2:] > 0.5).all()
    assert increase.values.tolist() == [1, 1, 0, 0]
    for i in range(4):  # torchcam averages; one image at a time gives the per-image values
        peer = ClassificationMetric(FixedMaps(net, cam[i:i + 1]), _softmax)
        peer.update(_t(images[i:i + 1]), class_idx=[targets[i]])
        summary = peer.summary()
        _assert_close(drop.values[i], summary["avg_drop"])
        assert increase.values[i] == summary["conf_increase"]
    assert drop.output.startswith("probability") and drop.higher_is_better is False
    assert increase.higher_is_better is True


# --- ROAD -------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def peer_noise_as_ours(n_images: int, percentiles, order_calls, seed: int = 0):
    """Make pytorch-grad-cam's ``torch.randn_like`` (the imputation noise) return our draws: its calls come
    percentile by percentile, image by image within one percentile, for each order listed in ``order_calls``."""
    calls = []
    original = torch.randn_like
    schedule = [(o, k, i) for o in order_calls for k in range(len(percentiles)) for i in range(n_images)]

    def randn_like(t, *args, **kwargs):
        o, k, i = schedule[len(calls)]
        calls.append((o, k, i))
        return torch.from_numpy(imputation.noise_for(seed, i, k, o, tuple(t.shape)))

    torch.randn_like = randn_like
    try:
        yield calls
    finally:
        torch.randn_like = original
    assert len(calls) == len(schedule)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_single_percentile_matches_pytorch_grad_cam(setup, order):
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    net, m, x, cam, _ = setup
    percentile = 80 if order == "morf" else 20  # the peers' defaults
    peer_cls = ROADMostRelevantFirst if order == "morf" else ROADLeastRelevantFirst
    targets = [ClassifierOutputSoftmaxTarget(t) for t in TARGETS]
    with peer_noise_as_ours(2, [percentile], [order]):
        peer = peer_cls(percentile)(_t(x), cam, targets, net)
    ours = metrics.road(m, x, cam, TARGETS, order=order, percentiles=[percentile])
    _assert_close(ours.values, peer)


def test_road_averages_and_combined_match_pytorch_grad_cam(setup):
    from pytorch_grad_cam.metrics.road import (ROADCombined, ROADLeastRelevantFirstAverage,
                                               ROADMostRelevantFirstAverage)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    net, m, x, cam, _ = setup
    percentiles = [20, 50, 80]
    targets = [ClassifierOutputSoftmaxTarget(t) for t in TARGETS]
    with peer_noise_as_ours(2, percentiles, ["morf"]):
        morf = ROADMostRelevantFirstAverage(percentiles)(_t(x), cam, targets, net)
    with peer_noise_as_ours(2, percentiles, ["lerf"]):
        lerf = ROADLeastRelevantFirstAverage(percentiles)(_t(x), cam, targets, net)
    with peer_noise_as_ours(2, percentiles, ["lerf", "morf"]):  # ROADCombined runs LeRF first
        combined = ROADCombined(percentiles)(_t(x), cam, targets, net)
    ours = {o: metrics.road(m, x, cam, TARGETS, order=o, percentiles=percentiles, batch_size=4)
            for o in ("morf", "lerf", "combined")}
    _assert_close(ours["morf"].values, morf)
    _assert_close(ours["lerf"].values, lerf)
    _assert_close(ours["combined"].values, combined)
    assert ours["combined"].curve.shape == (2, 3)


def test_road_score_output_matches_pytorch_grad_cam_without_noise(setup):
    """``output="score"`` = ClassifierOutputTarget (the logit); noise 0 = the deterministic imputation."""
    from pytorch_grad_cam.metrics.perturbation_confidence import (PerturbationConfidenceMetric,
                                                                  RemoveMostRelevantFirst)
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net, m, x, cam, _ = setup
    peer = PerturbationConfidenceMetric(RemoveMostRelevantFirst(50, NoisyLinearImputer(noise=0.0)))
    expected = peer(_t(x), cam, [ClassifierOutputTarget(t) for t in TARGETS], net)
    ours = metrics.road(m, x, cam, TARGETS, percentiles=[50], noise=0, output="score")
    _assert_close(ours.values, expected)


# --- infidelity / sensitivity-max ---------------------------------------------------------------------------------
@pytest.mark.parametrize("output,normalize", [("score", False), ("score", True), ("probability", False)])
def test_infidelity_matches_captum(setup, output, normalize):
    from captum.metrics import infidelity

    net, m, x, _, _ = setup
    attributions = cv.gradients(m, x, TARGETS)
    # Perturbations large enough that the infidelity (a squared residual) stands well above the ~1e-6 by which
    # torch's and onnxruntime's float32 scores differ; chunks of 3 and 2 samples, as captum's max_examples_per_batch
    # cuts them.
    noise, samples, bs = 0.3, 5, 3
    ours = metrics.infidelity(m, x, attributions, TARGETS, samples=samples, noise=noise, normalize=normalize,
                              output=output, seed=7, batch_size=bs)
    rng = np.random.default_rng(7)

    def perturb(inputs):
        i = torch.from_numpy(rng.normal(0.0, noise, tuple(inputs.shape)).astype(np.float32))
        return i, inputs - i

    forward = net if output == "score" else (lambda inp: _softmax(net(inp)))
    peer = np.concatenate([
        infidelity(forward, perturb, _t(x[i:i + 1]), _t(attributions[i:i + 1]), target=TARGETS[i],
                   n_perturb_samples=samples, max_examples_per_batch=bs, normalize=normalize).numpy()
        for i in range(2)])
    _assert_close(ours.values, peer)


def test_sensitivity_max_matches_captum(setup):
    """Our saliency through the registry (max_c |dS/dI|, min-max normalised, as cv.saliency returns it) against
    captum's Saliency on the torch model, re-explained on the same perturbed copies."""
    from captum.attr import Saliency
    from captum.metrics import sensitivity_max

    net, m, x, _, _ = setup
    samples, radius, bs = 4, 0.05, 3

    def torch_saliency(inp, target):
        if isinstance(inp, tuple):  # captum explains the clean inputs as a 1-tuple and expects a tuple back
            return (torch_saliency(inp[0], target),)
        with pinned(net, onnx_kink_pattern(m, inp.detach().numpy())):
            g = Saliency(net).attribute(inp, target=target, abs=True).amax(dim=1)
        flat = g.reshape(len(g), -1)
        lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
        return ((flat - lo) / (hi - lo)).reshape(g.shape)

    ours = metrics.sensitivity_max(m, x, "saliency", TARGETS, samples=samples, radius=radius, seed=11,
                                   batch_size=bs)
    assert (ours.values > 0.05).all()  # the maps do move
    rng = np.random.default_rng(11)

    def perturb(inputs, r):
        return inputs + torch.from_numpy(rng.uniform(-r, r, tuple(inputs.shape)).astype(np.float32))

    peer = np.concatenate([
        sensitivity_max(torch_saliency, _t(x[i:i + 1]), perturb_func=perturb, perturb_radius=radius,
                        n_perturb_samples=samples, max_examples_per_batch=bs, target=TARGETS[i]).numpy()
        for i in range(2)])
    _assert_close(ours.values, peer)
