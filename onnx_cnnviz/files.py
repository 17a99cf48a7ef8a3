"""Reading and writing files safely: only regular files are read (never a FIFO that would block or a device that never
ends), and a file is written without ever leaving half of one, and without replacing what the user has unless asked.

:func:`write_atomic` writes through a temporary file named ``.NAME.XXXXXXXX.tmp`` beside the target (eight hex
digits); :func:`temp_target` recognises those names and :func:`remove_stale_temps` deletes the ones a killed run left
behind.
"""
from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from .errors import InputError

# The temporary file of write_atomic for a target NAME: ".NAME.<8 hex digits>.tmp".
_TEMP = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{8}\.tmp$")


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words.

    Args:
        mode: an ``os.stat`` result's ``st_mode``.

    Returns:
        "a regular file", "a folder", "a FIFO (named pipe)", ...
    """
    for test, words in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"),
                        (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "not a regular file"


def read_regular(path, what: str, max_bytes: int | None = None, error=InputError) -> bytes:
    """The bytes of a regular file, refusing anything else before reading it.

    The file is opened without blocking and checked with ``fstat`` before anything is read, so a FIFO never hangs
    the caller and a device (``/dev/zero``) is never read.

    Args:
        path: the file.
        what: how errors name it ("labels file", "image file").
        max_bytes: the largest size accepted, or None.
        error: the :class:`~onnx_cnnviz.errors.CnnvizError` class raised.

    Returns:
        The file's bytes.

    Raises:
        CnnvizError: (``error``) a folder, FIFO, device or socket, or a file over ``max_bytes``.
        FileNotFoundError: a missing file (callers word that themselves); other ``OSError`` s propagate.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} '{path}' is {file_kind(info.st_mode)}, not a regular file; give the path of a "
                        "file.")
        if max_bytes is not None and info.st_size > max_bytes:
            raise error(f"{what} '{path}' is {info.st_size:,} bytes, more than the {max_bytes:,} allowed; check "
                        "that it is the right file.")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:  # it grew while we read it
                raise error(f"{what} '{path}' is more than the {max_bytes:,} bytes allowed; check that it is the "
                            "right file.")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_regular(path, what: str, error=InputError) -> None:
    """Refuse a path that exists but is not a regular file; nothing is opened, so a FIFO does not block.

    Args:
        path: the path (symbolic links are followed).
        what: how the error names it.
        error: the :class:`~onnx_cnnviz.errors.CnnvizError` class raised.

    Raises:
        CnnvizError: (``error``) a folder, FIFO, device or socket. A missing path passes.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise error(f"{what} '{path}' is {file_kind(mode)}, not a regular file; give the path of a file.")


def temp_target(name: str) -> str | None:
    """The target file name of a temporary file of :func:`write_atomic` (``.NAME.XXXXXXXX.tmp``).

    Args:
        name: a file name.

    Returns:
        ``NAME``, or None when ``name`` is not such a temporary file.
    """
    match = _TEMP.match(name)
    return match.group("target") if match else None


def remove_stale_temps(folder, targets) -> list[Path]:
    """Delete the temporary files :func:`write_atomic` left for some targets (a run killed with ``kill -9``).

    Other files are never touched.

    Args:
        folder: the folder.
        targets: the file names whose temporary files may be removed.

    Returns:
        The paths removed.
    """
    folder, targets = Path(folder), set(targets)
    if not folder.is_dir():
        return []
    removed = []
    for entry in os.scandir(folder):
        if temp_target(entry.name) in targets and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:  # another process cleaned it meanwhile
                continue
            removed.append(Path(entry.path))
    return sorted(removed)


def write_atomic(path, data: bytes | str, overwrite: bool = False) -> Path:
    """Write a file through a temporary file in the same folder and a rename, so that nobody sees half a file.

    Parent folders are created. Without ``overwrite`` the temporary file is hard-linked into place, which fails if
    ``path`` appeared meanwhile (``os.replace`` would silently clobber it); file systems without hard links fall back
    to check-then-replace.

    Args:
        path: the file to write.
        data: bytes, or text (written as UTF-8).
        overwrite: replace an existing regular file.

    Returns:
        ``path``.

    Raises:
        InputError: the file exists and ``overwrite`` is False, or the target is not a regular file (a FIFO, a
            device: refused whatever ``overwrite`` says).
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name.")
    check_regular(path, "the output")  # a FIFO or device: replacing it is never what was meant
    exists = f"{path} already exists; pass --overwrite (overwrite=True) to replace it."
    if not overwrite and path.exists():
        raise InputError(exists)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _create_temp(path)
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise InputError(exists) from None
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise InputError(exists) from None
                os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()
    return path


def _create_temp(path: Path) -> Path:
    # 0o666 through os.open so the umask applies: the result gets the permissions of any new file (tempfile.mkstemp
    # would leave it 0o600); O_EXCL so two writers never share a temporary file.
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # the _TEMP pattern
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
        except FileExistsError:
            continue
        return candidate
    raise InputError(f"could not create a temporary file next to {path}.")
