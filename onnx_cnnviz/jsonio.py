"""JSON as the project writes it: the command line's records and documents, and the data inside the HTML report.

Results hold numpy scalars and arrays, paths and tuples, which :mod:`json` does not take; :func:`to_jsonable` is the
one conversion, so a record on disk, the same record on stdout and the report's embedded data agree.

The JSON written is strict (RFC 8259): NaN and the infinities, which :mod:`json` would write as the bare words
``NaN`` and ``Infinity`` that strict parsers (JavaScript's ``JSON.parse``, jq, most other languages) reject, become
``null``; whoever writes a number that may be undefined says why beside it (evaluate's rows carry a ``reason``).
"""
from __future__ import annotations

import json
import math
from pathlib import PurePath

import numpy as np


def to_jsonable(value):
    """A value as plain JSON types.

    Numpy scalars become Python numbers, arrays and tuples lists, paths strings, dicts and lists are converted item by
    item, NaN and the infinities become None (strict JSON has no such numbers); JSON's own types stay as they are
    and anything else becomes its ``str``. Usable as the ``default`` of :func:`json.dumps` (which calls it only for
    what it cannot encode itself).

    Args:
        value: anything.

    Returns:
        The value in JSON types.

    Example:
        >>> to_jsonable({"x": float("nan"), "shape": (2, 3)})
        {'x': None, 'shape': [2, 3]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.number) and not np.issubdtype(value.dtype, np.complexfloating) \
                and np.isfinite(value).all():
            return value.tolist()  # nothing to replace: no walk over every element
        return to_jsonable(value.tolist())
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return str(value)


def dumps(value, indent: int | None = 2) -> str:
    """A value as strict JSON text, converted by :func:`to_jsonable` (NaN and infinities as null).

    Args:
        value: anything.
        indent: spaces per level; None: one line.

    Returns:
        The JSON text.
    """
    return json.dumps(to_jsonable(value), indent=indent, allow_nan=False, default=to_jsonable)


def dumps_for_html(value) -> str:
    """A value as one line of JSON that can stand inside an HTML ``<script>`` element.

    ``<``, ``>`` and ``&`` are written as ``\\u003c``, ``\\u003e`` and ``\\u0026`` (the same string to a JSON
    reader), so no text in the data can close the element or start markup.

    Args:
        value: anything.

    Returns:
        The JSON text.
    """
    text = dumps(value, indent=None)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


__all__ = ["to_jsonable", "dumps", "dumps_for_html"]
