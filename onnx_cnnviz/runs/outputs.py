"""Output safety: where a run may write, and how. An input is never written (whatever the flags), a folder or a FIFO
where a file goes is never replaced, an existing result only with ``overwrite``; files are written atomically
(:func:`onnx_cnnviz.files.write_atomic`, looked up on :mod:`onnx_cnnviz.report` at each call so that tests can
replace it); a journal is never written through a symbolic link; a kept result is checked whole
(:func:`broken_file`) before a resumed run skips it.
"""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np

from .. import jsonio
from ..errors import InputError
from ..files import check_regular


def abspath(path) -> str | None:
    """The one way paths appear in JSON: absolute and resolved (None stays None)."""
    return None if path is None else str(Path(path).resolve())


def out_folder(path) -> Path:
    """The --out folder of a command: refused (:class:`InputError`) when it exists and is not a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out '{path}' exists and is not a folder; give a folder for the results.")
    return path


def protect_inputs(outputs, inputs) -> None:
    """Refuse (:class:`InputError`) to write any of ``outputs`` over one of ``inputs`` (the model, images, labels,
    any file a command reads), whatever --overwrite says: the same path, or the same file reached through a symbolic
    or hard link (compared by device and inode, like :func:`os.path.samefile`). Call it before any work, with every
    output the command may write. ``None`` entries are ignored."""
    sources = {}
    for path in inputs:
        if path is None:
            continue
        try:
            info = os.stat(path)
        except OSError:
            continue
        sources[(info.st_dev, info.st_ino)] = path
    if not sources:
        return
    for out in outputs:
        try:
            info = os.stat(out)
        except OSError:  # not there (or not reachable): it cannot be an input
            continue
        source = sources.get((info.st_dev, info.st_ino))
        if source is not None:
            same = "" if os.path.abspath(out) == os.path.abspath(source) else f" (the same file as the input {source})"
            raise InputError(f"the output {out} would replace an input file{same}; choose another --out (input "
                             "files are never written).")


def check_outputs(paths, overwrite: bool, inputs=()) -> None:
    """Fail before any work when an output would replace an input (:func:`protect_inputs`, whatever ``overwrite``
    says), is something other than a regular file (a folder, a FIFO: never replaced), or exists while ``overwrite``
    is false."""
    paths = [Path(p) for p in paths]
    protect_inputs(paths, inputs)
    for p in paths:
        check_regular(p, "the output")
    if overwrite:
        return
    for p in paths:
        if p.exists():
            raise InputError(f"{p} already exists; pass --overwrite to replace it.")


def remove_stale_temps(folder, names, reporter=None) -> list:
    """Delete the temporary files a killed run (``kill -9``) left in ``folder`` for the output file ``names``
    (see :func:`onnx_cnnviz.files.remove_stale_temps`) and say how many through ``reporter``; returns them."""
    from .. import files

    removed = files.remove_stale_temps(folder, names)
    if removed and reporter is not None:
        reporter.info(f"resume: removed {len(removed)} temporary file(s) left by an interrupted run")
    return removed


def npy_bytes(array) -> bytes:
    """``array`` in the .npy format (no pickles: a plain numeric array)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_npy(path, array, overwrite: bool) -> str:
    """Write ``array`` as a .npy file, atomically; returns the path written."""
    from .. import report

    return str(report.write_atomic(path, npy_bytes(array), overwrite=overwrite))


def save_json(path, document, overwrite: bool) -> str:
    """Write ``document`` as indented JSON, atomically; returns the path written."""
    from .. import report

    return str(report.write_atomic(path, jsonio.dumps(document), overwrite=overwrite))


def broken_file(files) -> Path | None:
    """The first of a finished result's picture and array that is missing, empty or damaged (not a PNG from its
    signature to its IEND chunk; an NPY whose header cannot be read or whose data is shorter than the header says),
    else None: --resume keeps a result only when every file its record stands for is whole."""
    for path in (files.png, files.npy):
        try:
            with open(path, "rb") as handle:
                if path.suffix == ".png":
                    head = handle.read(8)
                    handle.seek(0, os.SEEK_END)
                    size = handle.tell()
                    handle.seek(max(0, size - 12))
                    tail = handle.read(12)
                    whole = head == b"\x89PNG\r\n\x1a\n" and size >= 20 and tail[4:8] == b"IEND" \
                        and struct.unpack(">I", tail[:4])[0] == 0
                else:
                    version = np.lib.format.read_magic(handle)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                                   np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(handle)
                    need = handle.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    handle.seek(0, os.SEEK_END)
                    whole = not dtype.hasobject and handle.tell() >= need
        except (OSError, ValueError, EOFError, TypeError):
            whole = False
        if not whole:
            return path
    return None


def open_journal(path: Path, append: bool):
    """The journal file opened for writing, never through a symbolic link: a new journal replaces a link at its
    place (as every other output's atomic rename does) instead of emptying the file the link points to, or creating
    the target of a dangling one; appending to a link fails (``O_NOFOLLOW``; the plan refuses it first)."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    if append:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | nofollow
    else:
        if path.is_symlink():
            path.unlink()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | nofollow
    return os.fdopen(os.open(path, flags, 0o666), "w", encoding="utf-8")
