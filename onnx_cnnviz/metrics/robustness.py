"""Infidelity and sensitivity-max (Yeh, Hsieh, Suggala, Inouye & Ravikumar, "On the (In)fidelity and Sensitivity of
Explanations", NeurIPS 2019), as captum 0.9 defines them (``captum.metrics.infidelity`` / ``sensitivity_max``).

**Infidelity** of an attribution ``Phi`` (N, C, H, W) for the target output ``f``: the expected squared error between
the attribution's prediction of a perturbation's effect and the effect itself,

    INFD(Phi, f, x) = E_I [ (I . Phi(x) - (f(x) - f(x - I)))^2 ],

estimated over ``samples`` perturbations ``I`` per image (lower is better). With ``normalize=True``, ``Phi`` is first
scaled by the best ``beta = E[I.Phi (f(x) - f(x-I))] / E[(I.Phi)^2]`` (captum's option, the paper's official code),
so the value no longer depends on the attribution's scale. The default perturbation is captum's documented example,
Gaussian noise ``I ~ N(0, noise^2)`` (``noise`` = 0.003) with ``x - I`` perturbed; ``f`` is the target's *score* by
default (the attributions of this library are gradients of the score), ``output="probability"`` reads the
probability. An (N, H, W) map is spread over the channels (the same value in each, as Quantus broadcasts a map).

**Sensitivity-max** of an explanation function ``Phi``: the largest relative change of the explanation under small
input perturbations, ``max_j ||Phi(x + d_j) - Phi(x)|| / ||Phi(x)||`` over ``samples`` draws ``d_j`` uniform in
``[-radius, radius]`` per value (captum's default perturbation, ``radius`` = 0.02); the Frobenius norm of the whole
explanation; ``||Phi(x)|| = 0`` counts as 1 (captum). Lower is better. The explanation is recomputed on every
perturbed image through onnxruntime, with the same target class as on ``x``.

Perturbations are drawn from ``numpy.random.default_rng(seed)``, image after image in order (``samples`` draws per
image, at most :data:`MAX_SAMPLES`, in chunks of at most ``batch_size``). A custom ``perturbation`` is a function
``(x_rep, rng)`` of the repeated images (B, C, H, W) float32 returning, for infidelity, ``(I, x_perturbed)`` and, for
sensitivity-max, ``x_perturbed``. Handing captum a ``perturb_func`` that draws the same way from a generator with the
same seed reproduces its numbers (``tests/metrics/test_robustness.py`` does).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError
from ..model import Model
from .base import MetricResult, batch_size_of, check_maps, check_x, clean_scores, positive_int, readout, targets_of


#: The most perturbations per image either metric draws (captum's default is 10): each is one forward pass
#: (infidelity) or one explanation (sensitivity-max), and sensitivity-max keeps one value per sample in its curve. A
#: larger ``samples`` is an :class:`InputError` before any work; the samples are drawn and scored ``batch_size`` at a
#: time, so memory is set by the batch size, not by ``samples``.
MAX_SAMPLES = 10_000


def check_samples(samples) -> int:
    """``samples`` checked: an int from 1 to :data:`MAX_SAMPLES`.

    Raises:
        InputError: not a positive int, or above :data:`MAX_SAMPLES`.
    """
    value = positive_int(samples, "samples")
    if value > MAX_SAMPLES:
        raise InputError(f"samples={value:,} is more than the {MAX_SAMPLES:,} perturbations per image allowed (each "
                         "is one run of the model); give fewer.")
    return value


def gaussian_perturbation(noise: float) -> Callable:
    """Infidelity's default: ``I ~ N(0, noise^2)`` per value (float32), perturbed image ``x - I``."""
    def perturb(x_rep: np.ndarray, rng: np.random.Generator):
        i = rng.normal(0.0, noise, x_rep.shape).astype(np.float32)
        return i, x_rep - i
    return perturb


def uniform_perturbation(radius: float) -> Callable:
    """Sensitivity-max's default (captum's ``default_perturb_func``): ``x + U(-radius, radius)`` per value."""
    def perturb(x_rep: np.ndarray, rng: np.random.Generator):
        return x_rep + rng.uniform(-radius, radius, x_rep.shape).astype(np.float32)
    return perturb


def _positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive number, not {value!r}.")
    return float(value)


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an int, not {seed!r}.")
    return int(seed)


def _sample_jobs(n: int, samples: int, batch_size: int):
    """Chunks of (image, sample) jobs, made as they are consumed: an image's samples in order, at most
    ``batch_size`` per chunk, never two images in one chunk (so a perturbation function sees one image's repeats,
    as captum calls it per image)."""
    for i in range(n):
        for start in range(0, samples, batch_size):
            yield [(i, s) for s in range(start, min(start + batch_size, samples))]


def _perturbed(result, x_rep: np.ndarray, pairs: bool, what: str):
    """Check what a perturbation function returned."""
    if pairs:
        if not (isinstance(result, tuple) and len(result) == 2):
            raise InputError(f"{what} must return (perturbation, perturbed images), got {type(result).__name__}.")
        parts = result
    else:
        parts = (result,)
    out = []
    for part in parts:
        arr = np.asarray(part, dtype=np.float32)
        if arr.shape != x_rep.shape:
            raise InputError(f"{what} returned an array of shape {arr.shape} for images of shape {x_rep.shape}.")
        if not np.isfinite(arr).all():
            raise InputError(f"{what} returned NaN or Inf values.")
        out.append(arr)
    return tuple(out) if pairs else out[0]


def infidelity(m: Model, x, attributions, targets=None, *, samples: int = 10, noise: float = 0.003,
               perturbation: Callable | None = None, normalize: bool = False, output: str = "score", seed: int = 0,
               batch_size: int | None = None, progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """Infidelity (Yeh et al. 2019; captum's ``infidelity``) of ``attributions`` for ``targets`` (None: top-1).

    ``attributions``: (N, C, H, W), or (N, H, W) / (N, 1, H, W) spread over the channels. ``samples``: perturbations
    per image (captum's ``n_perturb_samples``); ``noise``: the Gaussian's standard deviation (ignored with a custom
    ``perturbation``, see the module docstring); ``normalize``: captum's ``normalize``; ``output``: ``"score"``
    (default) or ``"probability"``. Lower is better. ``details["beta"]`` holds the scale used with ``normalize``.
    """
    samples = check_samples(samples)
    seed = _seed(seed)
    perturb = gaussian_perturbation(_positive_float(noise, "noise")) if perturbation is None else perturbation
    if not callable(perturb):
        raise InputError(f"perturbation must be a function (x_rep, rng) -> (I, x_perturbed), not {perturb!r}.")
    x = check_x(m, x)
    attributions = check_maps(attributions, x, "attributions")
    attributions = attributions[:, None] if attributions.ndim == 3 else attributions
    bs = batch_size_of(m, batch_size)
    clean = clean_scores(m, x, bs)
    targets = targets_of(m, targets, clean)
    read = readout(m, output, clean)
    f_x = read(clean, targets)
    rng = np.random.default_rng(seed)
    # Per image: sums of (I.Phi)^2, I.Phi * df, df^2 (captum's normalised form) and (I.Phi - df)^2 (its plain one).
    sums = np.zeros((len(x), 4))
    total, done = len(x) * samples, 0
    for chunk in _sample_jobs(len(x), samples, bs):
        i = chunk[0][0]
        x_rep = np.repeat(x[i:i + 1], len(chunk), axis=0)
        pert, x_pert = _perturbed(perturb(x_rep, rng), x_rep, True, "perturbation")
        predicted = (pert * attributions[i:i + 1]).reshape(len(chunk), -1).sum(axis=1, dtype=np.float64)
        effect = f_x[i] - read(m.scores(x_pert, batch_size=len(chunk)), np.full(len(chunk), targets[i]))
        sums[i] += [(predicted ** 2).sum(), (predicted * effect).sum(), (effect ** 2).sum(),
                    ((predicted - effect) ** 2).sum()]
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    if normalize:
        beta = sums[:, 1] / np.where(sums[:, 0] == 0, 1.0, sums[:, 0])
        values = (beta ** 2 * sums[:, 0] - 2 * beta * sums[:, 1] + sums[:, 2]) / samples
    else:
        beta = np.ones(len(x))
        values = sums[:, 3] / samples
    return MetricResult("infidelity", values, targets, False, read.description,
                        details={"clean": f_x, "beta": beta, "samples": samples})


def _explainer(m: Model, method, layer, method_params) -> Callable:
    """``(x, targets) -> explanations`` for a registry method name, a :class:`~onnx_cnnviz.methods.registry.Method`
    or a function ``f(x, targets)``."""
    from ..methods import registry

    if isinstance(method, (str, registry.Method)):
        meth = registry.get(method)
        return lambda xb, tb: registry.explain(m, meth, xb, tb, layer=layer, params=method_params,
                                              batch_size=len(xb))
    if callable(method):
        if layer is not None or method_params:
            raise InputError("layer and method_params apply to a registry method; a function explain(x, targets) "
                             "takes its own.")
        return method
    raise InputError(f"method must be a registry name, a Method or a function explain(x, targets), not {method!r}.")


def _explanations(explain: Callable, xb: np.ndarray, tb: np.ndarray, what: str) -> np.ndarray:
    out = np.asarray(explain(xb, tb))
    if out.ndim < 1 or out.shape[0] != len(xb):
        raise InputError(f"{what} returned shape {out.shape} for {len(xb)} images; it must return one explanation "
                         "per image.")
    if not np.isfinite(out).all():
        raise InputError(f"{what} returned NaN or Inf values.")
    return out.reshape(len(xb), -1).astype(np.float64)


def sensitivity_max(m: Model, x, method, targets=None, *, layer: str | None = None,
                    method_params: dict | None = None,
                    samples: int = 10, radius: float = 0.02, perturbation: Callable | None = None, seed: int = 0,
                    batch_size: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """Sensitivity-max (Yeh et al. 2019; captum's ``sensitivity_max``) of the explanation ``method`` on ``x``.

    ``method``: a registry name (run with ``layer`` and ``method_params`` as
    :func:`onnx_cnnviz.methods.registry.explain` runs it, so maps come out as the library returns them by default)
    or a function ``explain(x, targets)`` returning one explanation per image. ``targets``: the classes explained
    (None: each clean image's top-1, kept for its perturbed copies). ``samples`` draws uniform in
    ``[-radius, radius]`` (or a custom ``perturbation``). Lower is better. ``details["explanations"]`` holds the
    explanations of ``x``.
    """
    samples = check_samples(samples)
    seed = _seed(seed)
    perturb = uniform_perturbation(_positive_float(radius, "radius")) if perturbation is None else perturbation
    if not callable(perturb):
        raise InputError(f"perturbation must be a function (x_rep, rng) -> x_perturbed, not {perturb!r}.")
    x = check_x(m, x)
    explain = _explainer(m, method, layer, method_params)
    bs = batch_size_of(m, batch_size)
    targets = targets_of(m, None, clean_scores(m, x, bs)) if targets is None else m.targets_for(targets, len(x))
    base = np.concatenate([_explanations(explain, x[s:s + bs], targets[s:s + bs], "the explanation")
                           for s in range(0, len(x), bs)])
    norms = np.linalg.norm(base, axis=1)
    norms = np.where(norms == 0, 1.0, norms)
    worst = np.zeros(len(x))
    curve = np.zeros((len(x), samples))
    rng = np.random.default_rng(seed)
    total, done = len(x) * samples, 0
    for chunk in _sample_jobs(len(x), samples, bs):
        i = chunk[0][0]
        x_rep = np.repeat(x[i:i + 1], len(chunk), axis=0)
        x_pert = _perturbed(perturb(x_rep, rng), x_rep, False, "perturbation")
        moved = _explanations(explain, x_pert, np.full(len(chunk), targets[i]), "the explanation")
        if moved.shape[1] != base.shape[1]:
            raise InputError(f"the explanation of a perturbed image has {moved.shape[1]} values, that of the image "
                             f"{base.shape[1]}.")
        ratios = np.linalg.norm(moved - base[i], axis=1) / norms[i]
        curve[i, chunk[0][1]:chunk[-1][1] + 1] = ratios
        worst[i] = max(worst[i], ratios.max())
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    return MetricResult("sensitivity-max", worst, targets, False, None, curve=curve,
                        axis=np.arange(samples, dtype=np.float64), axis_name="perturbation sample",
                        details={"explanations": base})


__all__ = ["MAX_SAMPLES", "check_samples", "infidelity", "sensitivity_max", "gaussian_perturbation",
           "uniform_perturbation"]
