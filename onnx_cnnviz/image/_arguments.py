"""Checks of the arguments that several image modules take: channel order, numbers, sizes and lists of images.

Private to :mod:`onnx_cnnviz.image`; each raises :class:`InputError` with the message the public functions show.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def check_order(order, what: str) -> str:
    """A channel order, upper-cased.

    Args:
        order: ``"RGB"`` or ``"BGR"``, any case.
        what: the argument's name, for the error.

    Returns:
        ``"RGB"`` or ``"BGR"``.

    Raises:
        InputError: anything else.
    """
    value = str(order).upper()
    if value not in ("RGB", "BGR"):
        raise InputError(f"{what} must be 'RGB' or 'BGR', not {order!r}.")
    return value


def as_float(value, what: str) -> float:
    """A number argument as a float.

    Args:
        value: the value given.
        what: the argument's name, for the error.

    Returns:
        ``float(value)``.

    Raises:
        InputError: not a number.
    """
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be a number, not {value!r}.") from err


def norm_size(size) -> tuple | None:
    """A size argument as an (H, W) pair: an int means square.

    Args:
        size: None, a positive int, or an (H, W) pair of positive ints.

    Returns:
        ``(H, W)``, or None for None.

    Raises:
        InputError: anything else.

    Example:
        >>> norm_size(224), norm_size((240, 320))
        ((224, 224), (240, 320))
    """
    if size is None:
        return None
    values = (size, size) if np.ndim(size) == 0 else tuple(size)
    if len(values) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                                   for v in values):
        raise InputError(f"size must be a positive int or an (H, W) pair of positive ints, not {size!r}.")
    return (int(values[0]), int(values[1]))


def image_list(images) -> list:
    """Pictures as a list: a list or tuple as it is, an (N, H, W, C) array split, anything else as one picture.

    Args:
        images: one picture, a list or tuple of them, or an (N, H, W, C) array.

    Returns:
        The pictures.

    Raises:
        InputError: an empty list, or a 4-D array whose last axis is not 1, 3 or 4 channels (an (N, C, H, W) model
            input needs no preprocessing).
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("No images given.")
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.shape[-1] not in (1, 3, 4):
            raise InputError(f"A 4-D array of images must be (N, H, W, C) with C in 1, 3, 4, not {images.shape}; "
                             f"(N, C, H, W) arrays are already model inputs and need no preprocessing.")
        return list(images)
    return [images]
