"""The one table of evaluation metrics, as :mod:`onnx_cnnviz.methods.registry` is for explanation methods.

Each metric is one :class:`Metric` entry under one name (``deletion``, ``road-morf``, ...); a command line lists
:func:`names`, checks parameters with :func:`parameters` and runs any entry with :func:`evaluate`, which returns a
:class:`~onnx_cnnviz.metrics.base.MetricResult` (plain arrays: one value per image, and a curve where there is one).
Adding a metric is one function plus one :func:`register` call::

    from onnx_cnnviz.metrics import registry

    def my_metric(m, x, maps, targets=None, *, batch_size=None, progress=None, my_param=3):
        ...  # MetricResult

    registry.register(registry.Metric("mine", "My metric", my_metric, takes="maps", higher_is_better=True,
                                      paper="Doe et al. 2026"))

Its parameters and their defaults (``my_param=3``) are read from the function's signature: every keyword beyond
:data:`COMMON`. ``cnnviz evaluate --metric mine --metric-param mine.my_param=5`` sets one; ``--help`` lists them.

What a metric takes (``takes``): ``"maps"``, one importance value per pixel ((N, H, W), or (N, C, H, W) reduced per
pixel); ``"attributions"``, values per input element ((N, C, H, W), or a map spread over the channels); ``"method"``,
the explanation method itself (a registry method name, or a function ``explain(x, targets)``), because the metric
re-explains perturbed images.

A metric with ``needs_boxes=True`` (the localisation metrics) scores maps against ground-truth boxes: :func:`evaluate`
passes it ``boxes=``, one sequence of :class:`~onnx_cnnviz.metrics.boxes.Box` per image in the model input's pixels,
and refuses to run it without them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InputError
from ..model import Model
from ..registries import Registry, check_name, check_params, describe_params, resolved, signature_params
from . import confidence, curves, imputation, pointing, robustness, sanity
from .base import MetricResult, positive_int

TAKES = ("maps", "attributions", "method")

#: The keywords every metric function may take, supplied by :func:`evaluate`, not parameters of the metric's own.
COMMON = frozenset({"targets", "batch_size", "progress", "boxes"})


@dataclass(frozen=True)
class Metric:
    """One evaluation metric.

    ``name``: the one spelling everywhere. ``func``: ``func(m, x, explanation, targets=None, *, batch_size=None,
    progress=None, **params) -> MetricResult``. ``takes``: what ``explanation`` is (:data:`TAKES`).
    ``higher_is_better``: the direction of a more faithful explanation. ``output``: what it reads from the model by
    default ("probability" | "score"; None when it reads explanations). ``params``: the metric's own keyword
    arguments: None (every keyword of ``func`` beyond :data:`COMMON`) or a sequence of those names; after
    construction, the dict name -> default read from the signature. ``paper``: the reference. ``needs_boxes``: the
    metric scores maps against ground-truth boxes, and ``func`` takes them as ``boxes=`` (one sequence of boxes per
    image). ``unit_range``: the metric multiplies the image by the map (Grad-CAM++'s explanation map ``E = M * x``,
    Chattopadhyay et al. 2018, Sec. 5.1), so it is given maps brought to [0, 1]
    (:func:`onnx_cnnviz.metrics.inputs.unit_range`); the ranking metrics (deletion, insertion, ROAD) get the maps as
    the methods return them, since a per-image positive affine rescaling leaves their pixel order, and so their
    values, unchanged. ``ordered_curve``: the points of its curve are steps of a progression, so their mean is a
    curve worth drawing (False for random samples, such as sensitivity-max's perturbations).
    """
    name: str
    title: str
    func: Callable
    takes: str
    higher_is_better: bool
    output: str | None = "probability"
    params: dict | tuple | None = None
    paper: str = ""
    needs_boxes: bool = False
    unit_range: bool = False
    ordered_curve: bool = True

    def __post_init__(self):
        check_name(self.name, "metric")
        if self.takes not in TAKES:
            raise InputError(f"metric {self.name!r}: takes must be one of {', '.join(TAKES)}, not {self.takes!r}.")
        if not callable(self.func):
            raise InputError(f"metric {self.name!r}: func must be callable, not {type(self.func).__name__}.")
        object.__setattr__(self, "params", signature_params(self.func, 3, COMMON, self.params,
                                                            f"metric {self.name!r}"))


_METRICS: Registry[Metric] = Registry("metric", Metric)

#: The table itself, name -> :class:`Metric` (read it; change it through :func:`register` and :func:`unregister`).
METRICS: dict[str, Metric] = _METRICS.entries


def register(metric: Metric, replace: bool = False) -> Metric:
    """Add ``metric`` to the table (``replace=True`` to redefine an existing name).

    Returns:
        ``metric``.

    Raises:
        InputError: the name is taken (and ``replace`` is False).
    """
    return _METRICS.register(metric, replace)


def unregister(name: str) -> None:
    """Remove metric ``name`` from the table."""
    _METRICS.unregister(name)


def get(name) -> Metric:
    """The :class:`Metric` called ``name`` (a :class:`Metric` passes through; an :class:`InputError` listing the
    names otherwise)."""
    return _METRICS.get(name)


def names() -> list[str]:
    """Every registered metric name, in registration order."""
    return _METRICS.names()


def parameters(metric, params: dict | None = None) -> dict:
    """The parameters ``metric`` runs with: its defaults overridden by ``params`` (a None value keeps the default; a
    list given for a tuple default becomes a tuple).

    Raises:
        InputError: a key the metric does not take, naming the ones it does.
    """
    meth = get(metric)
    params = dict(params or {})
    check_params(f"metric {meth.name!r}", meth.params, params)
    return resolved(meth.params, params)


def _optional_step(value) -> None:
    if value is not None:
        positive_int(value, "pixels_per_step")


#: The parameters whose caps and types are checked before any work, whichever metric takes them (no image needed):
#: perturbation samples (:data:`~onnx_cnnviz.metrics.robustness.MAX_SAMPLES`), ROAD's percentiles
#: (:data:`~onnx_cnnviz.metrics.imputation.MAX_PERCENTILES`), the curves' step (its cap,
#: :data:`~onnx_cnnviz.metrics.curves.MAX_STEPS` points, depends on the image size and is checked with the images).
VALUE_CHECKS: dict = {"samples": robustness.check_samples, "percentiles": imputation.check_percentiles,
                      "pixels_per_step": _optional_step}


def check_values(metric, params: dict | None = None) -> dict:
    """The parameters ``metric`` runs with (:func:`parameters`), their values checked against their documented caps
    (:data:`VALUE_CHECKS`) before any image is read or model run: ``samples=100000000`` is refused here, not after
    gigabytes of perturbations.

    Args:
        metric: a name or a :class:`Metric`.
        params: the caller's parameters.

    Returns:
        The parameters, defaults included.

    Raises:
        InputError: an unknown key, or a value over its cap or of the wrong type (naming the metric).
    """
    meth = get(metric)
    values = parameters(meth, params)
    for key, value in values.items():
        check = VALUE_CHECKS.get(key)
        if check is None:
            continue
        try:
            check(value)
        except InputError as exc:
            raise InputError(f"metric {meth.name!r}: {exc}") from None
    return values


def all_parameters() -> str:
    """Every registered metric's own parameters with their defaults, as "metric: key=default, ...; ..." (the help
    of ``--metric-param``)."""
    return "; ".join(f"{meth.name}: {describe_params(meth.params)}" for meth in METRICS.values() if meth.params)


def evaluate(metric, m: Model, x, explanation, targets=None, params: dict | None = None,
             batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
             boxes=None) -> MetricResult:
    """Run ``metric`` (a name or a :class:`Metric`) on images ``x`` and their ``explanation`` (maps, attributions or
    the method, as the metric ``takes``) for ``targets`` (the classes explained; None: each image's top-1).

    ``boxes``: the ground-truth boxes of a metric that ``needs_boxes`` (one sequence per image, in the model input's
    pixels; an :class:`InputError` when missing); metrics that need none ignore them."""
    meth = get(metric)
    kwargs = parameters(meth, params)
    if meth.needs_boxes:
        if boxes is None:
            raise InputError(f"metric {meth.name!r} needs ground-truth boxes (--boxes): one list of (x0, y0, x1, y1) "
                             "boxes per image, from a CSV or JSON file.")
        kwargs["boxes"] = boxes
    return meth.func(m, x, explanation, targets, batch_size=batch_size, progress=progress, **kwargs)


_RISE = "Petsiuk et al. 2018"
_ROAD_PAPER = "Rong et al. 2022"
_YEH = "Yeh et al. 2019"
_GRADCAMPP = "Chattopadhyay et al. 2018"

for _metric in [
    Metric("deletion", "Deletion AUC", curves.deletion, "maps", False, paper=_RISE),
    Metric("insertion", "Insertion AUC", curves.insertion, "maps", True, paper=_RISE),
    Metric("average-drop", "Average drop", confidence.average_drop, "maps", False, paper=_GRADCAMPP,
           unit_range=True),
    Metric("increase-in-confidence", "Increase in confidence", confidence.increase_in_confidence, "maps", True,
           paper=_GRADCAMPP, unit_range=True),
    Metric("road-morf", "ROAD, most relevant first", imputation.road_most_relevant_first, "maps", False,
           paper=_ROAD_PAPER),
    Metric("road-lerf", "ROAD, least relevant first", imputation.road_least_relevant_first, "maps", True,
           paper=_ROAD_PAPER),
    Metric("road-combined", "ROAD combined", imputation.road_combined, "maps", True, paper=_ROAD_PAPER),
    Metric("infidelity", "Infidelity", robustness.infidelity, "attributions", False, output="score", paper=_YEH),
    Metric("sensitivity-max", "Sensitivity-max", robustness.sensitivity_max, "method", False, output=None,
           paper=_YEH, ordered_curve=False),
    Metric("pointing-game", "Pointing game", pointing.pointing_game, "maps", True, output=None,
           paper="Zhang et al. 2016", needs_boxes=True),
    Metric("energy-pointing-game", "Energy-based pointing game", pointing.energy_pointing_game, "maps", True,
           output=None, paper="Wang et al. 2020", needs_boxes=True),
    Metric("localisation-accuracy", "Localisation accuracy", pointing.localisation_accuracy, "maps", True,
           output=None, paper="Zhou et al. 2016", needs_boxes=True),
    Metric("model-randomisation", "Model randomisation (sanity check)", sanity.model_randomisation, "method", False,
           output=None, paper="Adebayo et al. 2018"),
]:
    register(_metric)
del _metric

__all__ = ["Metric", "METRICS", "TAKES", "COMMON", "register", "unregister", "get", "names", "parameters",
           "check_values", "VALUE_CHECKS", "all_parameters", "evaluate"]
