"""Sanity check by model parameter randomisation (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, "Sanity Checks
for Saliency Maps", NeurIPS 2018, Sec. 3.1 and Fig. 2).

An explanation that is meant to say *why this model* decided must change when the model's learned weights are
destroyed. The *cascading* randomisation test re-initialises the weights stage by stage from the logits down to the
first layer (stage k randomises every learnable layer of the first k groups) and compares, at each stage, the
randomised model's explanation with the trained model's: Spearman rank correlation of the absolute maps and of the
signed maps, and SSIM. The paper's finding on Inception v3: gradient, integrated gradients and Grad-CAM fall to
near-zero rank correlation, while guided backpropagation and Guided Grad-CAM stay visually and numerically close to
the trained model's maps, whatever the weights (they behave like edge detectors). The *independent* variant
randomises one group at a time, the rest trained. On EfficientNet-Lite0 (``benchmarks/sanity_check.py``,
``docs/sanity_check.md``) the gradient, SmoothGrad and Grad-CAM part from the trained maps as soon as the logits are
randomised, while guided backprop stays above 0.88 until half the blocks are random; unlike on the paper's Inception
v3, it falls too (0.11) once the lowest blocks are randomised as well.

The graph edit (learnable layers, their groups, re-initialisation) is :mod:`onnx_cnnviz.graph.randomise`: metrics
never edit graphs themselves.

Comparison (:func:`randomisation_check`): maps of shape (N, C, H, W) are reduced as the paper's code reduces them
(its ``VisualizeImageGrayscale`` / ``VisualizeImageDiverging``): the *absolute* map is ``sum_c |a_c|``, the *signed*
map ``sum_c a_c``; an (N, H, W) map is taken as it is (and its absolute value). Spearman's rank correlation is the
Pearson correlation of the ranks (ties get their average rank, as ``scipy.stats.spearmanr``); it is undefined (NaN)
when either map is constant, as scipy returns. SSIM is computed on the absolute maps normalised to [0, 1] as the
paper's visualisation does (minus the minimum, divided by the 99th percentile's distance to it, clipped), with the
parameters of ``skimage.metrics.structural_similarity`` (7 x 7 uniform window, sample covariance, K1 = 0.01,
K2 = 0.03, data range 1, the mean over the window centres at least 3 pixels from the border). Spearman is computed
on the unclipped maps: clipping is monotonic, so it only ties the top 1% of pixels.

Targets: by default each image's top-1 class *on the trained model*, held fixed at every stage (``retarget=False``),
so that only the weights change between the two maps. The paper's released code explains each randomised model's own
top-1 class instead (``prediction_class = imglogits.argmax()`` on the randomised network); ``retarget=True`` does
that. :class:`SanityResult` records both: ``top1`` holds each randomised model's top-1 class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable

import cv2
import numpy as np

from ..errors import InputError
# The graph edit lives in graph/ (metrics never edit graphs); its names stay importable from here.
from ..graph.randomise import (INITS, LEARNABLE_OPS, MAX_BLOCK_FRACTION, MODES, Group,  # noqa: F401
                               LearnableLayer, _proto, _seed, learnable_layers, randomisation_groups, randomise,
                               randomised_models, stage_layers)
from ..model import Model
from .base import MetricResult

MEASURES = ("spearman_abs", "spearman", "ssim")
#: SSIM's constants and window, skimage's defaults (Wang et al. 2004).
SSIM_WINDOW, SSIM_K1, SSIM_K2 = 7, 0.01, 0.03
#: The percentile the paper's visualisation clips absolute maps at before SSIM.
CLIP_PERCENTILE = 99.0


# ---------------------------------------------------------------------------------------------------------------
# comparing maps
# ---------------------------------------------------------------------------------------------------------------
def _ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (``scipy.stats.rankdata(method="average")``)."""
    order = np.argsort(v, kind="mergesort")
    ordered = v[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(v)]
    average = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = average[np.cumsum(first) - 1]
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation of two maps (flattened): the Pearson correlation of their ranks, ties averaged.

    ``rho = cov(R(a), R(b)) / (s_R(a) s_R(b))``.

    Args:
        a: a map.
        b: a map with as many values.

    Returns:
        rho in [-1, 1]; NaN when either map is constant (a correlation with a constant is undefined;
        ``scipy.stats.spearmanr`` says the same).

    Raises:
        InputError: the maps differ in size.

    Example:
        >>> spearman([1, 2, 3], [10, 30, 20])
        0.5
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"the two maps differ in size: {a.size} and {b.size} values.")
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    if denom == 0.0:
        return float("nan")
    return float(np.clip((ra * rb).sum() / denom, -1.0, 1.0))


def ssim(a, b, data_range: float = 1.0) -> float:
    """Mean structural similarity of two 2-D maps (Wang et al., "Image quality assessment: from error visibility to
    structural similarity", IEEE TIP 2004), as ``skimage.metrics.structural_similarity`` computes it by default.

    ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))``, ``C_i = (K_i L)^2``:
    7 x 7 uniform window, sample covariance, ``K1 = 0.01``, ``K2 = 0.03``, averaged over the window centres at least
    3 pixels from the border.

    Args:
        a: (H, W) map.
        b: (H, W) map.
        data_range: L, the values' range.

    Returns:
        The mean SSIM, in [-1, 1].

    Raises:
        InputError: the maps are not 2-D of one shape, or smaller than the window.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise InputError(f"SSIM compares two 2-D maps of one shape, got {a.shape} and {b.shape}.")
    if min(a.shape) < SSIM_WINDOW:
        raise InputError(f"SSIM needs maps of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {a.shape}.")
    win = (SSIM_WINDOW, SSIM_WINDOW)
    mean = lambda img: cv2.blur(img, win, borderType=cv2.BORDER_REFLECT)  # noqa: E731 - the window average
    n = SSIM_WINDOW ** 2
    cov_norm = n / (n - 1.0)
    ua, ub = mean(a), mean(b)
    va = cov_norm * (mean(a * a) - ua * ua)
    vb = cov_norm * (mean(b * b) - ub * ub)
    vab = cov_norm * (mean(a * b) - ua * ub)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    pad = (SSIM_WINDOW - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def absolute_maps(maps: np.ndarray) -> np.ndarray:
    """The paper's grayscale view: ``|map|``, or ``sum_c |a_c|`` for (N, C, H, W) attributions.

    Args:
        maps: (N, H, W) maps or (N, C, H, W) attributions.

    Returns:
        (N, H, W) float32.
    """
    maps = np.asarray(maps, dtype=np.float64)
    return np.abs(maps) if maps.ndim == 3 else np.abs(maps).sum(axis=1)


def signed_maps(maps: np.ndarray) -> np.ndarray:
    """The paper's diverging view: maps as they are, or ``sum_c a_c`` for (N, C, H, W) attributions.

    Args:
        maps: (N, H, W) maps or (N, C, H, W) attributions.

    Returns:
        (N, H, W) float32.
    """
    maps = np.asarray(maps, dtype=np.float64)
    return maps if maps.ndim == 3 else maps.sum(axis=1)


def unit_map(m: np.ndarray) -> np.ndarray:
    """A non-negative 2-D map in [0, 1] as the paper's ``VisualizeImageGrayscale`` shows it.

    ``(m - min) / (p99 - min)``, clipped to [0, 1] (divided by the max when the 99th percentile equals the minimum;
    zeros for a constant map).

    Args:
        m: (H, W) non-negative map.

    Returns:
        (H, W) float32 in [0, 1].
    """
    lo = float(m.min())
    hi = float(np.percentile(m, CLIP_PERCENTILE))
    if hi <= lo:
        hi = float(m.max())
    if hi <= lo:
        return np.zeros_like(m, dtype=np.float64)
    return np.clip((m - lo) / (hi - lo), 0.0, 1.0)


def compare_maps(original: np.ndarray, randomised: np.ndarray) -> dict:
    """The three similarity measures of Adebayo et al. 2018 between maps of the trained and a randomised model.

    Args:
        original: (N, H, W) or (N, C, H, W) maps of the trained model.
        randomised: the randomised model's maps, of the same shape.

    Returns:
        ``{"spearman_abs", "spearman", "ssim"}`` -> (N,) each: the rank correlation of the absolute maps, of the
        signed maps, and the SSIM of the [0, 1] absolute maps (:func:`unit_map`).

    Raises:
        InputError: the maps differ in shape.
    """
    if np.shape(original) != np.shape(randomised):
        raise InputError(f"the maps differ in shape: {np.shape(original)} and {np.shape(randomised)}.")
    abs_o, abs_r = absolute_maps(original), absolute_maps(randomised)
    sig_o, sig_r = signed_maps(original), signed_maps(randomised)
    return {
        "spearman_abs": np.array([spearman(o, r) for o, r in zip(abs_o, abs_r)]),
        "spearman": np.array([spearman(o, r) for o, r in zip(sig_o, sig_r)]),
        "ssim": np.array([ssim(unit_map(o), unit_map(r)) for o, r in zip(abs_o, abs_r)]),
    }


# ---------------------------------------------------------------------------------------------------------------
# the check
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SanityResult:
    """The randomisation test on a batch of images.

    Attributes:
        methods: the registry names compared.
        stages: each stage's label (the group randomised last, the paper's x-axis).
        randomised: per stage, the node names whose parameters were re-initialised (cumulative when cascading).
        mode: ``"cascading"`` or ``"independent"``.
        targets: (N,) the classes explained on the trained model.
        top1: (S, N) each randomised model's top-1 class.
        spearman_abs: method -> (S, N) per stage and image (NaN where a map is constant).
        spearman: method -> (S, N), of the signed maps.
        ssim: method -> (S, N).
        init: how the weights were drawn.
        seed: the draws' seed.
        retarget: whether each randomised model explained its own top-1 class.
        details: further arrays (the trained model's maps, ...).
    """
    methods: tuple
    stages: list
    randomised: list
    mode: str
    targets: np.ndarray
    top1: np.ndarray
    spearman_abs: dict
    spearman: dict
    ssim: dict
    init: str = "normal"
    seed: int = 0
    retarget: bool = False
    details: dict = field(default_factory=dict)

    def values(self, measure: str = "spearman_abs") -> dict:
        """One measure of every method.

        Args:
            measure: one of :data:`MEASURES`.

        Returns:
            method -> (S, N).

        Raises:
            InputError: an unknown measure.
        """
        if measure not in MEASURES:
            raise InputError(f"measure must be one of {', '.join(MEASURES)}, not {measure!r}.")
        return getattr(self, measure)

    def mean(self, measure: str = "spearman_abs") -> dict:
        """One measure of every method, averaged over images.

        Args:
            measure: one of :data:`MEASURES`.

        Returns:
            method -> (S,) the mean over images (NaNs of constant maps left out; NaN when every image's is).
        """
        out = {}
        for name, arr in self.values(measure).items():
            finite = np.isfinite(arr)
            total = np.where(finite, arr, 0.0).sum(axis=1)
            count = finite.sum(axis=1)
            out[name] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return out

    def __len__(self) -> int:
        return len(self.stages)


def _methods(methods) -> tuple:
    from ..methods import registry

    if isinstance(methods, (str, registry.Method)):
        methods = (methods,)
    try:
        methods = tuple(methods)
    except TypeError:
        raise InputError(f"methods must be registry names or a list of them, not {methods!r}.") from None
    if not methods:
        raise InputError("methods is empty; name at least one (see onnx_cnnviz.registry.names()).")
    return tuple(registry.get(meth).name for meth in methods)


def _load_options(source, options: dict | None) -> dict:
    """How each randomised model is loaded: the given Model's own settings, overridden by ``options``."""
    opts = {}
    if isinstance(source, Model):
        opts = {"device": source.device, "batch_size": source.batch_size, "threads": source.threads,
                "input_size": source.__dict__.get("_input_size"), "max_pixels": source.max_pixels}
        if source.task != "classifier":  # a detector's randomised copies read the same head output
            opts.update(task=source.task, output=source.score_name, labels=source.labels)
    opts.update(options or {})
    opts.setdefault("max_nodes", None)  # the randomised graph has the nodes of a model already accepted
    return opts


def _explain(model: Model, method: str, x: np.ndarray, targets: np.ndarray, layer, params: dict,
             batch_size) -> np.ndarray:
    from ..methods import registry

    meth = registry.get(method)
    return np.asarray(registry.explain(model, meth, x, targets, layer=layer if meth.uses_layer else None,
                                       params=params.get(method), batch_size=batch_size), dtype=np.float32)


def _sanity_targets(trained: Model, targets, clean: np.ndarray, n: int, retarget: bool) -> tuple:
    """``(targets, classes)``: what the methods explain on every model, and the (N,) classes a result reports.

    Classes (ints, names, ``ClassScore``) become (N,) int64 (None: the top-1). Other target objects (a detector's
    :class:`~onnx_cnnviz.tasks.Detection`, a segmenter's region) are kept as they are, one per image: their seed is
    read from the randomised model's head output as from the trained one's (the sanity check on a detector); their
    class is reported, -1 where they name none. ``retarget`` (each randomised model's own top-1) needs classes.
    """
    if targets is None or trained.task == "classifier":
        classes = (np.argmax(clean, axis=1).astype(np.int64) if targets is None
                   else trained.targets_for(targets, n))
        return classes, classes
    from ..targets import resolve

    seeds = resolve(trained, targets, n)
    if retarget:
        raise InputError(f"retarget explains each randomised model's own top-1 class; a {trained.task}'s targets "
                         "(detections, regions) have no top-1: leave retarget False.")
    objects = list(seeds.objects) if seeds.objects else targets
    return objects, np.asarray(seeds.classes, dtype=np.int64)


def randomisation_check(model, x, methods=("saliency", "gradcam", "guided", "guided-gradcam"), targets=None, *,
                        stages="blocks", mode: str = "cascading", seed: int = 0, init: str = "normal",
                        retarget: bool = False, layer: str | None = None, method_params: dict | None = None,
                        load_options: dict | None = None, batch_size: int | None = None,
                        progress: Callable[[int, int], None] | None = None) -> SanityResult:
    """The model parameter randomisation test of ``methods`` on images ``x``.

    Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, Sec. 3: the weights are re-drawn stage by stage
    from the logits down and each method's map on each randomised model is compared with the trained model's (rank
    correlation of the absolute and the signed maps, SSIM). A method whose maps stay similar does not explain the
    model.

    Args:
        model: a path, bytes, an ``onnx.ModelProto`` or a loaded :class:`~onnx_cnnviz.model.Model` (never
            modified).
        x: (N, C, H, W) images as the model takes them.
        methods: registry names (``onnx_cnnviz.registry.names()``).
        targets: the classes explained; None: each image's top-1 on the trained model.
        stages: ``"blocks"``, ``"layers"``, a number of stages, or explicit groups of node names (the module
            docstring).
        mode: ``"cascading"`` (stage k randomises groups 1..k) or ``"independent"`` (group k alone).
        seed: the weights' seed.
        init: how the weights are drawn (:data:`INITS`).
        retarget: explain each randomised model's own top-1 class (the paper's released code) instead of the
            trained model's class.
        layer: the CAM layer (None: the default layer).
        method_params: method name -> its parameters.
        load_options: keyword arguments of :func:`onnx_cnnviz.load` for the randomised models (a given Model's own
            device, batch size and threads by default).
        batch_size: images per run.
        progress: ``progress(done, total)``, called after each method at each stage.

    Returns:
        Per stage, method and image, the Spearman rank correlation of the absolute and of the signed maps with the
        trained model's, and the SSIM of the [0, 1] absolute maps.

    Raises:
        InputError: unknown methods, mode, init or method parameters, or bad images or targets.
        ModelStructureError: the model has no parameters to randomise in the stages asked for.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
    if init not in INITS:
        raise InputError(f"init must be one of {', '.join(INITS)}, not {init!r}.")
    seed = _seed(seed)
    names = _methods(methods)
    params = dict(method_params or {})
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise InputError(f"method_params names {unknown[0]!r}, which is not among the methods compared "
                         f"({', '.join(names)}).")
    opts = _load_options(model, load_options)
    trained = model if isinstance(model, Model) else Model(model, **opts)
    proto = _proto(model)
    groups = randomisation_groups(learnable_layers(proto), stages)
    x = trained.check_input(x)
    clean = trained.scores(x, batch_size=batch_size)
    targets, classes = _sanity_targets(trained, targets, clean, len(x), retarget)
    original = {name: _explain(trained, name, x, targets, layer, params, batch_size) for name in names}
    measures = {key: {name: np.full((len(groups), len(x)), np.nan) for name in names} for key in MEASURES}
    top1 = np.zeros((len(groups), len(x)), dtype=np.int64)
    randomised_nodes, total = [], len(groups) * len(names)
    for k in range(len(groups)):
        layers = stage_layers(groups, k, mode)
        randomised_nodes.append([la.node for la in layers])
        rand = Model(randomise(proto, layers, seed, init), **opts)
        scores = rand.scores(x, batch_size=batch_size)
        top1[k] = np.argmax(scores, axis=1) if rand.task == "classifier" else -1  # a head output has no top-1
        stage_targets = top1[k] if retarget else targets
        for j, name in enumerate(names):
            maps = _explain(rand, name, x, stage_targets, layer, params, batch_size)
            for key, values in compare_maps(original[name], maps).items():
                measures[key][name][k] = values
            if progress is not None:
                progress(k * len(names) + j + 1, total)
        del rand  # its sessions and weights go before the next stage's are built
    return SanityResult(names, [g.name for g in groups], randomised_nodes, mode, classes, top1,
                        measures["spearman_abs"], measures["spearman"], measures["ssim"], init, seed, retarget,
                        details={"groups": groups})


def model_randomisation(m, x, method, targets=None, *, stages="blocks", measure: str = "spearman_abs",
                        mode: str = "cascading", seed: int = 0, init: str = "normal", layer: str | None = None,
                        method_params: dict | None = None, batch_size: int | None = None,
                        progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """The randomisation test of one method as a :class:`~onnx_cnnviz.metrics.base.MetricResult`.

    The shape of every metric of :mod:`onnx_cnnviz.metrics.registry` (``takes="method"``). Lower is better: a map
    that keeps resembling the trained model's once the weights are gone does not explain the model (Adebayo et al.
    2018).

    Args:
        m: a loaded model, or anything :func:`randomisation_check` takes.
        x: (N, C, H, W) images.
        method: a registry name.
        targets: the classes explained; None: each image's top-1.
        stages: as :func:`randomisation_check` takes them.
        measure: one of :data:`MEASURES`.
        mode: ``"cascading"`` or ``"independent"``.
        seed: the weights' seed.
        init: how the weights are drawn.
        layer: the CAM layer.
        method_params: the method's parameters.
        batch_size: images per run.
        progress: ``progress(done, total)`` after each stage.

    Returns:
        ``values`` (N,) the ``measure`` after the last stage (every layer randomised, when cascading), ``curve``
        (N, S) the measure at each stage, ``axis`` the stage numbers 1..S; ``details``: the stage labels and the
        other two measures' curves.

    Raises:
        InputError: an unknown measure, or a method that is not a registry name.
    """
    from ..methods import registry

    if measure not in MEASURES:
        raise InputError(f"measure must be one of {', '.join(MEASURES)}, not {measure!r}.")
    name = registry.get(method).name if isinstance(method, (str, registry.Method)) else None
    if name is None:
        raise InputError(f"the randomisation test re-explains each randomised model, so method must be a registry "
                         f"name (see onnx_cnnviz.registry.names()), not {type(method).__name__}.")
    params = {name: method_params} if method_params else None
    result = randomisation_check(m, x, (name,), targets, stages=stages, mode=mode, seed=seed, init=init,
                                 layer=layer, method_params=params, batch_size=batch_size, progress=progress)
    curves = {key: result.values(key)[name].T for key in MEASURES}
    return MetricResult("model-randomisation", curves[measure][:, -1].copy(), result.targets, False, None,
                        curve=curves[measure], axis=np.arange(1, len(result.stages) + 1),
                        axis_name=f"stage ({mode} randomisation from the head)",
                        details={"stages": result.stages, "top1": result.top1.T, "measure": measure,
                                 **{key: value for key, value in curves.items() if key != measure}})


__all__ = ["LearnableLayer", "Group", "SanityResult", "learnable_layers", "randomisation_groups", "randomise",
           "stage_layers", "randomised_models", "randomisation_check", "model_randomisation", "spearman", "ssim",
           "compare_maps", "absolute_maps", "signed_maps", "unit_map", "LEARNABLE_OPS", "INITS", "MODES", "MEASURES"]
