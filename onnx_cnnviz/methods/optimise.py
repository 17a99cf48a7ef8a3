"""Images made by optimisation: class models, neuron / channel models, and feature inversion.

* :func:`class_model` — Simonyan, Vedaldi & Zisserman 2014, Sec. 2: ``I* = argmax_I S_c(I) - lambda ||I||_2^2``
  (``S_c`` the class score before softmax), by gradient ascent from the zero image (the dataset mean after
  preprocessing) or from noise, with the regularisers of Yosinski et al. 2015, "Understanding Neural Networks Through
  Deep Visualization", Sec. 3: L2 decay ``x <- (1 - decay) x``, Gaussian blur every ``blur_every`` steps, clipping
  pixels of small norm to zero, plus random jitter (translating the image before each gradient step, Mordvintsev et
  al. 2015) and clipping to the valid pixel range. By default the gradient is *preconditioned* as in Olah, Mordvintsev
  & Schubert 2017, "Feature Visualization" (Distill), Sec. "Preconditioning and parameterization": blurred with a
  Gaussian whose width shrinks from coarse to fine over the run (the image is built from large shapes first, as
  DeepDream's octaves do, and high-frequency patterns cannot take over) and mixed across colours with the ImageNet
  colour correlation (steps move along natural colours rather than saturated ones). Without this, modern networks
  (EfficientNet-Lite0) reach a confident score with a grey high-frequency texture; with it, their class models show
  the object (fur, ears, eyes for "tabby"), and SqueezeNet's keep theirs.
* :func:`neuron_model` — the same for any unit ``A[c, i, j]`` or channel mean ``1/(hw) sum_ij A[c, i, j]`` of any
  layer (Yosinski et al.; Erhan et al. 2009 "activation maximisation").
* :func:`invert` — Mahendran & Vedaldi 2015, "Understanding Deep Image Representations by Inverting Them", Eq. 1-3:
  ``x* = argmin_x ||Phi(x) - Phi_0||^2 / ||Phi_0||^2 + lambda_a ||x / B||_alpha^alpha + lambda_tv TV_beta(x / B)``,
  with ``TV_beta(x) = sum_ij ((x_{i,j+1} - x_ij)^2 + (x_{i+1,j} - x_ij)^2)^(beta/2)``, by Adam (their
  ``momentum`` SGD works too; Adam needs no learning-rate schedule per layer), with the same (milder) gradient
  preconditioning; by default at :func:`onnx_cnnviz.methods.features.mid_layer`, the deepest layer whose units see
  at most half the image (the last feature map of a modern network is too abstract to invert into a picture).

Every gradient comes from one cached ONNX graph per objective: the class score through :meth:`Model.run` with a
one-hot ``score_weights`` row; a unit, a channel or the code distance through :meth:`Model.vjp`, whose cotangent
(one-hot, uniform over the channel, or ``2 (Phi(x) - Phi_0) / ||Phi_0||^2``) is fed at run time. Steps are numpy.
Runs are deterministic given
``seed`` (initial noise and jitter come from ``numpy.random.default_rng(seed)``).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InputError
from ..model import Model
from .features import display_image, mid_layer, preprocessing_for

#: The square root of the colour covariance of ImageNet photos (RGB rows, from its SVD), as in Olah et al. 2017
#: (lucid's ``color_correlation_svd_sqrt``). ``C C^T`` is the covariance: a gradient step mixed by it moves along
#: the colours photos have.
COLOR_CORRELATION_SQRT = np.array([[0.26, 0.09, 0.02],
                                   [0.27, 0.00, -0.05],
                                   [0.27, -0.09, 0.03]], np.float32)


@dataclass
class Optimised:
    """Result of an optimisation.

    Attributes:
        x: the model input (C, H, W) float32.
        image: it as uint8 RGB.
        history: the objective's main term at each step (the class score, the unit's activation, or the relative code
            error ``||Phi(x) - Phi_0|| / ||Phi_0||`` for inversion), before that step's update.
        final: its value at ``x``.
        layer: the layer optimised at (None for a class model).
    """
    x: np.ndarray
    image: np.ndarray
    history: np.ndarray
    final: float
    layer: str | None = None


def _bounds(prep, channels: int):
    """Per-channel (lo, hi) of valid model inputs (pixels 0..255 through the preprocessing), and the mean range."""
    lo = np.zeros(channels, np.float32) * prep.scale
    hi = np.full(channels, 255.0, np.float32) * prep.scale
    if prep.mean is not None and channels == 3:
        lo, hi = lo - np.asarray(prep.mean, np.float32), hi - np.asarray(prep.mean, np.float32)
    if prep.std is not None and channels == 3:
        lo, hi = lo / np.asarray(prep.std, np.float32), hi / np.asarray(prep.std, np.float32)
    return lo[:, None, None], hi[:, None, None], float(np.mean(hi - lo))


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    hwc = np.ascontiguousarray(x.transpose(1, 2, 0))
    out = cv2.GaussianBlur(hwc, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    return (out[:, :, None] if out.ndim == 2 else out).transpose(2, 0, 1).astype(np.float32)


def _colour_mixer(prep, channels: int, lo, hi):
    """The (C, C) matrix that mixes a model-input gradient across colours: ``S P S`` with ``P = C C^T`` (the
    ImageNet colour covariance, :data:`COLOR_CORRELATION_SQRT`, in the model's channel order, scaled to largest
    eigenvalue 1) and ``S`` the per-channel model units of one pixel level (so per-channel ``std`` is accounted
    for). None for inputs that are not 3 colours."""
    if channels != 3:
        return None
    c = COLOR_CORRELATION_SQRT[::-1] if str(prep.order).upper() == "BGR" else COLOR_CORRELATION_SQRT
    p = (c @ c.T).astype(np.float64)
    scale = np.broadcast_to(np.asarray(hi - lo, np.float64).reshape(-1), (3,))
    if not np.all(np.isfinite(scale)):
        scale = np.ones(3)
    mix = scale[:, None] * p * scale[None, :]
    return (mix / np.abs(np.linalg.eigvalsh(mix)).max()).astype(np.float32)


def _grad_sigma(grad_blur, t: int, steps: int) -> float:
    """The gradient blur's sigma at step ``t``: geometric from ``grad_blur[0]`` (first step) to ``grad_blur[1]``
    (last step); 0 when off."""
    if not grad_blur:
        return 0.0
    first, last = (float(v) for v in grad_blur)
    if first <= 0 or last <= 0:
        return 0.0
    return first * (last / first) ** (t / max(1, steps - 1))


def _precondition(g: np.ndarray, sigma: float, mixer) -> np.ndarray:
    """``g`` (C, H, W) blurred with ``sigma`` (skipped below 0.3 px, where the kernel is about a delta) and mixed
    across channels with ``mixer``."""
    if sigma >= 0.3:
        g = _blur(np.asarray(g, np.float32), sigma)
    if mixer is not None:
        g = np.einsum("ij,jhw->ihw", mixer, g)
    return g


def _start(m: Model, hw, init: str, rng, span: float, lo, hi, prep) -> np.ndarray:
    c = m.channels
    # "zero" is the zero model input: the mean image for mean-subtracted preprocessing (Simonyan et al. start
    # there); clipped into the valid range for inputs without a mean.
    x = np.zeros((c, *hw), np.float32)
    if init == "noise":
        x = x + rng.normal(0.0, 0.02 * span, x.shape).astype(np.float32)
    elif init != "zero":
        raise InputError(f"init must be 'zero' or 'noise', not {init!r}.")
    return np.clip(x, lo, hi)


def _hw(m: Model, hw) -> tuple:
    hw = hw or m.input_shape[1:]
    if hw[0] is None:
        hw = m.spec().info[m.input_name].shape[2:]
    return tuple(int(v) for v in hw)


def _ascend(m, grad_fn, hw, steps, lr, l2, decay, jitter, blur_every, blur_sigma, clip_norm_percentile, init, seed,
            preprocess, clip, grad_blur=None, decorrelate=False, layer=None):
    """Gradient ascent on ``grad_fn(x[None]) -> (value, dvalue/dx)`` with the Yosinski et al. regularisers.

    Each step: jitter (roll by up to ``jitter`` px), ``g = dF/dx - 2 l2 x``, preconditioning (``g`` blurred with the
    step's ``grad_blur`` sigma and, with ``decorrelate``, mixed across colours), ``x += lr * span * g / rms(g)``
    (normalised step, so ``lr`` is a fraction of the input range whatever the model's scale), then decay, blur,
    small-norm clipping and clipping to the valid range.
    """
    prep = preprocessing_for(m, preprocess)
    lo, hi, span = _bounds(prep, m.channels)
    mixer = _colour_mixer(prep, m.channels, lo, hi) if decorrelate else None
    if not clip:
        lo, hi = -np.inf, np.inf
    rng = np.random.default_rng(seed)
    x = _start(m, hw, init, rng, span, lo, hi, prep)
    history = np.zeros(steps, np.float64)
    for t in range(steps):
        dy, dx = (rng.integers(-jitter, jitter + 1, size=2) if jitter else (0, 0))
        shifted = np.roll(x, (int(dy), int(dx)), axis=(1, 2))
        value, g = grad_fn(shifted[None])
        g = np.roll(g[0], (-int(dy), -int(dx)), axis=(1, 2)) - 2.0 * l2 * x
        g = _precondition(g, _grad_sigma(grad_blur, t, steps), mixer)
        history[t] = value
        rms = float(np.sqrt(np.mean(g.astype(np.float64) ** 2)))
        if rms > 0:
            x = x + (lr * span / rms) * g
        if decay:
            x = x * (1.0 - decay)
        if blur_every and blur_sigma and (t + 1) % blur_every == 0:
            x = _blur(x, blur_sigma)
        if clip_norm_percentile:
            norms = np.sqrt((x ** 2).sum(axis=0))
            x = np.where(norms < np.percentile(norms, clip_norm_percentile), 0.0, x)
        x = np.clip(x, lo, hi).astype(np.float32)
    final, _ = grad_fn(x[None])
    return Optimised(x=x, image=display_image(x, prep) if x.shape[0] in (1, 3) else None, history=history,
                     final=float(final), layer=layer)


def class_model(m: Model, target: int, steps: int = 200, lr: float = 0.02, l2: float = 0.0, decay: float = 0.0,
                jitter: int = 16, blur_every: int = 0, blur_sigma: float = 0.5, clip_norm_percentile: float = 0.0,
                init: str = "zero", seed: int = 0, preprocess=None, hw=None, clip: bool = True,
                grad_blur=(8.0, 1.0), decorrelate: bool = True) -> Optimised:
    """The class model of Simonyan et al., "Deep Inside Convolutional Networks", ICLR-W 2014:
    ``argmax_I S_c(I) - l2 ||I||^2``, regularised as in Yosinski et al., "Understanding Neural Networks Through Deep
    Visualization", ICML-W 2015.

    The defaults are tuned on EfficientNet-Lite0 and SqueezeNet 1.1 at 224 px (``benchmarks/flagship_pictures.py``):
    jitter 16 px, no decay and no image blur (both greyed the picture), the coarse-to-fine gradient blur 8 -> 1 px and
    the colour mixing (without either, EfficientNet's "tabby" is a grey texture at probability 0.97; with both, tabby
    fur, ears and eyes at probability > 0.99). For much smaller inputs scale ``jitter`` and ``grad_blur`` down.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        target: the class.
        steps: gradient-ascent steps.
        lr: the step as a fraction of the input range per step (normalised gradient).
        l2: Simonyan's lambda, in model-input units (0: off).
        decay: Yosinski et al.'s weight decay per step (0: off).
        jitter: the largest random shift per step, in pixels (0: off).
        blur_every: blur the image every this many steps (0: off).
        blur_sigma: that blur's sigma in pixels.
        clip_norm_percentile: zero the pixels whose norm is under this percentile (0: off).
        init: ``"zero"`` (the zero model input) or ``"noise"``.
        seed: the noise's and the jitter's seed.
        preprocess: gives the valid pixel range (clipping) and the display (default: the model's metadata, else
            "imagenet").
        hw: the input size to optimise at (default: the model's).
        clip: keep the image in the valid pixel range.
        grad_blur: the sigma (pixels) of the Gaussian blur of each step's gradient, going geometrically from the
            first value at the first step to the second at the last, so the image is built coarse to fine; None:
            off.
        decorrelate: mix the gradient across colours with the ImageNet colour correlation (Olah et al., "Feature
            Visualization", Distill 2017; 3-channel inputs only).

    Returns:
        The image, and ``history`` holding ``S_c`` before each step.

    Raises:
        InputError: an unknown ``init`` or class, or bad parameters.
    """
    hw = _hw(m, hw)
    target = int(m.targets_for(int(target), 1)[0])
    weights = np.zeros((1, m.num_classes), np.float32)
    weights[0, target] = 1.0

    def grad_fn(x):
        res = m.run(x, wrt=[m.input_name], score_weights=weights)
        return float(res.scores[0, target]), res.grads[m.input_name]

    return _ascend(m, grad_fn, hw, steps, lr, l2, decay, jitter, blur_every, blur_sigma, clip_norm_percentile, init,
                   seed, preprocess, clip, grad_blur=grad_blur, decorrelate=decorrelate)


def neuron_model(m: Model, layer, channel: int, unit=None, steps: int = 200, lr: float = 0.01, l2: float = 0.0,
                 decay: float = 0.005, jitter: int = 0, blur_every: int = 4, blur_sigma: float = 0.5,
                 clip_norm_percentile: float = 0.0, init: str = "noise", seed: int = 0, preprocess=None, hw=None,
                 clip: bool = True, grad_blur=None, decorrelate: bool = False) -> Optimised:
    """Activation maximisation for one unit ``A[channel, i, j]`` or a channel's mean ``1/(hw) sum_ij A[channel, i, j]``.

    The gradient is one :meth:`Model.vjp` run with a constant cotangent (one-hot at the unit, or ``1/(hw)`` over the
    channel); the graph is built once and reused every step. Same regularisers as :func:`class_model`, with
    ``grad_blur`` and ``decorrelate`` off by default (a blurred gradient reaches outside a single unit's field),
    jitter off (it would move a single unit's field) and ``init="noise"`` (at the zero input many units are exactly
    0 behind a ReLU and get no gradient).

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        layer: a (N, C, h, w) feature map.
        channel: the channel.
        unit: (i, j) in the map, or None for the channel's mean.
        steps: gradient-ascent steps.
        lr: the step as a fraction of the input range per step (normalised gradient).
        l2: Simonyan's lambda, in model-input units (0: off).
        decay: Yosinski et al.'s weight decay per step (0: off).
        jitter: the largest random shift per step, in pixels (0: off).
        blur_every: blur the image every this many steps (0: off).
        blur_sigma: that blur's sigma in pixels.
        clip_norm_percentile: zero the pixels whose norm is under this percentile (0: off).
        init: ``"zero"`` (the zero model input) or ``"noise"``.
        seed: the noise's and the jitter's seed.
        preprocess: gives the valid pixel range (clipping) and the display (default: the model's metadata, else
            "imagenet").
        hw: the input size to optimise at (default: the model's).
        clip: keep the image in the valid pixel range.
        grad_blur: the sigma (pixels) of the Gaussian blur of each step's gradient, going geometrically from the
            first value at the first step to the second at the last, so the image is built coarse to fine; None:
            off.
        decorrelate: mix the gradient across colours with the ImageNet colour correlation (Olah et al., "Feature
            Visualization", Distill 2017; 3-channel inputs only).

    Returns:
        The image, and ``history`` holding the activation before each step.

    Raises:
        InputError: a layer that is not a feature map, a channel or unit outside it, or an unknown ``init``.
        UnknownLayerError: a layer not in ``Model.layers``.
    """
    name = m.layer_name(layer)
    hw = _hw(m, hw)
    shape = m.tensor_shape(name, hw)
    if len(shape) != 4:
        raise InputError(f"layer '{name}' is not a (N, C, h, w) feature map.")
    c = int(channel)
    if not 0 <= c < shape[1]:
        raise InputError(f"channel {channel} is out of range for '{name}' ({shape[1]} channels).")
    cotangent = np.zeros((1, *shape[1:]), np.float32)
    if unit is None:
        cotangent[0, c] = 1.0 / (shape[2] * shape[3])
    else:
        i, j = (int(v) for v in unit)
        if not (0 <= i < shape[2] and 0 <= j < shape[3]):
            raise InputError(f"unit {unit} is outside the {shape[2]}x{shape[3]} map of '{name}'.")
        cotangent[0, c, i, j] = 1.0

    def grad_fn(x):
        res = m.vjp(x, name, cotangent)
        return float((res.outputs[name] * cotangent).sum()), res.grads[m.input_name]

    return _ascend(m, grad_fn, hw, steps, lr, l2, decay, jitter, blur_every, blur_sigma, clip_norm_percentile, init,
                   seed, preprocess, clip, grad_blur=grad_blur, decorrelate=decorrelate, layer=name)


def total_variation(x: np.ndarray, beta: float = 2.0, eps: float = 1e-8):
    """The total variation prior of Mahendran & Vedaldi 2015, Eq. 4, and its gradient.

    ``TV_beta(x) = sum_ij ((x_(i,j+1) - x_ij)^2 + (x_(i+1,j) - x_ij)^2)^(beta/2)``, forward differences, zero at the
    last row / column.

    Args:
        x: (C, H, W) array.
        beta: the exponent.
        eps: added inside the power so its gradient stays finite where the differences vanish.

    Returns:
        ``(TV_beta(x), dTV/dx)``.
    """
    dx = np.zeros_like(x, dtype=np.float64)
    dy = np.zeros_like(x, dtype=np.float64)
    dx[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
    dy[:, :-1, :] = x[:, 1:, :] - x[:, :-1, :]
    d = dx ** 2 + dy ** 2 + eps
    value = float((d ** (beta / 2.0)).sum())
    w = beta / 2.0 * d ** (beta / 2.0 - 1.0)  # d value / d d
    g = np.zeros_like(dx)
    # d d_ij / d x_ij = -2 dx_ij - 2 dy_ij;  d d_ij / d x_i,j+1 = 2 dx_ij;  d d_ij / d x_i+1,j = 2 dy_ij
    g -= 2.0 * w * (dx + dy)
    g[:, :, 1:] += 2.0 * (w * dx)[:, :, :-1]
    g[:, 1:, :] += 2.0 * (w * dy)[:, :-1, :]
    return value, g


def invert(m: Model, x, layer=None, steps: int = 200, lr: float = 0.02, lambda_tv: float = 0.5, beta: float = 2.0,
           lambda_norm: float = 1e-3, alpha: float = 6.0, init: str = "noise", seed: int = 0, preprocess=None,
           clip: bool = True, code=None, grad_blur=(2.0, 0.5), decorrelate: bool = True) -> Optimised:
    """Reconstruct an image from its code at ``layer`` (Mahendran & Vedaldi, "Understanding Deep Image
    Representations by Inverting Them", CVPR 2015, Eq. 1-4).

    Minimises, over a (C, H, W) image ``y``, with ``B`` the input range and ``P = H W``::

        E(y) = ||Phi(y) - Phi_0||^2 / ||Phi_0||^2 + lambda_norm / P ||y / B||_alpha^alpha
               + lambda_tv / P TV_beta(y / B)

    where ``Phi_0 = Phi(x)`` (or ``code``). The code term's gradient is one :meth:`Model.vjp` run at the layer with
    the cotangent ``2 (Phi(y) - Phi_0) / ||Phi_0||^2``; the priors' gradients are numpy. Adam (Kingma & Ba 2015)
    with step ``lr * B`` on the preconditioned gradient. Defaults tuned on EfficientNet-Lite0 and SqueezeNet 1.1
    (lr 0.05 without preconditioning left the colours noisy and the error higher).

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: one preprocessed image, (C, H, W) or (1, C, H, W).
        layer: default :func:`onnx_cnnviz.methods.features.mid_layer`, the deepest layer whose units see at most half
            the image (EfficientNet-Lite0: ``/_blocks.6/_swish/Clip_output_0``, 14x14, relative code error about
            0.14 after 200 steps, a recognisable photo; its last map, :attr:`Model.default_layer`, stays above 0.9
            and gives colour noise).
        steps: Adam steps.
        lr: the step as a fraction of the input range.
        lambda_tv: the total variation prior's weight.
        beta: its exponent (:func:`total_variation`).
        lambda_norm: the alpha-norm prior's weight.
        alpha: its exponent.
        init: ``"zero"`` or ``"noise"``.
        seed: the noise's seed.
        preprocess: the valid pixel range and the display (default: the model's metadata, else "imagenet").
        clip: keep ``y`` in the valid pixel range.
        code: a given code at the layer to invert, instead of ``x``'s.
        grad_blur: Gaussian sigma in pixels of the gradient's blur, from the first value to the second over the run;
            None: off.
        decorrelate: mix the gradient across colours with the ImageNet colour correlation (see :func:`class_model`).

    Returns:
        The image, ``history`` holding the relative code error ``||Phi(y) - Phi_0|| / ||Phi_0||`` before each step and
        ``final`` at the result.

    Raises:
        InputError: more than one image, an all-zero code, or an unknown ``init``.
        UnknownLayerError: a layer not in ``Model.layers``.
    """
    name = mid_layer(m) if layer is None else m.layer_name(layer)
    prep = preprocessing_for(m, preprocess)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.shape[0] != 1:
        raise InputError("invert takes one image.")
    hw = tuple(x.shape[2:])
    lo, hi, span = _bounds(prep, m.channels)
    mixer = _colour_mixer(prep, m.channels, lo, hi) if decorrelate else None
    if not clip:
        lo, hi = -np.inf, np.inf
    phi0 = m.run(x, outputs=[name]).outputs[name] if code is None else np.asarray(code, np.float32)
    norm0 = float((phi0.astype(np.float64) ** 2).sum())
    if norm0 == 0:
        raise InputError(f"the code of the image at '{name}' is all zeros; nothing to invert.")
    npix = float(np.prod(hw))
    rng = np.random.default_rng(seed)
    if init == "noise":
        y = rng.normal(0.0, 0.02 * span, x.shape[1:]).astype(np.float32)
    elif init == "zero":
        y = np.zeros(x.shape[1:], np.float32)
    else:
        raise InputError(f"init must be 'zero' or 'noise', not {init!r}.")
    y = np.clip(y, lo, hi)
    m1 = np.zeros_like(y, dtype=np.float64)
    m2 = np.zeros_like(y, dtype=np.float64)
    b1, b2, eps = 0.9, 0.999, 1e-8
    history = np.zeros(steps, np.float64)

    def code_grad(y):
        # a forward run gives Phi(y); the backward run seeded with the residual gives d||Phi - Phi0||^2/dy (the
        # cotangent depends on Phi(y), so it cannot be one run; each graph is built once and cached)
        phi = m.run(y[None], outputs=[name]).outputs[name]
        resid = (phi - phi0).astype(np.float32)
        g = m.vjp(y[None], name, 2.0 * resid / norm0).grads[m.input_name][0]
        return float((resid.astype(np.float64) ** 2).sum() / norm0), g

    for t in range(steps):
        err, g = code_grad(y)
        history[t] = np.sqrt(err)
        yb = y / span
        if lambda_norm:
            g = g + lambda_norm * alpha * np.sign(yb) * np.abs(yb) ** (alpha - 1) / (npix * span)
        if lambda_tv:
            _, gtv = total_variation(yb, beta)
            g = g + lambda_tv * gtv / (npix * span)
        g = _precondition(g, _grad_sigma(grad_blur, t, steps), mixer)
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * g * g
        mh, vh = m1 / (1 - b1 ** (t + 1)), m2 / (1 - b2 ** (t + 1))
        y = np.clip(y - lr * span * mh / (np.sqrt(vh) + eps), lo, hi).astype(np.float32)
    final, _ = code_grad(y)
    return Optimised(x=y, image=display_image(y, prep) if y.shape[0] in (1, 3) else None, history=history,
                     final=float(np.sqrt(final)), layer=name)
