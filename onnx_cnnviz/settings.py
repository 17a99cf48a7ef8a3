"""Every environment setting the library and the command line read, in one place.

Each setting is read when it is used, never at import, so a malformed value is an :class:`InputError` with one line
of cause at the moment it matters (the command line prints it as any other bad input), not a traceback from an
``import``. The table :data:`SETTINGS` lists them.

- `CNNVIZ_HOLD_ABOVE_BYTES` (default 268435456): a model with this many bytes of weights or more has its large ones
  held outside the protobuf (:mod:`onnx_cnnviz.graph.held`); 0 holds every model's.
- `CNNVIZ_HOLD_MIN_BYTES` (default 1048576): only initializers this large are held.
- `CNNVIZ_SHARE_WEIGHTS` (default 1): the sessions of one model share its weights (0/false/no/off: a private copy
  each, onnxruntime's default).
- `CNNVIZ_DEBUG` (default 0): the command line prints an error's traceback as well as its one line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import InputError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, its kind (``"bytes"``: a whole number of bytes, ``"flag"``: on/off), its
    default and what it does."""
    name: str
    kind: str
    default: int | bool
    meaning: str

    def read(self) -> int | bool:
        """The variable's value now.

        Returns:
            The default when the variable is unset or blank; otherwise the parsed value.

        Raises:
            InputError: the value is not a whole number of bytes (``"bytes"``) or not one of
                1/0/true/false/yes/no/on/off (``"flag"``).
        """
        text = os.environ.get(self.name, "").strip()
        if not text:
            return self.default
        if self.kind == "bytes":
            if not text.isascii() or not text.isdigit():
                raise InputError(f"the environment variable {self.name} must be a whole number of bytes "
                                 f"(such as {self.default}), not {text!r}.")
            return int(text)
        word = text.lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise InputError(f"the environment variable {self.name} must be 1 or 0 (true/false, yes/no, on/off), "
                         f"not {text!r}.")


HOLD_ABOVE_BYTES = Setting("CNNVIZ_HOLD_ABOVE_BYTES", "bytes", 2 ** 28,
                           "a model with this many bytes of weights or more has its large ones held outside the "
                           "protobuf (0: every model)")
HOLD_MIN_BYTES = Setting("CNNVIZ_HOLD_MIN_BYTES", "bytes", 2 ** 20, "only initializers this large are held")
SHARE_WEIGHTS = Setting("CNNVIZ_SHARE_WEIGHTS", "flag", True,
                        "the sessions of one model share its weights (0: a private copy per session)")
DEBUG = Setting("CNNVIZ_DEBUG", "flag", False, "the command line prints an error's traceback as well as its line")

#: Every setting, by variable name.
SETTINGS: dict[str, Setting] = {s.name: s for s in (HOLD_ABOVE_BYTES, HOLD_MIN_BYTES, SHARE_WEIGHTS, DEBUG)}


def check_all() -> None:
    """Read every setting once, so that a malformed one is refused before any work.

    Raises:
        InputError: the first malformed variable, with its name and the value expected.
    """
    for setting in SETTINGS.values():
        setting.read()


__all__ = ["Setting", "SETTINGS", "HOLD_ABOVE_BYTES", "HOLD_MIN_BYTES", "SHARE_WEIGHTS", "DEBUG", "check_all"]
