"""D-RISE: black-box saliency of one detection (Petsiuk et al., "Black-box Explanation of Object Detectors via
Saliency Maps", CVPR 2021).

A detection is the vector ``d = (L, O, P)``: its box ``L``, objectness ``O`` (1 for heads without one) and class
score vector ``P``. The image is masked by N random masks ``M_i``; the detector's detections on each masked image
``D_i`` are compared with the target by the similarity

    s(d, d') = IoU(L, L') * O O' * (P . P') / (|P| |P'|)        w_i = max_{d' in D_i} s(d, d')   (0 if D_i is empty)

and the saliency is the masks weighted by it, ``S = sum_i w_i M_i``; as Microsoft's ``vision-explanation-methods``
(its default ``normalize``), the masks' mean weight is subtracted, ``S = sum_i (w_i - mean_j w_j) M_i``, then ``S``
is min-max scaled per detection. The masks (:func:`drise_masks`, the paper's and Microsoft's): a random binary grid
(each cell kept with probability ``p``), upsampled nearest to the image size plus one cell, randomly cropped.

Every detection of every image is scored from the same masked runs: the masked copies of an image run in batches
through the model (onnxruntime), and all its detections' weights are read from each masked copy's detections. The
masks are drawn from ``seed`` before any batching, so a result does not depend on ``batch_size``.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .detection import Detection
from .nms import nms

__all__ = ["drise", "drise_masks", "similarity"]


def _mask_plan(n: int, hw: tuple, grid: tuple, p: float, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The random draws behind ``n`` masks: (n, gh, gw) bool grids, (n, 2) crop offsets, and the padding (one cell,
    ``max(H / gh, W / gw)`` pixels, Microsoft's default)."""
    rng = np.random.default_rng(seed)
    grids = rng.random((n,) + tuple(grid)) < p
    pad = int(max(hw[0] / grid[0], hw[1] / grid[1]))
    offsets = rng.integers(0, pad + 1, size=(n, 2))
    return grids, offsets, pad


def _render(grids: np.ndarray, offsets: np.ndarray, hw: tuple, pad: int) -> np.ndarray:
    """(n, H, W) float32 masks: each grid upsampled nearest to (H + pad, W + pad) (source cell ``floor(i * g / S)``,
    as torchvision's nearest Resize) and cropped at its offset."""
    h, w = hw
    rows = np.arange(h + pad) * grids.shape[1] // (h + pad)
    cols = np.arange(w + pad) * grids.shape[2] // (w + pad)
    big = grids[:, rows][:, :, cols]
    out = np.empty((len(grids), h, w), np.float32)
    for k, (oy, ox) in enumerate(offsets):
        out[k] = big[k, oy:oy + h, ox:ox + w]
    return out


def drise_masks(n: int, hw: tuple, grid: tuple = (16, 16), p: float = 0.5, seed: int = 0) -> np.ndarray:
    """``n`` D-RISE masks of size ``hw``, (n, H, W) float32 of 0 and 1 (see the module).

    Args:
        n: how many masks.
        hw: (H, W) of the image.
        grid: the random grid's (rows, columns).
        p: the probability a cell is kept (1).
        seed: the random seed.

    Returns:
        The masks.

    Raises:
        InputError: a count, size, grid or probability out of range.
    """
    _check_mask_args(n, hw, grid, p)
    grids, offsets, pad = _mask_plan(int(n), tuple(hw), tuple(grid), float(p), seed)
    return _render(grids, offsets, tuple(int(v) for v in hw), pad)


def _check_mask_args(n, hw, grid, p) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"the number of masks must be a positive int, got {n!r}.")
    if len(tuple(grid)) != 2 or any(int(g) < 1 for g in grid) or any(int(g) > int(s) for g, s in zip(grid, hw)):
        raise InputError(f"grid must be two positive ints no larger than the image {tuple(hw)}, got {grid!r}.")
    if not 0.0 < float(p) <= 1.0:
        raise InputError(f"p (the probability a mask cell is kept) is in (0, 1], got {p!r}.")


def similarity(boxes_a, obj_a, cls_a, boxes_b, obj_b, cls_b) -> np.ndarray:
    """D-RISE's similarity of every detection of set a with every one of set b, (Da, Db):
    ``IoU x objectness product x cosine of the class vectors`` (boxes x1, y1, x2, y2)."""
    a = np.asarray(boxes_a, np.float64)[:, None]
    b = np.asarray(boxes_b, np.float64)[None]
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
             * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None))
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iou = inter / np.maximum(area_a + area_b - inter, 1e-12)
    pa, pb = np.asarray(cls_a, np.float64), np.asarray(cls_b, np.float64)
    cosine = (pa @ pb.T) / np.maximum(np.linalg.norm(pa, axis=1)[:, None] * np.linalg.norm(pb, axis=1)[None], 1e-12)
    return iou * np.outer(np.asarray(obj_a, np.float64), np.asarray(obj_b, np.float64)) * cosine


def drise(m, x, detections, masks=None, n_masks: int = 1000, grid: tuple = (16, 16), p: float = 0.5, seed: int = 0,
          conf: float = 0.25, iou: float = 0.45, max_det: int = 300, baseline: float = 0.0, center: bool = True,
          normalize: bool = True, batch_size: int | None = None) -> np.ndarray:
    """D-RISE saliency of each detection (see the module), all detections of an image from one set of masked runs.

    Args:
        m: a model loaded with ``task="detector"`` whose decoder gives class vectors (``Decoder.vectors``).
        x: (N, C, H, W) the images the detections were found in (preprocessed for the model).
        detections: :class:`Detection` objects (a flat list, or :func:`onnx_cnnviz.tasks.detect`'s lists).
        masks: (n, H, W) masks to use (None: ``n_masks`` drawn by :func:`drise_masks` from ``seed``).
        n_masks: how many masks to draw.
        grid: the masks' grid.
        p: the probability a mask cell is kept.
        seed: the masks' random seed.
        conf: the detection threshold on the masked images.
        iou: their NMS threshold.
        max_det: detections kept per masked image.
        baseline: the value masked pixels take (in the model's input space; 0: Microsoft's ``img * mask``).
        center: subtract the mean weight (Microsoft's ``normalize``); False: the paper's plain weighted sum.
        normalize: min-max scale each map to [0, 1].
        batch_size: masked images per run.

    Returns:
        (D, H, W) float32, one map per detection, in the order given.

    Raises:
        InputError: no detections, a detection of another image, masks of the wrong size, or the model is no
            detector.
    """
    if getattr(m, "decoder", None) is None:
        raise InputError(f"D-RISE explains a detector's detections: load the model with task='detector' (this one is "
                         f"a {m.task}).")
    flat = [d for item in detections for d in (item if isinstance(item, (list, tuple)) else [item])]
    if not flat:
        raise InputError("there is no detection to explain: nothing scored above the detection threshold (conf); "
                         "lower it (detect(..., conf=...)) or check the preprocessing.")
    if not all(isinstance(d, Detection) for d in flat):
        raise InputError("D-RISE takes Detection objects (from onnx_cnnviz.tasks.detect).")
    x = m.check_input(x)
    hw = tuple(x.shape[2:])
    if max(d.image for d in flat) >= len(x):
        raise InputError(f"a detection belongs to image {max(d.image for d in flat)}, but x holds {len(x)} images.")
    if masks is not None:
        masks = np.asarray(masks, dtype=np.float32)
        if masks.ndim != 3 or masks.shape[1:] != hw or not len(masks) or not np.isfinite(masks).all():
            raise InputError(f"masks must be (n, {hw[0]}, {hw[1]}) finite values like the images, got {masks.shape}.")
        n = len(masks)
    else:
        _check_mask_args(n_masks, hw, grid, p)
        n = int(n_masks)
        plan = _mask_plan(n, hw, tuple(grid), float(p), seed)
    step = int(batch_size or m.batch_size)
    heads = m.scores(x[sorted({d.image for d in flat})], batch_size=batch_size)
    index = {img: k for k, img in enumerate(sorted({d.image for d in flat}))}
    weights = np.zeros((len(flat), n), np.float64)
    maps = np.zeros((len(flat), hw[0] * hw[1]), np.float64)
    mask_sum = np.zeros(hw[0] * hw[1], np.float64)
    for first, img in enumerate(index):
        rows = [k for k, d in enumerate(flat) if d.image == img]
        obj, cls = m.decoder.vectors(heads[index[img]], np.array([flat[k].element for k in rows], np.int64))
        boxes = np.array([flat[k].box for k in rows], np.float64)
        for start in range(0, n, step):
            # Each chunk of masks is rendered once: its masked runs give the weights, and the same masks are
            # accumulated at once (S = sum_i w_i M_i), so no mask is rendered twice nor all held at once.
            chunk = masks[start:start + step] if masks is not None else _render(
                plan[0][start:start + step], plan[1][start:start + step], hw, plan[2])
            masked = x[img][None] * chunk[:, None] + baseline * (1.0 - chunk[:, None])
            for j, head in enumerate(m.scores(masked, batch_size=batch_size)):
                cand = m.decoder.candidates(head)
                ok = np.flatnonzero(cand.scores >= conf)
                if not ok.size:
                    continue  # no detection on this masked image: weight 0
                kept = ok[nms(cand.boxes[ok], cand.scores[ok], iou, cand.classes[ok], max_det)]
                obj_b, cls_b = m.decoder.vectors(head, cand.elements[kept])
                weights[rows, start + j] = similarity(boxes, obj, cls, cand.boxes[kept], obj_b, cls_b).max(axis=1)
            # float64: the centred maps are small differences of large sums, and a result must not depend on
            # batch_size (float32 sums of chunks of 4 and of 12 masks differed by 1e-6 after min-max scaling).
            flat_chunk = chunk.reshape(len(chunk), -1).astype(np.float64)
            maps[rows] += weights[rows, start:start + len(chunk)] @ flat_chunk
            if first == 0:
                mask_sum += flat_chunk.sum(axis=0)
    if center:
        maps -= weights.mean(axis=1, keepdims=True) * mask_sum[None]
    if normalize:
        maps -= maps.min(axis=1, keepdims=True)
        top = maps.max(axis=1, keepdims=True)
        maps = np.divide(maps, top, out=np.zeros_like(maps), where=top > 0)
    return maps.reshape(len(flat), *hw).astype(np.float32)
