"""Argument checks every method shares, so that one parameter means one thing with one error message everywhere.

* ``layer``: methods that work at the input take ``layer=None`` only (:func:`input_only`); the others resolve it with
  :meth:`Model.layer_names`.
* ``window``/``stride``: an int or (height, width) of ints (:func:`pair`); ``4.5`` is refused, not truncated.
* ``batch_size``: None (the method chooses) or a positive int (:func:`batch_size`); 0, -3, 2.5 and True are refused.
* ``upsample``/``normalize``/``relu``: True or False (:func:`flag`); a tuple or a string is refused, not taken as
  True.
* ``top``: how many classes, an int from 1 to the model's class count (:func:`count_of_classes`).
* a 1x1 feature layer: a map there carries no spatial information, so the CAM methods warn
  (:func:`warn_single_pixel`).
* ``baseline``: the reference input of occlusion and Integrated Gradients (:func:`baseline_values`): a float, one
  value per channel, one per image and channel, ``"mean"`` (each image's channel means), or (IG only) an array
  shaped like the images.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import InputError
from ..input_checks import check_batch_size


def input_only(method: str, layer) -> None:
    """``method`` works at the input: ``layer`` must be None."""
    if layer is not None:
        raise InputError(f"{method} is computed at the input image, so it takes no layer (got layer={layer!r}); "
                         "use a CAM method (grad_cam, ...) to explain at a feature layer.")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def pair(value, name: str) -> tuple[int, int]:
    """``value`` (an int or (height, width)) as two positive ints.

    Args:
        value: one int for both sides, or a pair of ints.
        name: the argument's name, for the error.

    Returns:
        ``(height, width)``.

    Raises:
        InputError: not an int or a pair of ints (a float such as 4.5 is refused rather than truncated), or a side
            below 1.
    """
    if _is_int(value):
        value = (value, value)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InputError(f"{name} must be an int or (height, width) of positive ints, got {value!r}.")
    result = tuple(value)
    if len(result) != 2 or not all(_is_int(v) for v in result) or min(result) < 1:
        raise InputError(f"{name} must be an int or (height, width) of positive ints, got {value!r}.")
    return (int(result[0]), int(result[1]))


def batch_size(value, name: str = "batch_size") -> int | None:
    """``value`` checked as a batch size: None (the method chooses one from its memory budget) or an int >= 1
    (:func:`onnx_cnnviz.input_checks.check_batch_size`, which the Model's runs use too).

    Raises:
        InputError: 0, a negative number, a float (2.5, or 2.0: a batch is a count) or a bool.
    """
    return check_batch_size(value, name)


def flag(value, name: str) -> bool:
    """``value`` checked as an on/off switch (``upsample``, ``normalize``, ``relu``): True or False (numpy bools
    too). Anything else, an (H, W) size or the text ``"big"``, would silently count as True, so it is refused.

    Raises:
        InputError: not a bool.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InputError(f"{name} must be True or False, got {value!r}; the maps come back at the input's size with "
                     f"{name}=True (resize them yourself for another size).")


def count_of_classes(value, num_classes: int | None, name: str = "top") -> int:
    """``value`` checked as a number of classes to explain: an int from 1 to ``num_classes`` (None: no upper bound).

    Raises:
        InputError: not an int, below 1, or above the model's class count (it would be clipped silently).
    """
    if not _is_int(value) or value < 1 or (num_classes is not None and value > num_classes):
        upper = f" and {num_classes}, the model's class count" if num_classes is not None else ""
        raise InputError(f"{name} must be an int between 1{upper}, got {value!r}.")
    return int(value)


def single_pixel_note(method: str, layer: str, hw) -> str | None:
    """The warning for ``method`` explained at ``layer`` whose feature map is ``hw`` = (h, w), or None.

    A 1x1 map (a layer after global pooling, or the last stage of a small input) holds one value per channel: the
    map is that one number spread over the image, 0.0 everywhere after min-max normalisation. It is not an error
    (the number is right), but it shows nothing, so the caller warns.
    """
    h, w = (int(v) for v in hw)
    if (h, w) != (1, 1):
        return None
    return (f"{method} at layer '{layer}': the layer's feature map is 1x1, so the map carries no spatial information "
            "(one value spread over the image, 0 everywhere once normalised); choose a layer with a spatial map "
            "(Model.layers lists them, the default layer is the last one).")


def warn_single_pixel(method: str, layer: str, hw) -> None:
    """:func:`single_pixel_note` as a :class:`UserWarning`, when there is one."""
    note = single_pixel_note(method, layer, hw)
    if note:
        warnings.warn(note, UserWarning, stacklevel=3)


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


__all__ = ["input_only", "pair", "batch_size", "flag", "count_of_classes", "single_pixel_note", "warn_single_pixel",
           "baseline_values"]
