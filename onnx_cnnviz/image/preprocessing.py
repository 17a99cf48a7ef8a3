"""Model inputs: the :class:`Preprocessing` spec, the :data:`PRESETS`, :func:`preprocess` and :func:`deprocess`.

A model input is a float32 ``(N, C, H, W)`` array ``x = (pixels_in_order * scale - mean) / std``. A spec travels in
ONNX ``metadata_props`` under keys starting with :data:`METADATA_PREFIX`.
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
    for item in image_list(images):
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
