"""Several objects on clutter with known boxes: the generated detection dataset behind ``models/shapes_detector.onnx``.

    from shapes_detection import make_dataset, CLASSES     # with models/ on sys.path
    images, labels, boxes = make_dataset(500, seed=1)      # labels[i]: (K,), boxes[i]: (K, 4)

The pictures of :mod:`shapes_dataset` (64x64 RGB clutter, objects of :data:`CLASSES` 14-36 px across), with one to
:data:`MAX_OBJECTS` objects per image instead of one: each object is drawn by ``shapes_dataset.draw_object`` on a copy
of the image and kept only when its box does not touch the boxes already there (a gap of :data:`GAP` pixels), up to
:data:`TRIES` tries per object, so boxes never overlap and a smaller number of objects than asked is possible (never
zero). Thin clutter lines are drawn over the objects afterwards, as in the classification set. Boxes are the tight
half-open boxes ``(x0, y0, x1, y1)`` of each object's own pixels.

Image ``i`` of ``make_dataset(n, seed)`` depends only on ``(seed, i)``: datasets are reproducible and prefixes of
each other. The training script uses seeds 0.. and the benchmark and tests use :data:`TEST_SEED`, never trained on.
"""
from __future__ import annotations

import numpy as np

import shapes_dataset as sd

SIZE = sd.SIZE
CLASSES = sd.CLASSES
MAX_OBJECTS = 3
TRIES = 8
GAP = 1
TEST_SEED = sd.TEST_SEED + 7  # held out (the training script refuses it); differs from the classifier's test seed


def _apart(box: tuple, boxes: list) -> bool:
    """Whether ``box`` keeps :data:`GAP` pixels from every box of ``boxes``."""
    return all(box[2] + GAP <= b[0] or b[2] + GAP <= box[0] or box[3] + GAP <= b[1] or b[3] + GAP <= box[1]
               for b in boxes)


def make_image(seed: int, index: int) -> tuple:
    """Image ``index`` of the dataset ``seed``: ``(uint8 (64, 64, 3) RGB, labels int64 (K,), boxes int64 (K, 4))``."""
    rng = np.random.default_rng([int(seed), int(index), 17])
    wanted = int(rng.integers(1, MAX_OBJECTS + 1))
    img = sd._background(rng)
    labels, boxes = [], []
    for _ in range(wanted):
        label = int(rng.integers(len(CLASSES)))
        for _ in range(TRIES):
            canvas = img.copy()
            box = sd.draw_object(canvas, CLASSES[label], rng)
            if _apart(box, boxes):
                img = canvas
                labels.append(label)
                boxes.append(box)
                break
    for _ in range(rng.integers(0, 3)):  # thin clutter over the objects
        p0, p1 = rng.integers(-10, SIZE + 10, size=(2, 2))
        sd.cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), sd._colour(rng), 1, sd.cv2.LINE_AA)
    return img, np.asarray(labels, np.int64), np.asarray(boxes, np.int64).reshape(-1, 4)


def make_dataset(n: int, seed: int) -> tuple:
    """``n`` images of the dataset ``seed``: ``images`` uint8 (N, 64, 64, 3) RGB, and per image its ``labels``
    (a list of int64 (K,)) and ``boxes`` (a list of int64 (K, 4) half-open ``(x0, y0, x1, y1)``)."""
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    labels, boxes = [], []
    for i in range(n):
        images[i], lab, box = make_image(seed, i)
        labels.append(lab)
        boxes.append(box)
    return images, labels, boxes
