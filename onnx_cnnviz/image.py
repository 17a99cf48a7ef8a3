"""Pictures: reading images, preprocessing presets, heat-map overlays, gradient images, grids and saving.

Conventions used throughout:

* An *image* is a uint8 ``(H, W, 3)`` array in RGB order unless a function says otherwise. Every function that takes
  an image accepts anything :func:`read_image` accepts (a path, a ``PIL.Image`` or an array).
* A *heat map* is a float ``(h, w)`` array in [0, 1]; it is resized to the image with bilinear interpolation
  (``cv2.INTER_LINEAR``, pixel centres aligned like ``align_corners=False``).
* A model input is a float32 ``(N, C, H, W)`` array made by :func:`preprocess` from a :class:`Preprocessing`:
  ``x = (pixels_in_order * scale - mean) / std``.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .files import write_atomic
from .errors import InputError

MAX_PIXELS = 100_000_000
METADATA_PREFIX = "cnnviz.preprocess."

COLORMAPS = {name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8 and CC are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_EXIF_ORIENTATION_TAG = 0x0112


# ---------------------------------------------------------------------------------------------------------------------
# Reading


def read_image(source, mode: str = "RGB", max_pixels: int | None = MAX_PIXELS, background=None,
               exif_orientation: bool = True) -> np.ndarray:
    """Any picture as a uint8 ``(H, W, 3)`` array, RGB order (``mode="BGR"``: BGR order, as OpenCV uses).

    ``source``: a path (``str`` / ``Path``, any characters; decoded by ``cv2.imdecode`` with ``IMREAD_UNCHANGED``),
    a ``PIL.Image``, or an array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` in RGB(A) order.

    Pixel values:

    * uint8 as is; uint16 (16-bit PNG/TIFF, PIL mode ``I;16``/``I``) to the nearest 8-bit level, ``round(v / 257)``,
      so 65535 -> 255 and ``257 * k`` -> ``k``; float arrays must lie in [0, 1] and become ``round(255 * v)``;
      other integer arrays (int32, int64, ...) must lie in [0, 255]; bool arrays become 0 / 255.
    * Grayscale is repeated over the three channels.
    * Alpha is dropped, not composited, by default: this is what ``PIL.Image.convert("RGB")`` and
      ``cv2.imread(path)`` give, so the pixels match the usual training pipelines. Pass ``background`` (a gray level
      or an RGB triple, 0..255) to composite over it instead: ``rgb * a + background * (1 - a)``.
    * For files, the EXIF orientation tag (JPEG, PNG eXIf, TIFF, WebP) is applied, so the array is upright the way
      image viewers show it; ``exif_orientation=False`` keeps the stored pixel order (what plain PIL gives).

    ``max_pixels``: refuse pictures with more pixels than this (``None``: no limit). For files the size is read from
    the header before anything is decoded, so a crafted "decompression bomb" costs no memory.

    Raises :class:`InputError` for a missing, unreadable, truncated or non-image file (naming the file), an array of
    the wrong shape or range, or a picture over ``max_pixels``.
    """
    order = _check_order(mode, "mode")
    if isinstance(source, (str, os.PathLike)):
        array = _read_file(Path(source), max_pixels, exif_orientation)
    elif _is_pil(source):
        array = _pil_to_array(source, max_pixels)
    elif isinstance(source, np.ndarray) or hasattr(source, "__array__"):
        array = np.asarray(source)
        _check_array_shape(array)
        _check_pixels(array.shape[0], array.shape[1], max_pixels, "The image")
    else:
        raise InputError(f"Cannot read an image from a {type(source).__name__}; pass a path, a PIL.Image or a numpy "
                         f"array (H, W[, C]).")
    rgb = _to_rgb8(array, background)
    return np.ascontiguousarray(rgb[..., ::-1]) if order == "BGR" else rgb


def _check_order(order, what: str) -> str:
    value = str(order).upper()
    if value not in ("RGB", "BGR"):
        raise InputError(f"{what} must be 'RGB' or 'BGR', not {order!r}.")
    return value


def _is_pil(source) -> bool:
    try:
        from PIL import Image
    except ImportError:  # PIL is optional: without it nobody can hand us a PIL.Image
        return False
    return isinstance(source, Image.Image)


def _check_pixels(height: int, width: int, max_pixels: int | None, what: str) -> None:
    if max_pixels is not None and height * width > max_pixels:
        raise InputError(f"{what} is {width}x{height} = {height * width:,} pixels, more than max_pixels="
                         f"{max_pixels:,}; pass a larger max_pixels (or None) if you trust it, or downscale it first.")


def _check_array_shape(array: np.ndarray) -> None:
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 2, 3, 4)):
        if array.shape[0] == 0 or array.shape[1] == 0:
            raise InputError(f"The image array is empty (shape {array.shape}).")
        return
    hint = ""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4):
        hint = " It looks channels-first (C, H, W): pass array.transpose(1, 2, 0)."
    raise InputError(f"An image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), not {array.shape}.{hint}")


def _to_rgb8(array: np.ndarray, background=None) -> np.ndarray:
    """RGB(A)/gray array of any supported dtype -> uint8 (H, W, 3); see :func:`read_image` for the rules."""
    if array.ndim == 2:
        array = array[:, :, None]
    alpha = None
    if array.shape[2] in (2, 4):
        alpha, array = array[:, :, -1], array[:, :, :-1]
    rgb = _to_uint8(array)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    if alpha is not None and background is not None:
        weight = _to_uint8(alpha[:, :, None]).astype(np.float32) / 255.0
        rgb = np.floor(rgb * weight + _rgb_triple(background, "background") * (1.0 - weight) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.uint16:
        # round(v / 257) in integers: 257 maps 0..65535 onto 0..255 exactly (65535 = 255 * 257)
        return ((array.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError("The image array has NaN or infinite values.")
        lo, hi = float(array.min()), float(array.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise InputError(f"A float image must lie in [0, 1], but this one spans [{lo:.4g}, {hi:.4g}]; divide a "
                             f"0..255 image by 255 (or pass it as uint8).")
        return np.floor(np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 255:
            raise InputError(f"An integer image of dtype {array.dtype} must lie in [0, 255], but this one spans "
                             f"[{lo}, {hi}]; pass 16-bit images as uint16.")
        return array.astype(np.uint8)
    raise InputError(f"Unsupported image dtype {array.dtype}; use uint8, uint16 or float in [0, 1].")


def _rgb_triple(value, what: str) -> np.ndarray:
    try:
        flat = np.asarray(value, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        flat = np.zeros(0, dtype=np.float32)
    if flat.size not in (1, 3) or not np.all((flat >= 0) & (flat <= 255)):
        raise InputError(f"{what} must be a gray level or an (R, G, B) triple in 0..255, not {value!r}.")
    return np.broadcast_to(flat, (3,))


def _pil_to_array(image, max_pixels: int | None) -> np.ndarray:
    width, height = image.size
    _check_pixels(height, width, max_pixels, "The PIL image")
    mode = image.mode
    try:
        if mode in ("L", "RGB", "RGBA"):
            return np.asarray(image)
        if mode.startswith("I;16"):
            return np.asarray(image).astype(np.uint16)
        if mode == "I":  # what PIL makes of 16-bit grayscale PNG/TIFF
            array = np.asarray(image)
            if array.size and (array.min() < 0 or array.max() > 65535):
                raise InputError(f"A PIL image of mode 'I' must hold 16-bit values (0..65535), but this one spans "
                                 f"[{array.min()}, {array.max()}].")
            return array.astype(np.uint16)
        if mode == "F":
            return np.asarray(image)
        if mode in ("LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
            return np.asarray(image.convert("RGBA"))
        return np.asarray(image.convert("RGB"))
    except OSError as err:  # a lazily opened file that turns out truncated
        raise InputError(f"The PIL image could not be decoded ({err}); check that its file is complete.") from err


def _read_file(path: Path, max_pixels: int | None, exif_orientation: bool) -> np.ndarray:
    if not path.exists():
        raise InputError(f"Image file {path} does not exist.")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file.")
    try:
        # np.fromfile + imdecode rather than cv2.imread: imread cannot open non-ASCII paths on Windows
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise InputError(f"Could not read image file {path}: {err.strerror or err}.") from err
    if data.size == 0:
        raise InputError(f"Image file {path} is empty.")
    head = _probe(data.tobytes(), path)
    if head.size is not None:
        _check_pixels(head.size[1], head.size[0], max_pixels, f"Image file {path}")
    elif max_pixels is not None and head.more_than is not None and head.more_than >= max_pixels:
        raise InputError(f"Image file {path} declares more than {head.more_than:,} pixels, over max_pixels="
                         f"{max_pixels:,}; pass a larger max_pixels (or None) if you trust it, or downscale it first.")
    try:
        array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        array = None
    if array is None:
        raise InputError(f"Image file {path} could not be decoded: it is not an image OpenCV can read, or it is "
                         f"corrupt. Re-save it as PNG or JPEG.")
    if head.size is None:  # format with no header we could read: the check comes after decoding
        _check_pixels(array.shape[0], array.shape[1], max_pixels, f"Image file {path}")
    if array.ndim == 3 and array.shape[2] >= 3:  # OpenCV decodes to BGR(A)
        array = np.concatenate([array[:, :, 2::-1], array[:, :, 3:]], axis=2)
    if exif_orientation and head.orientation not in (None, 1):
        array = _orient(array, head.orientation)
    return array


@dataclass
class _Header:
    size: tuple | None = None  # (width, height) from the header, None when unknown
    more_than: int | None = None  # when the size is unknown: a pixel count the header is known to exceed
    orientation: int | None = None  # EXIF orientation 1..8


def _probe(blob: bytes, path: Path) -> _Header:
    """Size and EXIF orientation from the header, without decoding pixels; refuses truncated PNG and JPEG files.

    The truncation checks run before OpenCV so that its decoders (which log to stderr on a short file) only ever see
    structurally complete files.
    """
    if blob.startswith(_PNG_SIGNATURE):
        return _probe_png(blob, path)
    if blob.startswith(b"\xff\xd8\xff"):
        return _probe_jpeg(blob, path)
    return _probe_pil(blob)


def _probe_png(blob: bytes, path: Path) -> _Header:
    header = _Header()
    offset, end = 8, len(blob)
    while True:
        if offset + 8 > end:
            raise InputError(f"Image file {path} is a truncated PNG (it ends before the IEND chunk); re-download or "
                             f"re-export it.")
        length, kind = struct.unpack(">I4s", blob[offset:offset + 8])
        body = offset + 8
        if kind == b"IHDR":
            if length < 8 or body + 8 > end:
                raise InputError(f"Image file {path} is a corrupt PNG (bad IHDR chunk).")
            width, height = struct.unpack(">II", blob[body:body + 8])
            header.size = (width, height)
        elif kind == b"eXIf" and body + length <= end:
            header.orientation = _exif_orientation(blob[body:body + length])
        elif kind == b"IEND":
            break
        offset = body + length + 4  # data and CRC
    if header.size is None:
        raise InputError(f"Image file {path} is a corrupt PNG (no IHDR chunk).")
    return header


def _probe_jpeg(blob: bytes, path: Path) -> _Header:
    header = _Header()
    offset, end = 2, len(blob)
    while offset + 4 <= end:
        if blob[offset] != 0xFF:
            break
        marker = blob[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            offset += 2
            continue
        length = int.from_bytes(blob[offset + 2:offset + 4], "big")
        segment = blob[offset + 4:offset + 2 + length]
        if marker in _JPEG_SOF and len(segment) >= 5:
            height, width = struct.unpack(">HH", segment[1:5])
            if height and width:  # height 0 means "given later by a DNL marker"
                header.size = (width, height)
        elif marker == 0xE1 and segment.startswith(b"Exif\x00\x00") and header.orientation is None:
            header.orientation = _exif_orientation(segment)
        elif marker == 0xDA:  # start of scan: the header is over
            break
        offset += 2 + length
    # Entropy-coded data escapes 0xFF as FF 00, so an end-of-image marker after the last start-of-scan means the
    # file is complete (an EXIF thumbnail has its own FF D9, but it comes before the main scan).
    if blob.rfind(b"\xff\xd9") < blob.rfind(b"\xff\xda"):
        raise InputError(f"Image file {path} is a truncated JPEG (no end-of-image marker after the last scan); "
                         f"re-download or re-export it.")
    return header


def _probe_pil(blob: bytes) -> _Header:
    try:
        from PIL import Image
    except ImportError:
        return _Header()
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check replaces PIL's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as image:
                orientation = None
                if image.format in ("TIFF", "WEBP"):  # formats whose EXIF PIL reads without decoding
                    orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
                return _Header(size=image.size, orientation=orientation)
    except Image.DecompressionBombError:
        # PIL refuses to report sizes over twice its own limit; that bound is enough to apply ours.
        limit = Image.MAX_IMAGE_PIXELS
        return _Header(more_than=2 * limit if limit else None)
    except Exception:  # noqa: BLE001 - not PIL's format or unreadable header: OpenCV gets the final word
        return _Header()


def _exif_orientation(payload: bytes) -> int | None:
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        exif = Image.Exif()
        exif.load(payload)
        value = exif.get(_EXIF_ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - malformed EXIF: ignore it, as viewers do
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 2..8 (the same transforms as ``PIL.ImageOps.exif_transpose``)."""
    if orientation == 2:
        out = array[:, ::-1]
    elif orientation == 3:
        out = array[::-1, ::-1]
    elif orientation == 4:
        out = array[::-1]
    elif orientation == 5:
        out = np.swapaxes(array, 0, 1)
    elif orientation == 6:
        out = np.rot90(array, k=-1)
    elif orientation == 7:
        out = np.swapaxes(array[::-1, ::-1], 0, 1)
    elif orientation == 8:
        out = np.rot90(array, k=1)
    else:
        out = array
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: ``x = (pixels_in_order * scale - mean) / std``, in (N, C, H, W) float32.

    * ``size``: (H, W) to resize to with ``cv2.INTER_LINEAR`` (an int means square); ``None`` keeps the image size.
    * ``order``: "RGB" or "BGR", the channel order the model expects.
    * ``scale``: multiplies the 0..255 pixels first (1/255 for [0, 1] inputs, 1 for 0..255 inputs).
    * ``mean``, ``std``: per channel, in the model's channel order and in the scaled units; ``None`` skips the step.

    Resizing is plain bilinear, without the antialiasing of PIL / torchvision ``Resize``: a photo much larger than
    ``size`` is better downscaled first if you need to match those pipelines closely.
    """
    size: tuple | None = (224, 224)
    mean: tuple | None = None
    std: tuple | None = None
    order: str = "RGB"
    scale: float = 1.0 / 255.0

    def __post_init__(self):
        object.__setattr__(self, "size", _norm_size(self.size))
        object.__setattr__(self, "mean", _norm_triple(self.mean, "mean"))
        std = _norm_triple(self.std, "std")
        if std is not None and not all(v > 0 for v in std):
            raise InputError(f"std must be positive, not {std}.")
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "order", _check_order(self.order, "order"))
        scale = _as_float(self.scale, "scale")
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(f"scale must be a positive number, not {self.scale!r}.")
        object.__setattr__(self, "scale", scale)

    def to_metadata(self) -> dict:
        """String key/values for ONNX ``metadata_props``, keys prefixed ``cnnviz.preprocess.``; "" means None.

        Floats are written with ``repr`` so :meth:`from_metadata` gets back exactly the same numbers.
        """
        def join(values):
            return "" if values is None else ",".join(repr(v) for v in values)
        return {METADATA_PREFIX + "size": join(self.size), METADATA_PREFIX + "mean": join(self.mean),
                METADATA_PREFIX + "std": join(self.std), METADATA_PREFIX + "order": self.order,
                METADATA_PREFIX + "scale": repr(self.scale)}

    @classmethod
    def from_metadata(cls, props) -> Preprocessing | None:
        """The preprocessing stored in model metadata, or ``None`` when it holds no ``cnnviz.preprocess.*`` key.

        ``props``: a dict (e.g. ``Model.metadata``) or ONNX ``metadata_props`` entries; keys without the prefix are
        ignored. Keys: ``preset`` (a name in :data:`PRESETS` to start from), ``size`` ("224,224" or "224"), ``mean``,
        ``std`` (comma-separated; "" for none), ``order`` ("RGB"/"BGR"), ``scale`` (a number or a fraction such as
        "1/255"). Keys left out take the preset's value, or without a preset: no resize, no mean/std, RGB, 1/255.
        """
        items = props.items() if isinstance(props, Mapping) else ((p.key, p.value) for p in props)
        ours = {k[len(METADATA_PREFIX):]: str(v).strip() for k, v in items if str(k).startswith(METADATA_PREFIX)}
        if not ours:
            return None
        known = ("preset", "size", "mean", "std", "order", "scale")
        unknown = sorted(set(ours) - set(known))
        if unknown:
            raise InputError(f"Unknown preprocessing metadata key(s) {', '.join(METADATA_PREFIX + k for k in unknown)};"
                             f" the known keys are {', '.join(METADATA_PREFIX + k for k in known)}.")
        base = _preset(ours.pop("preset")) if "preset" in ours else cls(size=None)
        fields = {}
        for key, text in ours.items():
            if key == "order":
                fields[key] = text
            elif key == "scale":
                fields[key] = _parse_number(text, METADATA_PREFIX + key)
            elif text == "":
                fields[key] = None
            else:
                numbers = [_parse_number(part, METADATA_PREFIX + key) for part in text.split(",")]
                if key == "size":
                    if not all(n == int(n) for n in numbers):
                        raise InputError(f"{METADATA_PREFIX}size must hold integers, not {text!r}.")
                    numbers = [int(n) for n in numbers]
                fields[key] = tuple(numbers) if len(numbers) > 1 else numbers[0]
        return dataclasses.replace(base, **fields)


def _as_float(value, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be a number, not {value!r}.") from err


def _parse_number(text: str, what: str) -> float:
    numerator, slash, denominator = text.partition("/")
    try:
        value = float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError) as err:
        raise InputError(f"{what} must be a number or a fraction like 1/255, not {text!r}.") from err
    if not math.isfinite(value):
        raise InputError(f"{what} must be finite, not {text!r}.")
    return value


def _norm_size(size) -> tuple | None:
    if size is None:
        return None
    values = (size, size) if np.ndim(size) == 0 else tuple(size)
    if len(values) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                                   for v in values):
        raise InputError(f"size must be a positive int or an (H, W) pair of positive ints, not {size!r}.")
    return (int(values[0]), int(values[1]))


def _norm_triple(values, what: str) -> tuple | None:
    if values is None:
        return None
    try:
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be one number or three (one per channel), not {values!r}.") from err
    if flat.size not in (1, 3):
        raise InputError(f"{what} must be one number or three (one per channel), not {values!r}.")
    numbers = tuple(float(v) for v in np.broadcast_to(flat, (3,)))
    if not all(math.isfinite(v) for v in numbers):
        raise InputError(f"{what} must be finite, not {values!r}.")
    return numbers


PRESETS = {
    # torchvision ImageNet models: ToTensor then Normalize (the statistics of the ImageNet training set).
    "imagenet": Preprocessing(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), order="RGB",
                              scale=1.0 / 255.0),
    # Caffe-trained VGG / ResNet (and Keras "caffe" mode): BGR, 0..255, minus the per-channel mean (B, G, R).
    "caffe": Preprocessing(size=(224, 224), mean=(103.939, 116.779, 123.68), std=None, order="BGR", scale=1.0),
    # [0, 1] RGB at the image's own size.
    "none": Preprocessing(size=None, mean=None, std=None, order="RGB", scale=1.0 / 255.0),
}


def _preset(preset) -> Preprocessing:
    if isinstance(preset, Preprocessing):
        return preset
    if isinstance(preset, str) and preset.lower() in PRESETS:
        return PRESETS[preset.lower()]
    raise InputError(f"Unknown preprocessing preset {preset!r}; use one of {', '.join(PRESETS)} or a "
                     f"Preprocessing(...).")


def get_preprocessing(preset="imagenet", size=None, mean=None, std=None, order=None, scale=None) -> Preprocessing:
    """A preset (name or :class:`Preprocessing`) with the given fields overridden (``None`` keeps the preset's).

    To drop a preset's mean or std, override it with 0 or 1.
    """
    base = _preset(preset)
    changes = {k: v for k, v in dict(size=size, mean=mean, std=std, order=order, scale=scale).items() if v is not None}
    return dataclasses.replace(base, **changes) if changes else base


def _image_list(images) -> list:
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("No images given.")
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.shape[-1] not in (1, 3, 4):
            raise InputError(f"A 4-D array of images must be (N, H, W, C) with C in 1, 3, 4, not {images.shape}; "
                             f"(N, C, H, W) arrays are already model inputs and need no preprocessing.")
        return list(images)
    return [images]


def preprocess(images, preset="imagenet", size=None, mean=None, std=None, order=None, scale=None) -> np.ndarray:
    """One image or a list of images -> a float32 ``(N, 3, H, W)`` model input.

    ``x = (resize(rgb)[..., order] * scale - mean) / std``; see :class:`Preprocessing` and :data:`PRESETS`
    ("imagenet", "caffe", "none"). ``preset`` may be a name or a :class:`Preprocessing` (e.g. from
    :meth:`Preprocessing.from_metadata`); the other arguments override its fields. Each image may be anything
    :func:`read_image` accepts; a 4-D ``(N, H, W, C)`` array is a batch. The uint8 image is resized before scaling, so
    ``deprocess(preprocess(img))`` gives back exactly the resized image a viewer should be shown.
    """
    spec = get_preprocessing(preset, size, mean, std, order, scale)
    out = []
    for item in _image_list(images):
        rgb = read_image(item)
        if spec.size is not None and rgb.shape[:2] != spec.size:
            rgb = cv2.resize(rgb, (spec.size[1], spec.size[0]), interpolation=cv2.INTER_LINEAR)
        if out and rgb.shape != out[0].shape:
            raise InputError(f"The images have different sizes ({out[0].shape[:2]} and {rgb.shape[:2]}); pass size= "
                             f"to resize them all.")
        out.append(rgb)
    x = np.stack(out).astype(np.float32)
    if spec.order == "BGR":
        x = x[..., ::-1]
    x *= np.float32(spec.scale)
    if spec.mean is not None:
        x -= np.asarray(spec.mean, dtype=np.float32)
    if spec.std is not None:
        x /= np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def deprocess(x, preset="imagenet", mean=None, std=None, order=None, scale=None) -> np.ndarray:
    """Invert :func:`preprocess` for display: ``(C, H, W)`` -> uint8 RGB ``(H, W, 3)``; ``(N, C, H, W)`` -> ``(N, H,
    W, 3)``.

    ``pixels = (x * std + mean) / scale``, rounded and clipped to 0..255, then put in RGB order. The resize is not
    undone (the result has the model's input size).
    """
    spec = get_preprocessing(preset, None, mean, std, order, scale)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise InputError(f"deprocess takes a (3, H, W) or (N, 3, H, W) model input, not shape {x.shape}.")
    pixels = np.moveaxis(x, -3, -1)
    if spec.std is not None:
        pixels = pixels * np.asarray(spec.std, dtype=np.float32)
    if spec.mean is not None:
        pixels = pixels + np.asarray(spec.mean, dtype=np.float32)
    pixels = np.clip(np.floor(pixels / np.float32(spec.scale) + 0.5), 0, 255).astype(np.uint8)
    if spec.order == "BGR":
        pixels = pixels[..., ::-1]
    return np.ascontiguousarray(pixels)


# ---------------------------------------------------------------------------------------------------------------------
# Heat maps and gradient images


def _colormap_id(colormap) -> int:
    if isinstance(colormap, (int, np.integer)) and not isinstance(colormap, bool) and \
            int(colormap) in COLORMAPS.values():
        return int(colormap)
    if isinstance(colormap, str) and colormap.lower() in COLORMAPS:
        return COLORMAPS[colormap.lower()]
    raise InputError(f"Unknown colormap {colormap!r}; use one of {', '.join(sorted(COLORMAPS))} (or a "
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
                         f"(e.g. onnx_cnnviz.methods.gradients.normalize_maps).")
    return np.clip(h, 0.0, 1.0)


def colorize(heatmap, colormap="jet", size=None) -> np.ndarray:
    """A [0, 1] heat map as a uint8 RGB picture: ``cv2.applyColorMap(round(255 * h))`` converted from BGR.

    ``size``: (H, W) to resize the float map to first (bilinear). ``colormap``: a name in :data:`COLORMAPS`
    ("jet", "viridis", "inferno", "magma", "turbo", "hot", "parula", ...) or a ``cv2.COLORMAP_*`` constant.
    """
    h = _heatmap_2d(heatmap)
    size = _norm_size(size)
    if size is not None and h.shape != size:
        h = np.clip(cv2.resize(h, (size[1], size[0]), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    levels = np.floor(h * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(cv2.applyColorMap(levels, _colormap_id(colormap))[:, :, ::-1])


def overlay(image, heatmap, alpha: float = 0.5, colormap="jet") -> np.ndarray:
    """Heat map over an image, as in the Grad-CAM figures (Selvaraju et al. 2017): uint8 RGB at the image's size.

    ``out = round((1 - alpha) * image + alpha * colorize(heatmap))``, with the heat map resized bilinearly to the
    image. This is a plain alpha blend: pytorch-grad-cam's ``show_cam_on_image`` computes the same blend on [0, 1]
    floats and then divides by its maximum, which brightens dim images; here alpha=0 gives back the image exactly
    and alpha=1 the coloured map.
    """
    alpha = _as_float(alpha, "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], not {alpha}.")
    rgb = read_image(image)
    colored = colorize(heatmap, colormap, size=rgb.shape[:2])
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colored.astype(np.float32)
    return np.clip(np.floor(blend + 0.5), 0, 255).astype(np.uint8)


def gradient_image(grad, mode: str = "std", order: str = "RGB") -> np.ndarray:
    """A gradient with respect to the input (vanilla, guided backprop, deconvnet) as a uint8 RGB picture.

    ``grad``: ``(C, H, W)`` with C = 1 or 3, or a batch ``(N, C, H, W)`` (each image scaled on its own).
    ``order``: the channel order of the model input ("BGR" for caffe-style models), flipped to RGB for display.

    * ``mode="std"`` (the default; ``deprocess_image`` of the Keras filter-visualisation example, Chollet 2016,
      the usual way guided-backprop (Springenberg et al. 2015) and deconvnet (Zeiler & Fergus 2014) reconstructions
      are shown): ``g = (g - mean(g)) / (std(g) + 1e-5) * 0.1 + 0.5``, clipped to [0, 1], mean and std over all
      channels and pixels. The mean sits at mid-gray; +-5 standard deviations reach black / white.
    * ``mode="minmax"``: ``(g - min(g)) / (max(g) - min(g))`` over all channels and pixels; a constant gradient
      gives black.
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
        lo, span = g.min(), g.max() - g.min()
        g = (g - lo) / span if span > 0 else np.zeros_like(g)
    else:
        raise InputError(f"mode must be 'std' or 'minmax', not {mode!r}.")
    if _check_order(order, "order") == "BGR":
        g = g[::-1]
    rgb = np.floor(np.moveaxis(g, 0, -1) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb)


def saliency_image(smap, normalize: bool = True, colormap=None) -> np.ndarray:
    """A saliency map ``(H, W)`` (Simonyan et al. 2014, Sec. 3.1) as a uint8 RGB picture.

    ``normalize``: min-max scale the map to [0, 1] first, as in the paper's figures (a constant map gives black);
    with False the map must already lie in [0, 1]. ``colormap``: None for gray (white = salient), else as in
    :func:`colorize`.
    """
    m = np.asarray(smap, dtype=np.float32)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise InputError(f"saliency_image takes an (H, W) map, not shape {np.shape(smap)}.")
    if normalize:
        if not np.isfinite(m).all():
            raise InputError("The saliency map has NaN or infinite values.")
        lo, span = m.min(), m.max() - m.min()
        m = (m - lo) / span if span > 0 else np.zeros_like(m)
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
    """Images in a mosaic, left to right then top to bottom: uint8 RGB.

    Each tile is ``tile_size`` (H, W) (default: the largest height and width among the images); an image is centred
    in its tile, shrunk or enlarged to fit it, keeping its aspect ratio, only when ``tile_size`` is given. ``pad``
    pixels of ``bg`` (a gray level or an RGB triple) separate the tiles and frame the mosaic. ``ncols`` defaults to
    ``min(len(images), 8)`` (torchvision's ``make_grid``). ``labels`` (one string or None per image, e.g.
    "tabby 0.94") are drawn centred in a band under each tile with ``cv2.putText`` (Hershey simplex; non-ASCII
    characters show as "?"); a label too wide for the tile is shrunk, then cut with "..".

    Tile ``i`` has its top-left corner at ``(y, x) = (pad + r * (tile_h + band + pad), pad + c * (tile_w + pad))``
    with ``r, c = divmod(i, ncols)``.
    """
    pictures = [read_image(item) for item in _image_list(images)]
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
    color = _rgb_triple(bg, "bg").astype(np.uint8)
    tile = _norm_size(tile_size) or (max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures))
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
            picture = _fit(picture, th, tw)
        ph, pw = picture.shape[:2]
        dy, dx = (th - ph) // 2, (tw - pw) // 2
        canvas[y0 + dy:y0 + dy + ph, x0 + dx:x0 + dx + pw] = picture
        if band and labels[i]:
            _draw_label(canvas, str(labels[i]), x0, y0 + th, tw, band, ink)
    return canvas


def _fit(picture: np.ndarray, th: int, tw: int) -> np.ndarray:
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
    """Write an image (anything :func:`read_image` accepts; RGB) to PNG, JPEG or any format OpenCV encodes, by suffix.

    The file is written atomically: encoded in memory, written to a temporary file in the same folder, then moved into
    place, so a reader never sees half a file. Parent folders are created. An existing file is kept and
    :class:`InputError` raised unless ``overwrite=True``. ``quality``: JPEG / WebP quality 1..100. Returns the path.
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


__all__ = ["read_image", "preprocess", "deprocess", "get_preprocessing", "Preprocessing", "PRESETS", "colorize",
           "overlay", "gradient_image", "saliency_image", "grid", "save_image", "COLORMAPS", "MAX_PIXELS",
           "METADATA_PREFIX"]
