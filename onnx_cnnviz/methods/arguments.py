"""Argument checks every method shares, so that one parameter means one thing with one error message everywhere.

* ``layer``: methods that work at the input take ``layer=None`` only (:func:`input_only`); the others resolve it with
  :meth:`Model.layer_names`.
* ``window``/``stride``: an int or (height, width) (:func:`pair`).
* ``baseline``: the reference input of occlusion and Integrated Gradients (:func:`baseline_values`): a float, one
  value per channel, one per image and channel, ``"mean"`` (each image's channel means), or (IG only) an array
  shaped like the images.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def input_only(method: str, layer) -> None:
    """``method`` works at the input: ``layer`` must be None."""
    if layer is not None:
        raise InputError(f"{method} is computed at the input image, so it takes no layer (got layer={layer!r}); "
                         "use a CAM method (grad_cam, ...) to explain at a feature layer.")


def pair(value, name: str) -> tuple[int, int]:
    """``value`` (an int or (height, width)) as two positive ints."""
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    try:
        result = tuple(int(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be an int or (height, width), got {value!r}.") from None
    if len(result) != 2 or min(result) < 1:
        raise InputError(f"{name} must be an int or (height, width) of positive ints, got {value!r}.")
    return result


def baseline_values(x: np.ndarray, baseline, image_shaped: bool = True) -> np.ndarray:
    """The reference input ``x'`` for images ``x`` (N, C, H, W), as an float32 array broadcastable to ``x``.

    ``baseline``: a float; ``C`` per-channel values; ``(N, C)`` values (one per image and channel); ``"mean"`` (each
    image's channel means); or, with ``image_shaped``, an array broadcastable to ``x`` ((C, H, W) or (N, C, H, W)).
    Per-channel forms come back as (N, C, 1, 1).
    """
    n, c = x.shape[:2]
    forms = f"a float, {c} per-channel values, ({n}, {c}) values, 'mean'" + \
        (" or an array shaped like x" if image_shaped else "")
    if isinstance(baseline, str):
        if baseline != "mean":
            raise InputError(f"baseline must be {forms}, not {baseline!r}.")
        return x.mean(axis=(2, 3), dtype=np.float64).astype(np.float32).reshape(n, c, 1, 1)
    try:
        arr = np.asarray(baseline, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"baseline must be {forms}, not {baseline!r}.") from None
    if not np.isfinite(arr).all():
        raise InputError(f"baseline must be finite, not {baseline!r}.")
    if arr.ndim == 0:
        return np.full((n, c, 1, 1), float(arr), dtype=np.float32)
    if arr.shape == (c,):
        return np.broadcast_to(arr.reshape(1, c, 1, 1), (n, c, 1, 1)).copy()
    if arr.shape == (n, c):
        return arr.reshape(n, c, 1, 1).copy()
    if image_shaped:
        try:
            return np.broadcast_to(arr, x.shape)
        except ValueError:
            pass
    raise InputError(f"baseline must be {forms}; got shape {arr.shape} for x of shape {x.shape}.")


__all__ = ["input_only", "pair", "baseline_values"]
