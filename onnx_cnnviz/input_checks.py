"""The checks of what a user hands a :class:`onnx_cnnviz.Model`: images and input sizes, each failure an
:class:`InputError` that says what is wrong and what to do."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import InputError

__all__ = ["check_images", "size_pair", "check_batch_size"]


def check_images(x, channels: int, static_hw: tuple | None, takes_pixels: bool,
                 check_pixels: Callable[[tuple], None]) -> np.ndarray:
    """``x`` checked as a batch of images for a model taking ``channels`` channels at ``static_hw`` (None: any size;
    ``check_pixels(hw)`` then checks the size) and returned as a C-contiguous float32 array (one image repeated
    along the batch axis without copies, ``np.broadcast_to``, stays such a view of one contiguous image).

    Args:
        x: the images, (N, C, H, W).
        channels: the model's channel count.
        static_hw: the model's fixed (H, W), or None.
        takes_pixels: integer arrays are accepted too (a model taking raw pixels).
        check_pixels: raises when an image size is too large.

    Returns:
        ``x`` as float32.

    Raises:
        InputError: not a 4-D float array, wrong channels or size, empty, or not finite.
    """
    if not isinstance(x, np.ndarray):
        raise InputError(f"x must be a numpy array (N, C, H, W), got {type(x).__name__}.")
    if x.ndim == 3:
        raise InputError(f"x has shape {x.shape}; add the batch axis: x[None] for one image (N, C, H, W).")
    if x.ndim != 4:
        raise InputError(f"x must be 4-D (N, C, H, W), got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.floating) and not (takes_pixels and np.issubdtype(x.dtype, np.integer)):
        raise InputError(f"x must be a float array (preprocessed for the model), got dtype {x.dtype}.")
    if x.shape[1] != channels:
        raise InputError(f"the model takes {channels} channels, x has {x.shape[1]} (shape {x.shape}); "
                         "check the preprocessing (grayscale vs RGB, channels-last vs NCHW).")
    if static_hw and tuple(x.shape[2:]) != tuple(static_hw):
        raise InputError(f"the model takes {static_hw[0]}x{static_hw[1]} images, x is "
                         f"{x.shape[2]}x{x.shape[3]}; resize the images first (onnx_cnnviz.image.preprocess).")
    if x.shape[0] == 0:
        raise InputError("x holds no images (batch of 0).")
    if not static_hw:
        check_pixels(x.shape[2:])
    if len(x) > 1 and x.strides[0] == 0:  # one image repeated as a read-only view (np.broadcast_to): kept a view
        if not np.all(np.isfinite(x[0])):
            raise InputError("x contains NaN or Inf values; check the image loading and preprocessing.")
        one = np.ascontiguousarray(x[:1], dtype=np.float32)
        return np.broadcast_to(one, x.shape)
    if not np.all(np.isfinite(x)):
        raise InputError("x contains NaN or Inf values; check the image loading and preprocessing.")
    return np.ascontiguousarray(x, dtype=np.float32)


def size_pair(size) -> tuple:
    """``size`` as (H, W) positive ints; :class:`InputError` otherwise."""
    try:
        h, w = size
        valid = not any(isinstance(v, bool) or int(v) != v or int(v) < 1 for v in (h, w))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise InputError(f"input_size must be (H, W), two positive ints, got {size!r}.")
    return (int(h), int(w))


def check_batch_size(value, name: str = "batch_size") -> int | None:
    """``value`` checked as a batch size: None (chosen from the memory budget or the model's default) or an int >= 1.

    Args:
        value: the batch size a user gave.
        name: the argument's name, for the error.

    Returns:
        The int, or None.

    Raises:
        InputError: 0, a negative number, a float (2.5, or 2.0: a batch is a count) or a bool, which were coerced
            silently before (0 meant "choose", 2.5 meant 2).
    """
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be None (chosen from the memory budget) or an int >= 1, got {value!r}.")
    return int(value)
