"""Gradient-based maps of the input: raw gradients under a rule set, and the saliency map.

* ``gradients``: ``dS_c / dI`` (N, C, H, W). ``rule="vanilla"`` is the true gradient (Simonyan et al. 2014);
  ``"guided"`` is guided backpropagation (Springenberg et al. 2015); ``"deconvnet"`` is the deconvolution network
  reconstruction (Zeiler & Fergus 2014). The three differ only in how a rectifier passes the signal back (the rule
  sets of :mod:`onnx_cnnviz.graph.autodiff.rules`).
* ``saliency``: Simonyan et al. 2014, Sec. 3.1: ``M_ij = max_c |w_h(i,j,c)|`` with ``w = dS_c/dI`` at the image.
"""
from __future__ import annotations

import numpy as np

from ..maps import normalize_maps, normalize_signed
from ..model import Model
from .arguments import input_only


def gradients(m: Model, x, targets=None, layer=None, *, rule: str = "vanilla", upsample: bool = True,
              normalize: bool = False, batch_size: int | None = None) -> np.ndarray:
    """(N, C, H, W) float32 gradient of each sample's target score with respect to its input.

    ``rule``: "vanilla" | "guided" | "deconvnet". ``normalize``: divide each image's gradient by its largest
    absolute value (signed, zero stays zero; off by default: the raw gradient). ``upsample`` has nothing to do (the
    gradient is at the input's size); ``layer`` must be None (the gradient is taken at the input)."""
    input_only("gradients", layer)
    result = m.run(x, wrt=[m.input_name], rule=rule, targets=targets, batch_size=batch_size)
    grads = result.grads[m.input_name]
    return normalize_signed(grads) if normalize else grads


def saliency(m: Model, x, targets=None, layer=None, *, upsample: bool = True, normalize: bool = True,
             batch_size: int | None = None) -> np.ndarray:
    """(N, H, W) Simonyan saliency: max over channels of |dS_c/dI|, min-max normalised per image by default.
    ``upsample`` has nothing to do (the map is at the input's size); ``layer`` must be None."""
    input_only("saliency", layer)
    grads = gradients(m, x, targets, rule="vanilla", batch_size=batch_size)
    maps = np.abs(grads).max(axis=1)
    return normalize_maps(maps) if normalize else maps.astype(np.float32)
