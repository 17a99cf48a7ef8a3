"""Pictures: reading images, preprocessing presets, heat-map overlays, gradient images, grids and saving.

Conventions used throughout:

* An *image* is a uint8 ``(H, W, 3)`` array in RGB order unless a function says otherwise. Every function that takes
  an image accepts anything :func:`read_image` accepts (a path, a ``PIL.Image`` or an array).
* A *heat map* is a float ``(h, w)`` array in [0, 1]; it is resized to the image with bilinear interpolation
  (``cv2.INTER_LINEAR``, pixel centres aligned like ``align_corners=False``).
* A model input is a float32 ``(N, C, H, W)`` array made by :func:`preprocess` from a :class:`Preprocessing`
  (the picture squashed to the input size, or its shorter side scaled and its centre cut out: ``resize``):
  ``x = (pixels_in_order * scale - mean) / std``.

The modules: :mod:`.reading` (files, PIL images and arrays to uint8 RGB; :data:`MAX_PIXELS`, :data:`IMAGE_SUFFIXES`),
:mod:`.preprocessing` (model inputs and back) and :mod:`.rendering` (colour maps, overlays, grids, saving). Import
from this package; every name below is re-exported here.
"""
from .preprocessing import (IMAGENET_CROP_FRACTION, METADATA_PREFIX, PRESETS, RESIZE_POLICIES, Preprocessing,
                            deprocess, get_preprocessing, preprocess)
from .reading import IMAGE_SUFFIXES, MAX_PIXELS, read_image, rgb_triple
from .rendering import (COLORMAPS, DIVERGING, colorize, fit_into, gradient_image, grid, overlay, saliency_image,
                        save_image, signed_to_unit)

__all__ = ["read_image", "preprocess", "deprocess", "get_preprocessing", "Preprocessing", "PRESETS", "colorize",
           "overlay", "gradient_image", "saliency_image", "grid", "save_image", "COLORMAPS", "MAX_PIXELS",
           "METADATA_PREFIX", "IMAGE_SUFFIXES", "rgb_triple", "fit_into", "DIVERGING", "signed_to_unit",
           "RESIZE_POLICIES", "IMAGENET_CROP_FRACTION"]
