"""Gradient-based maps of the input: raw gradients under a rule set, and the saliency map.

* ``gradients``: ``dS_c / dI`` (N, C, H, W). ``rule="vanilla"`` is the true gradient (Simonyan et al. 2014);
  ``"guided"`` is guided backpropagation (Springenberg et al. 2015); ``"deconvnet"`` is the deconvolution network
  reconstruction (Zeiler & Fergus 2014). The three differ only in how a ReLU passes the signal back.
* ``saliency``: Simonyan et al. 2014, Sec. 3.1: ``M_ij = max_c |w_h(i,j,c)|`` with ``w = dS_c/dI`` at the image.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..model import Model

RULES = ("vanilla", "guided", "deconvnet")


def gradients(m: Model, x, targets=None, rule: str = "vanilla", batch_size: int | None = None) -> np.ndarray:
    """(N, C, H, W) float32 gradient of each sample's target score with respect to its input."""
    if rule not in RULES:
        raise InputError(f"rule must be one of {', '.join(RULES)}, not {rule!r}.")
    result = m.run(x, wrt=[m.input_name], rule=rule, targets=targets, batch_size=batch_size)
    return result.grads[m.input_name]


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling to [0, 1] (a constant map becomes all zeros)."""
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - lo
    out = (flat - lo) / np.where(span > 0, span, 1.0)
    return out.reshape(maps.shape).astype(np.float32)


def saliency(m: Model, x, targets=None, normalize: bool = True, batch_size: int | None = None) -> np.ndarray:
    """(N, H, W) Simonyan saliency: max over channels of |dS_c/dI|, min-max normalised per image by default."""
    grads = gradients(m, x, targets, rule="vanilla", batch_size=batch_size)
    maps = np.abs(grads).max(axis=1)
    return normalize_maps(maps) if normalize else maps.astype(np.float32)
