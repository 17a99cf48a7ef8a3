"""Looking at what the network computes: filters, activations, maximally activating patches.

* :func:`filters` — the first convolution's kernels as colour tiles, per-filter min-max scaled (Krizhevsky et al.
  2012, Fig. 3, the 96 AlexNet filters); deeper kernels as one grey tile per (filter, input channel).
* :func:`activations` — one image's feature maps at a layer as a grid of grey tiles, most active channels first
  (Yosinski et al. 2015, the deep visualization toolbox).
* :func:`top_patches` — over a stream of images, the top-k images per channel by the channel's maximum activation and
  the input patch under that maximum, cut with the unit's receptive field computed from the graph (Girshick et al.
  2014, Fig. 4); optionally guided backpropagation of that unit next to the crop (Springenberg et al. 2015, Fig. 3).
* the feature space (embeddings, neighbours, 2-D maps) is :mod:`onnx_cnnviz.methods.feature_space`'s.

Images may be given as paths, a folder, uint8 arrays / PIL images (preprocessed with ``preprocess``, by default the
model's metadata preset or "imagenet"), or already preprocessed float arrays ``(C, H, W)`` / ``(N, C, H, W)``. They are
streamed in batches: memory holds one batch plus the results.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import image as im
from ..errors import InputError, ModelStructureError
from ..graph.head import constant_value, producing_conv
from ..graph.structure import Layer, downstream, producers
from ..model import Model
from .receptive_field import ReceptiveField, receptive_field


# ==================================================================================================================
# Inputs: paths, folders, arrays -> batches of model inputs plus display images
# ==================================================================================================================
def list_images(folder) -> list[Path]:
    """The image files directly in ``folder`` (by suffix), sorted by name.

    Args:
        folder: a folder.

    Returns:
        The paths.

    Raises:
        InputError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder.")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in im.IMAGE_SUFFIXES and p.is_file())


def preprocessing_for(m: Model, preprocess=None) -> im.Preprocessing:
    """The preprocessing to feed ``m``: ``preprocess``, else the model's metadata, else "imagenet" at its input size.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        preprocess: a preset name, a :class:`~onnx_cnnviz.image.Preprocessing`, or None.

    Returns:
        The spec.
    """
    if preprocess is not None:
        prep = im.get_preprocessing(preprocess)
    else:
        prep = im.Preprocessing.from_metadata(m.metadata) or im.get_preprocessing("imagenet")
    hw = m.input_shape[1:]
    if prep.size is None and hw[0] is not None:
        prep = im.get_preprocessing(prep, size=hw)
    return prep


def _is_model_input(item) -> bool:
    """A float ``(C, H, W)`` array with C in 1, 3 is taken as already preprocessed (an RGB float picture is
    ``(H, W, 3)``)."""
    return isinstance(item, np.ndarray) and item.ndim == 3 and np.issubdtype(item.dtype, np.floating) \
        and item.shape[0] in (1, 3) and item.shape[2] > 4


def _items(images):
    """Iterate single items from a folder, a path, a batch array or any iterable."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        yield from (list_images(path) if path.is_dir() else [path])
        return
    if isinstance(images, np.ndarray) and images.ndim == 4:
        yield from images
        return
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        yield images
        return
    yield from images


def iter_batches(m: Model, images, preprocess=None, batch_size: int | None = None):
    """Stream pictures as model inputs, ``batch_size`` at a time.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        images: a folder, or a list of pictures (paths, arrays: anything
            :func:`~onnx_cnnviz.image.read_image` reads).
        preprocess: a preset name or :class:`~onnx_cnnviz.image.Preprocessing`; default: the model's metadata,
            else "imagenet" at the model's input size.
        batch_size: pictures per batch (default: the model's).

    Yields:
        ``(start, items, x)``: the position of the batch's first image in the stream, the items themselves (paths,
        arrays, ...) and their float32 model input ``(n, C, H, W)``.

    Raises:
        InputError: no images, or one that cannot be read.
    """
    prep = preprocessing_for(m, preprocess)
    step = max(1, int(batch_size or m.batch_size))
    start, chunk = 0, []
    for item in _items(images):
        chunk.append(item)
        if len(chunk) == step:
            yield start, chunk, _to_input(chunk, prep)
            start, chunk = start + len(chunk), []
    if chunk:
        yield start, chunk, _to_input(chunk, prep)
    elif start == 0:
        raise InputError("No images given (the folder or list is empty).")


def _to_input(items, prep) -> np.ndarray:
    parts = []
    for item in items:
        if _is_model_input(item):
            parts.append(np.asarray(item, dtype=np.float32)[None])
        else:
            parts.append(im.preprocess(item, prep))
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def display_image(x_row: np.ndarray, preprocess=None, m: Model | None = None) -> np.ndarray:
    """A model input back to a uint8 RGB picture (:func:`~onnx_cnnviz.image.deprocess`; grey inputs min-max scaled).

    Args:
        x_row: ``(C, H, W)`` model input.
        preprocess: the spec it was made with (None: ``m``'s, see :func:`preprocessing_for`).
        m: the model, for its preprocessing metadata.

    Returns:
        uint8 ``(H, W, 3)``.
    """
    prep = preprocessing_for(m, preprocess) if m is not None else im.get_preprocessing(preprocess or "imagenet")
    x_row = np.asarray(x_row, dtype=np.float32)
    if x_row.shape[0] == 3:
        return im.deprocess(x_row, prep)
    g = x_row[0]
    span = g.max() - g.min()
    g = (g - g.min()) / span if span > 0 else np.zeros_like(g)
    return np.repeat(np.floor(g * 255 + 0.5).astype(np.uint8)[:, :, None], 3, axis=2)


# ==================================================================================================================
# Filters
# ==================================================================================================================
def conv_weights(m: Model, layer=None) -> tuple[str, np.ndarray]:
    """A convolution's kernels: the first convolution after the image, or the one producing ``layer``.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        layer: None (the first convolution), or a layer produced by a convolution (walking back through
            activations, normalisations and residual adds).

    Returns:
        ``(conv node name, W)`` with W ``(O, C/groups, kh, kw)``.

    Raises:
        ModelStructureError: no convolution there, or one whose weights are computed at run time.
    """
    spec = m.spec()
    graph = spec.model.graph
    if layer is None:
        reached = downstream(graph, [m.input_name])
        node = next((n for n in graph.node if n.op_type == "Conv" and n.input[0] in reached), None)
        if node is None:
            raise ModelStructureError("the model has no convolution after the image input.")
    else:
        name = layer.name if isinstance(layer, Layer) else layer
        if name not in spec.info:
            m.layer(name)
        node = producing_conv(spec.model, name)
        if node is None:
            raise ModelStructureError(f"'{name}' is not produced by a convolution (through activations and "
                                      "normalisations); its kernels cannot be shown.")
    weights = constant_value(node.input[1], {t.name: t for t in graph.initializer}, producers(graph))
    if weights is None:
        raise ModelStructureError(f"the weights of convolution '{node.name}' are computed at run time.")
    return node.name or node.output[0], weights


def _upscale(tile: np.ndarray, min_size: int) -> np.ndarray:
    factor = max(1, int(np.ceil(min_size / max(tile.shape[:2]))))
    return np.repeat(np.repeat(tile, factor, axis=0), factor, axis=1)


def filters(m: Model, layer=None, order: str | None = None, max_filters: int | None = None,
            max_channels: int = 16, tile: int = 24, ncols: int | None = None) -> np.ndarray:
    """Convolution kernels as a uint8 RGB picture (the first-layer figure of Krizhevsky et al. 2012, Fig. 3).

    With 3 input channels each filter is one colour tile, min-max scaled per filter, ``(w - min w) / (max w - min w)``.
    Otherwise (a deeper layer, or a first layer on grey/other inputs) filter ``o`` is a row of ``min(C, max_channels)``
    grey tiles, one per input channel, scaled by the min and max over that filter.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        layer: None (the first convolution) or a layer produced by a convolution (:func:`conv_weights`).
        order: the model's channel order ("BGR" for caffe models; default: from the model's preprocessing metadata,
            else RGB), flipped to RGB for display.
        max_filters: show at most this many filters (default: all).
        max_channels: input channels shown per filter of a deeper layer.
        tile: the smallest tile, in pixels (kernels are enlarged with nearest neighbours).
        ncols: tiles per row (default: chosen from the count).

    Returns:
        uint8 RGB picture.

    Raises:
        ModelStructureError: no convolution there.
    """
    _, w = conv_weights(m, layer)
    if max_filters is not None:
        w = w[:max_filters]
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - lo
    scaled = (w - lo) / np.where(span > 0, span, 1.0)
    levels = np.floor(scaled * 255 + 0.5).astype(np.uint8)
    if w.shape[1] == 3:
        if order is None:
            prep = im.Preprocessing.from_metadata(m.metadata)
            order = prep.order if prep is not None else "RGB"
        rgb = levels.transpose(0, 2, 3, 1)
        if str(order).upper() == "BGR":
            rgb = rgb[..., ::-1]
        tiles = [_upscale(np.ascontiguousarray(t), tile) for t in rgb]
        return im.grid(tiles, ncols=ncols or int(np.ceil(np.sqrt(len(tiles)))), pad=1, bg=0)
    c = min(w.shape[1], max_channels)
    tiles = [_upscale(np.repeat(levels[o, ch][:, :, None], 3, axis=2), tile) for o in range(len(levels))
             for ch in range(c)]
    return im.grid(tiles, ncols=c, pad=1, bg=0)


# ==================================================================================================================
# Activations
# ==================================================================================================================
@dataclass
class ActivationGrid:
    """Feature maps of one image.

    Attributes:
        image: the grid, uint8 RGB.
        channels: the channel of each tile, in order.
        maps: the raw ``(C, h, w)`` activations.
    """
    image: np.ndarray
    channels: list
    maps: np.ndarray


def activations(m: Model, x, layer=None, top: int | None = None, scale: str = "layer", tile: int = 48,
                ncols: int | None = None) -> ActivationGrid:
    """The feature maps of one image at ``layer`` as grey tiles (the deep visualization toolbox, Yosinski et al. 2015).

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        x: one preprocessed image, (C, H, W) or (1, C, H, W).
        layer: a layer name (default ``Model.default_layer``).
        top: show only the ``top`` channels with the largest mean activation, most active first (all channels in
            their order when None).
        scale: ``"layer"``: one min-max over all shown maps, so tiles compare; ``"channel"``: each map on its own.
        tile: tiles are enlarged (nearest) to this many pixels.
        ncols: tiles per row (default: chosen from the count).

    Returns:
        The grid, the channels shown and the raw maps.

    Raises:
        InputError: more than one image, or an unknown ``scale``.
        UnknownLayerError: a layer not in ``Model.layers``.
    """
    name = m.layer_name(layer)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.shape[0] != 1:
        raise InputError(f"activations shows one image; x has {x.shape[0]}.")
    maps = m.run(x, outputs=[name]).outputs[name][0]
    if top is not None:
        order = np.argsort(-maps.mean(axis=(1, 2)), kind="stable")[:int(top)]
    else:
        order = np.arange(maps.shape[0])
    shown = maps[order]
    if scale == "layer":
        lo, span = shown.min(), shown.max() - shown.min()
        scaled = (shown - lo) / (span if span > 0 else 1.0)
    elif scale == "channel":
        lo = shown.min(axis=(1, 2), keepdims=True)
        span = shown.max(axis=(1, 2), keepdims=True) - lo
        scaled = (shown - lo) / np.where(span > 0, span, 1.0)
    else:
        raise InputError(f"scale must be 'layer' or 'channel', not {scale!r}.")
    levels = np.floor(scaled * 255 + 0.5).astype(np.uint8)
    tiles = [_upscale(np.repeat(t[:, :, None], 3, axis=2), tile) for t in levels]
    picture = im.grid(tiles, ncols=ncols or int(np.ceil(np.sqrt(len(tiles)))), pad=1, bg=255)
    return ActivationGrid(picture, [int(c) for c in order], maps)


# ==================================================================================================================
# Maximally activating patches
# ==================================================================================================================
@dataclass
class Patch:
    """One of a channel's top activations: where it is and what the input looks like there.

    Attributes:
        channel: the channel.
        value: the channel's maximum activation in this image.
        index: the position of the image in the stream.
        unit: (i, j) of the maximum in the layer.
        box: (x0, y0, x1, y1), its receptive field in the model input, clipped.
        crop: uint8 RGB ``image[y0:y1, x0:x1]``, or None.
        guided: uint8 RGB guided backpropagation of the unit in the same box, or None.
        source: the item (path, array) it came from.
    """
    channel: int
    value: float  # the channel's maximum activation in this image
    index: int  # position of the image in the stream
    unit: tuple  # (i, j) of the maximum in the layer
    box: tuple  # (x0, y0, x1, y1) its receptive field in the model input, clipped
    crop: np.ndarray | None = None  # uint8 RGB image[y0:y1, x0:x1]
    guided: np.ndarray | None = None  # uint8 RGB guided backpropagation of the unit, same box
    source: object = None  # the item (path, array) it came from


@dataclass
class TopPatches:
    """The top patches of each channel of a layer (:func:`top_patches`).

    Attributes:
        layer: the layer.
        receptive_field: the layer's receptive field.
        patches: channel -> its patches, best first.
        count: the images seen.
    """
    layer: str
    receptive_field: ReceptiveField
    patches: dict = field(default_factory=dict)  # channel -> [Patch], best first
    count: int = 0  # images seen

    def grid(self, channels=None, tile: int = 64, guided: bool | None = None) -> np.ndarray:
        """One row per channel, its patches left to right (each followed by its guided backprop when present).

        Args:
            channels: the channels to show (default: all, in order).
            tile: the tile size in pixels.
            guided: show the guided backpropagation beside each patch (default: when it was computed).

        Returns:
            uint8 RGB picture.
        """
        channels = list(self.patches) if channels is None else list(channels)
        if guided is None:
            guided = any(p.guided is not None for c in channels for p in self.patches[c])
        per_row = max(len(self.patches[c]) for c in channels) * (2 if guided else 1)
        blank = np.full((tile, tile, 3), 255, np.uint8)
        tiles = []
        for c in channels:
            row = []
            for p in self.patches[c]:
                row.append(p.crop if p.crop is not None else blank)
                if guided:
                    row.append(p.guided if p.guided is not None else blank)
            tiles.extend(row + [blank] * (per_row - len(row)))
        return im.grid(tiles, ncols=per_row, pad=2, bg=255, tile_size=(tile, tile))


#: The largest receptive field, as a fraction of the input's smaller side, of :func:`mid_layer`'s default choice.
MID_LAYER_FIELD = 0.5


def mid_layer(m: Model, max_field: float = MID_LAYER_FIELD) -> str:
    """The deepest layer whose units see a part of the image, not all of it.

    The last of :attr:`Model.layers` (input-to-output order) whose receptive field is at most ``max_field`` of the
    input's smaller side: the default layer of :func:`top_patches` and
    :func:`onnx_cnnviz.methods.optimise.invert`. :attr:`Model.default_layer` (the last spatial map, the CAM layer)
    sees the whole image on modern networks (EfficientNet-Lite0's last map: 851 px on a 224-pixel input; SqueezeNet
    1.1's conv10: 207 px), so its "patches" are whole images and its inversion is colour noise. Here:
    EfficientNet-Lite0 ``/_blocks.6/_swish/Clip_output_0`` (14x14, 83 px), SqueezeNet 1.1 ``fire7/expand1x1_2``
    (13x13, 111 px). Pad outputs, 1x1 maps and layers whose field is not defined (a resampling op on the way) are
    skipped.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        max_field: the largest field, as a fraction of the input's smaller side.

    Returns:
        The layer's name; :attr:`Model.default_layer` when no layer qualifies.
    """
    def choose():
        spec = m.spec()
        in_hw = spec.info[m.input_name].shape[2:]
        limit = float(max_field) * min(int(d) for d in in_hw)
        best = None
        for layer in m.layers:
            if layer.op_type == "Pad" or (layer.shape[2] or 0) * (layer.shape[3] or 0) <= 1:
                continue
            try:
                rf = receptive_field(m, layer.name)
            except ModelStructureError:
                continue
            if max(rf.size) <= limit:
                best = layer.name
        return best or m.layer_name(None)

    return m.cached(("mid_layer", float(max_field)), choose)


def top_patches(m: Model, images, layer=None, channels=None, k: int = 9, preprocess=None, guided: bool = False,
                batch_size: int | None = None, crops: bool = True) -> TopPatches:
    """The ``k`` images that activate each channel of ``layer`` most, and the patch under each maximum.

    For every image ``n`` and channel ``c`` the score is ``max_ij A[n, c, i, j]`` (Girshick et al., "Rich feature
    hierarchies", CVPR 2014, rank pool5 units this way); the ``k`` best images per channel are kept while streaming
    batches. The patch is the receptive field of the arg-max unit
    (:func:`onnx_cnnviz.methods.receptive_field.receptive_field`), clipped to the image. Images are read twice: once
    to rank, once for the kept ones.

    Args:
        m: the loaded model (:func:`onnx_cnnviz.load`).
        images: a folder, or a list of pictures (paths, arrays: anything
            :func:`~onnx_cnnviz.image.read_image` reads).
        layer: default :func:`mid_layer`, the deepest layer whose field is at most half the image (the last map
            before global pooling sees the whole image on most modern networks).
        channels: the channels to rank (default: all).
        k: images kept per channel.
        preprocess: a preset name or :class:`~onnx_cnnviz.image.Preprocessing`; default: the model's metadata,
            else "imagenet" at the model's input size.
        guided: add guided backpropagation of each unit, ``dA[c, i, j] / dx`` with the guided ReLU rule, cropped to
            the same box (Springenberg et al. 2015).
        batch_size: images per run (default: the model's).
        crops: keep the pictures' crops (False: boxes only).

    Returns:
        The layer, its receptive field and the patches per channel.

    Raises:
        InputError: no images, or channels outside the layer.
        ModelStructureError: the layer's receptive field is not defined.
    """
    name = mid_layer(m) if layer is None else m.layer_name(layer)
    prep = preprocessing_for(m, preprocess)
    shape = None
    best_val = best_idx = best_unit = None
    sources: dict[int, object] = {}
    chan = None
    count = 0
    for start, items, x in iter_batches(m, images, prep, batch_size):
        acts = m.run(x, outputs=[name], batch_size=batch_size).outputs[name]
        if shape is None:
            shape = acts.shape[1:]
            chan = np.arange(shape[0]) if channels is None else np.asarray(list(channels), dtype=np.int64)
            if chan.size == 0 or chan.min() < 0 or chan.max() >= shape[0]:
                raise InputError(f"channels must lie in 0..{shape[0] - 1} for layer '{name}'.")
            best_val = np.full((len(chan), 0), -np.inf, np.float32)
            best_idx = np.zeros((len(chan), 0), np.int64)
            best_unit = np.zeros((len(chan), 0), np.int64)
        a = acts[:, chan].reshape(len(items), len(chan), -1)  # (n, C', h*w)
        flat_arg = a.argmax(axis=2)  # first maximum in row-major order
        vals = np.take_along_axis(a, flat_arg[:, :, None], axis=2)[:, :, 0]
        cand_val = np.concatenate([best_val, vals.T], axis=1)
        cand_idx = np.concatenate([best_idx, np.broadcast_to(start + np.arange(len(items)), (len(chan), len(items)))],
                                  axis=1)
        cand_unit = np.concatenate([best_unit, flat_arg.T], axis=1)
        # stable sort on -value: among equal values the earlier image wins, so results do not depend on batching
        keep = np.argsort(-cand_val, axis=1, kind="stable")[:, :k]
        best_val = np.take_along_axis(cand_val, keep, axis=1)
        best_idx = np.take_along_axis(cand_idx, keep, axis=1)
        best_unit = np.take_along_axis(cand_unit, keep, axis=1)
        for offset, item in enumerate(items):
            sources[start + offset] = item
        alive = set(best_idx.ravel().tolist())
        sources = {i: s for i, s in sources.items() if i in alive}
        count = start + len(items)
    rf = receptive_field(m, name, hw=None)
    w = shape[2]
    result = TopPatches(layer=name, receptive_field=rf, count=count)
    for row, c in enumerate(chan):
        result.patches[int(c)] = [
            Patch(channel=int(c), value=float(best_val[row, r]), index=int(best_idx[row, r]),
                  unit=(int(best_unit[row, r] // w), int(best_unit[row, r] % w)),
                  box=rf.box(int(best_unit[row, r] // w), int(best_unit[row, r] % w)),
                  source=sources.get(int(best_idx[row, r])))
            for r in range(best_val.shape[1])]
    if crops or guided:
        _fill_patches(m, result, sources, prep, guided, batch_size)
    return result


def _fill_patches(m, result: TopPatches, sources: dict, prep, guided: bool, batch_size):
    """Second pass over the kept images only: crops, and guided backprop of each kept unit."""
    wanted = sorted(sources)
    by_image: dict[int, list[Patch]] = {}
    for plist in result.patches.values():
        for p in plist:
            by_image.setdefault(p.index, []).append(p)
    step = max(1, int(batch_size or m.batch_size))
    shape = m.layer(result.layer).shape
    for s in range(0, len(wanted), step):
        idx = wanted[s:s + step]
        x = _to_input([sources[i] for i in idx], prep)
        pictures = [display_image(row, prep) for row in x]
        for n, i in enumerate(idx):
            for p in by_image.get(i, []):
                x0, y0, x1, y1 = p.box
                p.crop = np.ascontiguousarray(pictures[n][y0:y1, x0:x1])
        if not guided:
            continue
        # one backward row per kept (image, unit): the seed is one-hot at the unit
        jobs = [(n, p) for n, i in enumerate(idx) for p in by_image.get(i, [])]
        for js in range(0, len(jobs), step):
            chunk = jobs[js:js + step]
            xs = x[[n for n, _ in chunk]]
            seed = np.zeros((len(chunk), *shape[1:]), np.float32)
            for r, (_, p) in enumerate(chunk):
                seed[r, p.channel, p.unit[0], p.unit[1]] = 1.0
            g = m.vjp(xs, result.layer, seed, rule="guided", batch_size=batch_size).grads[m.input_name]
            for r, (_, p) in enumerate(chunk):
                x0, y0, x1, y1 = p.box
                p.guided = im.gradient_image(g[r][:, y0:y1, x0:x1], order=prep.order) if g.shape[1] in (1, 3) \
                    else None
