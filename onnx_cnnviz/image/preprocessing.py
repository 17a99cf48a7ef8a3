"""Model inputs: the :class:`Preprocessing` spec, the :data:`PRESETS`, :func:`preprocess` and :func:`deprocess`.

A model input is a float32 ``(N, C, H, W)`` array ``x = (pixels_in_order * scale - mean) / std`` of the picture
brought to the input size by the spec's resize policy (:data:`RESIZE_POLICIES`: squash the whole picture, or scale
its shorter side and cut the centre out, the ImageNet evaluation transform). A spec travels in ONNX
``metadata_props`` under keys starting with :data:`METADATA_PREFIX`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InputError
from ._arguments import as_float, check_order, image_list, norm_size
from .reading import read_image

METADATA_PREFIX = "cnnviz.preprocess."

#: How a picture is brought to the input size: "squash" resizes the whole picture to H x W (the aspect ratio is not
#: kept); "crop" scales it, keeping its aspect ratio, until an H x W window covers ``crop_fraction`` of its shorter
#: side, and keeps that centred window (torchvision's ``Resize(256) + CenterCrop(224)`` for ``crop_fraction``
#: 224 / 256 = 0.875, the ImageNet evaluation transform).
RESIZE_POLICIES = ("squash", "crop")
#: The ImageNet evaluation crop: shorter side 256, centre 224 x 224.
IMAGENET_CROP_FRACTION = 224 / 256


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: ``x = (pixels_in_order * scale - mean) / std``, in (N, C, H, W) float32.

    Resizing is plain bilinear (``cv2.INTER_LINEAR``), without the antialiasing of PIL / torchvision ``Resize``: a
    photo much larger than ``size`` is better downscaled first if you need to match those pipelines closely.

    Attributes:
        size: (H, W) of the model input (an int means square); ``None`` keeps the image size (no resize, no crop).
        mean: per channel, in the model's channel order and in the scaled units; ``None`` skips the step.
        std: per channel, likewise; ``None`` skips the step.
        order: "RGB" or "BGR", the channel order the model expects.
        scale: multiplies the 0..255 pixels first (1/255 for [0, 1] inputs, 1 for 0..255 inputs).
        resize: how the picture reaches ``size`` (:data:`RESIZE_POLICIES`). "squash" (the default): the whole
            picture resized to H x W. "crop": resized keeping its aspect ratio by
            ``r = max(H / (f h), W / (f w))`` (``f = crop_fraction``, ``h, w`` the picture's size), then the centred
            H x W window is kept, so the model sees the middle ``f`` of the picture's shorter side and the edges are
            cut off (:meth:`input_region` says which part of the picture that is). For 224 x 224 and
            ``f = 0.875``: shorter side 256, centre crop 224.
        crop_fraction: ``f`` in (0, 1], used by "crop" only.
    """
    size: tuple | None = (224, 224)
    mean: tuple | None = None
    std: tuple | None = None
    order: str = "RGB"
    scale: float = 1.0 / 255.0
    resize: str = "squash"
    crop_fraction: float = IMAGENET_CROP_FRACTION

    def __post_init__(self):
        object.__setattr__(self, "size", norm_size(self.size))
        object.__setattr__(self, "mean", _norm_triple(self.mean, "mean"))
        std = _norm_triple(self.std, "std")
        if std is not None and not all(v > 0 for v in std):
            raise InputError(f"std must be positive, not {std}.")
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "order", check_order(self.order, "order"))
        scale = as_float(self.scale, "scale")
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(f"scale must be a positive number, not {self.scale!r}.")
        object.__setattr__(self, "scale", scale)
        resize = str(self.resize).strip().lower()
        if resize not in RESIZE_POLICIES:
            raise InputError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, not {self.resize!r}.")
        object.__setattr__(self, "resize", resize)
        fraction = as_float(self.crop_fraction, "crop_fraction")
        if not (math.isfinite(fraction) and 0 < fraction <= 1):
            raise InputError(f"crop_fraction must be a number in (0, 1] (0.875 is the ImageNet evaluation crop, "
                             f"224 of 256), not {self.crop_fraction!r}.")
        object.__setattr__(self, "crop_fraction", fraction)

    def resize_plan(self, image_size) -> tuple:
        """Where a picture goes: the size it is resized to and the corner of the ``size`` window kept.

        Args:
            image_size: the picture's (H, W).

        Returns:
            ``((h1, w1), (top, left))``: ``(h1, w1) == size`` and ``(0, 0)`` when it is squashed; the picture's own
            size and ``(0, 0)`` when ``size`` is None.
        """
        h, w = (int(v) for v in image_size)
        if self.size is None:
            return (h, w), (0, 0)
        out_h, out_w = self.size
        if self.resize == "squash":
            return (out_h, out_w), (0, 0)
        ratio = max(out_h / (self.crop_fraction * h), out_w / (self.crop_fraction * w))
        # Rounded as torchvision's Resize rounds, never below the window (a fraction of 1 on a picture of the
        # input's aspect ratio must not lose a row to rounding).
        h1, w1 = max(out_h, int(round(h * ratio))), max(out_w, int(round(w * ratio)))
        # torchvision's CenterCrop corner: int(round((h1 - out_h) / 2)).
        return (h1, w1), (int(round((h1 - out_h) / 2.0)), int(round((w1 - out_w) / 2.0)))

    def input_region(self, image_size) -> tuple:
        """The part of a picture that the model input shows, in the picture's pixels.

        A point ``(y, x)`` of the model input (pixel edges, 0 to H_in) is the picture's point
        ``(top + y * height / H_in, left + x * width / W_in)``: use it to put a map or a box made on the model
        input back onto the original picture, or the reverse.

        Args:
            image_size: the picture's (H, W).

        Returns:
            ``(top, left, height, width)`` as floats; the whole picture ``(0, 0, H, W)`` when squashed or not
            resized.
        """
        h, w = (int(v) for v in image_size)
        (h1, w1), (top, left) = self.resize_plan((h, w))
        out_h, out_w = self.size if self.size is not None else (h, w)
        sy, sx = h / h1, w / w1
        return (top * sy, left * sx, out_h * sy, out_w * sx)

    def fit_picture(self, rgb: np.ndarray) -> np.ndarray:
        """A picture brought to the input size by the resize policy, not normalised.

        Args:
            rgb: uint8 ``(H, W, 3)``.

        Returns:
            uint8 at the input size: what :func:`preprocess` scales and what :func:`deprocess` gives back.
        """
        (h1, w1), (top, left) = self.resize_plan(rgb.shape[:2])
        if (h1, w1) != rgb.shape[:2]:
            rgb = cv2.resize(rgb, (w1, h1), interpolation=cv2.INTER_LINEAR)
        if self.size is not None and (h1, w1) != self.size:
            rgb = np.ascontiguousarray(rgb[top:top + self.size[0], left:left + self.size[1]])
        return rgb

    def describe(self) -> str:
        """One line for people: channel order, the arithmetic, the size and which resize runs.

        Returns:
            e.g. "RGB, (pixels / 255 - mean 0.485,0.456,0.406) / std 0.229,0.224,0.225, 224x224 by shorter side 256
            + centre crop 224 (the picture's edges are cut off)".
        """
        def numbers(values):
            return ",".join(f"{v:g}" for v in values)
        if abs(self.scale - 1 / 255) < 1e-12:
            value = "pixels / 255"
        elif self.scale == 1.0:
            value = "pixels"
        else:
            value = f"pixels x {self.scale:g}"
        if self.mean is not None:
            value = f"{'(' if self.std is not None else ''}{value} - mean {numbers(self.mean)}" \
                    f"{')' if self.std is not None else ''}"
        if self.std is not None:
            value = f"{value} / std {numbers(self.std)}"
        return f"{self.order}, {value}, {self.describe_resize()}"

    def describe_resize(self) -> str:
        """Which resize runs, in words.

        Returns:
            "squashed to 224x224", "shorter side 256 + centre crop 224x224 (the picture's edges are cut off)", or
            "at the picture's own size".
        """
        if self.size is None:
            return "at the picture's own size (no resize)"
        h, w = self.size
        if self.resize == "squash":
            return f"squashed to {h}x{w} (whole picture, aspect ratio not kept)"
        side = min(h, w) / self.crop_fraction
        return (f"shorter side {side:g} + centre crop {h}x{w} (crop fraction {self.crop_fraction:g}: the picture's "
                f"edges are cut off)")

    def to_metadata(self) -> dict:
        """The spec as ONNX ``metadata_props`` entries.

        Floats are written with ``repr`` so :meth:`from_metadata` gets back exactly the same numbers.

        Returns:
            String key/values, keys prefixed ``cnnviz.preprocess.``; "" means None.
        """
        def join(values):
            return "" if values is None else ",".join(repr(v) for v in values)
        return {METADATA_PREFIX + "size": join(self.size), METADATA_PREFIX + "mean": join(self.mean),
                METADATA_PREFIX + "std": join(self.std), METADATA_PREFIX + "order": self.order,
                METADATA_PREFIX + "scale": repr(self.scale), METADATA_PREFIX + "resize": self.resize,
                METADATA_PREFIX + "crop_fraction": repr(self.crop_fraction)}

    @classmethod
    def from_metadata(cls, props) -> Preprocessing | None:
        """The preprocessing stored in model metadata.

        Keys: ``preset`` (a name in :data:`PRESETS` to start from), ``size`` ("224,224" or "224"), ``mean``, ``std``
        (comma-separated; "" for none), ``order`` ("RGB"/"BGR"), ``scale`` (a number or a fraction such as "1/255"),
        ``resize`` ("squash" or "crop", :data:`RESIZE_POLICIES`), ``crop_fraction`` (a number or a fraction such as
        "224/256"). Keys left out take the preset's value, or without a preset: no resize, no mean/std, RGB, 1/255,
        squash (so files written before ``resize`` existed keep meaning what they meant).

        Args:
            props: a dict (e.g. ``Model.metadata``) or ONNX ``metadata_props`` entries; keys without the prefix are
                ignored.

        Returns:
            The spec, or ``None`` when the metadata holds no ``cnnviz.preprocess.*`` key (a file exported by
            ultralytics, which records ``imgsz`` only, gets its RGB / 255 at that size).

        Raises:
            InputError: a key's value cannot be read.
        """
        items = dict(props.items() if isinstance(props, Mapping) else ((p.key, p.value) for p in props))
        ours = {k[len(METADATA_PREFIX):]: str(v).strip() for k, v in items.items()
                if str(k).startswith(METADATA_PREFIX)}
        if not ours:
            return _ultralytics(items)
        known = ("preset", "size", "mean", "std", "order", "scale", "resize", "crop_fraction")
        unknown = sorted(set(ours) - set(known))
        if unknown:
            raise InputError(f"Unknown preprocessing metadata key(s) {', '.join(METADATA_PREFIX + k for k in unknown)};"
                             f" the known keys are {', '.join(METADATA_PREFIX + k for k in known)}.")
        base = _preset(ours.pop("preset")) if "preset" in ours else cls(size=None)
        fields = {}
        for key, text in ours.items():
            if key in ("order", "resize"):
                fields[key] = text
            elif key in ("scale", "crop_fraction"):
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



def _parse_number(text: str, what: str) -> float:
    numerator, slash, denominator = text.partition("/")
    try:
        value = float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError) as err:
        raise InputError(f"{what} must be a number or a fraction like 1/255, not {text!r}.") from err
    if not math.isfinite(value):
        raise InputError(f"{what} must be finite, not {text!r}.")
    return value


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
    # Keras "tf" mode (MobileNet, Inception, Xception in keras.applications): x / 127.5 - 1 = (x / 255 - 0.5) / 0.5.
    "tf": Preprocessing(size=(224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), order="RGB", scale=1.0 / 255.0),
    # TensorFlow Lite image models (EfficientNet-Lite, the TF-Lite model zoo's float models): (x - 127) / 128.
    "tflite": Preprocessing(size=(224, 224), mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), order="RGB",
                            scale=1.0),
    # Integer pixels as they are (0..255 RGB): models that normalise inside their graph.
    "raw": Preprocessing(size=(224, 224), mean=None, std=None, order="RGB", scale=1.0),
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
    """A preset with the given fields overridden.

    To drop a preset's mean or std, override it with 0 or 1.

    Args:
        preset: a name in :data:`PRESETS` or a :class:`Preprocessing`.
        size: (H, W) of the model input (an int means square); None keeps the preset's.
        mean: per-channel mean in the scaled units, model channel order; None keeps the preset's.
        std: per-channel standard deviation; None keeps the preset's.
        order: ``"RGB"`` or ``"BGR"``; None keeps the preset's.
        scale: what the 0..255 pixels are multiplied by first; None keeps the preset's.

    Returns:
        The spec.

    Raises:
        InputError: an unknown preset or a bad field.

    Example:
        >>> get_preprocessing("imagenet", size=256).size
        (256, 256)
    """
    base = _preset(preset)
    changes = {k: v for k, v in dict(size=size, mean=mean, std=std, order=order, scale=scale).items() if v is not None}
    return dataclasses.replace(base, **changes) if changes else base


def preprocess(images, preset="imagenet", size=None, mean=None, std=None, order=None, scale=None) -> np.ndarray:
    """One image or a list of images -> a float32 ``(N, 3, H, W)`` model input.

    ``x = (fit(rgb)[..., order] * scale - mean) / std``, ``fit`` the spec's resize policy (squash, or shorter side
    + centre crop: :meth:`Preprocessing.fit_picture`); see :class:`Preprocessing` and :data:`PRESETS` ("imagenet",
    "caffe", "tf", "tflite", "raw", "none"). The uint8 image is resized before scaling, so
    ``deprocess(preprocess(img))`` gives back exactly the resized (and cropped) image a viewer should be shown:
    maps drawn on it line up with what the model saw.

    Args:
        images: one picture or a list (paths, ``PIL.Image``, arrays: anything :func:`read_image` accepts), or an
            ``(N, H, W, C)`` batch.
        preset: a name in :data:`PRESETS` or a :class:`Preprocessing` (e.g. from :meth:`Preprocessing.from_metadata`).
        size: (H, W) of the model input (an int means square); None keeps the preset's.
        mean: per-channel mean in the scaled units, model channel order; None keeps the preset's.
        std: per-channel standard deviation; None keeps the preset's.
        order: ``"RGB"`` or ``"BGR"``; None keeps the preset's.
        scale: what the 0..255 pixels are multiplied by first; None keeps the preset's.

    Returns:
        float32 ``(N, 3, H, W)``.

    Raises:
        InputError: an unknown preset, a bad field, an unreadable picture, or pictures of different sizes with no
            ``size`` to bring them to one.
    """
    spec = get_preprocessing(preset, size, mean, std, order, scale)
    out = []
    for item in image_list(images):
        rgb = spec.fit_picture(read_image(item))
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
    """Invert :func:`preprocess` for display: ``pixels = (x * std + mean) / scale``, rounded, clipped, RGB.

    The resize is not undone (the result has the model's input size, and shows the crop when the spec crops).

    Args:
        x: ``(C, H, W)`` or ``(N, C, H, W)`` model input.
        preset: a name in :data:`PRESETS` or a :class:`Preprocessing`.
        mean: per-channel mean in the scaled units, model channel order; None keeps the preset's.
        std: per-channel standard deviation; None keeps the preset's.
        order: ``"RGB"`` or ``"BGR"``; None keeps the preset's.
        scale: what the 0..255 pixels are multiplied by first; None keeps the preset's.

    Returns:
        uint8 RGB ``(H, W, 3)``, or ``(N, H, W, 3)`` for a batch.

    Raises:
        InputError: an unknown preset, a bad field, or ``x`` of the wrong shape.
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


def _ultralytics(props: dict) -> Preprocessing | None:
    """The preprocessing of a file ultralytics exported (``author`` "Ultralytics", ``imgsz`` "[640, 640]"): RGB
    pixels / 255, no mean or std, at ``imgsz``. Ultralytics letterboxes (keeps the aspect ratio and pads with grey
    114); a squash is the nearest of :data:`RESIZE_POLICIES`, equal to it on pictures of the model's own aspect ratio.
    None when the metadata is not ultralytics' or its ``imgsz`` cannot be read."""
    if str(props.get("author", "")).strip() != "Ultralytics" or "imgsz" not in props:
        return None
    import ast
    try:
        size = ast.literal_eval(str(props["imgsz"]).strip())
    except (ValueError, SyntaxError):
        return None
    size = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (list, tuple)) else None
    if size is None or len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        return None
    return Preprocessing(size=size, mean=None, std=None, order="RGB", scale=1 / 255, resize="squash")
