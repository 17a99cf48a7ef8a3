"""Ground-truth boxes for the localisation metrics: the :class:`Box` type, reading boxes from CSV or JSON, and mapping
them from an original image's pixels to the model input's.

A box is half-open, ``(x0, y0, x1, y1)``: it covers ``image[y0:y1, x0:x1]``, the convention of
:mod:`onnx_cnnviz.methods.localise` and :mod:`models.shapes_dataset`. Coordinates may be fractional (COCO's are);
:meth:`Box.pixels` rounds the edges to whole pixels when a metric needs a pixel mask.

Files (``image`` is the image's file name or path as the run gives it; several rows or entries per image are several
boxes)::

    image,x0,y0,x1,y1,label          # CSV: the label column is optional, an empty cell means "no label"
    cat.png,10,12,80,96,281

    {"cat.png": [[10, 12, 80, 96]]}                                  # JSON: plain boxes
    {"cat.png": [{"box": [10, 12, 80, 96], "label": 281}]}          # or labelled ones

**Limits.** A boxes file is read only when it is a regular file of at most :data:`MAX_BOXES_BYTES` bytes holding at
most :data:`MAX_BOXES` boxes, each checked as the file is read (a larger one is an :class:`InputError` before it
fills the memory); a JSON file nested deeper than the parser can recurse is an :class:`InputError` too. Given the
run's ``images``, :func:`read_boxes` keeps only the rows of those images as the rows arrive, and given the model's
``num_classes`` it refuses a label that is no class of the model (every localisation value would silently be 0).

**Resizing.** A squashing preprocessing (:func:`onnx_cnnviz.image.preprocess` with ``resize="squash"``) is a plain
``cv2.resize`` of the whole image to ``size`` (H, W), no letterbox, so a box maps by scaling x by ``W_in / W_image``
and y by ``H_in / H_image`` separately (:func:`to_input`). The edges scale exactly: output pixel ``j`` of
``cv2.resize`` covers ``[j / s, (j + 1) / s)`` of the original, so the box's continuous extent ``[x0, x1)`` becomes
``[x0 s, x1 s)``. A shorter-side + centre-crop preprocessing (``resize="crop"``, ImageNet evaluation) shows only
``Preprocessing.input_region``: :func:`to_input` with ``region=`` shifts by the crop's corner, scales, and clips each
box to the input.
"""
from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..files import read_regular

#: The CSV columns every row needs; ``label`` may follow.
CSV_COLUMNS = ("image", "x0", "y0", "x1", "y1")
#: The largest boxes file read, in bytes: 64 MiB holds about two million CSV rows, far more than any evaluation set
#: (ImageNet's validation set has 50,000 images, COCO's 36,781 boxes).
MAX_BOXES_BYTES = 64 * 1024 * 1024
#: The most boxes a file may hold (rows of a CSV, entries of a JSON file).
MAX_BOXES = 1_000_000


@dataclass(frozen=True)
class Box:
    """A half-open ground-truth box ``[x0, x1) x [y0, y1)`` in some image's pixels, with an optional class label.

    ``label``: the class index the box outlines (None: unlabelled, matched by every class)."""
    x0: float
    y0: float
    x1: float
    y1: float
    label: int | None = None

    def __post_init__(self):
        for name in ("x0", "y0", "x1", "y1"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise InputError(f"box {self.coords_text()}: {name} must be a finite number, not {value!r}.")
            object.__setattr__(self, name, float(value))  # numpy scalars too: one type in records and JSON
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise InputError(f"box {self.coords_text()} is empty: a box is (x0, y0, x1, y1) with x1 > x0 and "
                             "y1 > y0 (half-open, in pixels).")
        if self.label is not None:
            if isinstance(self.label, bool) or not isinstance(self.label, numbers.Integral) or self.label < 0:
                raise InputError(f"box {self.coords_text()}: label must be a class index (an int >= 0) or None, "
                                 f"not {self.label!r}.")
            object.__setattr__(self, "label", int(self.label))

    @property
    def coords(self) -> tuple:
        """``(x0, y0, x1, y1)``."""
        return (self.x0, self.y0, self.x1, self.y1)

    def coords_text(self) -> str:
        return "(" + ", ".join(f"{v:g}" if isinstance(v, numbers.Real) else repr(v) for v in self.coords) + ")"

    def scaled(self, sx: float, sy: float) -> Box:
        """The box after scaling x by ``sx`` and y by ``sy`` (a resize of the whole image)."""
        return Box(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy, self.label)

    def inside(self, width: float, height: float) -> bool:
        """Whether the box lies within a ``width`` x ``height`` image (its half-open extent within [0, size])."""
        return self.x0 >= 0 and self.y0 >= 0 and self.x1 <= width and self.y1 <= height

    def pixels(self, width: int, height: int) -> tuple:
        """The box in whole pixels of a ``width`` x ``height`` image: ``(x0, y0, x1, y1)`` ints, half-open.

        Each edge is rounded to the nearest pixel edge (halves up), and a box thinner than a pixel keeps one pixel,
        so a box that lies in the image always covers at least one of its pixels."""
        x0, x1 = _pixel_span(self.x0, self.x1, width)
        y0, y1 = _pixel_span(self.y0, self.y1, height)
        return (x0, y0, x1, y1)


def _pixel_span(lo: float, hi: float, size: int) -> tuple:
    start = min(max(math.floor(lo + 0.5), 0), size - 1)
    stop = min(max(math.floor(hi + 0.5), start + 1), size)
    return start, stop


def as_box(value, where: str) -> Box:
    """A :class:`Box` from a Box or 4 numbers ``(x0, y0, x1, y1)``; ``where`` names it in the error."""
    if isinstance(value, Box):
        return value
    if isinstance(value, (str, bytes)):
        raise InputError(f"{where} must be a Box or 4 numbers (x0, y0, x1, y1), not the text {value!r}.")
    try:
        coords = [float(v) for v in value]
    except (TypeError, ValueError):
        raise InputError(f"{where} must be a Box or 4 numbers (x0, y0, x1, y1), not {value!r}.") from None
    if len(coords) != 4:
        raise InputError(f"{where} must be 4 numbers (x0, y0, x1, y1), not {len(coords)}: {value!r}.")
    try:
        return Box(*coords)
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


# ---------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------
def read_boxes(path, images=None, num_classes: int | None = None) -> dict[str, list[Box]]:
    """The boxes of a ``.csv`` or ``.json`` file (see the module docstring).

    Args:
        path: the file.
        images: the run's images (paths or names as the run gives them); when given, only the rows of these images
            are kept, each row checked as it arrives (a key matches an image as :func:`lookup` matches it: the same
            path, the same normalised path, or the same file name), so a large file of other images costs no memory.
        num_classes: the model's class count; when given, a label outside ``0 .. num_classes - 1`` is refused.

    Returns:
        ``{image: [Box, ...]}``, the image keys as written in the file, the boxes in file order.

    Raises:
        InputError: naming the file and the row or entry: not a regular file, over :data:`MAX_BOXES_BYTES` bytes
            or :data:`MAX_BOXES` boxes, JSON nested too deep to parse, a malformed row, an empty
            box, or a label that is no class of the model.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise InputError(f"boxes file {path}: unknown format {suffix or '(no suffix)'!r}; give a .csv (header "
                         f"{','.join(CSV_COLUMNS)}[,label]) or a .json file.")
    if path.is_dir():
        raise InputError(f"cannot read boxes file {path}: IsADirectoryError: it is a folder; give a .csv or .json "
                         "file.")
    try:
        text = read_regular(path, "boxes file", max_bytes=MAX_BOXES_BYTES).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read boxes file {path}: {err.__class__.__name__}: {err}.") from None
    keep = _image_filter(images)
    labels = _label_check(num_classes)
    return _parse_csv(text, path, keep, labels) if suffix == ".csv" else _parse_json(text, path, keep, labels)


def _image_filter(images):
    """A test ``key -> bool``: whether a file's image key names one of ``images`` (None: every key)."""
    if images is None:
        return lambda key: True
    texts = {str(image) for image in images}
    norms = {os.path.normpath(t) for t in texts}
    names = {os.path.basename(n) for n in norms}

    def keep(key: str) -> bool:
        norm = os.path.normpath(key)
        return key in texts or norm in norms or os.path.basename(norm) in names
    return keep


def _label_check(num_classes):
    """A check ``(label, where) -> None`` that a label is a class of a ``num_classes``-class model."""
    if num_classes is None:
        return lambda label, where: None
    num_classes = int(num_classes)

    def check(label, where):
        if label is not None and label >= num_classes:
            raise InputError(f"{where}: label {label} is not a class of the model, which has {num_classes} classes "
                             f"(0 to {num_classes - 1}); give the class index of the object the box outlines.")
    return check


def _too_many(path: Path) -> InputError:
    return InputError(f"boxes file {path} holds more than {MAX_BOXES:,} boxes; give the boxes of the images the run "
                      "evaluates (split the file).")


def _parse_csv(text: str, path: Path, keep, check_label) -> dict[str, list[Box]]:
    """Rows ``image,x0,y0,x1,y1[,label]`` (column order free, extra columns ignored)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise InputError(f"boxes file {path}: missing column(s) {', '.join(missing)}; the header must be "
                         f"{','.join(CSV_COLUMNS)}[,label], got {','.join(header) or '(empty file)'}.")
    reader.fieldnames = header
    table: dict[str, list[Box]] = {}
    for count, row in enumerate(reader, start=1):
        if count > MAX_BOXES:
            raise _too_many(path)
        where = f"boxes file {path}, line {reader.line_num}"
        image = (row.get("image") or "").strip()
        if not image:
            raise InputError(f"{where}: the image column is empty; name the image file.")
        if not keep(image):
            continue
        coords = [_number(row.get(c), c, where) for c in CSV_COLUMNS[1:]]
        label = _label((row.get("label") or "").strip() or None, where) if "label" in header else None
        check_label(label, where)
        table.setdefault(image, []).append(_box(coords, label, where))
    return table


def _parse_json(text: str, path: Path, keep, check_label) -> dict[str, list[Box]]:
    """``{image: [[x0, y0, x1, y1], ...]}`` or ``{image: [{"box": [...], "label": k}, ...]}``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"boxes file {path} is not valid JSON: {err}.") from None
    except RecursionError:  # the parser recurses once per level: a file nested thousands deep is no boxes file
        raise InputError(f"boxes file {path} nests its brackets too deep to parse (a boxes file nests 4 levels); give "
                         "{\"image.png\": [[x0, y0, x1, y1], ...]}.") from None
    if not isinstance(data, dict):
        raise InputError(f"boxes file {path}: the JSON must be an object {{\"image.png\": [[x0, y0, x1, y1], ...]}},"
                         f" not a {type(data).__name__}.")
    table: dict[str, list[Box]] = {}
    count = 0
    for image, entries in data.items():
        if isinstance(entries, (dict, str)) or not isinstance(entries, list):
            raise InputError(f"boxes file {path}, image {image!r}: give a list of boxes, not {_short(entries)}.")
        count += len(entries)
        if count > MAX_BOXES:
            raise _too_many(path)
        if not keep(image):
            continue
        boxes = []
        for k, entry in enumerate(entries):
            where = f"boxes file {path}, image {image!r}, box {k}"
            box = _json_box(entry, where)
            check_label(box.label, where)
            boxes.append(box)
        table[image] = boxes
    return table


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_box(entry, where: str) -> Box:
    label = None
    if isinstance(entry, dict):
        if "box" not in entry:
            raise InputError(f"{where}: an object entry needs a \"box\": [x0, y0, x1, y1] (and optionally a "
                             "\"label\"), got keys " + ", ".join(map(repr, entry)) + ".")
        label = _label(entry.get("label"), where)
        entry = entry["box"]
    if not isinstance(entry, list) or len(entry) != 4:
        raise InputError(f"{where}: a box is 4 numbers [x0, y0, x1, y1], not {entry!r}.")
    names = CSV_COLUMNS[1:]
    return _box([_number(v, name, where) for v, name in zip(entry, names)], label, where)


def _number(value, name: str, where: str) -> float:
    if isinstance(value, bool) or value is None:
        raise InputError(f"{where}: {name} is {value!r}, not a number.")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {name} is {value!r}, not a number.") from None
    if not math.isfinite(number):
        raise InputError(f"{where}: {name} is {value!r}, not a finite number.")
    return number


def _label(value, where: str) -> int | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number != int(number) or number < 0:
        raise InputError(f"{where}: label is {value!r}; a label is a class index (an integer >= 0).")
    return int(number)


def _box(coords: list, label, where: str) -> Box:
    x0, y0, x1, y1 = coords
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"{where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty; boxes are half-open "
                         "(x0, y0, x1, y1) with x1 > x0 and y1 > y0.")
    return Box(x0, y0, x1, y1, label)


# ---------------------------------------------------------------------------------------------------------------
# matching boxes to a run's images, and mapping them to the model input
# ---------------------------------------------------------------------------------------------------------------
def lookup(table: dict, image) -> list[Box]:
    """The boxes of ``image`` (a path or name as the run gives it) in ``table`` (:func:`read_boxes`'s): the key equal
    to the path as given, else to its normalised form, else the one key with the same file name ([] when none).
    Two keys sharing the image's file name in different folders are ambiguous: :class:`InputError`."""
    text = str(image)
    if text in table:
        return list(table[text])
    norm = os.path.normpath(text)
    for key in table:
        if os.path.normpath(key) == norm:
            return list(table[key])
    name = os.path.basename(norm)
    keys = [key for key in table if os.path.basename(os.path.normpath(key)) == name]
    if len(keys) > 1:
        raise InputError(f"image {text}: the boxes file names {len(keys)} images called {name!r} "
                         f"({', '.join(keys[:3])}); write the image paths in the boxes file as the run gives them.")
    return list(table[keys[0]]) if keys else []


def images_without_boxes(table: dict, images) -> list:
    """The images of the run (paths or names) that have no box in ``table``: the caller decides whether that is an
    error (a localisation metric needs a box on every image it scores)."""
    return [image for image in images if not lookup(table, image)]


def check_inside(boxes, width: int, height: int, image="",
                 space: str = "boxes are half-open (x0, y0, x1, y1) in the original image's pixels, "
                              "0 <= x0 < x1 <= width") -> list[Box]:
    """``boxes`` checked to lie within a ``width`` x ``height`` image (half-open: ``x1 <= width``); ``space``: what
    the error says about the pixels the boxes are in."""
    out = []
    for k, value in enumerate(boxes):
        box = as_box(value, f"image {image}, box {k}")
        if not box.inside(width, height):
            raise InputError(f"image {image}, box {k} {box.coords_text()} lies outside the image ({width}x{height} "
                             f"pixels, width x height); {space}.")
        out.append(box)
    return out


def to_input(boxes, image_size, input_size=None, image="", region=None) -> list[Box]:
    """``boxes`` in an original image's pixels -> the model input's, under the command line's preprocessing.

    Args:
        boxes: the image's ground-truth boxes, in its own pixels.
        image_size: the original (H, W).
        input_size: the model input's (H, W) (``Preprocessing.size``); None keeps the image size.
        image: the image's name, for the errors.
        region: the part of the picture the model input shows, ``(top, left, height, width)`` in the picture's
            pixels (``Preprocessing.input_region``); None means the whole picture (a plain resize, a squash).

    Returns:
        The boxes in model-input pixels: each corner ``(x, y)`` goes to ``((x - left) * W_in / width,
        (y - top) * H_in / height)``. With a crop, a box is clipped to what the input shows, and a box wholly cut
        off is dropped.

    Raises:
        InputError: a box outside the original image, or (with a crop) an image whose every box lies outside the
            part the model sees: its scores would be computed against no ground truth.
    """
    h, w = (int(v) for v in image_size)
    boxes = check_inside(boxes, w, h, image)
    if input_size is None:
        return boxes
    h_in, w_in = (int(v) for v in input_size)
    if region is None:
        return [box.scaled(w_in / w, h_in / h) for box in boxes]
    top, left, height, width = (float(v) for v in region)
    sx, sy = w_in / width, h_in / height
    kept = []
    for box in boxes:
        x0, x1 = max((box.x0 - left) * sx, 0.0), min((box.x1 - left) * sx, float(w_in))
        y0, y1 = max((box.y0 - top) * sy, 0.0), min((box.y1 - top) * sy, float(h_in))
        if x1 > x0 and y1 > y0:
            kept.append(Box(x0, y0, x1, y1, box.label))
    if boxes and not kept:
        raise InputError(f"every ground-truth box of image {image or '(unnamed)'} lies outside the centre crop the "
                         f"model sees (rows {top:g}-{top + height:g}, columns {left:g}-{left + width:g} of its "
                         f"{h}x{w} pixels); leave the image out, or preprocess by squashing the whole picture.")
    return kept


def boxes_for_images(table: dict, images, image_sizes, input_size=None, require: bool = True) -> list[list[Box]]:
    """One list of boxes per image of a run, in the model input's pixels: :func:`lookup` then :func:`to_input`.

    ``image_sizes``: each image's original (H, W). ``require``: an image without a box is an :class:`InputError`
    naming it (False: it gets an empty list)."""
    images = list(images)
    sizes = list(image_sizes)
    if len(sizes) != len(images):
        raise InputError(f"{len(images)} images but {len(sizes)} image sizes; give one (H, W) per image.")
    if require:
        missing = images_without_boxes(table, images)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(f"image {missing[0]}{more} has no ground-truth box in the boxes file; add its boxes or "
                             "leave it out of the run.")
    return [to_input(lookup(table, image), size, input_size, image) for image, size in zip(images, sizes)]


def check_labels(boxes, num_classes: int | None, where: str = "boxes") -> None:
    """Refuse a box whose label is no class of a ``num_classes``-class model (None: no check).

    A box labelled 7 on a 6-class model matches no target, so every pointing-game, energy and localisation value
    would be 0.0 without a word.

    Args:
        boxes: a mapping ``{image: [Box, ...]}`` (:func:`read_boxes`'s) or one sequence of boxes per image.
        num_classes: the model's class count.
        where: what the boxes are, for the error.

    Raises:
        InputError: naming the image, the box and its label.
    """
    if num_classes is None:
        return
    items = boxes.items() if isinstance(boxes, dict) else enumerate(boxes)
    check = _label_check(num_classes)
    for image, image_boxes in items:
        for k, box in enumerate(image_boxes or ()):
            label = box.label if isinstance(box, Box) else None
            check(label, f"{where}, image {image!r}, box {k}")


__all__ = ["Box", "CSV_COLUMNS", "MAX_BOXES", "MAX_BOXES_BYTES", "check_labels", "as_box",
           "read_boxes", "lookup", "images_without_boxes", "check_inside", "to_input", "boxes_for_images"]
