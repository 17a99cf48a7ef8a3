"""Class activation maps: CAM, Grad-CAM and its relatives, Score-CAM, Guided Grad-CAM.

Every method here draws a map from a feature layer ``A`` (N, C, h, w) and, for most of them, the gradient
``G = dS_c / dA`` of the target class score. They differ **only** in how they combine the channels: one small
``(A, G) -> map`` function per method at the top of this module (Grad-CAM's weighting is :func:`_grad_cam_weights`);
each method's entry in :mod:`onnx_cnnviz.methods.registry` says what it needs. One :meth:`Model.run`
returns ``A`` and ``G`` at every requested layer; numpy does the rest. Gradient-free methods (CAM, EigenCAM) ask the
model for the activations only.

Post-processing replicates pytorch-grad-cam 1.5.7 (``BaseCAM.compute_cam_per_layer`` / ``aggregate_multi_layers``)
so that maps agree with it:

1. ``relu``: ``max(map, 0)``;
2. ``normalize``: per-image min-max to [0, 1] (pytorch-grad-cam's ``scale_cam_image`` normalises *before* resizing);
3. ``upsample``: ``cv2.resize(map, (W, H))`` (bilinear, ``INTER_LINEAR``) to the input size;
4. several layers: the per-layer maps are averaged, then (``normalize``) min-max scaled once more.

With ``upsample=False, normalize=False, relu=False`` a method returns its raw map at the layer's resolution.
``targets``: None (each image's top-1 class, chosen inside the same run), an int or class name, a target object
(:mod:`onnx_cnnviz.targets`: a detection, a region, any output element), or one per image. ``layer``:
None (``Model.default_layer``), a layer name, or a list of names (maps averaged after upsampling).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError
from ..graph.head import CamHead
from ..graph.head import cam_head as graph_cam_head
from ..maps import finish_maps, normalize_maps, normalize_signed
from ..model import Model
from ..targets import resolve
from .arguments import batch_size as check_batch_size
from .arguments import flag, warn_single_pixel
from .attribution import auto_batch_size
from .gradients import gradients

__all__ = ["cam", "grad_cam", "grad_cam_pp", "hires_cam", "xgrad_cam", "layer_cam", "eigen_cam", "score_cam",
           "guided_grad_cam", "cam_head"]


# ==================================================================================================================
# The channel weightings: (A, G) -> raw map (N, h, w). A: activations (N, C, h, w); G: dS_c/dA, same shape.
# ==================================================================================================================
def _weighted_sum(weights: np.ndarray, A: np.ndarray) -> np.ndarray:
    """sum_k w_k A^k: (N, C) weights, (N, C, h, w) activations -> (N, h, w)."""
    return (weights[:, :, None, None] * A).sum(axis=1)


def _grad_cam_weights(A, G):
    """Grad-CAM (Selvaraju et al., ICCV 2017, Eq. 1): alpha_k^c = 1/Z sum_ij dS_c/dA^k_ij (spatial mean)."""
    return G.mean(axis=(2, 3))


def _grad_cam_pp_weights(A, G):
    """Grad-CAM++ closed form (Chattopadhyay et al., WACV 2018, arXiv:1710.11063, Eq. 19 with S = exp-score):

    alpha^kc_ij = g^2 / (2 g^2 + sum_ab A^k_ab * g^3 + eps),  g = dS_c/dA^k_ij, alpha = 0 where g == 0;
    w^c_k = sum_ij alpha^kc_ij * relu(g)   (the paper's weighted, ReLU-gated sum of gradients).
    """
    g2 = G ** 2
    g3 = g2 * G
    sum_a = A.sum(axis=(2, 3), keepdims=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
    alpha = np.where(G != 0, alpha, 0)
    return (alpha * np.maximum(G, 0)).sum(axis=(2, 3))


def _xgrad_cam_weights(A, G):
    """XGrad-CAM (Fu et al., BMVC 2020): w_k = sum_ij (A^k_ij / sum_ab A^k_ab) dS_c/dA^k_ij."""
    sum_a = A.sum(axis=(2, 3), keepdims=True)
    return (G * A / (sum_a + 1e-7)).sum(axis=(2, 3))


def _get_2d_projection(A: np.ndarray) -> np.ndarray:
    """EigenCAM (Muhammad & Yeasin, IJCNN 2020): the activations projected on their first principal component.

    Per image: M = (h*w, C) activations centred per channel, M = U S V^T, map = M v_1. The sign of v_1 is what LAPACK
    returns, exactly as pytorch-grad-cam's ``get_2d_projection`` (which runs the same numpy SVD on the same float32
    matrix), so the pictures agree with it.
    """
    A = np.nan_to_num(A.astype(np.float32), nan=0.0)
    out = []
    for a in A:
        flat = a.reshape(a.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        out.append((flat @ vt[0]).reshape(a.shape[1:]))
    return np.asarray(out, dtype=np.float32)


def _grad_cam_map(A, G):
    return _weighted_sum(_grad_cam_weights(A, G), A)


def _grad_cam_pp_map(A, G):
    return _weighted_sum(_grad_cam_pp_weights(A, G), A)


def _xgrad_cam_map(A, G):
    return _weighted_sum(_xgrad_cam_weights(A, G), A)


def _hires_cam_map(A, G):
    """HiResCAM (Draelos & Carin 2020): sum_k dS/dA^k (.) A^k, element-wise instead of a channel weight."""
    return (G * A).sum(axis=1)


def _layer_cam_map(A, G):
    """LayerCAM (Jiang et al. 2021): sum_k ReLU(dS/dA^k) (.) A^k."""
    return (np.maximum(G, 0) * A).sum(axis=1)


def _eigen_cam_map(A, G):
    return _get_2d_projection(A)


# ==================================================================================================================
# The core: one run for activations (and gradients) at the layer(s), then combine, then post-process.
# ==================================================================================================================
def _resolve_targets(m: Model, run, targets, n: int) -> np.ndarray:
    if run.targets is not None:
        return np.asarray(run.targets, dtype=np.int64).reshape(n)
    if targets is not None:
        return resolve(m, targets, n).classes
    return run.scores.argmax(axis=1).astype(np.int64)


def _finish(raw_maps: list, hw: tuple, upsample: bool, normalize: bool, relu: bool) -> np.ndarray:
    """ReLU -> min-max -> resize per layer; mean over layers -> min-max (pytorch-grad-cam's order)."""
    maps = []
    for raw in raw_maps:
        r = np.asarray(raw, dtype=np.float32)
        if relu:
            r = np.maximum(r, 0)
        maps.append(finish_maps(r, hw, upsample, normalize))
    if len({mp.shape for mp in maps}) > 1:
        raise InputError("the layers have different resolutions "
                         f"({', '.join(str(mp.shape[1:]) for mp in maps)}); averaging them needs upsample=True.")
    out = maps[0] if len(maps) == 1 else np.mean(np.stack(maps), axis=0)
    if normalize:  # again after the resize, as pytorch-grad-cam (bilinear values miss the extremes)
        out = normalize_maps(out)
    return out.astype(np.float32, copy=False)


def _per_layer(weighting: Callable) -> Callable:
    """A class-independent (A, G) weighting as the (A, G, targets) combine :func:`_family` calls (the targets already
    shaped G)."""
    return lambda A, G, tgt: weighting(A, G)


def _family(m: Model, x, targets, layer, combine: Callable, uses_gradients: bool, upsample: bool, normalize: bool,
            relu: bool, batch_size, grad_sign: float = 1.0):
    """Maps of one CAM-family method and the (N,) targets used.

    One ``m.run`` exposes the activations of every layer in ``layer`` (and their gradients when ``uses_gradients``);
    ``combine(A, G, targets)`` makes each layer's raw map (G is None without gradients); :func:`_finish` does the
    rest.
    """
    upsample, normalize, relu = flag(upsample, "upsample"), flag(normalize, "normalize"), flag(relu, "relu")
    names = m.layer_names(layer)
    if not upsample and len({m.layer(n).shape[2:] for n in names}) > 1:
        raise InputError(f"the layers {names} have different resolutions; averaging them needs upsample=True.")
    for name in names:  # a 1x1 layer gives a constant map (0 once normalised): say so rather than draw it
        warn_single_pixel("the CAM map", name, m.layer(name).shape[2:])
    run = m.run(x, outputs=names, wrt=names if uses_gradients else (), targets=targets, batch_size=batch_size)
    n = run.scores.shape[0]
    tgt = _resolve_targets(m, run, targets, n)
    raw = []
    for name in names:
        A = run.outputs[name]
        G = None if not uses_gradients else run.grads[name] if grad_sign == 1.0 else grad_sign * run.grads[name]
        raw.append(combine(A, G, tgt))
    return _finish(raw, np.shape(x)[2:], upsample, normalize, relu), tgt


# ==================================================================================================================
# Public functions
# ==================================================================================================================
def grad_cam(m: Model, x, targets=None, layer=None, *, upsample: bool = True, normalize: bool = True,
             relu: bool = True, counterfactual: bool = False, batch_size: int | None = None) -> np.ndarray:
    """Grad-CAM: the feature maps weighted by their spatially averaged gradient.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017:
    ``alpha_k^c = 1/Z sum_ij dS_c/dA^k_ij`` (Eq. 1), ``L^c = ReLU(sum_k alpha_k^c A^k)`` (Eq. 2).

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        targets: None (each image's top-1 class, chosen in the same run), a class index or name, a target object
            (:mod:`onnx_cnnviz.targets`), or one of these per image.
        layer: None (``Model.default_layer``), a layer name, or a list of names (the maps are averaged after
            upsampling).
        upsample: resize each map to the input's (H, W), bilinear; False keeps the layer's resolution.
        normalize: min-max scale each map to [0, 1].
        relu: keep the map's positive part (the paper's ReLU).
        counterfactual: negate the gradients (the paper's "counterfactual explanations"): the regions whose removal
            would raise the class score.
        batch_size: images per onnxruntime run (default: the model's).

    Returns:
        (N, H, W) float32 maps (N, h, w at the layer's resolution without ``upsample``).

    Raises:
        InputError: a bad input or target, or layers of different resolutions with ``upsample=False``.
        UnknownLayerError: a layer that is not in ``Model.layers``.
        NumericalError: the model produced NaN or Inf.

    Example:
        ```python
        maps = cv.grad_cam(model, x, targets=[281, 285])   # (2, 224, 224) in [0, 1]
        ```
    """
    return _family(m, x, targets, layer, _per_layer(_grad_cam_map), True, upsample, normalize, relu, batch_size,
                   grad_sign=-1.0 if counterfactual else 1.0)[0]


def grad_cam_pp(m: Model, x, targets=None, layer=None, *, upsample: bool = True, normalize: bool = True,
                relu: bool = True, batch_size: int | None = None) -> np.ndarray:
    """Grad-CAM++: the positive gradients weighted per pixel, in the closed form pytorch-grad-cam uses.

    Chattopadhyay et al., "Grad-CAM++", WACV 2018 (arXiv:1710.11063): ``g = dS_c/dA``;
    ``alpha_ij^k = g^2 / (2 g^2 + sum_ab A^k_ab g^3)`` (Eq. 19: the exponential-score assumption turns the 2nd and
    3rd derivatives into powers of the first), ``alpha = 0`` where ``g == 0``;
    ``w_k = sum_ij alpha_ij^k ReLU(g_ij^k)``; map ``= ReLU(sum_k w_k A^k)``.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        targets: None (each image's top-1 class, chosen in the same run), a class index or name, a target object
            (:mod:`onnx_cnnviz.targets`), or one of these per image.
        layer: None (``Model.default_layer``), a layer name, or a list of names (the maps are averaged after
            upsampling).
        upsample: resize each map to the input's (H, W), bilinear; False keeps the layer's resolution.
        normalize: min-max scale each map to [0, 1].
        relu: keep the map's positive part (the paper's ReLU).
        batch_size: images per onnxruntime run (default: the model's).

    Returns:
        (N, H, W) float32 maps (N, h, w at the layer's resolution without ``upsample``).

    Raises:
        InputError: a bad input or target, or layers of different resolutions with ``upsample=False``.
        UnknownLayerError: a layer that is not in ``Model.layers``.
        NumericalError: the model produced NaN or Inf.
    """
    return _family(m, x, targets, layer, _per_layer(_grad_cam_pp_map), True, upsample, normalize, relu, batch_size)[0]


def hires_cam(m: Model, x, targets=None, layer=None, *, upsample: bool = True, normalize: bool = True,
              relu: bool = True, batch_size: int | None = None) -> np.ndarray:
    """HiResCAM: the element-wise product of gradient and activation instead of Grad-CAM's averaged gradient.

    Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations", arXiv:2011.08891:
    ``map = ReLU(sum_k dS_c/dA^k (.) A^k)``.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        targets: None (each image's top-1 class, chosen in the same run), a class index or name, a target object
            (:mod:`onnx_cnnviz.targets`), or one of these per image.
        layer: None (``Model.default_layer``), a layer name, or a list of names (the maps are averaged after
            upsampling).
        upsample: resize each map to the input's (H, W), bilinear; False keeps the layer's resolution.
        normalize: min-max scale each map to [0, 1].
        relu: keep the map's positive part (the paper's ReLU).
        batch_size: images per onnxruntime run (default: the model's).

    Returns:
        (N, H, W) float32 maps (N, h, w at the layer's resolution without ``upsample``).

    Raises:
        InputError: a bad input or target, or layers of different resolutions with ``upsample=False``.
        UnknownLayerError: a layer that is not in ``Model.layers``.
        NumericalError: the model produced NaN or Inf.
    """
    return _family(m, x, targets, layer, _per_layer(_hires_cam_map), True, upsample, normalize, relu, batch_size)[0]


def xgrad_cam(m: Model, x, targets=None, layer=None, *, upsample: bool = True, normalize: bool = True,
              relu: bool = True, batch_size: int | None = None) -> np.ndarray:
    """XGrad-CAM: the gradients weighted by the normalised activations.

    Fu et al., "Axiom-based Grad-CAM", BMVC 2020 (arXiv:2008.02312):
    ``w_k = sum_ij (A^k_ij / (sum_ab A^k_ab + eps)) dS_c/dA^k_ij``, map ``= ReLU(sum_k w_k A^k)``.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        targets: None (each image's top-1 class, chosen in the same run), a class index or name, a target object
            (:mod:`onnx_cnnviz.targets`), or one of these per image.
        layer: None (``Model.default_layer``), a layer name, or a list of names (the maps are averaged after
            upsampling).
        upsample: resize each map to the input's (H, W), bilinear; False keeps the layer's resolution.
        normalize: min-max scale each map to [0, 1].
        relu: keep the map's positive part (the paper's ReLU).
        batch_size: images per onnxruntime run (default: the model's).

    Returns:
        (N, H, W) float32 maps (N, h, w at the layer's resolution without ``upsample``).

    Raises:
        InputError: a bad input or target, or layers of different resolutions with ``upsample=False``.
        UnknownLayerError: a layer that is not in ``Model.layers``.
        NumericalError: the model produced NaN or Inf.
    """
    return _family(m, x, targets, layer, _per_layer(_xgrad_cam_map), True, upsample, normalize, relu, batch_size)[0]


def layer_cam(m: Model, x, targets=None, layer=None, *, upsample: bool = True, normalize: bool = True,
              relu: bool = True, batch_size: int | None = None) -> np.ndarray:
    """LayerCAM: the positive gradients times the activations, element-wise; meant for shallow layers too.

    Jiang et al., "LayerCAM", IEEE TIP 2021: ``map = ReLU(sum_k ReLU(dS_c/dA^k) (.) A^k)``; pass a list of layers to
    combine several.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        targets: None (each image's top-1 class, chosen in the same run), a class index or name, a target object
            (:mod:`onnx_cnnviz.targets`), or one of these per image.
        layer: None (``Model.default_layer``), a layer name, or a list of names (the maps are averaged after
            upsampling).
        upsample: resize each map to the input's (H, W), bilinear; False keeps the layer's resolution.
        normalize: min-max scale each map to [0, 1].
        relu: keep the map's positive part (the paper's ReLU).
        batch_size: images per onnxruntime run (default: the model's).

    Returns:
        (N, H, W) float32 maps (N, h, w at the layer's resolution without ``upsample``).

    Raises:
        InputError: a bad input or target, or layers of different resolutions with ``upsample=False``.
        UnknownLayerError: a layer that is not in ``Model.layers``.
        NumericalError: the model produced NaN or Inf.
    """
    return _family(m, x, targets, layer, _per_layer(_layer_cam_map), True, upsample, normalize, relu, batch_size)[0]


def eigen_cam(m: Model, x, targets=None, layer=None, *, upsample: bool = True, normalize: bool = True,
              relu: bool = True, batch_size: int | None = None) -> np.ndarray:
    """EigenCAM: the activations projected on their first principal component; class-agnostic, no gradient.

    Muhammad & Yeasin, "Eigen-CAM", IJCNN 2020 (arXiv:2008.00299): per image the (h*w, C) activations centred per
    channel, ``M = U S V^T``, map ``= M v_1`` (the sign of ``v_1`` is LAPACK's, as in pytorch-grad-cam).

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        targets: None or anything :func:`grad_cam` takes: accepted and ignored (the map does not depend on
            the class).
        layer: None (``Model.default_layer``), a layer name, or a list of names (the maps are averaged after
            upsampling).
        upsample: resize each map to the input's (H, W), bilinear; False keeps the layer's resolution.
        normalize: min-max scale each map to [0, 1].
        relu: keep the map's positive part (the paper's ReLU).
        batch_size: images per onnxruntime run (default: the model's).

    Returns:
        (N, H, W) float32 maps (N, h, w at the layer's resolution without ``upsample``).

    Raises:
        InputError: a bad input or target, or layers of different resolutions with ``upsample=False``.
        UnknownLayerError: a layer that is not in ``Model.layers``.
        NumericalError: the model produced NaN or Inf.
    """
    return _family(m, x, targets, layer, _per_layer(_eigen_cam_map), False, upsample, normalize, relu, batch_size)[0]


# --- Score-CAM ---------------------------------------------------------------------------------------------------
def _bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) interpolation matrix of bilinear resizing with align_corners=True (torch UpsamplingBilinear2d)."""
    mat = np.zeros((out_size, in_size), dtype=np.float64)
    if in_size == 1 or out_size == 1:
        mat[:, 0] = 1.0
        return mat
    src = np.arange(out_size) * (in_size - 1) / (out_size - 1)
    i0 = np.clip(np.floor(src).astype(int), 0, in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = src - i0
    mat[np.arange(out_size), i0] += 1.0 - frac
    mat[np.arange(out_size), i1] += frac
    return mat


def _score_cam_weights(m: Model, x: np.ndarray, A: np.ndarray, tgt: np.ndarray, batch_size: int,
                       progress: Callable[[int, int], None] | None = None, seeds=None) -> np.ndarray:
    """Score-CAM channel weights (Wang et al., CVPR-W 2020), as pytorch-grad-cam's ``ScoreCAM``:

    each channel A^k is upsampled to the input size (bilinear, align_corners=True), min-max scaled to [0, 1]
    (``H^k = (U^k - min) / (max - min + 1e-8)``), the image is masked ``x (.) H^k``, and the target class scores
    ``S_c(x (.) H^k)`` of all channels go through a softmax over k: ``w_k = softmax_k S_c(x (.) H^k)``.

    ``batch_size`` channels are upsampled, masked and scored at a time, so memory does not grow with the channel
    count. ``seeds`` (:class:`onnx_cnnviz.targets.Seeds` of target objects): the score of a masked image is then its
    target's value ``sum(cotangent * T)`` instead of the class score. ``progress(done, total)``: called after each
    batch with the masked images done and ``N * C``.
    """
    H, W = x.shape[2:]
    ry = _bilinear_matrix(H, A.shape[2]).astype(np.float32)
    rx = _bilinear_matrix(W, A.shape[3]).astype(np.float32)
    weights = np.zeros(A.shape[:2], dtype=np.float32)
    total = A.shape[0] * A.shape[1]
    for i in range(A.shape[0]):
        scores = np.empty(A.shape[1], dtype=np.float64)
        for start in range(0, A.shape[1], batch_size):
            stop = min(start + batch_size, A.shape[1])
            up = np.einsum("Hh,chw,Ww->cHW", ry, A[i, start:stop], rx, optimize=True)
            flat = up.reshape(up.shape[0], -1)
            lo, hi = flat.min(axis=1)[:, None, None], flat.max(axis=1)[:, None, None]
            up = (up - lo) / (hi - lo + 1e-8)
            masked = (x[i][None] * up[:, None]).astype(np.float32)
            del up, flat
            if seeds is None:
                scores[start:stop] = m.scores(masked, batch_size=batch_size)[:, tgt[i]]
            else:
                scores[start:stop] = seeds.values(_seeded_values(m, masked, seeds.tensor, batch_size),
                                                  np.full(stop - start, i))
            del masked
            if progress is not None:
                progress(i * A.shape[1] + stop, total)
        e = np.exp(scores - scores.max())
        weights[i] = e / e.sum()
    return weights


def _seeded_values(m: Model, x: np.ndarray, tensor: str, batch_size) -> np.ndarray:
    """(B, size) the seeded tensor of each image, flattened (the scores when the seed is at the score)."""
    if tensor == m.score_name:
        return m.scores(x, batch_size=batch_size)
    return m.run(x, outputs=[tensor], batch_size=batch_size).outputs[tensor].reshape(len(x), -1)


def score_cam(m: Model, x, targets=None, layer=None, *, upsample: bool = True, normalize: bool = True,
              relu: bool = True, batch_size: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Score-CAM: each channel weighted by the class score of the image masked by that channel.

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for CNNs", CVPR-W 2020:
    ``H^k = minmax(up(A^k))`` (bilinear, align_corners), ``w_k = softmax_k S_c(x (.) H^k)``,
    map ``= ReLU(sum_k w_k A^k)``. Gradient-free but costs C extra forward passes per image (C = the layer's
    channels), run ``batch_size`` at a time, so memory does not grow with C.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        targets: None (each image's top-1 class, chosen in the same run), a class index or name, a target object
            (:mod:`onnx_cnnviz.targets`), or one of these per image.
        layer: None (``Model.default_layer``), a layer name, or a list of names (the maps are averaged after
            upsampling).
        upsample: resize each map to the input's (H, W), bilinear; False keeps the layer's resolution.
        normalize: min-max scale each map to [0, 1].
        relu: keep the map's positive part (the paper's ReLU).
        progress: ``progress(done, total)``, called after each batch with the masked images scored so far and
            their total, N * C (summed over the layers when there are several).
        batch_size: masked images per run (default: sized to the model's per-image memory and
            the memory available).

    Returns:
        (N, H, W) float32 maps (N, h, w at the layer's resolution without ``upsample``).

    Raises:
        InputError: a bad input or target, or layers of different resolutions with ``upsample=False``.
        UnknownLayerError: a layer that is not in ``Model.layers``.
        NumericalError: the model produced NaN or Inf.
    """
    x = np.asarray(x)
    seeds = resolve(m, targets, len(x)) if targets is not None else None
    seeds = seeds if seeds is not None and seeds.objects else None
    offset = [0]
    total = [0]
    if progress is not None:
        total[0] = x.shape[0] * sum(int(m.layer(name).shape[1]) for name in m.layer_names(layer))

    def combine(A, G, tgt):
        step = check_batch_size(batch_size) or auto_batch_size(m, x.shape[2:], A.shape[1], backward=False)
        report = None
        if progress is not None:
            done_before = offset[0]
            report = lambda done, _: progress(done_before + done, total[0])  # noqa: E731
            offset[0] += A.shape[0] * A.shape[1]
        return _weighted_sum(_score_cam_weights(m, x.astype(np.float32), A, tgt, step, report, seeds), A)

    return _family(m, x, targets, layer, combine, False, upsample, normalize, relu, batch_size)[0]


# --- CAM (Zhou et al.) -------------------------------------------------------------------------------------------
def cam_head(m: Model) -> CamHead:
    """The linear classifier head CAM reads its class weights from.

    Args:
        m: the loaded model.

    Returns:
        The head found by :func:`onnx_cnnviz.graph.head.cam_head` on the model's graph: the feature layer, the
        (classes, C) weights and the form of the head.

    Raises:
        ModelStructureError: the model has no global-average-pooling -> linear head (the accepted heads are
            described at :func:`onnx_cnnviz.graph.head.cam_head`).
    """
    spec = m.spec()
    return graph_cam_head(spec.model, spec.info, m.score_name, m.num_classes)


def cam(m: Model, x, targets=None, layer=None, *, upsample: bool = True, normalize: bool = True, relu: bool = True,
        batch_size: int | None = None) -> np.ndarray:
    """CAM: the feature maps weighted by the classifier's weights of the class; one forward pass, no gradient.

    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, Sec. 2:
    ``M_c(x, y) = sum_k w^c_k f_k(x, y)``, with ``w^c`` the classifier weights of class ``c`` after global average
    pooling of the feature maps ``f_k`` (the accepted heads: :func:`onnx_cnnviz.graph.head.cam_head`).

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects (``Model.check_input``).
        targets: None (each image's top-1 class, chosen in the same run), a class index or name, or one per
            image (class targets only: CAM reads class weights).
        layer: None: the feature map feeding the head, the only layer CAM is defined at (any other is an
            error: use :func:`grad_cam`).
        upsample: resize each map to the input's (H, W), bilinear; False keeps the layer's resolution.
        normalize: min-max scale each map to [0, 1].
        relu: keep the map's positive part (the paper's ReLU).
        batch_size: images per onnxruntime run (default: the model's).

    Returns:
        (N, H, W) float32 maps (N, h, w at the layer's resolution without ``upsample``).

    Raises:
        InputError: a bad input or target, or layers of different resolutions with ``upsample=False``.
        ModelStructureError: the model has no head CAM can read.
        UnknownLayerError: a layer that is not in ``Model.layers``.
        NumericalError: the model produced NaN or Inf.
    """
    head = cam_head(m)
    if targets is not None:
        x = m.check_input(x)
        m.targets_for(targets, len(x))  # CAM reads class weights: class targets only
    if layer is not None:
        names = m.layer_names(layer)
        wrong = [n for n in names if n not in head.aliases]
        if wrong:
            raise InputError(f"CAM is defined only at the feature map feeding the classifier head ({head.form}): "
                             f"'{head.layer}', not '{wrong[0]}'. For other layers use grad_cam (equal to CAM at "
                             f"'{head.layer}' on this network).")
    weights = head.weights

    def combine(A, G, tgt):
        return _weighted_sum(weights[tgt], A)

    return _family(m, x, targets, head.layer, combine, False, upsample, normalize, relu, batch_size)[0]


# --- Guided Grad-CAM and top-k ------------------------------------------------------------------------------------
def guided_grad_cam(m: Model, x, targets=None, layer=None, *, upsample: bool = True, normalize: bool = False,
                    batch_size: int | None = None) -> np.ndarray:
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map.

    Selvaraju et al. 2017, Sec. 3.1, with guided backpropagation of Springenberg et al., "Striving for Simplicity",
    ICLR-W 2015: ``G_guided(x) (.) L^c_Grad-CAM``.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: (N, C, H, W) input batch, preprocessed as the model expects.
        targets: as :func:`grad_cam` takes them.
        layer: Grad-CAM's layer, as :func:`grad_cam` takes it.
        upsample: accepted for a uniform signature; the result is at the input's size either way.
        normalize: divide each image by its largest absolute value (to [-1, 1]).
        batch_size: images per onnxruntime run (default: the model's).

    Returns:
        (N, C, H, W) float32, signed.

    Raises:
        InputError: a bad input or target.
        UnknownLayerError: a layer that is not in ``Model.layers``.
    """
    maps, tgt = _family(m, x, targets, layer, _per_layer(_grad_cam_map), True, True, True, True, batch_size)
    guided = gradients(m, x, tgt if targets is None else targets, rule="guided", batch_size=batch_size)
    out = (guided * maps[:, None]).astype(np.float32)
    return normalize_signed(out) if normalize else out
