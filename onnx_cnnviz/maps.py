"""Post-processing shared by every map: min-max scaling and bilinear upsampling.

Every map function of :mod:`onnx_cnnviz.methods` finishes with these two steps, in pytorch-grad-cam's order
(``scale_cam_image``: normalise, then resize), so users moving over get the same pictures; the pictures in
:mod:`onnx_cnnviz.image` and the report scale with :func:`minmax` too.
"""
from __future__ import annotations

import numpy as np


def minmax(a) -> np.ndarray:
    """Min-max scaling over the whole array: ``(a - min(a)) / (max(a) - min(a))``.

    Args:
        a: an array of any shape (anything ``numpy.asarray`` takes).

    Returns:
        float32 values in [0, 1], the shape of ``a``; a constant array (or one whose span is not finite) becomes all
        zeros rather than NaN.

    Example:
        >>> minmax([2.0, 4.0, 6.0]).tolist()
        [0.0, 0.5, 1.0]
    """
    a = np.asarray(a, dtype=np.float32)
    if a.size == 0:
        return a
    lo = a.min()
    span = float(a.max() - lo)
    if span > 0 and np.isfinite(span):
        return ((a - lo) / np.float32(span)).astype(np.float32)
    return np.zeros_like(a)


def normalize_maps(maps) -> np.ndarray:
    """Per-image min-max scaling, ``(m - min(m)) / (max(m) - min(m))`` for each image ``m`` of the stack.

    Args:
        maps: an array whose axis 0 indexes images: (N, H, W), (N, C, H, W) or any (N, ...).

    Returns:
        float32 in [0, 1], the shape of ``maps``; a constant image becomes all zeros.
    """
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - lo
    out = flat - lo
    out /= np.where(span > 0, span, np.float32(1.0))
    return out.reshape(maps.shape)


def upsample_maps(maps, hw) -> np.ndarray:
    """Bilinear resize of each map of a stack, as pytorch-grad-cam's ``scale_cam_image`` does (``cv2.resize``,
    ``INTER_LINEAR``, half-pixel centres).

    Args:
        maps: (N, h, w) maps.
        hw: the target size (H, W).

    Returns:
        (N, H, W) float32; maps already at ``hw`` are returned as they are.
    """
    import cv2

    maps = np.asarray(maps, dtype=np.float32)
    H, W = int(hw[0]), int(hw[1])
    if maps.shape[-2:] == (H, W):
        return maps
    out = np.empty((len(maps), H, W), np.float32)
    for m_, o in zip(maps, out):
        cv2.resize(np.ascontiguousarray(m_), (W, H), dst=o, interpolation=cv2.INTER_LINEAR)
    return out


def finish_maps(maps, hw, upsample: bool = True, normalize: bool = True) -> np.ndarray:
    """The common tail of every map function: per-image min-max, then bilinear resize, in pytorch-grad-cam's order.

    Args:
        maps: (N, h, w) maps.
        hw: the input's size (H, W).
        upsample: resize to ``hw`` (:func:`upsample_maps`); False keeps the layer's resolution.
        normalize: scale each map to [0, 1] (:func:`normalize_maps`); False keeps raw values.

    Returns:
        (N, H, W) float32 (or (N, h, w) without ``upsample``).
    """
    out = np.asarray(maps, dtype=np.float32)
    if normalize:
        out = normalize_maps(out)
    if upsample:
        out = upsample_maps(out, hw)
    return out


def normalize_signed(maps) -> np.ndarray:
    """Per-image scaling of a signed map or attribution to [-1, 1]: ``m / max|m|``.

    Zero stays zero, so "no effect" keeps its meaning (min-max would move it).

    Args:
        maps: an array whose axis 0 indexes images.

    Returns:
        float32 in [-1, 1], the shape of ``maps``; an all-zero image stays zero.
    """
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(maps.shape[0], -1)
    top = np.abs(flat).max(axis=1, keepdims=True)
    out = flat / np.where(top > 0, top, 1.0)
    return out.reshape(maps.shape).astype(np.float32)


__all__ = ["minmax", "normalize_maps", "normalize_signed", "upsample_maps", "finish_maps"]
