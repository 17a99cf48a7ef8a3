"""Gradient-based maps of the input: raw gradients under a rule set, and the saliency map.

* ``gradients``: ``dS_c / dI`` (N, C, H, W). ``rule="vanilla"`` is the true gradient (Simonyan et al. 2014);
  ``"guided"`` is guided backpropagation (Springenberg et al. 2015); ``"deconvnet"`` is the deconvolution network
  reconstruction (Zeiler & Fergus 2014). The three differ only in how a rectifier (ReLU, ReLU6 = Clip(0, 6),
  LeakyReLU, PReLU) passes the signal back (the rule sets of :mod:`onnx_cnnviz.graph.autodiff.rules`); on a model with
  no rectifier between the image and the score (:func:`has_rectifiers` false) all three are the plain gradient, and
  ``gradients`` warns once per model and rule.
* ``saliency``: Simonyan et al. 2014, Sec. 3.1: ``M_ij = max_c |w_h(i,j,c)|`` with ``w = dS_c/dI`` at the image.
"""
from __future__ import annotations

import warnings
import weakref

import numpy as np

from ..graph.autodiff.rules import rectifiers_on_path
from ..maps import normalize_maps, normalize_signed
from ..model import Model
from .arguments import flag, input_only

# Per model (weakly held, so a dropped model takes its entries with it): whether it has rectifiers on the gradient
# path, and the rule sets already warned about. Kept out of the model's session cache, which is bounded: an entry
# there would take a session's place, and an evicted one would warn again.
_HAS_RECTIFIERS: weakref.WeakKeyDictionary[Model, bool] = weakref.WeakKeyDictionary()
_WARNED: weakref.WeakKeyDictionary[Model, set] = weakref.WeakKeyDictionary()


def has_rectifiers(m: Model) -> bool:
    """Whether a rectifier lies on the gradient path from the image to the score.

    Rectifiers: Relu, Clip with lower bound 0 (ReLU6), LeakyRelu, PRelu. When there is none the "guided" and
    "deconvnet" rules (guided backprop, deconvnet, Guided Grad-CAM) give exactly the plain gradient: they differ from
    it only at rectifiers.

    Args:
        m: the loaded model.

    Returns:
        True when at least one rectifier is on the path.
    """
    if m not in _HAS_RECTIFIERS:
        spec = m.spec()
        _HAS_RECTIFIERS[m] = bool(rectifiers_on_path(spec.model, m.input_name, m.score_name, spec.constants))
    return _HAS_RECTIFIERS[m]


def no_rectifier_note(rule: str) -> str:
    """The sentence said (warning, report, CLI) when rule set ``rule`` meets a model without rectifiers.

    Args:
        rule: the rule set, ``"guided"`` or ``"deconvnet"``.

    Returns:
        One sentence, ending in a full stop.
    """
    return (f"the model has no rectifier (ReLU, ReLU6/Clip(0, max), LeakyReLU, PReLU) between the image and the score, "
            f"so the {rule!r} rule gives exactly the plain (vanilla) gradient.")


def _warn_if_plain(m: Model, rule: str) -> None:
    if rule == "vanilla" or has_rectifiers(m):
        return
    warned = _WARNED.setdefault(m, set())
    if rule not in warned:
        warned.add(rule)
        warnings.warn(no_rectifier_note(rule), UserWarning, stacklevel=3)


def gradients(m: Model, x, targets=None, layer=None, *, rule: str = "vanilla", upsample: bool = True,
              normalize: bool = False, batch_size: int | None = None) -> np.ndarray:
    """The gradient of each image's target score with respect to its input: ``dS_c/dx``.

    ``rule="guided"`` is guided backpropagation (Springenberg et al., "Striving for Simplicity", ICLR-W 2015: a
    rectifier passes only positive gradients where its input was positive), ``"deconvnet"`` Zeiler & Fergus's
    deconvnet (ECCV 2014: positive gradients, whatever the input). On a model without rectifiers
    (:func:`has_rectifiers`) both equal the plain gradient, and a ``UserWarning`` says so once per model and rule.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        targets: None (each image's top-1 class), a class index or name, a target object
            (:mod:`onnx_cnnviz.targets`), or one of these per image.
        layer: must be None: the gradient is taken at the input (accepted for the map functions' common signature).
        rule: ``"vanilla"``, ``"guided"`` or ``"deconvnet"``.
        upsample: accepted for the common signature; the result is at the input's size either way.
        normalize: divide each image by its largest absolute value (signed, zero stays zero); off by default: the
            raw gradient.
        batch_size: images per onnxruntime run (default: the model's).

    Returns:
        (N, C, H, W) float32.

    Raises:
        InputError: a bad input, target or parameter, or a ``layer``.
        UnsupportedOpError: an op on the gradient path has no backward rule.
        NumericalError: the model produced NaN or Inf.
    """
    input_only("gradients", layer)
    flag(upsample, "upsample")
    normalize = flag(normalize, "normalize")
    result = m.run(x, wrt=[m.input_name], rule=rule, targets=targets, batch_size=batch_size)
    grads = result.grads[m.input_name]
    _warn_if_plain(m, rule)
    return normalize_signed(grads) if normalize else grads


def saliency(m: Model, x, targets=None, layer=None, *, upsample: bool = True, normalize: bool = True,
             batch_size: int | None = None) -> np.ndarray:
    """Saliency (Simonyan et al., "Deep Inside Convolutional Networks", ICLR-W 2014): ``max_c |dS_c/dx|``.

    The largest absolute gradient over the input's channels, min-max normalised per image by default.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        targets: None (each image's top-1 class), a class index or name, a target object
            (:mod:`onnx_cnnviz.targets`), or one of these per image.
        layer: must be None: the gradient is taken at the input (accepted for the map functions' common signature).
        upsample: accepted for the common signature; the result is at the input's size either way.
        normalize: min-max scale each map to [0, 1].
        batch_size: images per onnxruntime run (default: the model's).

    Returns:
        (N, H, W) float32.

    Raises:
        InputError: a bad input, target or parameter, or a ``layer``.
        UnsupportedOpError: an op on the gradient path has no backward rule.
        NumericalError: the model produced NaN or Inf.
    """
    input_only("saliency", layer)
    flag(upsample, "upsample")
    normalize = flag(normalize, "normalize")
    grads = gradients(m, x, targets, rule="vanilla", batch_size=batch_size)
    maps = np.abs(grads).max(axis=1)
    return normalize_maps(maps) if normalize else maps.astype(np.float32)
