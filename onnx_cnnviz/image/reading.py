"""Reading pictures: :func:`read_image` for paths, ``PIL.Image`` objects and arrays, with the checks behind it.

Holds the pixel conversions (uint16, float, bool, gray, alpha), the header probing that sizes a file and refuses
truncated PNG / JPEG files before anything is decoded (the :data:`MAX_PIXELS` "decompression bomb" limit, which
:func:`pixel_limit` changes for a block of code), the EXIF orientation, and :data:`IMAGE_SUFFIXES`, the file suffixes
the project treats as pictures. Only regular files are read: a FIFO or a device is refused before it is read.
"""
from __future__ import annotations

import contextlib
import contextvars
import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from ..files import read_regular
from ._arguments import check_order

MAX_PIXELS = 100_000_000


class _CurrentLimit:
    """The default of ``max_pixels``: the limit :func:`pixel_limit` set, else :data:`MAX_PIXELS`."""

    def __repr__(self) -> str:
        return "CURRENT_LIMIT"


CURRENT_LIMIT = _CurrentLimit()
_limit: contextvars.ContextVar = contextvars.ContextVar("onnx_cnnviz_max_pixels", default=MAX_PIXELS)


def _check_limit(max_pixels) -> int | None:
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise InputError(f"max_pixels must be a positive int or None (no limit), not {max_pixels!r}.")
    return int(max_pixels)


@contextlib.contextmanager
def pixel_limit(max_pixels: int | None):
    """Change the picture size :func:`read_image` refuses, inside a ``with`` block.

    Every :func:`read_image` call that does not pass ``max_pixels`` (the reads inside
    :func:`~onnx_cnnviz.image.preprocess`, the feature-visualisation functions, ...) refuses pictures over
    ``max_pixels`` pixels instead of :data:`MAX_PIXELS`. Blocks nest; the previous limit comes back on exit. The
    limit is a context variable: other threads and asyncio tasks keep their own.

    Args:
        max_pixels: the largest picture, in pixels; ``None``: no limit.

    Yields:
        Nothing; the limit holds until the block ends.

    Example:
        ```python
        with pixel_limit(200_000_000):
            x = cv.preprocess("panorama.jpg")
        ```
    """
    token = _limit.set(_check_limit(max_pixels))
    try:
        yield
    finally:
        _limit.reset(token)


def current_pixel_limit() -> int | None:
    """The ``max_pixels`` that :func:`read_image` uses when none is passed (see :func:`pixel_limit`).

    Returns:
        The limit in pixels, or None for none.
    """
    return _limit.get()

# What read_image decodes (cv2.imdecode; GIF needs OpenCV >= 4.11), for finding pictures in a folder by suffix.
# .jpe and .jfif are JPEG; .pnm and .pbm are the other Netpbm formats next to .ppm and .pgm.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                            ".ppm", ".pgm", ".pnm", ".pbm"})

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8 and CC are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_EXIF_ORIENTATION_TAG = 0x0112


def read_image(source, mode: str = "RGB", max_pixels: int | None = CURRENT_LIMIT, background=None,
               exif_orientation: bool = True) -> np.ndarray:
    """Any picture as a uint8 ``(H, W, 3)`` array, RGB order (``mode="BGR"``: BGR order, as OpenCV uses).

    Pixel values:

    * uint8 as is; uint16 (16-bit PNG/TIFF, PIL mode ``I;16``/``I``) to the nearest 8-bit level, ``round(v / 257)``,
      so 65535 -> 255 and ``257 * k`` -> ``k``; float arrays must lie in [0, 1] and become ``round(255 * v)``;
      other integer arrays (int32, int64, ...) must lie in [0, 255]; bool arrays become 0 / 255.
    * Grayscale is repeated over the three channels.
    * Alpha is dropped, not composited, by default: this is what ``PIL.Image.convert("RGB")`` and
      ``cv2.imread(path)`` give, so the pixels match the usual training pipelines. Pass ``background`` to composite
      over it instead: ``rgb * a + background * (1 - a)``.

    Args:
        source: a path (``str`` / ``Path``, any characters; decoded by ``cv2.imdecode`` with
            ``IMREAD_UNCHANGED``), a ``PIL.Image``, or an array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
            ``(H, W, 4)`` in RGB(A) order.
        mode: ``"RGB"`` or ``"BGR"``, the channel order returned.
        max_pixels: refuse pictures with more pixels than this (``None``: no limit; default :data:`MAX_PIXELS`, or
            the limit of an enclosing :func:`pixel_limit` block). For files the size is read from the header before
            anything is decoded, so a crafted "decompression bomb" costs no memory.
        background: a gray level or an RGB triple, 0..255, to composite a transparent picture over; None drops alpha.
        exif_orientation: for files, apply the EXIF orientation tag (JPEG, PNG eXIf, TIFF, WebP), so the array is
            upright the way image viewers show it; False keeps the stored pixel order (what plain PIL gives).

    Returns:
        uint8 ``(H, W, 3)``.

    Raises:
        InputError: a missing, unreadable, truncated or non-image file (naming the file), a path that is not a
            regular file (a FIFO, a device such as ``/dev/zero``, a socket: refused before anything is read), an
            array of the wrong shape or range, or a picture over ``max_pixels``.
    """
    order = check_order(mode, "mode")
    max_pixels = _limit.get() if max_pixels is CURRENT_LIMIT else _check_limit(max_pixels)
    if isinstance(source, (str, os.PathLike)):
        array = _read_file(Path(source), max_pixels, exif_orientation, keep_alpha=background is not None)
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


def _is_pil(source) -> bool:
    try:
        from PIL import Image
    except ImportError:  # PIL is optional: without it nobody can hand us a PIL.Image
        return False
    return isinstance(source, Image.Image)


_LIMIT_HINT = ("pass a larger max_pixels (or None; on the command line --max-pixels N or none) if you trust it, or "
               "downscale it first.")


def _check_pixels(height: int, width: int, max_pixels: int | None, what: str) -> None:
    if max_pixels is not None and height * width > max_pixels:
        raise InputError(f"{what} is {width}x{height} = {height * width:,} pixels, more than max_pixels="
                         f"{max_pixels:,}; {_LIMIT_HINT}")


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
        rgb = np.floor(rgb * weight + rgb_triple(background, "background") * (1.0 - weight) + 0.5).astype(np.uint8)
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


def rgb_triple(value, what: str) -> np.ndarray:
    """A colour argument as a float32 ``(R, G, B)`` array: a gray level ``v`` becomes ``(v, v, v)``.

    Args:
        value: one number or three, each in 0..255 (a background, a canvas colour).
        what: the argument's name, for the error.

    Returns:
        A read-only broadcast view; copy it (or ``.astype``) before writing to it.

    Raises:
        InputError: not one or three numbers in 0..255.
    """
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


def _read_file(path: Path, max_pixels: int | None, exif_orientation: bool, keep_alpha: bool = True) -> np.ndarray:
    if not path.exists():
        raise InputError(f"Image file {path} does not exist.")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file.")
    try:
        # read + imdecode rather than cv2.imread: imread cannot open non-ASCII paths on Windows. read_regular
        # refuses a FIFO (it would block) or a device (/dev/zero never ends) before reading a byte.
        blob = read_regular(path, "Image file")
    except FileNotFoundError:  # removed since the check above
        raise InputError(f"Image file {path} does not exist.") from None
    except OSError as err:
        raise InputError(f"Could not read image file {path}: {err.strerror or err}.") from err
    if not blob:
        raise InputError(f"Image file {path} is empty.")
    data = np.frombuffer(blob, dtype=np.uint8)
    head = _probe(blob, path)
    if head.size is not None:
        _check_pixels(head.size[1], head.size[0], max_pixels, f"Image file {path}")
    elif max_pixels is not None and head.more_than is not None and head.more_than >= max_pixels:
        raise InputError(f"Image file {path} declares more than {head.more_than:,} pixels, over max_pixels="
                         f"{max_pixels:,}; {_LIMIT_HINT}")
    try:
        array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        array = None
    if array is None:
        raise InputError(f"Image file {path} could not be decoded: it is not an image OpenCV can read, or it is "
                         f"corrupt. Re-save it as PNG or JPEG.")
    if head.size is None:  # format with no header we could read: the check comes after decoding
        _check_pixels(array.shape[0], array.shape[1], max_pixels, f"Image file {path}")
    del blob, data
    if array.dtype == np.uint16 and array.flags.owndata and array.flags.c_contiguous:
        array = _narrow_in_place(array, keep_alpha)  # already RGB(A) order, 8-bit
    elif array.ndim == 3 and array.shape[2] >= 3:  # OpenCV decodes to BGR(A)
        array = np.concatenate([array[:, :, 2::-1], array[:, :, 3:]], axis=2)
    if exif_orientation and head.orientation not in (None, 1):
        array = _orient(array, head.orientation)
    return array


#: The bytes of 16-bit picture converted at once by :func:`_narrow_in_place`.
_BLOCK_BYTES = 16 * 1024 * 1024


def _narrow_in_place(array: np.ndarray, keep_alpha: bool) -> np.ndarray:
    """A decoded 16-bit BGR(A) or gray(+alpha) picture as uint8 RGB(A) or gray, ``round(v / 257)``, in its own buffer.

    A 10000x9999 RGBA 16-bit PNG decodes to 800 MB; converting it whole (a channel-reordered copy, then uint32
    temporaries) peaked at 3.1 GB. Here blocks of rows are converted in order and written to the front of the
    decoded buffer (output row ``r`` ends at byte ``3 W (r + 1)``, before input row ``r + 1`` starts at ``8 W (r +
    1)``, so nothing unread is overwritten), and the buffer is then shrunk to the 8-bit picture: the peak is the
    decoded picture plus one block. ``keep_alpha``: keep the alpha channel (to composite over a background);
    otherwise it is dropped here, as :func:`read_image` drops it.
    """
    h, w = array.shape[:2]
    c_in = 1 if array.ndim == 2 else array.shape[2]
    if c_in >= 3:
        order = [2, 1, 0] + ([3] if keep_alpha and c_in == 4 else [])
    else:
        order = [0] + ([1] if keep_alpha and c_in == 2 else [])
    c_out = len(order)
    planes = array.reshape(h, w, c_in)
    out = array.reshape(-1).view(np.uint8)
    rows = max(1, _BLOCK_BYTES // (w * c_in * 2))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        block = planes[r0:r1][:, :, order].astype(np.uint32)  # a copy: rows r0..r1 are read before any is written
        block *= 2
        block += 257
        block //= 514  # round(v / 257): 257 maps 0..65535 onto 0..255 exactly (65535 = 255 * 257)
        out[r0 * w * c_out:r1 * w * c_out] = block.reshape(-1)
        del block
    del planes, out
    total = h * w * c_out
    array.resize(((total + 1) // 2,), refcheck=False)  # gives the rest of the buffer back, without a copy
    shape = (h, w) if c_out == 1 and c_in == 1 else (h, w, c_out)
    return array.view(np.uint8)[:total].reshape(shape)


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
