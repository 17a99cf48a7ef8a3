"""The feature space: each image's "fc7 code", its neighbours, and 2-D maps of the set.

* :func:`embeddings` — the activations at the input of the classifier's last linear map (Krizhevsky et al. 2012's
  "fc7 code"), streamed in batches; :func:`penultimate_layer` finds that tensor.
* :func:`nearest_neighbours` / :func:`neighbours_grid` — each image's neighbours in that space (Krizhevsky et al.
  2012, Fig. 4) and a picture of them.
* :func:`project_2d` / :func:`mosaic` / :func:`scatter_plot` — 2-D maps by PCA or t-SNE (van der Maaten & Hinton
  2008), drawn as a plot and as Karpathy's cnnembed mosaic.

Images are given as for :mod:`onnx_cnnviz.methods.features` (paths, a folder, arrays), streamed by its
:func:`~onnx_cnnviz.methods.features.iter_batches`.
"""
from __future__ import annotations

import numpy as np

from .. import image as im
from ..errors import InputError, MissingDependencyError, ModelStructureError
from ..graph.head import penultimate_input
from ..graph.structure import Layer
from ..model import Model
from .features import iter_batches


def penultimate_layer(m: Model) -> str:
    """The input of the last linear map before the class score.

    fc7 for AlexNet / VGG, the pooled features for ResNet, the input of SqueezeNet's 1x1 classifier conv: found by
    walking back from the score through reshapes, pooling, activations and dropout.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).

    Returns:
        The layer's name.

    Raises:
        ModelStructureError: no linear classifier layer nor spatial feature map found.
    """
    name = penultimate_input(m.spec().model, m.score_name, m.input_name)
    if name is not None:
        return name
    if m.default_layer is None:
        raise ModelStructureError("no linear classifier layer nor spatial feature map found; name a layer.")
    return m.default_layer


def embeddings(m: Model, images, layer=None, preprocess=None, batch_size: int | None = None) -> np.ndarray:
    """The features of every image at ``layer``, global-average pooled when it is a spatial map, streamed in batches.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        images: a folder, or a list of pictures (paths, arrays: anything
            :func:`~onnx_cnnviz.image.read_image` reads).
        layer: the layer (default :func:`penultimate_layer`).
        preprocess: a preset name or :class:`~onnx_cnnviz.image.Preprocessing`; default: the model's metadata,
            else "imagenet" at the model's input size.
        batch_size: images per run (default: the model's).

    Returns:
        (N, D) float32.

    Raises:
        InputError: no images.
    """
    name = penultimate_layer(m) if layer is None else (layer.name if isinstance(layer, Layer) else layer)
    spec = m.spec()
    if name not in spec.info:
        m.layer(name)
    out = []
    for _, _, x in iter_batches(m, images, preprocess, batch_size):
        a = m.run(x, outputs=[name], batch_size=batch_size).outputs[name]
        out.append(a.mean(axis=(2, 3)) if a.ndim == 4 else a.reshape(len(a), -1))
    return np.concatenate(out).astype(np.float32)


def nearest_neighbours(features, queries=None, k: int = 5, metric: str = "euclidean", exclude_self: bool = True):
    """The ``k`` nearest rows of ``features`` to each query (Krizhevsky et al. 2012, Fig. 4).

    Args:
        features: (N, D) features (:func:`embeddings`).
        queries: row indices into ``features`` (default: all), or an array of query vectors.
        k: neighbours per query (at most the rows available).
        metric: ``"euclidean"`` (Krizhevsky et al. use the Euclidean distance of the 4096-d codes) or ``"cosine"``.
        exclude_self: when queries are indices, the query itself is not its own neighbour.

    Returns:
        ``(indices (Q, k), distances (Q, k))``, nearest first.

    Raises:
        InputError: an unknown metric.
    """
    f = np.asarray(features, dtype=np.float64)
    if queries is None:
        queries = np.arange(len(f))
    q_arr = np.asarray(queries)
    by_index = q_arr.ndim == 1 and np.issubdtype(q_arr.dtype, np.integer)
    q = f[q_arr] if by_index else np.atleast_2d(q_arr).astype(np.float64)
    if metric == "cosine":
        fn = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        d = 1.0 - qn @ fn.T
    elif metric == "euclidean":
        d = np.sqrt(np.maximum((q ** 2).sum(1)[:, None] + (f ** 2).sum(1)[None] - 2 * q @ f.T, 0))
    else:
        raise InputError(f"metric must be 'euclidean' or 'cosine', not {metric!r}.")
    if by_index and exclude_self:
        d[np.arange(len(q_arr)), q_arr] = np.inf
    k = min(int(k), f.shape[0] - (1 if by_index and exclude_self else 0))
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, axis=1).astype(np.float32)


def neighbours_grid(pictures, queries, indices, tile: int = 96, labels=None) -> np.ndarray:
    """Rows of ``[query, its neighbours...]`` as one picture.

    Args:
        pictures: the pictures the features were made of (anything :func:`~onnx_cnnviz.image.read_image` reads).
        queries: the query rows' indices into ``pictures``.
        indices: (Q, k) neighbour indices (:func:`nearest_neighbours`).
        tile: the tile size in pixels.
        labels: one label per picture, or None.

    Returns:
        uint8 RGB picture.
    """
    tiles, row_labels = [], []
    for q, row in zip(queries, indices):
        tiles.append(pictures[int(q)])
        tiles.extend(pictures[int(i)] for i in row)
        if labels is not None:
            row_labels.extend([labels[int(q)]] + [labels[int(i)] for i in row])
    return im.grid(tiles, ncols=1 + len(indices[0]), tile_size=(tile, tile),
                   labels=row_labels if labels is not None else None)


def project_2d(features, method: str = "pca", seed: int = 0, perplexity: float = 30.0,
               iterations: int = 1000) -> np.ndarray:
    """2-D coordinates of the rows of ``features``, for a map of the dataset.

    ``"pca"``: the projections on the first two principal components (centred SVD; each axis' sign fixed so that
    its largest loading is positive, so results are reproducible). ``"tsne"``: scikit-learn's t-SNE (van der Maaten &
    Hinton, JMLR 2008) with PCA initialisation.

    Args:
        features: (N, D) with N >= 2.
        method: ``"pca"`` or ``"tsne"``.
        seed: t-SNE's ``random_state``.
        perplexity: t-SNE's perplexity, capped at (N - 1) / 3.
        iterations: t-SNE's gradient-descent iterations (>= 250).

    Returns:
        (N, 2) float32.

    Raises:
        InputError: features not (N, D) with N >= 2, or an unknown method.
        MissingDependencyError: ``"tsne"`` without scikit-learn.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise InputError(f"features must be (N, D) with N >= 2, not {f.shape}.")
    if method == "pca":
        c = f - f.mean(axis=0)
        _, _, vt = np.linalg.svd(c, full_matrices=False)
        vt = vt[:2]
        signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
        out = c @ (vt * signs[:, None]).T
        if out.shape[1] < 2:
            out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
        return out.astype(np.float32)
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as exc:
            raise MissingDependencyError("t-SNE needs scikit-learn: pip install scikit-learn (or use method='pca')."
                                         ) from exc
        perp = float(min(perplexity, max(1.0, (len(f) - 1) / 3.0)))
        tsne = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed, max_iter=max(250, int(iterations)))
        return tsne.fit_transform(f.astype(np.float32)).astype(np.float32)
    raise InputError(f"method must be 'pca' or 'tsne', not {method!r}.")


def mosaic(pictures, coords, size: int = 1024, thumb: int = 64, snap: bool = True, bg=255) -> np.ndarray:
    """Thumbnails placed at 2-D positions (Karpathy's cnnembed picture).

    ``coords`` are scaled to the canvas (min-max per axis, x = column 0, y = column 1).

    Args:
        pictures: one per row of ``coords`` (anything :func:`~onnx_cnnviz.image.read_image` reads).
        coords: (N, 2) positions (:func:`project_2d`).
        size: the canvas' side in pixels.
        thumb: the thumbnails' side in pixels.
        snap: move each thumbnail to the nearest free cell of a ``size // thumb`` grid (greedy, in order of distance
            to its cell), so none overlap, as cnnembed's grid version does; False pastes at the exact positions,
            later ones on top.
        bg: the background, a gray level or an RGB triple.

    Returns:
        uint8 RGB ``(size, size, 3)``.

    Raises:
        InputError: ``coords`` not (N, 2) with one row per picture, or more thumbnails than grid cells.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(pictures):
        raise InputError(f"coords must be (N, 2) with one row per picture, not {coords.shape}.")
    lo, span = coords.min(axis=0), np.ptp(coords, axis=0)
    unit = (coords - lo) / np.where(span > 0, span, 1.0)
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = im.rgb_triple(bg, "bg").astype(np.uint8)
    cells = size // thumb
    if snap and len(pictures) > cells * cells:
        raise InputError(f"{len(pictures)} thumbnails do not fit a {cells}x{cells} grid; use a larger size, a "
                         "smaller thumb, or snap=False.")
    taken = np.zeros((cells, cells), bool)
    gy, gx = np.mgrid[0:cells, 0:cells]
    target = unit * (cells - 1)
    order = np.argsort(np.abs(target - np.round(target)).sum(axis=1), kind="stable")
    for n in (order if snap else range(len(pictures))):
        tile = im.fit_into(im.read_image(pictures[n]), thumb, thumb)
        if snap:
            d = (gx - target[n, 0]) ** 2 + (gy - target[n, 1]) ** 2
            d[taken] = np.inf
            cy, cx = np.unravel_index(int(np.argmin(d)), d.shape)
            taken[cy, cx] = True
            y0, x0 = cy * thumb, cx * thumb
        else:
            x0 = int(round(unit[n, 0] * (size - thumb)))
            y0 = int(round(unit[n, 1] * (size - thumb)))
        th, tw = tile.shape[:2]
        canvas[y0:y0 + th, x0:x0 + tw] = tile
    return canvas


def scatter_plot(coords, labels=None, names=None, title: str | None = None, size=(6.0, 6.0),
                 dpi: int = 100) -> np.ndarray:
    """A scatter plot of 2-D coordinates as a uint8 RGB picture (matplotlib, no window opened).

    Args:
        coords: (N, 2) positions.
        labels: an int class per point (one colour per class), or None.
        names: class index -> name, for the legend.
        title: the plot's title.
        size: the figure's (width, height) in inches.
        dpi: dots per inch.

    Returns:
        uint8 RGB picture.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("the scatter plot needs matplotlib: pip install matplotlib.") from exc
    coords = np.asarray(coords, dtype=np.float64)
    fig = Figure(figsize=size, dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=12)
    else:
        labels = np.asarray(labels)
        for value in np.unique(labels):
            sel = labels == value
            name = names[int(value)] if names is not None else str(value)
            ax.scatter(coords[sel, 0], coords[sel, 1], s=12, label=name)
        ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[:, :, :3])
