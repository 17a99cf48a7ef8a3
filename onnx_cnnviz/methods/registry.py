"""The one table of explanation methods.

Every method the library, the command line, the JSON records, the report and the Ray pipeline know is one
:class:`Method` entry here, under one name (``gradcam``, ``saliency``, ``guided-gradcam``, ...). The CLI's ``--method``
choices and help, its ``--param METHOD.KEY=VALUE`` option, the report's columns, captions and notes,
:func:`~onnx_cnnviz.methods.top_k.top_k`, the runs and evaluation read this table when they run, so **adding a method
with a tunable is one function plus one** :func:`register` **call**::

    from onnx_cnnviz.methods import registry

    def my_map(m, x, targets=None, layer=None, *, upsample=True, normalize=True, batch_size=None, power=2.0):
        ...  # (N, H, W) float32

    registry.register(registry.Method("mymap", "My map", my_map, kind="map", gradients=True, uses_layer=True,
                                      paper="Doe et al. 2026"))

after which ``cv.mymap(m, x)``, ``registry.explain(m, "mymap", x, t, params={"power": 3.0})`` and
``cnnviz explain --method mymap --param mymap.power=3`` run it, and its records and report captions show
``power``.

A method's function has the one public shape of every map function,
``f(m, x, targets=None, layer=None, *, upsample=..., normalize=..., batch_size=None, progress=None, **own)``; its own
parameters (``window``, ``samples``, ...) and their defaults are read from that signature (every keyword beyond
:data:`COMMON`), never written twice.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..model import Model
from ..registries import Registry, check_name, check_params, describe_params, resolved, signature_params
from . import attribution, cam, gradients, occlusion, reciprocam
from .cam import cam_head
from ..tasks.detection import per_own_level
from ..tasks.levels import own_levels

#: How a result is shown: an (N, H, W) heat map over the image, an (N, H, W) map in gray (white = most), an
#: (N, C, H, W) input gradient as an image, or an (N, C, H, W) attribution as the gray |sum over channels|.
KINDS = ("map", "gray", "gradient", "attribution")

#: The keywords every map function may take, supplied by :func:`explain`, not parameters of the method's own.
COMMON = frozenset({"targets", "layer", "upsample", "normalize", "batch_size", "progress"})


@dataclass(frozen=True)
class Method:
    """One explanation method.

    ``name``: the one spelling everywhere (library, CLI, JSON, report). ``func``: the map function (see the module
    docstring for its shape). ``kind``: how its result is shown (:data:`KINDS`). ``gradients``: it runs a backward
    graph. ``uses_layer``: it reads a feature layer (``layer=None`` means ``Model.default_layer``). ``class_specific``:
    its map depends on the target class (EigenCAM's does not). ``signed``: its values are signed (zero means "no
    effect"), as opposed to an unsigned importance in [0, 1]. ``params``: which of the function's keywords beyond
    :data:`COMMON` are the method's tunables: None, all of them; a sequence of names, those (the others keep the
    function's defaults and are not shown); after construction, the dict name -> default read from the signature.
    ``paper``: the reference.

    ``layer_rule``: ``layer_rule(m, layer) -> layer name`` for a method defined at one layer only (CAM: the feature
    map feeding the classifier head), checking a given ``layer``; None, any layer (``layer`` or the default).
    ``check_input``: ``check_input(params, hw, warn, fixed)`` for a method whose parameters must fit the image size
    (occlusion's window): raises :class:`InputError` when they cannot (``fixed``: ``hw`` is the run's one input size;
    False, one image's own size, where it only warns) and calls ``warn(message, key)`` when they fit badly
    (``key``: the same warning is shown once).
    ``rectifier_rule``: the gradient rule the method relies on ("guided", "deconvnet"): on a model with no rectifier
    on the gradient path its result is the plain gradient, which the report notes.
    """
    name: str
    title: str
    func: Callable
    kind: str
    gradients: bool
    uses_layer: bool = False
    class_specific: bool = True
    signed: bool = False
    params: dict | tuple | None = None
    paper: str = ""
    layer_rule: Callable | None = None
    check_input: Callable | None = None
    rectifier_rule: str | None = None

    def __post_init__(self):
        check_name(self.name, "method")
        if self.kind not in KINDS:
            raise InputError(f"method {self.name!r}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}.")
        if not callable(self.func):
            raise InputError(f"method {self.name!r}: func must be callable, not {type(self.func).__name__}.")
        object.__setattr__(self, "params", signature_params(self.func, 2, COMMON, self.params,
                                                            f"method {self.name!r}"))


_METHODS: Registry[Method] = Registry("method", Method)

#: The table itself, name -> :class:`Method` (read it; change it through :func:`register` and :func:`unregister`).
METHODS: dict[str, Method] = _METHODS.entries


def register(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the table (``replace=True`` to redefine an existing name).

    Returns:
        ``method``.

    Raises:
        InputError: the name is taken (and ``replace`` is False).
    """
    return _METHODS.register(method, replace)


def unregister(name: str) -> None:
    """Remove method ``name`` from the table (a test's toy method, say)."""
    _METHODS.unregister(name)


def get(name) -> Method:
    """The :class:`Method` called ``name`` (a :class:`Method` passes through; an :class:`InputError` listing the
    names otherwise)."""
    return _METHODS.get(name)


def names() -> list[str]:
    """Every registered method name, in registration order."""
    return _METHODS.names()


def by_function(func: Callable) -> Method | None:
    """The entry whose function is ``func``, or None."""
    return next((meth for meth in METHODS.values() if meth.func is func), None)


def resolved_layer(m: Model, method, layer: str | None) -> str | None:
    """The layer ``method`` will use on ``m`` (checked; None for methods that read no layer)."""
    meth = get(method)
    if not meth.uses_layer:
        return None
    if meth.layer_rule is not None:
        return meth.layer_rule(m, layer)
    if layer is None:
        if m.default_layer is None:
            raise InputError("the model has no spatial feature map to explain at; choose a layer "
                             "(--layer on the command line).")
        return m.default_layer
    return m.layer(layer).name


def parameters(method, params: dict | None = None, shared: bool = False) -> dict:
    """The parameters ``method`` runs with: its defaults (:attr:`Method.params`) overridden by ``params`` (a None
    value keeps the default; a list given for a tuple default becomes a tuple).

    ``params`` keys are the method's parameter names, or ``METHOD.KEY`` for one method's parameter (which wins over a
    plain ``KEY``). With ``shared=True``, ``params`` is the one dict of a run of several methods: keys meant for
    other registered methods (their parameter names, ``OTHER.KEY``) are left to them.

    Raises:
        InputError: a key the method does not take (naming those it takes); with ``shared``, a key no registered
            method takes, or ``OTHER.KEY`` for an unknown method or a parameter it does not take.
    """
    meth = get(method)
    plain, mine = {}, {}
    for key, value in (params or {}).items():
        owner, dot, name = str(key).rpartition(".")
        if dot and owner != meth.name:
            if not shared:
                raise InputError(f"parameter {key!r} is for method {owner!r}, not {meth.name!r}.")
            check_params(f"method {owner!r}", get(owner).params, {name: value})
            continue
        if not dot and shared and name not in meth.params:
            if not any(name in other.params for other in METHODS.values()):
                raise InputError(f"no method takes parameter {key!r}; the methods' parameters: "
                                 f"{all_parameters() or 'none'}.")
            continue
        (mine if dot else plain)[name] = value
    given = {**plain, **{k: v for k, v in mine.items() if v is not None}}
    check_params(f"method {meth.name!r}", meth.params, given)
    return resolved(meth.params, given)


def check_parameters(methods, params: dict | None) -> None:
    """Check the one parameter dict of a run of ``methods`` (see :func:`parameters` with ``shared=True``), and that
    every ``METHOD.KEY`` names one of ``methods``.

    Raises:
        InputError: a parameter no method takes, or one for a method not among ``methods``.
    """
    chosen = [get(name).name for name in methods]
    for key in params or {}:
        owner, dot, _ = str(key).rpartition(".")
        if dot and owner not in chosen:
            raise InputError(f"parameter {key!r} names method {owner!r}, which is not run; run: {', '.join(chosen)}.")
    for name in chosen:
        parameters(name, params, shared=True)


def all_parameters() -> str:
    """Every registered method's own parameters with their defaults, as "method: key=default, ...; ..." (the help
    of ``--param``)."""
    return "; ".join(f"{meth.name}: {describe_params(meth.params)}" for meth in METHODS.values() if meth.params)


def check_input_size(methods, params: dict | None, hw, warn: Callable[[str, str], None], fixed: bool = True) -> None:
    """Check the parameters of each of ``methods`` that must fit the ``hw`` image size (:attr:`Method.check_input`:
    occlusion's window and stride) before any work; ``params``: the run's one dict (:func:`parameters` with
    ``shared=True``). ``fixed``: ``hw`` is the run's input size (False: one image's own, where only warnings are
    given)."""
    for name in methods:
        meth = get(name)
        if meth.check_input is not None:
            meth.check_input(parameters(meth, params, shared=True), tuple(hw), warn, fixed)


def explain(m: Model, method, x: np.ndarray, targets, layer: str | None = None, params: dict | None = None,
            batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
            shared: bool = False) -> np.ndarray:
    """Run ``method`` (a name or a :class:`Method`) on the batch ``x`` for ``targets``: its result as the library
    returns it by default (one entry per image).

    ``params``: the method's own parameters (:func:`parameters`; ``shared=True`` for one dict shared by the methods
    of a run). ``progress``: a callable ``progress(done, total)``, passed on to the method's function when that takes
    a ``progress`` keyword (the long-running ones: occlusion's windows, Score-CAM's masked images, SmoothGrad's
    samples, integrated gradients' steps); methods without one run as they are and never call it.

    Raises:
        InputError: an unknown method or parameter, or a layer the method cannot use.
    """
    meth = get(method)
    kwargs = parameters(meth, params, shared)
    if meth.uses_layer and layer is None and meth.layer_rule is None and own_levels(m, targets) is not None:
        # a detector's detections, each at its own pyramid level (tasks.detection.per_own_level)
        return per_own_level(m, list(targets), lambda idx, level: explain(
            m, meth, x[idx], [targets[i] for i in idx], level, kwargs, batch_size, progress))
    if meth.uses_layer:
        kwargs["layer"] = resolved_layer(m, meth, layer)
    if progress is not None:
        try:
            takes = inspect.signature(meth.func).parameters.get("progress")
        except (TypeError, ValueError):  # a builtin or C function: no signature to read
            takes = None
        if takes is not None and takes.kind in (takes.KEYWORD_ONLY, takes.POSITIONAL_OR_KEYWORD):
            kwargs["progress"] = progress
    return meth.func(m, x, targets=targets, batch_size=batch_size, **kwargs)


def _cam_layer(m: Model, layer: str | None) -> str:
    """CAM's layer: the feature map feeding the classifier head (Zhou et al. 2016 weight it by the head's weights);
    another ``layer`` is an :class:`InputError`."""
    head = cam_head(m)
    if layer is not None and layer not in head.aliases:
        m.layer(layer)  # an unknown name gets the suggestions; a known one the CAM-specific message below
        raise InputError(f"CAM is defined only at the feature map feeding the classifier head: "
                         f"'{head.layer}', not '{layer}'. Use gradcam for other layers.")
    return head.layer


def _pair(value) -> tuple:
    return (int(value), int(value)) if np.isscalar(value) else tuple(int(v) for v in value)


def _occlusion_fits(params: dict, hw: tuple, warn: Callable[[str, str], None], fixed: bool = True) -> None:
    """Occlusion's window and stride against the ``hw`` image: a window larger than the run's input is an
    :class:`InputError` about --window (``fixed``); a stride not smaller than the image along an axis gets a warning
    (only one window is placed along it, at the top or left edge, so most of the map stays empty)."""
    window, stride = _pair(params["window"]), _pair(params["stride"])
    if fixed and (window[0] > hw[0] or window[1] > hw[1]):
        exc = InputError(f"the occlusion window {window[0]}x{window[1]} is larger than the {hw[0]}x{hw[1]} model "
                         "input; give a smaller --window.")
        exc.option = "--window"  # the command line reports it as a usage error of that flag
        raise exc
    # The library's own text, keyed by itself: occlusion() warns again with it when it runs, and is not shown twice.
    from .occlusion import stride_note

    note = stride_note(stride, hw)
    if note:
        warn(note, note)


def _guided(m, x, targets=None, layer=None, *, upsample=True, normalize=False, batch_size=None):
    """Guided backpropagation (Springenberg et al., ICLR-W 2015): :func:`gradients` with ``rule="guided"``."""
    return gradients.gradients(m, x, targets, layer, rule="guided", upsample=upsample, normalize=normalize,
                               batch_size=batch_size)


def _deconvnet(m, x, targets=None, layer=None, *, upsample=True, normalize=False, batch_size=None):
    """Deconvnet reconstruction (Zeiler & Fergus, ECCV 2014): :func:`gradients` with ``rule="deconvnet"``."""
    return gradients.gradients(m, x, targets, layer, rule="deconvnet", upsample=upsample, normalize=normalize,
                               batch_size=batch_size)


_CAM = ()  # the CAM family's relu (and Grad-CAM's counterfactual) keep their defaults: not shown, not tunable here

for _method in [
    Method("gradcam", "Grad-CAM", cam.grad_cam, "map", True, True, params=_CAM, paper="Selvaraju et al. 2017"),
    Method("gradcampp", "Grad-CAM++", cam.grad_cam_pp, "map", True, True, params=_CAM,
           paper="Chattopadhyay et al. 2018"),
    Method("cam", "CAM", cam.cam, "map", False, True, params=_CAM, paper="Zhou et al. 2016", layer_rule=_cam_layer),
    Method("hirescam", "HiResCAM", cam.hires_cam, "map", True, True, params=_CAM, paper="Draelos & Carin 2020"),
    Method("xgradcam", "XGrad-CAM", cam.xgrad_cam, "map", True, True, params=_CAM, paper="Fu et al. 2020"),
    Method("layercam", "LayerCAM", cam.layer_cam, "map", True, True, params=_CAM, paper="Jiang et al. 2021"),
    Method("eigencam", "EigenCAM", cam.eigen_cam, "map", False, True, class_specific=False, params=_CAM,
           paper="Muhammad & Yeasin 2020"),
    Method("scorecam", "Score-CAM", cam.score_cam, "map", False, True, params=_CAM, paper="Wang et al. 2020"),
    Method("reciprocam", "Recipro-CAM", reciprocam.reciprocam, "map", False, True, paper="Byun & Lee 2022"),
    Method("saliency", "Saliency", gradients.saliency, "gray", True, paper="Simonyan et al. 2014"),
    Method("guided", "Guided backprop", _guided, "gradient", True, signed=True, paper="Springenberg et al. 2015",
           rectifier_rule="guided"),
    Method("deconvnet", "Deconvnet", _deconvnet, "gradient", True, signed=True, paper="Zeiler & Fergus 2014",
           rectifier_rule="deconvnet"),
    Method("guided-gradcam", "Guided Grad-CAM", cam.guided_grad_cam, "gradient", True, True, signed=True,
           paper="Selvaraju et al. 2017", rectifier_rule="guided"),
    Method("occlusion", "Occlusion", occlusion.occlusion, "map", False, signed=True,
           params=("window", "stride", "baseline", "mode"), paper="Zeiler & Fergus 2014",
           check_input=_occlusion_fits),
    Method("ixg", "Input x gradient", attribution.input_x_gradient, "attribution", True, signed=True, params=(),
           paper="Shrikumar et al. 2016"),
    Method("smoothgrad", "SmoothGrad", attribution.smoothgrad, "attribution", True, signed=True,
           params=("samples", "noise", "seed"), paper="Smilkov et al. 2017"),
    Method("ig", "Integrated gradients", attribution.integrated_gradients, "attribution", True, signed=True,
           params=("steps", "baseline"), paper="Sundararajan et al. 2017"),
]:
    register(_method)
del _method

__all__ = ["Method", "METHODS", "KINDS", "COMMON", "register", "unregister", "get", "names", "by_function",
           "resolved_layer", "parameters", "check_parameters", "check_input_size", "all_parameters", "explain"]
