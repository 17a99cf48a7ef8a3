"""Checks of the arguments that several image modules take: channel order, numbers, sizes and lists of images.

Private to :mod:`onnx_cnnviz.image`; each raises :class:`InputError` with the message the public functions show.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def check_order(order, what: str) -> str:
    value = str(order).upper()
    if value not in ("RGB", "BGR"):
        raise InputError(f"{what} must be 'RGB' or 'BGR', not {order!r}.")
    return value



def as_float(value, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be a number, not {value!r}.") from err



def norm_size(size) -> tuple | None:
    if size is None:
        return None
    values = (size, size) if np.ndim(size) == 0 else tuple(size)
    if len(values) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                                   for v in values):
        raise InputError(f"size must be a positive int or an (H, W) pair of positive ints, not {size!r}.")
    return (int(values[0]), int(values[1]))


def image_list(images) -> list:
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
