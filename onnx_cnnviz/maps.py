"""Post-processing shared by every map: min-max scaling and bilinear upsampling.

Every map function of :mod:`onnx_cnnviz.methods` finishes with these two steps, in pytorch-grad-cam's order
(``scale_cam_image``: normalise, then resize), so users moving over get the same pictures; the pictures in
:mod:`onnx_cnnviz.image` and the report scale with :func:`minmax` too.
"""
from __future__ import annotations

import numpy as np


def minmax(a) -> np.ndarray:
    """``(a - min(a)) / (max(a) - min(a))`` over the whole array, float32 in [0, 1]; a constant (or non-finite
    span) array becomes all zeros rather than NaN."""
    a = np.asarray(a, dtype=np.float32)
    if a.size == 0:
        return a
    lo = a.min()
    span = float(a.max() - lo)
    if span > 0 and np.isfinite(span):
        return ((a - lo) / np.float32(span)).astype(np.float32)
    return np.zeros_like(a)


def normalize_maps(maps) -> np.ndarray:
    """Per-image min-max scaling to [0, 1] (axis 0 indexes images; a constant map becomes all zeros)."""
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - lo
    out = (flat - lo) / np.where(span > 0, span, 1.0)
    return out.reshape(maps.shape).astype(np.float32)


def upsample_maps(maps, hw) -> np.ndarray:
    """Bilinear resize of each (h, w) map of an (N, h, w) stack to ``hw`` = (H, W), as pytorch-grad-cam's
    ``scale_cam_image`` does (``cv2.resize``, ``INTER_LINEAR``). Maps already at ``hw`` are returned as they are."""
    import cv2

    maps = np.asarray(maps, dtype=np.float32)
    H, W = int(hw[0]), int(hw[1])
    if maps.shape[-2:] == (H, W):
        return maps
    return np.stack([cv2.resize(np.ascontiguousarray(m_), (W, H), interpolation=cv2.INTER_LINEAR)
                     for m_ in maps]).astype(np.float32)


def finish_maps(maps, hw, upsample: bool = True, normalize: bool = True) -> np.ndarray:
    """The common tail of every (N, h, w) map: per-image min-max (``normalize``), then bilinear resize to ``hw``
    (``upsample``), in pytorch-grad-cam's order."""
    out = np.asarray(maps, dtype=np.float32)
    if normalize:
        out = normalize_maps(out)
    if upsample:
        out = upsample_maps(out, hw)
    return out




def normalize_signed(maps) -> np.ndarray:
    """Per-image scaling of a signed map (or attribution) to [-1, 1] by its largest absolute value: zero stays zero,
    so "no effect" keeps its meaning (min-max would move it). An all-zero image stays zero."""
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(maps.shape[0], -1)
    top = np.abs(flat).max(axis=1, keepdims=True)
    out = flat / np.where(top > 0, top, 1.0)
    return out.reshape(maps.shape).astype(np.float32)


__all__ = ["minmax", "normalize_maps", "normalize_signed", "upsample_maps", "finish_maps"]
