"""The images of a run: one collector (files, folders, globs; the run's own results left out), one file-name key per
image, and reading a batch of them into model inputs grouped by size."""
from __future__ import annotations

import glob
import hashlib
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..image import IMAGE_SUFFIXES, Preprocessing
from .outputs import abspath

# The names of the pictures this tool writes (NAME.METHOD.RANK.png, a detector's NAME.METHOD.detNN.png and
# NAME.detections.png, a segmenter's NAME.regions.png, NAME.activations.png, NAME.boxes.png, evaluate's
# curve.METHOD.METRIC.png): left out of the inputs taken from folders and globs inside the output folder, when the
# file this tool writes beside each of them is there too (see _is_ours).
_OURS = re.compile(r"(\.([a-z-]+\.(top\d+|c\d+|det\d+)|activations|boxes|detections|regions)\.png"
                   r"|^curve\.[a-z0-9+-]+\.[a-z0-9+-]+\.png)$")


def _is_ours(path: Path) -> bool:
    """``path`` (a name :data:`_OURS` matches) is a picture this tool wrote: the file written with it is beside it
    (NAME.METHOD.RANK.json, the record written last; NAME.activations.npy; NAME.boxes.json, NAME.detections.json,
    NAME.regions.json; evaluate's journal for a curve). A user's picture that only looks like an output has none, so it
    stays an input (and is never replaced)."""
    name = path.name
    if name.startswith("curve."):
        partner = path.with_name("results.jsonl")
    elif name.endswith(".activations.png"):
        partner = path.with_suffix(".npy")
    else:
        partner = path.with_suffix(".json")
    return partner.is_file()


def collect_images(specs, exclude: Path | None = None, recursive: bool = False) -> list[Path]:
    """Files, folders (their image files, sorted) and globs -> a list of image paths without duplicates.

    Folders (and folders a glob matches) give their regular files whose suffix is one of
    :data:`onnx_cnnviz.image.IMAGE_SUFFIXES` (hidden files left out; subfolders too with ``recursive``). Files named
    explicitly are always taken (reading them says whether they are pictures).

    ``exclude``: the output folder: pictures this tool wrote there (NAME.METHOD.RANK.png, NAME.activations.png,
    NAME.boxes.png, evaluate's curve.METHOD.METRIC.png, each with the file written beside it) are not taken from
    folders and globs, so that a second run over a folder holding its own results does not explain the results. A
    picture only named like one of them is an input like any other.
    """
    found: list[Path] = []
    seen = set()
    excluded = exclude.resolve() if exclude is not None else None

    def add(path: Path, expanded: bool = True):
        key = path.resolve()
        if expanded and excluded is not None and (excluded in key.parents) and _OURS.search(key.name) \
                and _is_ours(key):
            return
        if key not in seen:
            seen.add(key)
            found.append(path)

    def add_folder(folder: Path):
        pattern = "**/*" if recursive else "*"
        for p in sorted(folder.glob(pattern)):
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file():
                add(p)

    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            add_folder(path)
        elif path.exists():
            add(path, expanded=False)
        elif glob.has_magic(str(spec)):
            matches = sorted(glob.glob(str(spec), recursive=True))
            if not matches:
                raise InputError(f"no file matches {spec!r}.")
            for match in matches:
                p = Path(match)
                if p.is_dir():
                    add_folder(p)
                elif p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                    add(p)
        else:
            raise InputError(f"image '{spec}' does not exist.")
    if not found:
        hint = "" if recursive else "; pass -r to look in subfolders too"
        raise InputError(f"no image files found in {', '.join(map(str, specs))} "
                         f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))}{hint}).")
    return found


def image_keys(paths: list[Path]) -> list[str]:
    """One file-name stem per image, different for different input paths (compared ignoring case, for file systems
    that do): the stem when no other image has it; else the path relative to the images' common folder, its folders
    joined by ``__`` (``a/cat.png`` -> ``a__cat``), plus the suffix when only that differs (``cat_png``,
    ``cat_jpg``); when that still collides (``a/cat.png`` and ``a__cat.png``), a short hash of the full path is
    added (``a__cat-3f9c2a1b``). Keys over :data:`MAX_KEY` characters are cut and hashed the same way."""
    stems = [p.stem for p in paths]
    if _unique(stems) and all(len(k) <= MAX_KEY for k in stems):
        return stems
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    counts = Counter(stem.casefold() for stem in stems)
    keys = []
    for r, stem in zip(resolved, stems):
        if counts[stem.casefold()] == 1:
            keys.append(stem)
        else:
            rel = r.relative_to(root)
            keys.append("__".join(rel.parent.parts + (rel.stem,)))
    # Same name but the suffix in one folder (cat.png, cat.jpg): the suffix tells them apart.
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k.casefold(), []).append(i)
    for members in groups.values():
        suffixes = [paths[i].suffix.lstrip(".").casefold() for i in members]
        if len(members) > 1 and all(suffixes) and len(set(suffixes)) == len(members):
            for i in members:
                keys[i] = f"{keys[i]}_{paths[i].suffix.lstrip('.')}"

    def digest(i: int, digits: int) -> str:
        return hashlib.sha1(str(resolved[i]).encode("utf-8", "surrogateescape")).hexdigest()[:digits]

    keys = [f"{k[:MAX_KEY - 9]}-{digest(i, 8)}" if len(k) > MAX_KEY else k for i, k in enumerate(keys)]
    # Anything still shared (a/cat.png and a__cat.png): a hash of the full path, longer until every key is unique.
    for digits in (8, 16, 40):
        counts = Counter(k.casefold() for k in keys)
        if all(n == 1 for n in counts.values()):
            return keys
        keys = [f"{k}-{digest(i, digits)}" if counts[k.casefold()] > 1 else k for i, k in enumerate(keys)]
    return keys if _unique(keys) else [f"{k}-{i}" for i, k in enumerate(keys)]

MAX_KEY = 120  # characters of an image's key in output file names (file names stop at 255 bytes)


def _unique(keys) -> bool:
    return len({k.casefold() for k in keys}) == len(keys)


def read_batch(paths: list, chunk: list, pre: Preprocessing, failed: list, reporter) -> list:
    """The model inputs of the images of ``chunk`` (plan items) as (x (1, C, H, W), item) pairs. An unreadable image
    is warned about (through ``reporter``), added to ``failed`` at once (a Ctrl-C during the batch keeps it listed)
    and left out."""
    from ..image import preprocess

    read = []
    for item in chunk:
        i = item[0]
        try:
            read.append((preprocess([paths[i]], preset=pre), item))
        except InputError as exc:
            failed.append({"image": abspath(paths[i]), "error": str(exc)})
            reporter.warn(f"skipped: {exc}")
    return read


def same_size_groups(read: list):
    """(batch, items) per input size, in the order first seen: images of one size run together (all of them, unless
    the preprocessing keeps native sizes)."""
    groups: dict = {}
    for x, item in read:
        groups.setdefault(x.shape, []).append((x, item))
    for group in groups.values():
        yield np.concatenate([x for x, _ in group]), [item for _, item in group]
