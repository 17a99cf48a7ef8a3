"""Objects on clutter with known boxes: the generated dataset behind ``models/gap_cnn.onnx``.

    from shapes_dataset import make_dataset, CLASSES       # with models/ on sys.path
    images, labels, boxes = make_dataset(500, seed=1)

Each image is 64x64 RGB: a cluttered background (a smooth colour field, random lines and arcs, small blobs and
polygons, all smaller than the objects, pixel noise) with ONE object of one of :data:`CLASSES`, 14-36 px across
(rotated squares a little less: their boxes are 12-39 px), at a random position, in a colour that stands out from the
background under it. Circles and rings are drawn upright, squares and crosses within +-22.5 degrees, triangles and stars
at any angle. A couple of thin clutter lines may cross the object. The ground-truth box
is the tight half-open box ``(x0, y0, x1, y1)`` of the object's own pixels (``image[y0:y1, x0:x1]``), the convention of
:mod:`onnx_cnnviz.methods.localise`.

Image ``i`` of ``make_dataset(n, seed)`` depends only on ``(seed, i)`` (its own ``numpy`` generator), so a dataset is
reproducible and ``make_dataset(n, seed)[k]`` is a prefix of ``make_dataset(m, seed)[k]`` for n <= m. The training
script uses seeds 0.. and the benchmark and tests use :data:`TEST_SEED`, which training never uses.
"""
from __future__ import annotations

import cv2
import numpy as np

SIZE = 64
CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")
MIN_OBJECT, MAX_OBJECT = 14, 36
TEST_SEED = 1_000_003  # held out: the training script never generates this seed
SHIFT = 4  # cv2 fixed-point bits for sub-pixel polygon vertices
_ONE = 1 << SHIFT


def _poly(points: np.ndarray) -> np.ndarray:
    return np.round(points * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _shape_polygons(kind: str, size: float, angle: float) -> list:
    """Polygons (centred on the origin, in pixels) whose union is the object; circles/rings are handled apart."""
    r = size / 2.0
    if kind == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * (r / np.sqrt(2) if angle else r)
        return [_rotate(pts, angle)]
    if kind == "triangle":
        t = np.pi / 2 + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        return [_rotate(np.stack([np.cos(t), -np.sin(t)], 1) * r, angle)]
    if kind == "cross":
        w = max(2.0, size / 6.0)
        bar = np.array([[-r, -w], [r, -w], [r, w], [-r, w]], float)
        return [_rotate(bar, angle), _rotate(bar[:, ::-1].copy(), angle)]
    if kind == "star":
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, r, r * 0.42)
        return [_rotate(np.stack([np.cos(t) * radius, -np.sin(t) * radius], 1), angle)]
    raise ValueError(kind)


def _background(rng: np.random.Generator) -> np.ndarray:
    """Smooth colour field + lines/arcs + small blobs and polygons (all smaller than the objects) + noise."""
    coarse = rng.uniform(30, 220, size=(rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
    img = cv2.resize(coarse, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(3, 9)):  # straight lines
        p0, p1 = rng.integers(-10, SIZE + 10, size=(2, 2))
        cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), _colour(rng), int(rng.integers(1, 3)),
                 cv2.LINE_AA)
    for _ in range(rng.integers(1, 4)):  # arcs of large ellipses
        centre = tuple(int(v) for v in rng.integers(0, SIZE, 2))
        axes = tuple(int(v) for v in rng.integers(10, 40, 2))
        start = float(rng.uniform(0, 360))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), start, start + float(rng.uniform(40, 160)),
                    _colour(rng), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(rng.integers(2, 8)):  # small blobs and small polygons (distractors under the object size)
        centre = rng.uniform(0, SIZE, 2)
        if rng.random() < 0.5:
            axes = tuple(int(v) for v in rng.integers(1, 5, 2))
            cv2.ellipse(img, tuple(int(v) for v in centre), axes, float(rng.uniform(0, 180)), 0, 360, _colour(rng),
                        -1, cv2.LINE_AA)
        else:
            k = int(rng.integers(3, 7))
            pts = centre + rng.uniform(-5, 5, size=(k, 2))
            cv2.fillPoly(img, [_poly(pts)], _colour(rng), cv2.LINE_AA, SHIFT)
    noise = rng.normal(0, 8, size=img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator) -> tuple:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _object_colour(rng: np.random.Generator, under: np.ndarray) -> tuple:
    """A colour far (L1 >= 200) from the mean background colour under the object; the farthest of 20 tries."""
    mean = under.reshape(-1, 3).mean(0)
    best, best_d = None, -1.0
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        d = float(np.abs(c - mean).sum())
        if d > best_d:
            best, best_d = c, d
        if d >= 200:
            break
    return tuple(int(v) for v in best)


def draw_object(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple:
    """Draw one object of ``kind`` on ``img`` (in place); returns its tight box ``(x0, y0, x1, y1)``."""
    size = float(rng.uniform(MIN_OBJECT, MAX_OBJECT))
    half = size / 2.0
    cx, cy = rng.uniform(half + 1, SIZE - half - 1, 2)
    angle = float(rng.uniform(0, 2 * np.pi)) if kind in ("triangle", "star") else (
        float(rng.uniform(-np.pi / 8, np.pi / 8)) if kind in ("square", "cross") else 0.0)
    if kind == "square" and rng.random() < 0.5:
        angle = 0.0
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if kind in ("circle", "ring"):
        centre, radius = (int(round(cx * _ONE)), int(round(cy * _ONE))), int(round(half * _ONE))
        if kind == "circle":
            cv2.circle(mask, centre, radius, 255, -1, cv2.LINE_8, SHIFT)
        else:
            thick = max(2.5, size / 7.0)
            cv2.circle(mask, centre, radius, 255, -1, cv2.LINE_8, SHIFT)
            cv2.circle(mask, centre, int(round((half - thick) * _ONE)), 0, -1, cv2.LINE_8, SHIFT)
    else:
        for poly in _shape_polygons(kind, size, angle):
            cv2.fillPoly(mask, [_poly(poly + (cx, cy))], 255, cv2.LINE_8, SHIFT)
    on = mask > 0
    colour = np.array(_object_colour(rng, img[on]), np.float32)
    shade = 1.0 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, SIZE)[:, None]  # a soft gradient on the object
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (3, 3), 0.6)[..., None]
    painted = np.clip(colour[None, None] * shade[..., None], 0, 255)
    img[:] = np.clip(img * (1 - soft) + painted * soft + 0.5, 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(on)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def make_image(seed: int, index: int) -> tuple:
    """Image ``index`` of the dataset ``seed``: ``(uint8 (64, 64, 3) RGB, label, box)``."""
    rng = np.random.default_rng([int(seed), int(index)])
    label = int(rng.integers(len(CLASSES)))
    img = _background(rng)
    box = draw_object(img, CLASSES[label], rng)
    for _ in range(rng.integers(0, 3)):  # thin clutter over the object
        p0, p1 = rng.integers(-10, SIZE + 10, size=(2, 2))
        cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), _colour(rng), 1, cv2.LINE_AA)
    return img, label, box


def make_dataset(n: int, seed: int) -> tuple:
    """``n`` images of the dataset ``seed``: ``images`` uint8 (N, 64, 64, 3) RGB, ``labels`` int64 (N,), ``boxes``
    int64 (N, 4) half-open ``(x0, y0, x1, y1)``."""
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    labels = np.empty(n, np.int64)
    boxes = np.empty((n, 4), np.int64)
    for i in range(n):
        images[i], labels[i], boxes[i] = make_image(seed, i)
    return images, labels, boxes
