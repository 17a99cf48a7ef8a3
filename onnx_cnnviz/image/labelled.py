"""Labelled pictures: a folder (or list) of pictures and the class of each, from a ``labels.csv``, class sub-folders
or a mapping.

Used by :func:`onnx_cnnviz.preprocessing_check.check_preprocessing`, which scores candidate preprocessings by the
accuracy of the model on such pictures. The labels may come from:

* a CSV of ``file,class_index`` rows (``shared/images/imagenet-sample/labels.csv``), a header naming the columns
  optional (file: one of :data:`FILE_COLUMNS`, class: one of :data:`CLASS_COLUMNS`); the class may be an index or one
  of the model's class names (whole name, or one of its comma-separated synonyms, case-insensitive);
* class sub-folders, named by index, by class name, or all ``K`` of them in sorted order (torchvision's
  ``ImageFolder`` convention, which puts ImageNet's synset folders in the usual class order);
* a mapping from file name to class.

Every bad input is an :class:`~onnx_cnnviz.errors.InputError` saying which file or row and what to give instead; a
labels file is read only if it is a regular file of at most :data:`MAX_LABELS_BYTES`.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import read_regular
from .reading import IMAGE_SUFFIXES

#: A labels CSV larger than this is not a list of pictures.
MAX_LABELS_BYTES = 16 * 1024 * 1024
#: Header names of the file and class columns of a labels CSV (the first class name found wins).
FILE_COLUMNS = ("file", "filename", "image", "path", "name")
CLASS_COLUMNS = ("class_index", "class", "label", "index", "target", "class_name")



def _pictures_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def find_images(images, labels=None, class_names=None, num_classes: int | None = None):
    """The pictures and their class indices (None when unlabelled), and where the labels came from.

    ``images``: a folder, or a list of picture paths. ``labels``: None (a folder's own ``labels.csv``, else its
    class sub-folders, else none), a CSV path (``file,class_index`` rows, a header naming the columns optional; the
    class may be a class name of ``class_names``), a mapping from file name to class index or name, or ``False`` for
    no labels. Returns ``(paths, classes or None, source or None)``.

    Raises:
        InputError: a missing folder or file, a folder with no pictures, a labels CSV that is not one, a class that
            is not one of the model's, or a picture the labels do not name.
    """
    folder = None
    if isinstance(images, (str, Path)):
        folder = Path(images)
        if not folder.exists():
            raise InputError(f"'{folder}' does not exist; give a folder of pictures (or ImageNet class folders).")
        if not folder.is_dir():
            raise InputError(f"'{folder}' is not a folder; give a folder of pictures (or ImageNet class folders).")
        paths = _pictures_in(folder)
    else:
        paths = [Path(p) for p in images]
        if not paths:
            raise InputError("No pictures given.")
    if labels is False:
        if not paths:
            raise InputError(f"'{folder}' holds no pictures ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        return paths, None, None
    if labels is None and folder is not None:
        if (folder / "labels.csv").is_file():
            labels = folder / "labels.csv"
        elif not paths:
            return _class_folders(folder, class_names, num_classes)
        else:
            return paths, None, None
    elif labels is None:
        return paths, None, None
    if isinstance(labels, (str, Path)):
        table, source = _read_labels_csv(Path(labels)), f"labels file '{labels}'"
    elif isinstance(labels, dict):
        table, source = {str(k): v for k, v in labels.items()}, "the labels given"
    else:
        raise InputError(f"labels must be a CSV path, a mapping from file name to class, or None, not "
                         f"{type(labels).__name__}.")
    if folder is not None and isinstance(labels, (str, Path)):
        # The CSV lists the pictures: every row must name one in the folder.
        paths = [folder / name for name in table]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(f"{source} names '{missing[0].name}'{more}, which is not a file in '{folder}'; fix the "
                             "file column (names relative to the folder).")
    if not paths:
        raise InputError(f"'{folder}' holds no pictures ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    classes = []
    for p in paths:
        key = p.name if p.name in table else str(p)
        if key not in table:
            raise InputError(f"{source} has no class for '{p.name}'; add a row for it or leave it out.")
        classes.append(_class_index(table[key], class_names, num_classes, f"{source}, '{p.name}'"))
    return paths, np.asarray(classes, dtype=np.int64), source


def _read_labels_csv(path: Path) -> dict:
    try:
        data = read_regular(path, "labels file", max_bytes=MAX_LABELS_BYTES)
        text = data.decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"labels file '{path}' does not exist.") from None
    except UnicodeDecodeError:
        raise InputError(f"labels file '{path}' is not UTF-8 text; give a CSV of file,class_index rows.") from None
    except OSError as exc:
        raise InputError(f"could not read labels file '{path}': {exc.strerror or exc}.") from None
    try:
        rows = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    except csv.Error as exc:
        raise InputError(f"labels file '{path}' is not a CSV ({exc}); give file,class_index rows.") from None
    if not rows:
        raise InputError(f"labels file '{path}' is empty; give file,class_index rows.")
    head = [c.strip().lower() for c in rows[0]]
    file_col, class_col, first = 0, 1, 1
    if any(c in FILE_COLUMNS for c in head) or any(c in CLASS_COLUMNS for c in head):
        file_col = next((i for i, c in enumerate(head) if c in FILE_COLUMNS), None)
        class_col = next((head.index(c) for c in CLASS_COLUMNS if c in head), None)
        if file_col is None or class_col is None:
            raise InputError(f"labels file '{path}' has a header ({', '.join(head)}) without a file column "
                             f"({'/'.join(FILE_COLUMNS)}) and a class column ({'/'.join(CLASS_COLUMNS)}).")
        rows, first = rows[1:], 2
    table = {}
    for number, row in enumerate(rows, start=first):
        if len(row) <= max(file_col, class_col):
            raise InputError(f"labels file '{path}', row {number}: expected a file and a class, got {row!r}.")
        name, value = row[file_col].strip(), row[class_col].strip()
        if name in table:
            raise InputError(f"labels file '{path}' names '{name}' twice; give each picture one class.")
        table[name] = value
    if not table:
        raise InputError(f"labels file '{path}' has a header but no rows.")
    return table


def _class_index(value, class_names, num_classes, where: str) -> int:
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d+", text):
        index = int(text)
    else:
        matches = [i for i, n in enumerate(class_names or ())
                   if n.casefold() == text.casefold()
                   or text.casefold() in (part.strip().casefold() for part in n.split(","))]
        if len(matches) != 1:
            known = "the model's class names" if class_names else "an index (the model holds no class names)"
            raise InputError(f"{where}: class {text!r} is not {'one of ' if class_names else ''}{known}; give "
                             "the class index.")
        index = matches[0]
    if num_classes is not None and not 0 <= index < num_classes:
        raise InputError(f"{where}: class {index} is outside the model's {num_classes} classes (0 to "
                         f"{num_classes - 1}).")
    return index


def _class_folders(folder: Path, class_names, num_classes):
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and _pictures_in(p))
    if not subs:
        raise InputError(f"'{folder}' holds no pictures ({', '.join(sorted(IMAGE_SUFFIXES))}) and no class folders "
                         "of pictures.")
    names = [s.name for s in subs]
    if all(re.fullmatch(r"\d+", n) for n in names):
        indices, how = [int(n) for n in names], "class folders named by index"
    elif class_names and all(_names_class(n, class_names) is not None for n in names):
        indices, how = [_names_class(n, class_names) for n in names], "class folders named by class name"
    elif num_classes is not None and len(names) == num_classes:
        # torchvision's ImageFolder convention: the sorted folder names are the classes 0..K-1 (ImageNet's
        # synsets sort into the usual class order).
        indices, how = list(range(num_classes)), "class folders in sorted order (ImageFolder)"
    else:
        raise InputError(f"'{folder}' has {len(names)} class folders ({', '.join(names[:3])}, ...) that are neither "
                         f"class indices, nor the model's class names, nor all {num_classes} classes in sorted order; "
                         "give a labels CSV (file,class_index rows) instead.")
    paths, classes = [], []
    for sub, index in zip(subs, indices):
        if num_classes is not None and not 0 <= index < num_classes:
            raise InputError(f"class folder '{sub.name}' is outside the model's {num_classes} classes.")
        for p in _pictures_in(sub):
            paths.append(p)
            classes.append(index)
    return paths, np.asarray(classes, dtype=np.int64), f"{how} in '{folder}'"


def _names_class(name: str, class_names) -> int | None:
    key = name.replace("_", " ").casefold()
    found = [i for i, n in enumerate(class_names) if n.casefold() == key
             or key in (part.strip().casefold() for part in n.split(","))]
    return found[0] if len(found) == 1 else None


def subsample(paths, classes, max_images: int | None):
    """At most ``max_images`` of ``paths`` (and their ``classes``), evenly spread and in order.

    Args:
        paths: the pictures.
        classes: their class indices as an int array, or None when unlabelled.
        max_images: how many to keep; None keeps all.

    Returns:
        (paths, classes) of the kept pictures; the inputs themselves when there are not more than ``max_images``.
    """
    if max_images is None or len(paths) <= max_images:
        return paths, classes
    keep = np.unique(np.linspace(0, len(paths) - 1, max_images).round().astype(int))
    return [paths[i] for i in keep], (None if classes is None else classes[keep])


__all__ = ["find_images", "subsample", "MAX_LABELS_BYTES", "FILE_COLUMNS", "CLASS_COLUMNS"]
