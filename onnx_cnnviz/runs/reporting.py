"""How a run speaks without printing: a :class:`Reporter` receives its lines, warnings and progress.

The library's default reporter drops the lines, turns warnings into :func:`warnings.warn` (:class:`RunWarning`, once
per key) and shows no progress; ``cnnviz`` passes one that prints them (``onnx_cnnviz/cli/common.py``), a Ray actor
one that says
nothing (its driver speaks).
"""
from __future__ import annotations

import warnings


class RunWarning(UserWarning):
    """A warning of a run (an assumed preprocessing, a stride larger than the image, a skipped picture, ...)."""


class NullProgress:
    """A progress display that shows nothing: the interface runs use (``update``, ``method_progress``,
    ``step_progress``; a context manager)."""

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def update(self, n: int = 1) -> None:
        """``n`` more items done."""

    def method_progress(self, name: str):
        """A ``progress(done, total)`` callable for method ``name`` (here: one that does nothing)."""
        return None

    def step_progress(self, name: str, done: int, total: int) -> None:
        """``done`` of ``total`` units of ``name`` inside the current item."""


class Reporter:
    """Where a run's messages go. Subclass it (or pass callables) to show them.

    Args:
        on_info: called with each informational line ("resume: 2 image(s) already done, skipped"); default: dropped.
        on_result: called with the line of each result written; default: dropped.
        on_warning: called with ``(message, once)`` for each warning; default: :func:`warnings.warn` with
            :class:`RunWarning`, once per ``once`` key.
    """

    def __init__(self, on_info=None, on_result=None, on_warning=None):
        self.on_info, self.on_result, self.on_warning = on_info, on_result, on_warning
        self.warned: set = set()

    def info(self, message: str) -> None:
        """An informational line (the CLI prints it on stderr)."""
        if self.on_info is not None:
            self.on_info(message)

    def result(self, message: str) -> None:
        """The line of one finished result (the CLI prints it on stdout)."""
        if self.on_result is not None:
            self.on_result(message)

    def warn(self, message: str, once: str | None = None) -> None:
        """A warning; ``once``: a key, so that it is given once per run."""
        if once is not None:
            if once in self.warned:
                return
            self.warned.add(once)
        if self.on_warning is not None:
            self.on_warning(message, once)
        else:
            warnings.warn(message, RunWarning, stacklevel=3)

    def progress(self, total: int, label: str, unit: str = "images"):
        """A progress display for ``total`` items (a context manager; see :class:`NullProgress`)."""
        return NullProgress()


class SilentReporter(Reporter):
    """Says nothing at all (a Ray actor's reporter: the driver gives the lines and warnings)."""

    def warn(self, message: str, once: str | None = None) -> None:
        pass
