"""Pictures for people: heat maps coloured and laid over images, gradient and saliency pictures, grids, saving.

A heat map is a float ``(h, w)`` array in [0, 1], resized to the image bilinearly; :data:`COLORMAPS` names OpenCV's
colour maps.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from ..files import write_atomic
from ..maps import minmax
from ._arguments import as_float, check_order, image_list, norm_size
from .reading import read_image, rgb_triple

COLORMAPS = {name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")}


# ---------------------------------------------------------------------------------------------------------------------
# Heat maps and gradient images


# Moreland's cool-warm diverging map ("Diverging Color Maps for Scientific Visualization", ISVC 2009; matplotlib's
# "coolwarm"), sampled at nine points (RGB) and interpolated linearly: blue for negative, near-white at 0, red for
# positive, both halves of equal lightness so neither sign looks stronger.
_COOLWARM_ANCHORS = np.array([(59, 76, 192), (98, 130, 234), (141, 176, 254), (184, 208, 249), (221, 221, 221),
                              (245, 196, 173), (244, 154, 123), (222, 96, 77), (180, 4, 38)], dtype=np.float64)
#: The diverging colour map signed maps are drawn with (zero in the middle of the table).
DIVERGING = "coolwarm"


def _lookup_table(anchors: np.ndarray) -> np.ndarray:
    """A 256-entry BGR lookup table for ``cv2.applyColorMap`` interpolating RGB ``anchors`` evenly."""
    at = np.linspace(0.0, 1.0, len(anchors))
    levels = np.linspace(0.0, 1.0, 256)
    rgb = np.stack([np.interp(levels, at, anchors[:, k]) for k in range(3)], axis=1)
    return np.ascontiguousarray(np.floor(rgb[:, ::-1] + 0.5).astype(np.uint8).reshape(256, 1, 3))


_TABLES = {DIVERGING: _lookup_table(_COOLWARM_ANCHORS)}


def _colormap_table(colormap):
    """What ``cv2.applyColorMap`` takes for ``colormap``: an OpenCV colour-map id, or our own lookup table."""
    if isinstance(colormap, (int, np.integer)) and not isinstance(colormap, bool) and \
            int(colormap) in COLORMAPS.values():
        return int(colormap)
    if isinstance(colormap, str) and colormap.lower() in COLORMAPS:
        return COLORMAPS[colormap.lower()]
    if isinstance(colormap, str) and colormap.lower() in _TABLES:
        return _TABLES[colormap.lower()]
    raise InputError(f"Unknown colormap {colormap!r}; use one of {', '.join(sorted([*COLORMAPS, *_TABLES]))} (or a "
                     f"cv2.COLORMAP_* constant).")


def _heatmap_2d(heatmap, what: str = "heatmap") -> np.ndarray:
    h = np.asarray(heatmap, dtype=np.float32)
    while h.ndim > 2 and h.shape[0] == 1:
        h = h[0]
    if h.ndim != 2 or h.size == 0:
        raise InputError(f"A {what} must be a 2-D (h, w) array, not shape {np.shape(heatmap)}.")
    if not np.isfinite(h).all():
        raise InputError(f"The {what} has NaN or infinite values.")
    lo, hi = float(h.min()), float(h.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(f"The {what} must lie in [0, 1] but spans [{lo:.4g}, {hi:.4g}]; min-max normalise it first "
                         f"(e.g. onnx_cnnviz.maps.normalize_maps).")
    return np.clip(h, 0.0, 1.0)


def colorize(heatmap, colormap="jet", size=None) -> np.ndarray:
    """A [0, 1] heat map as a uint8 RGB picture: ``cv2.applyColorMap(round(255 * h))`` converted from BGR.

    Args:
        heatmap: (h, w) values in [0, 1].
        colormap: a name in :data:`COLORMAPS` ("jet", "viridis", "inferno", "magma", "turbo", "hot", "parula", ...),
            a ``cv2.COLORMAP_*`` constant, or :data:`DIVERGING` ("coolwarm", for signed maps: see
            :func:`signed_to_unit`).
        size: (H, W) to resize the float map to first (bilinear); None keeps its size.

    Returns:
        uint8 (H, W, 3) RGB.

    Raises:
        InputError: a map that is not 2-D or not in [0, 1], or an unknown colour map.
    """
    h = _heatmap_2d(heatmap)
    size = norm_size(size)
    if size is not None and h.shape != size:
        h = np.clip(cv2.resize(h, (size[1], size[0]), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    levels = np.floor(h * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(cv2.applyColorMap(levels, _colormap_table(colormap))[:, :, ::-1])


def overlay(image, heatmap, alpha: float = 0.5, colormap="jet") -> np.ndarray:
    """Heat map over an image, as in the Grad-CAM figures (Selvaraju et al. 2017).

    ``out = round((1 - alpha) * image + alpha * colorize(heatmap))``, with the heat map resized bilinearly to the
    image. This is a plain alpha blend: pytorch-grad-cam's ``show_cam_on_image`` computes the same blend on [0, 1]
    floats and then divides by its maximum, which brightens dim images; here alpha=0 gives back the image exactly
    and alpha=1 the coloured map.

    Args:
        image: the picture (anything :func:`read_image` accepts).
        heatmap: (h, w) values in [0, 1].
        alpha: the map's weight, in [0, 1].
        colormap: as :func:`colorize` takes it.

    Returns:
        uint8 RGB at the image's size.

    Raises:
        InputError: a bad image, map, ``alpha`` or colour map.

    Example:
        ```python
        picture = cv.overlay(cv.deprocess(x[0]), maps[0], alpha=0.4)
        cv.save_image("cat.gradcam.png", picture)
        ```
    """
    alpha = as_float(alpha, "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], not {alpha}.")
    rgb = read_image(image)
    colored = colorize(heatmap, colormap, size=rgb.shape[:2])
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colored.astype(np.float32)
    return np.clip(np.floor(blend + 0.5), 0, 255).astype(np.uint8)


def signed_to_unit(smap, scale: float | None = None) -> np.ndarray:
    """A signed (h, w) map as the [0, 1] heat map a diverging colour map expects, with 0 at 0.5.

    ``0.5 + m / (2 scale)``, clipped to [0, 1]. So "no effect" has the same colour on every map, whatever its range,
    which min-max scaling cannot promise.

    Args:
        smap: (h, w) signed map.
        scale: the value shown at the ends of the colour map (default ``max |m|``; an all-zero map gives 0.5
            everywhere).

    Returns:
        float32 (h, w) in [0, 1].
    """
    m = np.asarray(smap, dtype=np.float32)
    if not np.isfinite(m).all():
        raise InputError("The signed map has NaN or infinite values.")
    top = float(np.abs(m).max()) if scale is None else float(scale)
    if not top > 0 or not np.isfinite(top):
        return np.full(m.shape, 0.5, dtype=np.float32)
    return np.clip(0.5 + m / np.float32(2.0 * top), 0.0, 1.0).astype(np.float32)


def gradient_image(grad, mode: str = "std", order: str = "RGB") -> np.ndarray:
    """A gradient with respect to the input (vanilla, guided backprop, deconvnet) as a uint8 RGB picture.

    * ``mode="std"`` (the default; ``deprocess_image`` of the Keras filter-visualisation example, Chollet 2016,
      the usual way guided-backprop (Springenberg et al. 2015) and deconvnet (Zeiler & Fergus 2014) reconstructions
      are shown): ``g = (g - mean(g)) / (std(g) + 1e-5) * 0.1 + 0.5``, clipped to [0, 1], mean and std over all
      channels and pixels. The mean sits at mid-gray; +-5 standard deviations reach black / white.
    * ``mode="minmax"``: ``(g - min(g)) / (max(g) - min(g))`` over all channels and pixels; a constant gradient
      gives black.

    Args:
        grad: ``(C, H, W)`` with C = 1 or 3, or a batch ``(N, C, H, W)`` (each image scaled on its own).
        mode: ``"std"`` or ``"minmax"``.
        order: the channel order of the model input ("BGR" for caffe-style models), flipped to RGB for display.

    Returns:
        uint8 ``(H, W, 3)``, or ``(N, H, W, 3)`` for a batch.

    Raises:
        InputError: a bad shape, mode or order.
    """
    g = np.asarray(grad, dtype=np.float32)
    if g.ndim == 4:
        return np.stack([gradient_image(one, mode, order) for one in g])
    if g.ndim != 3 or g.shape[0] not in (1, 3):
        raise InputError(f"gradient_image takes a (C, H, W) gradient with C = 1 or 3 (or a batch), not {g.shape}.")
    if not np.isfinite(g).all():
        raise InputError("The gradient has NaN or infinite values.")
    if mode == "std":
        g = np.clip((g - g.mean()) / (g.std() + 1e-5) * 0.1 + 0.5, 0.0, 1.0)
    elif mode == "minmax":
        g = minmax(g)
    else:
        raise InputError(f"mode must be 'std' or 'minmax', not {mode!r}.")
    if check_order(order, "order") == "BGR":
        g = g[::-1]
    rgb = np.floor(np.moveaxis(g, 0, -1) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb)


def saliency_image(smap, normalize: bool = True, colormap=None) -> np.ndarray:
    """A saliency map ``(H, W)`` (Simonyan et al. 2014, Sec. 3.1) as a uint8 RGB picture.

    Args:
        smap: (H, W) map.
        normalize: min-max scale the map to [0, 1] first, as in the paper's figures (a constant map gives black);
            with False the map must already lie in [0, 1].
        colormap: None for gray (white = salient), else as in :func:`colorize`.

    Returns:
        uint8 (H, W, 3).

    Raises:
        InputError: a map that is not 2-D, or not in [0, 1] without ``normalize``.
    """
    m = np.asarray(smap, dtype=np.float32)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise InputError(f"saliency_image takes an (H, W) map, not shape {np.shape(smap)}.")
    if normalize:
        if not np.isfinite(m).all():
            raise InputError("The saliency map has NaN or infinite values.")
        m = minmax(m)
    if colormap is not None:
        return colorize(m, colormap)
    gray = np.floor(_heatmap_2d(m, "saliency map") * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


# ---------------------------------------------------------------------------------------------------------------------
# Grids and saving

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.4
_MIN_FONT_SCALE = 0.3


def grid(images, ncols: int | None = None, labels=None, pad: int = 2, bg=255, tile_size=None) -> np.ndarray:
    """Images in a mosaic, left to right then top to bottom.

    Tile ``i`` has its top-left corner at ``(y, x) = (pad + r * (tile_h + band + pad), pad + c * (tile_w + pad))``
    with ``r, c = divmod(i, ncols)``.

    Args:
        images: the pictures (anything :func:`read_image` accepts).
        ncols: columns (default ``min(len(images), 8)``, torchvision's ``make_grid``).
        labels: one string or None per image (e.g. "tabby 0.94"), drawn centred in a band under each tile with
            ``cv2.putText`` (Hershey simplex; non-ASCII characters show as "?"); a label too wide for the tile is
            shrunk, then cut with "..".
        pad: pixels between the tiles and around the mosaic.
        bg: the background, a gray level or an RGB triple.
        tile_size: (H, W) of each tile (default: the largest height and width among the images); an image is
            centred in its tile, shrunk or enlarged to fit it keeping its aspect ratio, only when this is given.

    Returns:
        uint8 RGB mosaic.

    Raises:
        InputError: no images, labels not one per image, or a bad ``ncols``, ``pad``, ``bg`` or ``tile_size``.
    """
    pictures = [read_image(item) for item in image_list(images)]
    n = len(pictures)
    if ncols is None:
        ncols = min(n, 8)
    if not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise InputError(f"ncols must be a positive int, not {ncols!r}.")
    ncols = min(int(ncols), n)
    if not isinstance(pad, (int, np.integer)) or pad < 0:
        raise InputError(f"pad must be a non-negative int, not {pad!r}.")
    if labels is not None:
        labels = [labels] if isinstance(labels, str) else list(labels)
        if len(labels) != n:
            raise InputError(f"Got {len(labels)} labels for {n} images.")
    color = rgb_triple(bg, "bg").astype(np.uint8)
    tile = norm_size(tile_size) or (max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures))
    th, tw = tile
    band = _label_band_height() if labels is not None and any(labels) else 0
    nrows = -(-n // ncols)
    height = nrows * (th + band) + (nrows + 1) * pad
    width = ncols * tw + (ncols + 1) * pad
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = color
    ink = (0, 0, 0) if float(color.astype(np.float32).mean()) > 127 else (255, 255, 255)
    for i, picture in enumerate(pictures):
        row, col = divmod(i, ncols)
        y0, x0 = pad + row * (th + band + pad), pad + col * (tw + pad)
        if tile_size is not None:
            picture = fit_into(picture, th, tw)
        ph, pw = picture.shape[:2]
        dy, dx = (th - ph) // 2, (tw - pw) // 2
        canvas[y0 + dy:y0 + dy + ph, x0 + dx:x0 + dx + pw] = picture
        if band and labels[i]:
            _draw_label(canvas, str(labels[i]), x0, y0 + th, tw, band, ink)
    return canvas


def fit_into(picture: np.ndarray, th: int, tw: int) -> np.ndarray:
    """``picture`` scaled by one factor to fit a ``(th, tw)`` box, aspect ratio kept.

    ``cv2.resize`` with ``INTER_AREA`` when shrinking, ``INTER_LINEAR`` when enlarging. Centring it in the box is the
    caller's job.

    Args:
        picture: (h, w, 3) uint8.
        th: the box's height.
        tw: the box's width.

    Returns:
        The picture ``th`` high or ``tw`` wide (at least 1 pixel each way), never larger than the box; unchanged
        when it already has that size.
    """
    h, w = picture.shape[:2]
    ratio = min(th / h, tw / w)
    size = (max(1, min(tw, round(w * ratio))), max(1, min(th, round(h * ratio))))
    if size == (w, h):
        return picture
    # INTER_AREA averages when shrinking (no aliasing); bilinear when enlarging.
    interpolation = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
    return cv2.resize(picture, size, interpolation=interpolation)


def _label_band_height() -> int:
    (_, text_h), baseline = cv2.getTextSize("Ag", _FONT, _FONT_SCALE, 1)
    return text_h + baseline + 4


def _draw_label(canvas: np.ndarray, text: str, x0: int, top: int, width: int, band: int, ink) -> None:
    text = text.encode("ascii", "replace").decode("ascii")
    def text_width(s: str) -> int:
        return cv2.getTextSize(s, _FONT, scale, 1)[0][0]

    scale = _FONT_SCALE
    if text_width(text) > width:
        scale = max(_MIN_FONT_SCALE, _FONT_SCALE * width / text_width(text))
    if text_width(text) > width:
        while text and text_width(text + "..") > width:
            text = text[:-1]
        text = text.rstrip() + ".." if text else ""
    if not text:
        return
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, scale, 1)
    x = x0 + max(0, (width - text_w) // 2)
    y = top + (band + text_h - baseline) // 2 + 1
    cv2.putText(canvas, text, (x, y), _FONT, scale, ink, 1, cv2.LINE_AA)


def save_image(path, image, overwrite: bool = False, quality: int = 95) -> Path:
    """Write an image to PNG, JPEG or any format OpenCV encodes, chosen by the suffix.

    The file is written atomically: encoded in memory, written to a temporary file in the same folder, then moved into
    place, so a reader never sees half a file. Parent folders are created.

    Args:
        path: where to write.
        image: anything :func:`read_image` accepts; RGB.
        overwrite: replace an existing file; False keeps it and raises.
        quality: JPEG / WebP quality, 1..100.

    Returns:
        The path written.

    Raises:
        InputError: the file exists and ``overwrite`` is False, an unknown suffix, a bad ``quality``, or a bad
            image.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name such as {path / 'image.png'}.")
    suffix = path.suffix.lower()
    if not suffix:
        raise InputError(f"{path} has no suffix; add .png or .jpg so the format is known.")
    if not overwrite and path.exists():
        raise InputError(f"{path} already exists; pass overwrite=True to replace it.")
    if not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise InputError(f"quality must lie in 1..100, not {quality!r}.")
    bgr = read_image(image, mode="BGR", max_pixels=None)
    params = []
    if suffix in (".jpg", ".jpeg", ".jpe"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif suffix == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    try:
        ok, encoded = cv2.imencode(suffix, bgr, params)
    except cv2.error:
        ok = False
    if not ok:
        raise InputError(f"OpenCV cannot write {suffix!r} files ({path}); use .png or .jpg.")
    return write_atomic(path, encoded.tobytes(), overwrite=overwrite)
