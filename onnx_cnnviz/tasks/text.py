"""Text detectors of the DBNet family (Liao et al., "Real-time Scene Text Detection with Differentiable
Binarization", AAAI 2020; PaddleOCR's ``ch_PP-OCRv4_det``): a segmenter whose one output is the text probability
map ``P`` (N, 1, H, W), at the input's resolution.

A text region is a connected component of ``P > thresh`` (DBNet's binarisation, PaddleOCR's ``thresh`` 0.3), kept
when its mean probability reaches ``box_thresh`` (PaddleOCR's ``box_thresh`` 0.5, its "fast" score over the region).
What explains it is the probability summed over its mask, ``L = sum_{ij in mask} P_ij``: a
:class:`onnx_cnnviz.targets.Region` of channel 0 (:class:`TextRegion` adds the image, box and score), so every method
explains it, and all the regions of a batch in one run (:func:`onnx_cnnviz.tasks.explain`).

DBNet runs at any size that is a multiple of 32 (its five stride-2 stages and the FPN's upsampling must line up):
load it with ``task="segmenter", input_size=(H, W)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InputError
from ..targets import Region

__all__ = ["TextRegion", "text_regions", "check_text_size"]


@dataclass(frozen=True, eq=False)
class TextRegion(Region):
    """One text region: :class:`~onnx_cnnviz.targets.Region` (channel ``cls`` of the probability map summed over
    ``mask``) of image ``image``, with its ``box`` (x1, y1, x2, y2, exclusive ends, pixels of the map) and ``score``
    (its mean probability)."""
    image: int = 0
    box: tuple = (0, 0, 0, 0)
    score: float = 0.0


def check_text_size(hw) -> None:
    """:class:`InputError` unless both sides of ``hw`` are positive multiples of 32 (DBNet's input)."""
    if len(hw) != 2 or any(int(v) <= 0 or int(v) % 32 for v in hw):
        raise InputError(f"a DBNet text detector takes images whose sides are multiples of 32, got {tuple(hw)}; resize "
                         "(or pad) the image to one, as PaddleOCR's DetResizeForTest does.")


def text_regions(m, x, thresh: float = 0.3, box_thresh: float = 0.5, min_area: int = 9,
                 batch_size: int | None = None) -> list[list[TextRegion]]:
    """The text regions of each image: components of the probability map above ``thresh`` (8-connected), mean
    probability at least ``box_thresh``, at least ``min_area`` pixels, largest mean first.

    Args:
        m: a DBNet loaded with ``task="segmenter"`` (its head output (N, 1, H, W) probabilities).
        x: (N, C, H, W) images, preprocessed for the model (PaddleOCR: ``(pixels / 255 - 0.5) / 0.5``), sides
            multiples of 32.
        thresh: the binarisation threshold.
        box_thresh: a region's least mean probability.
        min_area: a region's least size in pixels of the map.
        batch_size: images per run.

    Returns:
        One list of :class:`TextRegion` per image (empty where no region passes).

    Raises:
        InputError: not a segmenter with a one-channel map, thresholds out of [0, 1], or a side not a multiple of 32.
    """
    if m.task != "segmenter":
        raise InputError(f"text_regions needs a text detector loaded with task='segmenter' (this one is a {m.task}).")
    if not 0.0 <= float(thresh) <= 1.0 or not 0.0 <= float(box_thresh) <= 1.0:
        raise InputError(f"thresh and box_thresh are in [0, 1], got {thresh!r}, {box_thresh!r}.")
    x = np.asarray(x)
    check_text_size(x.shape[2:] if x.ndim == 4 else ())
    shape = m.tensor_shape(m.score_name)
    if len(shape) != 4 or shape[1] != 1:
        raise InputError(f"a text detector's head output is one probability map (N, 1, H, W); "
                         f"'{m.score_name}' has shape {shape}.")
    maps = m.scores(x, batch_size=batch_size)
    h, w = x.shape[2:]
    if maps.shape[1] != h * w:
        raise InputError(f"the probability map '{m.score_name}' is not at the input's resolution {h}x{w} "
                         f"({maps.shape[1]} values per image); text_regions reads DBNet maps, which are.")
    found = []
    for i, flat in enumerate(maps):
        prob = flat.reshape(h, w)
        count, labels, stats, _ = cv2.connectedComponentsWithStats((prob > thresh).astype(np.uint8), connectivity=8)
        regions = []
        for k in range(1, count):
            mask = labels == k
            if int(stats[k, cv2.CC_STAT_AREA]) < min_area:
                continue
            score = float(prob[mask].mean())
            if score < box_thresh:
                continue
            x1, y1 = int(stats[k, cv2.CC_STAT_LEFT]), int(stats[k, cv2.CC_STAT_TOP])
            box = (x1, y1, x1 + int(stats[k, cv2.CC_STAT_WIDTH]), y1 + int(stats[k, cv2.CC_STAT_HEIGHT]))
            regions.append(TextRegion(cls=0, mask=mask, output=m.score_name, image=i, box=box, score=score))
        found.append(sorted(regions, key=lambda r: -r.score))
    return found
