"""Class models, neuron models and feature inversion: the objective improves, runs are reproducible."""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz import image as im
from onnx_cnnviz.methods import optimise as O

from .planted import CROSS, planted_model

IMAGENET_CLASSES = None


@pytest.fixture(scope="module")
def planted():
    return cv.load(planted_model())


def _rising(history, blocks: int = 6) -> bool:
    """Monotone on average: the means over consecutive blocks of steps never decrease and end higher (jitter and
    blur make single steps go down now and then; at the pixel-range bounds the value plateaus)."""
    means = np.array([block.mean() for block in np.array_split(np.asarray(history), blocks)])
    return bool(np.all(np.diff(means) >= -1e-6 * np.abs(means).max()) and means[-1] > means[0])


def test_class_model_rises_and_is_reproducible(planted):
    a = O.class_model(planted, 2, steps=60, init="noise", seed=7)
    assert _rising(a.history) and a.final > a.history[0] + 0.3
    b = O.class_model(planted, 2, steps=60, init="noise", seed=7)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.history, b.history)
    c = O.class_model(planted, 2, steps=60, init="noise", seed=8)
    assert not np.array_equal(a.x, c.x)
    assert a.image.shape == (48, 48, 3) and a.image.dtype == np.uint8
    # the image stays in the valid range of the preprocessing (imagenet by default)
    assert a.x.min() >= (0 - 0.485) / 0.229 - 1e-5 and a.x.max() <= (1 - 0.406) / 0.225 + 1e-5


def test_neuron_model_draws_the_detector(planted):
    """Maximising the planted cross detector's unit paints a cross inside the unit's receptive field."""
    r = O.neuron_model(planted, "relu2", 0, unit=(12, 12), steps=40, blur_every=0, decay=0.0, seed=0)
    assert _rising(r.history)
    # unit (12, 12) of relu2 sees pixels 20..29; conv1's template taps are at the centre of pool cells
    patch = r.x.mean(axis=0)[20:30, 20:30]
    best = max(np.corrcoef(patch[y:y + 5, x:x + 5].ravel(), CROSS.ravel())[0, 1]
               for y in range(6) for x in range(6))
    assert best > 0.8
    # without decay and blur, only the receptive field changes: the rest is still the initial noise
    start = O.neuron_model(planted, "relu2", 0, unit=(12, 12), steps=0, seed=0).x
    changed = np.abs(r.x - start).max(axis=0) > 0
    ys, xs = np.nonzero(changed)
    assert ys.min() >= 20 and xs.min() >= 20 and ys.max() < 30 and xs.max() < 30
    ch = O.neuron_model(planted, "relu2", 0, steps=30, seed=0)
    assert _rising(ch.history)


def test_squeezenet_class_model(squeezenet_path, tmp_path):
    """A class model for 'flamingo' (130) on the real SqueezeNet: the image becomes a confident flamingo."""
    m = cv.load(squeezenet_path)
    r = O.class_model(m, 130, steps=30, preprocess="caffe")
    assert _rising(r.history, blocks=5)
    scores = m.scores(r.x[None])[0]
    assert int(np.argmax(scores)) == 130
    path = im.save_image(tmp_path / "class_model_flamingo.png", r.image)
    assert path.stat().st_size > 1000


def test_invert_early_layer(squeezenet_path, kitten_x):
    """Inverting conv1 (after ReLU) of the SqueezeNet reaches a small relative code error, and the image looks
    like the kitten (Mahendran & Vedaldi: early layers are almost invertible). The default step (lr 0.02, tuned for
    the mid layers inverted by default) needs 80 steps here; lr 0.05 got there in 40."""
    m = cv.load(squeezenet_path)
    r = O.invert(m, kitten_x, "conv1_2", steps=80, preprocess="caffe")
    assert r.final < 0.06 and r.history[0] > 0.9
    assert np.all(np.diff(r.history[5:]) < 1e-3)  # Adam: the error keeps falling after the first steps
    corr = np.corrcoef(r.x.ravel(), kitten_x.ravel())[0, 1]
    assert corr > 0.9


def test_total_variation_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 6))
    for beta in (2.0, 1.5):
        value, g = O.total_variation(x, beta)
        v = rng.standard_normal(x.shape)
        eps = 1e-5
        fd = (O.total_variation(x + eps * v, beta)[0] - O.total_variation(x - eps * v, beta)[0]) / (2 * eps)
        assert abs(fd - (g * v).sum()) < 1e-5 * abs(fd)


def test_preconditioning_schedule_and_colour_mixer():
    """The gradient blur goes geometrically from coarse to fine; the colour mixer is the ImageNet colour covariance
    in the model's channel order (BGR: both axes reversed), symmetric with largest eigenvalue 1; none for grey."""
    assert O._grad_sigma((8.0, 1.0), 0, 200) == pytest.approx(8.0)
    assert O._grad_sigma((8.0, 1.0), 199, 200) == pytest.approx(1.0)
    assert O._grad_sigma((8.0, 1.0), 99, 199) == pytest.approx(np.sqrt(8.0))
    assert O._grad_sigma(None, 5, 10) == 0.0 and O._grad_sigma((0, 0), 5, 10) == 0.0
    rgb_prep, bgr_prep = im.get_preprocessing("imagenet"), im.get_preprocessing("caffe")
    lo, hi, _ = O._bounds(rgb_prep, 3)
    rgb = O._colour_mixer(rgb_prep, 3, lo, hi)
    lo, hi, _ = O._bounds(bgr_prep, 3)
    bgr = O._colour_mixer(bgr_prep, 3, lo, hi)
    np.testing.assert_allclose(bgr, bgr.T, atol=1e-6)
    assert np.linalg.eigvalsh(bgr.astype(np.float64)).max() == pytest.approx(1.0, abs=1e-5)
    # caffe has one scale for all channels: its mixer is the plain covariance, reversed
    c = O.COLOR_CORRELATION_SQRT.astype(np.float64)
    cov = c @ c.T
    np.testing.assert_allclose(bgr, (cov / np.linalg.eigvalsh(cov).max())[::-1, ::-1], atol=1e-5)
    # imagenet's std differs a little per channel: nearly the same matrix in RGB order
    np.testing.assert_allclose(rgb, bgr[::-1, ::-1], atol=0.03)
    assert O._colour_mixer(rgb_prep, 1, lo, hi) is None
    # a blurred, mixed gradient: smooth, and a pure red step becomes a step along natural (correlated) colours
    g = np.zeros((3, 16, 16), np.float32)
    g[0, 8, 8] = 1.0
    out = O._precondition(g, 2.0, rgb)
    assert out[:, 8, 8].min() > 0 and out[0, 8, 8] < 0.2 and np.count_nonzero(out[0]) > 100


def test_preconditioning_off_is_the_plain_ascent(planted):
    """grad_blur=None and decorrelate=False give Yosinski et al.'s ascent: the first step is the normalised raw
    gradient; with preconditioning the first step is smoother."""
    plain = O.class_model(planted, 2, steps=1, jitter=0, init="noise", grad_blur=None, decorrelate=False)
    smooth = O.class_model(planted, 2, steps=1, jitter=0, init="noise")
    start = O.class_model(planted, 2, steps=0, init="noise").x

    def roughness(x):
        d = x - start
        return float(np.abs(np.diff(d, axis=2)).mean() / (np.abs(d).mean() + 1e-12))

    assert roughness(smooth.x) < 0.5 * roughness(plain.x)
    assert smooth.layer is None


def test_invert_default_layer(planted):
    """``layer=None`` inverts at features.mid_layer (here the last map: its field, 10 px, is under half of 48) and
    names it in the result."""
    from onnx_cnnviz.methods.features import mid_layer

    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 48, 48)).astype(np.float32)
    r = O.invert(planted, x, steps=5)
    assert r.layer == mid_layer(planted) == "relu2"
    assert r.final < r.history[0]
