"""Runs: explain or evaluate a set of images into files, the engine under ``cnnviz``, the Ray pipeline and Python.

    from onnx_cnnviz import runs

    runs.explain_images("model.onnx", ["photos/"], "out/", methods=["gradcam", "saliency"])
    runs.evaluate_images("model.onnx", ["photos/"], "eval/", methods=["gradcam"], metrics=["deletion"])

each write exactly what ``cnnviz explain`` / ``cnnviz evaluate`` write and return the document their ``--json``
prints. Nothing here prints: lines, warnings and progress go to a :class:`~.reporting.Reporter` (by default, warnings
through :func:`warnings.warn`).

The modules: :mod:`.reporting` (the reporter), :mod:`.outputs` (output safety: inputs never written, atomic writes,
no journal through a link, kept results checked whole), :mod:`.images` (the one image collector, file-name keys,
batches), :mod:`.preprocessing` (the one preprocessing policy, on the library's presets), :mod:`.labels` (class names
and targets), :mod:`.explain_plan` / :mod:`.explain_run` / :mod:`.explain` (explaining into files) and
:mod:`.evaluate_plan` / :mod:`.evaluate_run` / :mod:`.evaluate_tables` / :mod:`.evaluate` (scoring methods with
metrics: journal, tallies, summaries, intervals, ranking, curves and page).
"""
from __future__ import annotations

from .evaluate import evaluate_images
from .explain import explain_images
from .reporting import Reporter, RunWarning, SilentReporter

__all__ = ["explain_images", "evaluate_images", "Reporter", "RunWarning", "SilentReporter"]
