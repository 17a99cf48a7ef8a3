"""Writing files without ever leaving half of one, and without replacing what the user has unless asked."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from .errors import InputError


def write_atomic(path, data: bytes | str, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so that nobody sees half
    a file. An existing file is kept (:class:`InputError`) unless ``overwrite``. Parent folders are created.

    Without ``overwrite`` the temporary file is hard-linked into place, which fails if ``path`` appeared meanwhile
    (``os.replace`` would silently clobber it); file systems without hard links fall back to check-then-replace.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name.")
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
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
        except FileExistsError:
            continue
        return candidate
    raise InputError(f"could not create a temporary file next to {path}.")
