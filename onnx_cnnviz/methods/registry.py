"""The one table of explanation methods.

Every method the library, the command line, the JSON records and the report know is one :class:`Method` entry
here, under one name (``gradcam``, ``saliency``, ``guided-gradcam``, ...). The CLI's ``--method`` choices and help,
the report's columns and captions, :func:`~onnx_cnnviz.methods.top_k.top_k` and evaluation read this table when they
run, so **adding a method is one function plus one** :func:`register` **call**::

    from onnx_cnnviz.methods import registry

    def my_map(m, x, targets=None, layer=None, *, upsample=True, normalize=True, batch_size=None):
        ...  # (N, H, W) float32

    registry.register(registry.Method("mymap", "My map", my_map, kind="map", gradients=True, uses_layer=True,
                                      paper="Doe et al. 2026"))

A method's function has the one public shape of every map function,
``f(m, x, targets=None, layer=None, *, upsample=..., normalize=..., batch_size=None, **params)``; ``params`` are its
own tunables with their defaults (``window``, ``samples``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable

import numpy as np

from ..errors import InputError
from ..model import Model
from . import attribution, cam, gradients, occlusion
from .cam import cam_head

#: How a result is shown: an (N, H, W) heat map over the image, an (N, H, W) map in gray (white = most), an
#: (N, C, H, W) input gradient as an image, or an (N, C, H, W) attribution as the gray |sum over channels|.
KINDS = ("map", "gray", "gradient", "attribution")


@dataclass(frozen=True)
class Method:
    """One explanation method.

    ``name``: the one spelling everywhere (library, CLI, JSON, report). ``func``: the map function (see the module
    docstring for its shape). ``kind``: how its result is shown (:data:`KINDS`). ``gradients``: it runs a backward
    graph. ``uses_layer``: it reads a feature layer (``layer=None`` means ``Model.default_layer``). ``class_specific``:
    its map depends on the target class (EigenCAM's does not). ``signed``: its values are signed (zero means "no
    effect"), as opposed to an unsigned importance in [0, 1]. ``params``: the method's own keyword arguments beyond
    ``targets``/``layer``/``upsample``/``normalize``/``batch_size``, with their defaults. ``paper``: the reference.
    """
    name: str
    title: str
    func: Callable
    kind: str
    gradients: bool
    uses_layer: bool = False
    class_specific: bool = True
    signed: bool = False
    params: dict = field(default_factory=dict)
    paper: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"method {self.name!r}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}.")
        if not self.name or any(c.isspace() or c in ",/" for c in self.name):
            raise InputError(f"a method name is one word without commas or slashes, not {self.name!r}.")


METHODS: dict[str, Method] = {}


def register(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the table (``replace=True`` to redefine an existing name). Returns it."""
    if method.name in METHODS and not replace:
        raise InputError(f"a method named {method.name!r} is already registered; pass replace=True to redefine it.")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove method ``name`` from the table (a test's toy method, say)."""
    get(name)
    del METHODS[name]


def get(name) -> Method:
    """The :class:`Method` called ``name`` (an :class:`InputError` listing the names otherwise)."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose from {', '.join(METHODS)}.")
    return METHODS[name]


def names() -> list[str]:
    """Every registered method name, in registration order."""
    return list(METHODS)


def by_function(func: Callable) -> Method | None:
    """The entry whose function is ``func``, or None."""
    return next((meth for meth in METHODS.values() if meth.func is func), None)


def resolved_layer(m: Model, method, layer: str | None) -> str | None:
    """The layer ``method`` will use on ``m`` (checked; None for methods that read no layer)."""
    meth = get(method)
    if not meth.uses_layer:
        return None
    if meth.func is cam.cam:
        head = cam_head(m)
        if layer is not None and layer not in head.aliases:
            m.layer(layer)  # an unknown name gets the suggestions; a known one the CAM-specific message below
            raise InputError(f"CAM is defined only at the feature map feeding the classifier head: "
                             f"'{head.layer}', not '{layer}'. Use gradcam for other layers.")
        return head.layer
    if layer is None:
        if m.default_layer is None:
            raise InputError("the model has no spatial feature map to explain at; choose a layer "
                             "(--layer on the command line).")
        return m.default_layer
    return m.layer(layer).name


def parameters(method, params: dict | None = None) -> dict:
    """The parameters ``method`` runs with: its defaults overridden by the keys of ``params`` it knows (a None value
    keeps the default)."""
    meth = get(method)
    params = params or {}
    return {k: params[k] if params.get(k) is not None else v for k, v in meth.params.items()}


def explain(m: Model, method, x: np.ndarray, targets, layer: str | None = None, params: dict | None = None,
            batch_size: int | None = None, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Run ``method`` (a name or a :class:`Method`) on the batch ``x`` for ``targets``: its result as the library
    returns it by default (one entry per image).

    ``progress``: a callable ``progress(done, total)``, passed on to the method's function when that takes a
    ``progress`` keyword (the long-running ones: occlusion's windows, Score-CAM's masked images, SmoothGrad's
    samples, integrated gradients' steps); methods without one run as they are and never call it."""
    import inspect

    meth = get(method)
    kwargs = parameters(meth, params)
    for key in ("window", "stride"):
        if key in kwargs and not isinstance(kwargs[key], int):
            kwargs[key] = tuple(kwargs[key])
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


def _guided(m, x, targets=None, layer=None, *, upsample=True, normalize=False, batch_size=None):
    """Guided backpropagation (Springenberg et al., ICLR-W 2015): :func:`gradients` with ``rule="guided"``."""
    return gradients.gradients(m, x, targets, layer, rule="guided", upsample=upsample, normalize=normalize,
                               batch_size=batch_size)


def _deconvnet(m, x, targets=None, layer=None, *, upsample=True, normalize=False, batch_size=None):
    """Deconvnet reconstruction (Zeiler & Fergus, ECCV 2014): :func:`gradients` with ``rule="deconvnet"``."""
    return gradients.gradients(m, x, targets, layer, rule="deconvnet", upsample=upsample, normalize=normalize,
                               batch_size=batch_size)


for _method in [
    Method("gradcam", "Grad-CAM", cam.grad_cam, "map", True, True, paper="Selvaraju et al. 2017"),
    Method("gradcampp", "Grad-CAM++", cam.grad_cam_pp, "map", True, True, paper="Chattopadhyay et al. 2018"),
    Method("cam", "CAM", cam.cam, "map", False, True, paper="Zhou et al. 2016"),
    Method("hirescam", "HiResCAM", cam.hires_cam, "map", True, True, paper="Draelos & Carin 2020"),
    Method("xgradcam", "XGrad-CAM", cam.xgrad_cam, "map", True, True, paper="Fu et al. 2020"),
    Method("layercam", "LayerCAM", cam.layer_cam, "map", True, True, paper="Jiang et al. 2021"),
    Method("eigencam", "EigenCAM", cam.eigen_cam, "map", False, True, class_specific=False,
           paper="Muhammad & Yeasin 2020"),
    Method("scorecam", "Score-CAM", cam.score_cam, "map", False, True, paper="Wang et al. 2020"),
    Method("saliency", "Saliency", gradients.saliency, "gray", True, paper="Simonyan et al. 2014"),
    Method("guided", "Guided backprop", _guided, "gradient", True, signed=True, paper="Springenberg et al. 2015"),
    Method("deconvnet", "Deconvnet", _deconvnet, "gradient", True, signed=True, paper="Zeiler & Fergus 2014"),
    Method("guided-gradcam", "Guided Grad-CAM", cam.guided_grad_cam, "gradient", True, True, signed=True,
           paper="Selvaraju et al. 2017"),
    Method("occlusion", "Occlusion", occlusion.occlusion, "map", False, signed=True,
           params={"window": (16, 16), "stride": (8, 8), "baseline": 0.0, "mode": "score"},
           paper="Zeiler & Fergus 2014"),
    Method("ixg", "Input x gradient", attribution.input_x_gradient, "attribution", True, signed=True,
           paper="Shrikumar et al. 2016"),
    Method("smoothgrad", "SmoothGrad", attribution.smoothgrad, "attribution", True, signed=True,
           params={"samples": 25, "noise": 0.15, "seed": 0}, paper="Smilkov et al. 2017"),
    Method("ig", "Integrated gradients", attribution.integrated_gradients, "attribution", True, signed=True,
           params={"steps": 50, "baseline": 0.0}, paper="Sundararajan et al. 2017"),
]:
    register(_method)
del _method

__all__ = ["Method", "METHODS", "KINDS", "register", "unregister", "get", "names", "by_function", "resolved_layer",
           "parameters", "explain"]
