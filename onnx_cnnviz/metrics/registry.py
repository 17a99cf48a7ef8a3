"""The one table of evaluation metrics, as :mod:`onnx_cnnviz.methods.registry` is for explanation methods.

Each metric is one :class:`Metric` entry under one name (``deletion``, ``road-morf``, ...); a command line lists
:func:`names`, checks parameters with :func:`parameters` and runs any entry with :func:`evaluate`, which returns a
:class:`~onnx_cnnviz.metrics.base.MetricResult` (plain arrays: one value per image, and a curve where there is one).
Adding a metric is one function plus one :func:`register` call::

    from onnx_cnnviz.metrics import registry

    def my_metric(m, x, maps, targets=None, *, batch_size=None, progress=None, my_param=3):
        ...  # MetricResult

    registry.register(registry.Metric("mine", "My metric", my_metric, takes="maps", higher_is_better=True,
                                      params={"my_param": 3}, paper="Doe et al. 2026"))

What a metric takes (``takes``): ``"maps"``, one importance value per pixel ((N, H, W), or (N, C, H, W) reduced per
pixel); ``"attributions"``, values per input element ((N, C, H, W), or a map spread over the channels); ``"method"``,
the explanation method itself (a registry method name, or a function ``explain(x, targets)``), because the metric
re-explains perturbed images.

A metric with ``needs_boxes=True`` (the localisation metrics) scores maps against ground-truth boxes: :func:`evaluate`
passes it ``boxes=``, one sequence of :class:`~onnx_cnnviz.metrics.boxes.Box` per image in the model input's pixels,
and refuses to run it without them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable

from ..errors import InputError
from ..model import Model
from . import confidence, curves, imputation, pointing, robustness, sanity
from .base import MetricResult

TAKES = ("maps", "attributions", "method")


@dataclass(frozen=True)
class Metric:
    """One evaluation metric.

    ``name``: the one spelling everywhere. ``func``: ``func(m, x, explanation, targets=None, *, batch_size=None,
    progress=None, **params) -> MetricResult``. ``takes``: what ``explanation`` is (:data:`TAKES`).
    ``higher_is_better``: the direction of a more faithful explanation. ``output``: what it reads from the model by
    default ("probability" | "score"; None when it reads explanations). ``params``: the metric's own keyword
    arguments with their defaults. ``paper``: the reference. ``needs_boxes``: the metric scores maps against
    ground-truth boxes, and ``func`` takes them as ``boxes=`` (one sequence of boxes per image).
    """
    name: str
    title: str
    func: Callable
    takes: str
    higher_is_better: bool
    output: str | None = "probability"
    params: dict = field(default_factory=dict)
    paper: str = ""
    needs_boxes: bool = False

    def __post_init__(self):
        if self.takes not in TAKES:
            raise InputError(f"metric {self.name!r}: takes must be one of {', '.join(TAKES)}, not {self.takes!r}.")
        if not self.name or any(ch.isspace() or ch in ",/" for ch in self.name):
            raise InputError(f"a metric name is one word without commas or slashes, not {self.name!r}.")


METRICS: dict[str, Metric] = {}


def register(metric: Metric, replace: bool = False) -> Metric:
    """Add ``metric`` to the table (``replace=True`` to redefine an existing name). Returns it."""
    if metric.name in METRICS and not replace:
        raise InputError(f"a metric named {metric.name!r} is already registered; pass replace=True to redefine it.")
    METRICS[metric.name] = metric
    return metric


def unregister(name: str) -> None:
    """Remove metric ``name`` from the table."""
    get(name)
    del METRICS[name]


def get(name) -> Metric:
    """The :class:`Metric` called ``name`` (an :class:`InputError` listing the names otherwise)."""
    if isinstance(name, Metric):
        return name
    if name not in METRICS:
        raise InputError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}.")
    return METRICS[name]


def names() -> list[str]:
    """Every registered metric name, in registration order."""
    return list(METRICS)


def parameters(metric, params: dict | None = None) -> dict:
    """The parameters ``metric`` runs with: its defaults overridden by ``params`` (a None value keeps the default).
    A key the metric does not take is an :class:`InputError` naming the ones it does."""
    meth = get(metric)
    params = dict(params or {})
    unknown = sorted(set(params) - set(meth.params))
    if unknown:
        known = ", ".join(meth.params) or "none"
        raise InputError(f"metric {meth.name!r} takes no parameter {unknown[0]!r}; its parameters: {known}.")
    return {k: params[k] if params.get(k) is not None else v for k, v in meth.params.items()}


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


_CURVE = {"baseline": None, "pixels_per_step": None, "output": "probability", "channels": "sum"}
_ROAD = {"percentiles": imputation.DEFAULT_PERCENTILES, "noise": 0.01, "seed": 0, "output": "probability",
         "channels": "sum"}
_RISE = "Petsiuk et al. 2018"
_ROAD_PAPER = "Rong et al. 2022"
_YEH = "Yeh et al. 2019"
_GRADCAMPP = "Chattopadhyay et al. 2018"

for _metric in [
    Metric("deletion", "Deletion AUC", curves.deletion, "maps", False, params={**_CURVE, "baseline": 0.0},
           paper=_RISE),
    Metric("insertion", "Insertion AUC", curves.insertion, "maps", True, params={**_CURVE, "baseline": "blur"},
           paper=_RISE),
    Metric("average-drop", "Average drop", confidence.average_drop, "maps", False,
           params={"output": "probability", "channels": "sum"}, paper=_GRADCAMPP),
    Metric("increase-in-confidence", "Increase in confidence", confidence.increase_in_confidence, "maps", True,
           params={"output": "probability", "channels": "sum"}, paper=_GRADCAMPP),
    Metric("road-morf", "ROAD, most relevant first", imputation.road_most_relevant_first, "maps", False, params=_ROAD,
           paper=_ROAD_PAPER),
    Metric("road-lerf", "ROAD, least relevant first", imputation.road_least_relevant_first, "maps", True, params=_ROAD,
           paper=_ROAD_PAPER),
    Metric("road-combined", "ROAD combined", imputation.road_combined, "maps", True, params=_ROAD, paper=_ROAD_PAPER),
    Metric("infidelity", "Infidelity", robustness.infidelity, "attributions", False, output="score",
           params={"samples": 10, "noise": 0.003, "perturbation": None, "normalize": False, "output": "score",
                   "seed": 0}, paper=_YEH),
    Metric("sensitivity-max", "Sensitivity-max", robustness.sensitivity_max, "method", False, output=None,
           params={"layer": None, "method_params": None, "samples": 10, "radius": 0.02, "perturbation": None,
                   "seed": 0},
           paper=_YEH),
    Metric("pointing-game", "Pointing game", pointing.pointing_game, "maps", True, output=None,
           params={"tolerance": pointing.TOLERANCE, "channels": "sum"}, paper="Zhang et al. 2016",
           needs_boxes=True),
    Metric("energy-pointing-game", "Energy-based pointing game", pointing.energy_pointing_game, "maps", True,
           output=None, params={"channels": "sum"}, paper="Wang et al. 2020", needs_boxes=True),
    Metric("localisation-accuracy", "Localisation accuracy", pointing.localisation_accuracy, "maps", True,
           output=None, params={"threshold": pointing.THRESHOLD, "iou_threshold": pointing.IOU_THRESHOLD,
                                "variant": "gt-known", "channels": "sum"},
           paper="Zhou et al. 2016", needs_boxes=True),
    Metric("model-randomisation", "Model randomisation (sanity check)", sanity.model_randomisation, "method", False,
           output=None, params={"stages": "blocks", "measure": "spearman_abs", "mode": "cascading", "seed": 0,
                                "init": "normal", "layer": None, "method_params": None},
           paper="Adebayo et al. 2018"),
]:
    register(_metric)
del _metric

__all__ = ["Metric", "METRICS", "TAKES", "register", "unregister", "get", "names", "parameters", "evaluate"]
