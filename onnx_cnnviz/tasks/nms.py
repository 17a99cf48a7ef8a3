"""Non-maximum suppression in numpy, for detector heads that leave it out of the graph (ultralytics exports).

Greedy NMS (Neubeck & Van Gool, ICPR 2006, as torchvision's ``nms``): take the highest-scoring box, drop every
remaining box whose IoU with it exceeds ``iou``, repeat. Class-aware by default, as ultralytics'
``non_max_suppression`` (boxes of different classes never suppress each other).
"""
from __future__ import annotations

import numpy as np

__all__ = ["box_iou", "nms"]


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box with (M, 4) boxes, all (x1, y1, x2, y2): area(A n B) / area(A u B)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.45, classes: np.ndarray | None = None,
        max_det: int = 300) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, best score first.

    Args:
        boxes: (M, 4) float boxes (x1, y1, x2, y2).
        scores: (M,) scores.
        iou: boxes overlapping a kept box by more than this are dropped.
        classes: (M,) class of each box: only boxes of one class suppress each other (None: class-agnostic).
        max_det: at most this many indices.

    Returns:
        (D,) int64 indices into ``boxes``.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    if classes is not None:  # ultralytics' trick: boxes of different classes shifted apart never overlap
        boxes = boxes + (np.asarray(classes, dtype=np.float64) * (boxes.max(initial=0) + 1))[:, None]
    keep = []
    while order.size and len(keep) < max_det:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou]
    return np.asarray(keep, dtype=np.int64)
