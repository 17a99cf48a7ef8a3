"""One registry type for the library's tables of named entries (explanation methods, evaluation metrics).

A :class:`Registry` maps a name to an entry (a :class:`~onnx_cnnviz.methods.registry.Method`, a
:class:`~onnx_cnnviz.metrics.registry.Metric`): register, unregister, get, names, with typed errors. An entry's own
parameters and their defaults are read from its function's signature (:func:`signature_params`), so an entry cannot
disagree with the function it runs, and every table checks the parameters it is given the same way
(:func:`check_params`): a key the entry does not take is an :class:`~onnx_cnnviz.errors.InputError` naming those it
takes.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import InputError

T = TypeVar("T")

#: Characters a name may not hold: it is one word on a command line, in a comma-separated list, a file name and the
#: ``NAME.KEY=VALUE`` of a parameter option.
FORBIDDEN = ",/."


def check_name(name: str, what: str) -> None:
    """Raise an :class:`InputError` unless ``name`` is one word without commas, slashes or dots (``what``: "method",
    "metric")."""
    if not isinstance(name, str) or not name or any(c.isspace() or c in FORBIDDEN for c in name):
        raise InputError(f"a {what} name is one word without commas, slashes or dots, not {name!r}.")


class Registry(Generic[T]):
    """Named entries of one type, in registration order.

    Args:
        what: what an entry is, in words ("method", "metric"), for the error messages.
        entry_type: the entries' class; :meth:`get` passes an instance of it through unchanged, so that an entry
            that is not (or no longer, or not in this process) registered can still be run.
    """

    def __init__(self, what: str, entry_type: type):
        self.what = what
        self.entry_type = entry_type
        self.entries: dict[str, T] = {}

    def register(self, entry: T, replace: bool = False) -> T:
        """Add ``entry`` under its ``name`` (``replace=True`` to redefine an existing name).

        Returns:
            ``entry``.

        Raises:
            InputError: the name is taken and ``replace`` is False, or ``entry`` is not of the registry's type.
        """
        if not isinstance(entry, self.entry_type):
            raise InputError(f"register takes a {self.entry_type.__name__}, not {type(entry).__name__}.")
        name = entry.name
        if name in self.entries and not replace:
            raise InputError(f"a {self.what} named {name!r} is already registered; pass replace=True to redefine it.")
        self.entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove entry ``name`` (a test's toy entry, say). Raises :class:`InputError` for an unknown name."""
        self.get(name)
        del self.entries[name]

    def get(self, name) -> T:
        """The entry called ``name`` (an entry passes through).

        Raises:
            InputError: no entry has that name; the message lists the names.
        """
        if isinstance(name, self.entry_type):
            return name
        if not isinstance(name, str) or name not in self.entries:
            raise InputError(f"unknown {self.what} {name!r}; choose from {', '.join(self.entries)}.")
        return self.entries[name]

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        return list(self.entries)

    def __contains__(self, name) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[T]:
        return iter(list(self.entries.values()))

    def __len__(self) -> int:
        return len(self.entries)


def _same(a, b) -> bool:
    """Whether two defaults are equal (tuples and lists alike; an object without a truth value compared by identity)."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return a is b


def signature_params(func: Callable, leading: int, common: frozenset, declared, what: str) -> dict:
    """The parameters an entry's function takes beyond the shape every entry shares, with their defaults, read from
    its signature.

    The first ``leading`` parameters (the model, the images, ...) and the ``common`` keywords (``batch_size``,
    ``progress``, ...) are every entry's and are left out; each other parameter is one of the entry's own.

    Args:
        func: the entry's function.
        leading: how many positional parameters every entry's function starts with.
        common: keyword parameters every entry's function may take, supplied by the registry's runner.
        declared: None (every own parameter), a sequence of names (those, in that order: an entry exposes only some
            of its function's keywords) or a dict of name -> default (checked against the signature).
        what: the entry in words, for the error messages (``"method 'occlusion'"``).

    Returns:
        {name: default}, in the declared order, else the signature's.

    Raises:
        InputError: a declared name the function does not take, a declared default other than the function's, or an
            own parameter without a default (the registry could not call the function without it).
    """
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # a builtin or C function: no signature to read
        if isinstance(declared, dict):
            return dict(declared)
        raise InputError(f"{what}: its function has no signature to read its parameters from; give them as a dict "
                         "of defaults.") from None
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    own = {}
    for p in parameters[leading:]:
        if p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) or p.name in common:
            continue
        if p.default is p.empty:
            raise InputError(f"{what}: its function's parameter {p.name!r} has no default; give it one (the "
                             "registry calls the function with its defaults).")
        own[p.name] = p.default
    if declared is None:
        return own
    if isinstance(declared, str):
        declared = (declared,)
    result = {}
    for name in declared:
        if name not in own and not takes_any:
            raise InputError(f"{what}: its function takes no parameter {name!r}; it takes: "
                             f"{', '.join(own) or 'none'}.")
        default = declared[name] if isinstance(declared, dict) else own[name]
        if name in own and not _same(default, own[name]):
            raise InputError(f"{what}: parameter {name!r} is declared with default {default!r} but its function's "
                             f"default is {own[name]!r}; drop the declared default (it is read from the function).")
        result[name] = own.get(name, default)
    return result


def check_params(what: str, known: dict, given: dict) -> None:
    """Raise an :class:`InputError` naming the parameters ``known`` (the entry's, by name) when ``given`` has a key
    not among them. ``what``: the entry in words (``"method 'occlusion'"``)."""
    unknown = sorted(str(key) for key in given if key not in known)
    if unknown:
        raise InputError(f"{what} takes no parameter {unknown[0]!r}; its parameters: {', '.join(known) or 'none'}.")


def describe_params(params: dict) -> str:
    """``params`` ({name: default}) as "name=default, ..." (the help of the parameter options)."""
    return ", ".join(f"{name}={_shown(value)}" for name, value in params.items())


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_shown(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def resolved(params: dict, given: dict) -> dict:
    """``params`` ({name: default}) with the values of ``given`` over them (a None value keeps the default); a list
    given for a tuple default becomes a tuple (JSON and the command line give lists)."""
    out = {}
    for name, default in params.items():
        value = given.get(name)
        if value is None:
            out[name] = default
        elif isinstance(default, tuple) and isinstance(value, list):
            out[name] = tuple(value)
        else:
            out[name] = value
    return out


__all__ = ["Registry", "check_name", "signature_params", "check_params", "describe_params", "resolved"]
