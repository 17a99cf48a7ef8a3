"""Where the pictures come from: local paths (files, folders, globs, as ``cnnviz explain`` takes them) and URIs of any
filesystem pyarrow reads (``s3://``, ``gs://``, ``hdfs://``, ``file://``), listed on the driver and read in Ray tasks.

A picture is always decoded by :func:`onnx_cnnviz.image.preprocess` from a local file, so that the Ray run gives the
very arrays of the single-process run (EXIF orientation, 16-bit PNGs, the pixel limit): a remote one is first copied
into a temporary file with its own suffix.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import InputError
from ..image import IMAGE_SUFFIXES


def is_uri(spec) -> bool:
    """``spec`` names a file through a filesystem scheme (``s3://...``), not a local path."""
    text = str(spec)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and len(scheme) > 1  # "C://" stays a Windows drive


class Uri(os.PathLike):
    """A remote picture where the CLI's writer expects a ``Path``: ``resolve()`` is the URI itself, ``name`` /
    ``stem`` / ``suffix`` those of its last part (file-name keys are made from them)."""

    def __init__(self, uri: str):
        self.uri = str(uri)
        self._local = Path(self.uri.partition("://")[2])

    def resolve(self) -> Uri:
        return self

    def __fspath__(self) -> str:
        return self.uri

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Uri({self.uri!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Uri) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    @property
    def name(self) -> str:
        return self._local.name

    @property
    def stem(self) -> str:
        return self._local.stem

    @property
    def suffix(self) -> str:
        return self._local.suffix

    @property
    def parent(self):
        return self._local.parent

    @property
    def parts(self):
        return self._local.parts

    def relative_to(self, other):
        return self._local.relative_to(other)


def list_remote(spec: str, recursive: bool = False) -> list[Uri]:
    """The pictures of the URI ``spec``: the file itself, or the files of that folder whose suffix is one of
    :data:`IMAGE_SUFFIXES` (sorted; subfolders with ``recursive``). Listed with ``pyarrow.fs``, so credentials come
    from the environment as pyarrow reads them."""
    from pyarrow import fs as pafs

    scheme = spec.partition("://")[0]
    try:
        filesystem, root = pafs.FileSystem.from_uri(spec)
        info = filesystem.get_file_info(root)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"cannot open {spec!r} with pyarrow ({exc}); check the URI and the filesystem's "
                         "credentials.") from None
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"image '{spec}' does not exist.")
    if info.type == pafs.FileType.File:
        return [Uri(spec)]
    found = filesystem.get_file_info(pafs.FileSelector(root, recursive=recursive))
    names = sorted(f.path for f in found if f.type == pafs.FileType.File
                   and Path(f.path).suffix.lower() in IMAGE_SUFFIXES and not Path(f.path).name.startswith("."))
    return [Uri(f"{scheme}://{name.lstrip('/')}" if scheme != "file" else f"file://{name}") for name in names]


def collect(specs, exclude: Path | None, recursive: bool = False) -> list:
    """Local specs as ``cnnviz explain`` collects them (:func:`onnx_cnnviz.runs.images.collect_images`), URIs
    through :func:`list_remote`; the order given, without duplicates."""
    from ..runs.images import collect_images

    local = [s for s in specs if not is_uri(s)]
    found = collect_images(local, exclude=exclude, recursive=recursive) if local else []
    seen = {p.resolve() for p in found}
    for spec in specs:
        if is_uri(spec):
            for uri in list_remote(str(spec), recursive):
                if uri not in seen:
                    seen.add(uri)
                    found.append(uri)
    if not found:
        raise InputError(f"no image files found in {', '.join(map(str, specs))}.")
    return found


def read_bytes(uri: str) -> bytes:
    """The bytes of the remote file ``uri`` (an :class:`InputError` naming it when it cannot be read)."""
    from pyarrow import fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        with filesystem.open_input_file(path) as handle:
            return handle.readall()
    except (OSError, ValueError) as exc:
        raise InputError(f"Could not read image file {uri}: {exc}.") from None


def load_input(path: str, preprocessing, max_pixels):
    """The model input ``(1, C, H, W)`` of the picture ``path`` (local path or URI), read as ``cnnviz explain``
    reads it (:func:`onnx_cnnviz.image.preprocess` under the run's pixel limit)."""
    from ..image import preprocess
    from ..image.reading import pixel_limit

    with pixel_limit(max_pixels):
        if not is_uri(path):
            return preprocess([path], preset=preprocessing)
        blob = read_bytes(path)
        with tempfile.TemporaryDirectory(prefix="cnnviz-ray-") as folder:
            local = Path(folder) / f"image{Uri(path).suffix}"
            local.write_bytes(blob)
            try:
                return preprocess([local], preset=preprocessing)
            except InputError as exc:  # the message names the picture, not our temporary copy
                raise InputError(str(exc).replace(str(local), path)) from None
