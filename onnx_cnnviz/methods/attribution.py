"""Attributions built from input gradients: input x gradient, SmoothGrad, Integrated Gradients.

All three evaluate ``dS_c/dI`` (one backward graph of standard ONNX operators, run by onnxruntime) at the image or at
copies of it, and combine the gradients with numpy. The target class is resolved once on the clean image (top-1 when
``targets`` is None) and kept for every noisy or interpolated copy, as captum does with an explicit target.

* ``input_x_gradient``: ``x * dS_c/dx`` (Shrikumar et al. 2016; captum ``InputXGradient``).
* ``smoothgrad``: Smilkov et al. 2017, Eq. 3: ``1/n sum_i dS_c/dx (x + N(0, sigma^2))`` with
  ``sigma = noise * (max(x) - min(x))`` per image (the paper's noise level, Sec. 4.1).
* ``integrated_gradients``: Sundararajan et al. 2017, Eq. 1, approximated as captum does:
  ``(x - x') * sum_i w_i dS_c/dx (x' + a_i (x - x'))`` with captum's step points ``a_i`` and weights ``w_i``.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError
from ..maps import normalize_signed
from ..model import Model
from ..runtime import available_memory
from ..targets import resolve
from .arguments import baseline_values, input_only
from .arguments import batch_size as check_batch_size
from .gradients import gradients

#: ``progress(done, total)``: called by the long-running methods after each batch with the units of work done so
#: far and their total (noisy copies, path points, windows, masked images, classes).
Progress = Callable[[int, int], None]

INTEGRATION_RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")

#: Above this many Gauss-Legendre steps the nodes are found in O(steps) memory (see :func:`ig_steps`).
DENSE_LEGGAUSS_MAX = 1024

#: The most noisy copies per image SmoothGrad takes, and the most path points Integrated Gradients takes. Memory
#: does not grow with either (the copies stream ``batch_size`` at a time), but time does, linearly: 10,000 is already
#: hundreds of times the papers' settings (50 copies; 20 to 300 steps), so a larger value is taken for a typo and
#: refused before any run, not left to run for days.
MAX_SAMPLES = 10_000
MAX_STEPS = 10_000

#: Activation memory one run may use when the batch size is chosen automatically (bytes).
MEMORY_BUDGET = 1 << 30


def auto_batch_size(m: Model, hw, rows: int, backward: bool, cap: int = 64) -> int:
    """Rows per run for ``rows`` inputs of size ``hw``, sized to the memory.

    As many as fit :data:`MEMORY_BUDGET` (or a quarter of the memory available now, if that is less), at most
    ``cap``, then evened out so the runs are about equally full. The memory of one sample is estimated from the sum of
    the sizes of the model's per-sample tensors: onnxruntime reuses buffers, so a forward pass holds about a quarter
    of that sum and a forward + backward pass about half (measured on ResNet-50 at 224 px, CPU: 14 and 34 MB per
    sample against a sum of 101 MB).

    Args:
        m: the loaded model.
        hw: the input's (H, W).
        rows: how many inputs will be run in all.
        backward: whether the runs include the backward graph (twice the memory of a forward).
        cap: the most rows in one run.

    Returns:
        The rows per run, at least 1 (1 for a model whose batch is static).
    """
    if m.static_batch:
        return 1
    spec = m.spec(tuple(hw))
    per_sample = 0
    for info in spec.info.values():
        if info.is_float and info.shape and info.shape[0] is None and all(d is not None for d in info.shape[1:]):
            per_sample += 4 * int(np.prod(info.shape[1:], dtype=np.int64))
    per_sample = per_sample // 2 if backward else per_sample // 4
    budget = MEMORY_BUDGET
    free = available_memory()
    if free is not None:  # a busy machine gets smaller runs rather than swapping or dying
        budget = min(budget, free // 4)
    size = int(max(1, min(cap, budget // max(per_sample, 1))))
    runs = -(-max(rows, 1) // size)
    return int(-(-max(rows, 1) // runs))


def _chunk(m: Model, x: np.ndarray, rows: int, batch_size, backward: bool) -> int:
    """Rows made and run at once when ``rows`` inputs derived from ``x`` are streamed: ``batch_size`` if given,
    else :func:`auto_batch_size`."""
    return check_batch_size(batch_size) or auto_batch_size(m, x.shape[2:], rows, backward=backward)


def resolve_targets(m: Model, x: np.ndarray, targets) -> np.ndarray:
    """The targets of a batch, with the top-1 class of each clean image for None.

    Args:
        m: the loaded model.
        x: the (N, C, H, W) checked input.
        targets: None, a class index or name, a target object (:mod:`onnx_cnnviz.targets`), or one per image.

    Returns:
        (N,) int64 classes; target objects (a detection, a region, ...) come back as an (N,) object array of them,
        indexed per image like the classes, so that each noisy copy or path point keeps its image's target.

    Raises:
        InputError: a bad target, or None for a detector or segmenter (which has no top-1 class).
    """
    if targets is None:
        resolve(m, None, x.shape[0])  # a detector or segmenter has no top-1 class: says so
        return m.scores(x).argmax(axis=1).astype(np.int64)
    seeds = resolve(m, targets, x.shape[0])
    if not seeds.objects:
        return seeds.classes
    per_image = np.empty(len(seeds.objects), dtype=object)
    for i, target in enumerate(seeds.objects):
        per_image[i] = target
    return per_image


def _finish(attribution: np.ndarray, normalize: bool) -> np.ndarray:
    """Attributions are signed and at the input's size: ``normalize`` divides each image by its largest absolute
    value (zero stays zero); there is nothing to upsample."""
    return normalize_signed(attribution) if normalize else attribution


def input_x_gradient(m: Model, x, targets=None, layer=None, *, rule: str = "vanilla", upsample: bool = True,
                     normalize: bool = False, batch_size: int | None = None) -> np.ndarray:
    """Input x gradient (Shrikumar et al. 2016, as captum's ``InputXGradient``): ``x (.) dS_c/dx``.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        targets: None (each image's top-1 class), a class index or name, a target object
            (:mod:`onnx_cnnviz.targets`), or one of these per image.
        layer: must be None: the gradient is taken at the input (accepted for the map functions' common signature).
        rule: the gradient's rule set, ``"vanilla"``, ``"guided"`` or ``"deconvnet"`` (:func:`gradients`).
        upsample: accepted for the common signature; the result is at the input's size either way.
        normalize: divide each image by its largest absolute value (to [-1, 1]).
        batch_size: images per onnxruntime run (default: the model's).

    Returns:
        (N, C, H, W) float32, signed.

    Raises:
        InputError: a bad input, target or parameter, or a ``layer``.
        UnsupportedOpError: an op on the gradient path has no backward rule.
        NumericalError: the model produced NaN or Inf.
    """
    input_only("input_x_gradient", layer)
    x = m.check_input(x)
    return _finish((x * gradients(m, x, targets, rule=rule, batch_size=batch_size)).astype(np.float32), normalize)


def smoothgrad(m: Model, x, targets=None, layer=None, *, samples: int = 25, noise: float = 0.15,
               seed: int | np.random.Generator | None = 0, magnitude: bool = False, rule: str = "vanilla",
               upsample: bool = True, normalize: bool = False, batch_size: int | None = None,
               progress: Progress | None = None) -> np.ndarray:
    """SmoothGrad (Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017): the mean gradient of noisy
    copies, ``1/n sum_i dS_c/dx (x + N(0, sigma^2))`` with ``sigma = noise * (max(x) - min(x))`` per image.

    ``magnitude=True`` averages the squared gradients instead (the "SmoothGrad squared" of the PAIR saliency code
    and captum's ``smoothgrad_sq``). The noise comes from ``numpy.random.default_rng(seed)``, drawn image after image,
    copy after copy: equal seeds give equal maps, whatever the batch size. The copies are made and run
    ``batch_size`` at a time, the mean accumulating in float64 per image, so memory does not grow with ``samples``.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        targets: None (each image's top-1 class), a class index or name, a target object
            (:mod:`onnx_cnnviz.targets`), or one of these per image.
        layer: must be None: the gradient is taken at the input (accepted for the map functions' common signature).
        samples: noisy copies per image, 1 to :data:`MAX_SAMPLES`.
        noise: the noise's standard deviation as a fraction of each image's value range, at least 0.
        seed: an int, None, or a ``numpy.random.Generator`` (whose draws then continue).
        magnitude: average the squared gradients.
        rule: the gradient's rule set, ``"vanilla"``, ``"guided"`` or ``"deconvnet"``.
        upsample: accepted for the common signature; the result is at the input's size either way.
        normalize: divide each image by its largest absolute value.
        batch_size: noisy copies per onnxruntime run (default: as many as the memory budget allows, at most 64).
        progress: ``progress(done, total)``, called after each batch with the noisy copies done so far and
            their total, ``N * samples``.

    Returns:
        (N, C, H, W) float32.

    Raises:
        InputError: a bad input, target or parameter, or a ``layer``.
        UnsupportedOpError: an op on the gradient path has no backward rule.
        NumericalError: the model produced NaN or Inf.
    """
    input_only("smoothgrad", layer)
    if not 1 <= int(samples) <= MAX_SAMPLES:
        raise InputError(f"samples must be between 1 and {MAX_SAMPLES} (noisy copies per image; the paper uses 50), "
                         f"got {samples}.")
    x = m.check_input(x)
    if not noise >= 0:
        raise InputError(f"noise must be >= 0 (a fraction of each image's value range), got {noise}.")
    samples = int(samples)
    t = resolve_targets(m, x, targets)
    n = x.shape[0]
    total = n * samples
    rng = np.random.default_rng(seed)
    bs = _chunk(m, x, total, batch_size, backward=True)
    flat = x.reshape(n, -1)
    sigma = float(noise) * (flat.max(axis=1) - flat.min(axis=1)).astype(np.float32)  # (N,) float32
    out = np.empty_like(x)
    acc = np.zeros(x.shape[1:], dtype=np.float64)  # the running sum of the image whose copies are in flight
    for start in range(0, total, bs):
        stop = min(start + bs, total)
        image = np.arange(start, stop) // samples
        eps = rng.standard_normal((stop - start,) + x.shape[1:], dtype=np.float32)
        noisy = x[image] + sigma[image].reshape(-1, 1, 1, 1) * eps
        del eps
        g = gradients(m, noisy, t[image], rule=rule, batch_size=bs)
        del noisy
        if magnitude:
            g = g * g
        for row, unit in enumerate(range(start, stop)):
            acc += g[row]  # one copy at a time, in order: the sum numpy's mean over the copies makes
            if (unit + 1) % samples == 0:
                out[unit // samples] = acc / samples
                acc[...] = 0.0
        if progress is not None:
            progress(stop, total)
    return _finish(out, normalize)


def ig_steps(steps: int, integration: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """The points and weights of the path integral, ``(a_i, w_i)``, as captum's ``approximation_methods``.

    Riemann rules: weights ``1/n`` (halved at both ends for the trapezoid), points from ``torch.linspace`` in float32
    (reproduced by :func:`_torch_linspace`, so the points match bit for bit). Gauss-Legendre: numpy's ``leggauss``
    nodes and weights mapped from [-1, 1] to [0, 1]; above :data:`DENSE_LEGGAUSS_MAX` steps, where ``leggauss``'s
    (steps x steps) eigenvalue problem would cost O(steps^2) memory and O(steps^3) time (2000 steps: 32 MB and
    seconds), the same nodes and weights by Newton's method on the Legendre recurrence (:func:`_leggauss_newton`:
    O(steps) memory; they agree with ``leggauss`` to 1e-16 in the nodes and 1e-10 relative in the weights).

    Args:
        steps: the number of points (at least 1 for Gauss-Legendre, 2 for the Riemann rules; at most
            :data:`MAX_STEPS`).
        integration: one of :data:`INTEGRATION_RULES` (captum's ``method``).

    Returns:
        ``(alphas, weights)``, two (steps,) float64 arrays.

    Raises:
        InputError: an unknown rule, too few steps or more than :data:`MAX_STEPS`.

    Example:
        >>> ig_steps(1)[0].tolist(), ig_steps(1)[1].tolist()
        ([0.5], [1.0])
        >>> ig_steps(3, "riemann_trapezoid")[1].tolist()  # captum's weights: 1/n, halved at both ends
        [0.16666666666666666, 0.3333333333333333, 0.16666666666666666]
    """
    steps = int(steps)
    if steps > MAX_STEPS:
        raise InputError(f"steps must be at most {MAX_STEPS} (points on the path; captum uses 50), got {steps}.")
    if integration not in INTEGRATION_RULES:
        raise InputError(f"integration must be one of {', '.join(INTEGRATION_RULES)}, not {integration!r}.")
    if integration == "gausslegendre":
        if steps < 1:
            raise InputError(f"steps must be >= 1, got {steps}.")
        if steps <= DENSE_LEGGAUSS_MAX:
            nodes, weights = np.polynomial.legendre.leggauss(steps)
        else:
            nodes, weights = _leggauss_newton(steps)
        return 0.5 * (1 + nodes), 0.5 * weights
    if steps < 2:
        raise InputError(f"steps must be >= 2 for the Riemann rules, got {steps}.")
    weights = np.full(steps, 1.0 / steps)
    kind = integration.split("_")[1]
    if kind == "trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        alphas = _torch_linspace(0.0, 1.0, steps)
    elif kind == "left":
        alphas = _torch_linspace(0.0, 1.0 - 1.0 / steps, steps)
    elif kind == "middle":
        alphas = _torch_linspace(1.0 / (2 * steps), 1.0 - 1.0 / (2 * steps), steps)
    else:
        alphas = _torch_linspace(1.0 / steps, 1.0, steps)
    return alphas, weights


def _leggauss_newton(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes (ascending) and weights on [-1, 1] for ``n`` points in O(n) memory: Newton's method on
    ``P_n`` (three-term recurrence) from the guesses ``cos(pi (i - 1/4) / (n + 1/2))``, for the positive half, then
    mirrored; weights ``2 / ((1 - x^2) P_n'(x)^2)``, scaled to sum to 2 as ``leggauss`` does."""
    x = np.cos(np.pi * (np.arange(1, (n + 1) // 2 + 1) - 0.25) / (n + 0.5))  # descending, in (0, 1)
    for _ in range(20):
        p, dp = _legendre(x, n)
        dx = p / dp
        x = x - dx
        if np.abs(dx).max() <= 1e-15:
            break
    _, dp = _legendre(x, n)
    w = 2 / ((1 - x * x) * dp * dp)
    odd = n % 2  # an odd n has the root 0 once, in the middle
    nodes = np.concatenate([-x, x[::-1][odd:]])
    weights = np.concatenate([w, w[::-1][odd:]])
    return nodes, weights * (2 / weights.sum())


def _legendre(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``P_n(x)`` and ``P_n'(x)`` by the recurrence ``k P_k = (2k - 1) x P_{k-1} - (k - 1) P_{k-2}``."""
    p0, p1 = np.ones_like(x), x.copy()
    for k in range(2, n + 1):
        p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
    return p1, n * (x * p1 - p0) / (x * x - 1)


def _torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` in float32, bit for bit: ``step = (end - start) / (steps - 1)`` in
    float32; the first half is ``start + step * i``, the rest ``end - step * (steps - 1 - i)``, each a fused
    multiply-add (one rounding; torch's vectorised CPU kernel). Checked equal to torch for 2..300 steps."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float32((end32 - start32) / np.float32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    # float32 * small int is exact in float64 and the sum is exact too, so rounding once to float32 is an FMA.
    up = (np.float64(start32) + np.float64(step) * i).astype(np.float32)
    down = (np.float64(end32) - np.float64(step) * (steps - 1 - i)).astype(np.float32)
    return np.where(i < steps // 2, up, down).astype(np.float64)


def integrated_gradients(m: Model, x, targets=None, layer=None, *, baseline=0.0, steps: int = 50,
                         integration: str = "gausslegendre", upsample: bool = True, normalize: bool = False,
                         batch_size: int | None = None, progress: Progress | None = None) -> np.ndarray:
    """Integrated Gradients (Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017), as
    captum's ``IntegratedGradients``.

    ``IG = (x - x') (.) sum_i w_i dS_c/dx (x' + a_i (x - x'))`` with ``(a_i, w_i)`` = :func:`ig_steps`. The target is
    resolved on ``x`` and kept along the path. The path points are made and run ``batch_size`` at a time, the
    weighted gradients summed per image in step order, so memory does not grow with ``steps``.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        targets: None (each image's top-1 class), a class index or name, a target object
            (:mod:`onnx_cnnviz.targets`), or one of these per image.
        layer: must be None: the gradient is taken at the input (accepted for the map functions' common signature).
        baseline: ``x'``: a float, per-channel values (C,), (N, C) values, ``"mean"`` (each image's channel means),
            or an array broadcastable to ``x``; see :func:`~onnx_cnnviz.methods.arguments.baseline_values`.
        steps: points on the path (captum's default 50), at most :data:`MAX_STEPS`.
        integration: the quadrature, one of :data:`INTEGRATION_RULES` (captum's ``method``).
        upsample: accepted for the common signature; the result is at the input's size either way.
        normalize: divide each image by its largest absolute value.
        batch_size: path points per onnxruntime run (default: as many as the memory budget allows, at most 64).
        progress: ``progress(done, total)``, called after each batch with the interpolation steps done so far and
            their total, ``N * steps``.

    Returns:
        (N, C, H, W) float32, signed.

    Raises:
        InputError: a bad input, target or parameter, or a ``layer``.
        UnsupportedOpError: an op on the gradient path has no backward rule.
        NumericalError: the model produced NaN or Inf.
    """
    input_only("integrated_gradients", layer)
    x = m.check_input(x)
    alphas, weights = ig_steps(steps, integration)
    t = resolve_targets(m, x, targets)
    n = x.shape[0]
    base = np.broadcast_to(baseline_values(x, baseline), x.shape)
    k = len(alphas)
    total = n * k
    bs = _chunk(m, x, total, batch_size, backward=True)
    a32 = alphas.astype(np.float32)
    w32 = weights.astype(np.float32)
    out = np.empty_like(x)
    acc = np.zeros(x.shape[1:], dtype=np.float32)  # the running sum of the image whose steps are in flight
    for start in range(0, total, bs):
        stop = min(start + bs, total)
        units = np.arange(start, stop)
        image, step = units // k, units % k
        bl = base[image]
        path = bl + a32[step].reshape(-1, 1, 1, 1) * (x[image] - bl)
        del bl
        g = gradients(m, path, t[image], batch_size=bs)
        del path
        g = g * w32[step].reshape(-1, 1, 1, 1)
        for row, unit in enumerate(units):
            # Summed one step at a time, in order, in float32: the sum numpy's sum over the steps makes.
            if unit % k == 0:
                acc[...] = g[row]
            else:
                acc += g[row]
            if unit % k == k - 1:
                i = unit // k
                out[i] = acc * (x[i] - base[i])
        if progress is not None:
            progress(stop, total)
    return _finish(out, normalize)
