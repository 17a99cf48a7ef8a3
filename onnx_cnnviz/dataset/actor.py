"""The two stages Ray runs: reading pictures (stateless tasks, :func:`decode_batch`) and explaining them (a pool of
actors, :class:`ModelActor`).

Each actor loads the ONNX model once, in its own process, with onnxruntime's intra-op threads set to the actor's CPU
share (so that N actors on a machine do not each start one thread per core), and keeps the model's sessions between
batches. It explains a batch with the library's run (:func:`onnx_cnnviz.runs.explain_run.explain_group`: the
same classes, maps, pictures, arrays and JSON records as the single-process run), scores the maps with the asked
metrics, writes its part of the records table and hands the driver only the small rows. For ``cnnviz evaluate``
(:class:`EvaluateWork`) it runs evaluate's own :func:`~onnx_cnnviz.runs.evaluate_run.evaluate_group` and writes
nothing: its journal rows go to the driver, which writes them.
"""
from __future__ import annotations

import io
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import jsonio
from ..errors import CnnvizError, InputError
from . import records, sources


@dataclass(frozen=True)
class ActorSpec:
    """What an actor needs, fixed on the driver: the model file and how to load it (``load_kwargs``: device, input,
    output, input_size, batch_size, max_nodes), its onnxruntime ``threads`` and the ``work`` it does per batch (a
    picklable callable, see :class:`ModelActor`). ``entries``: the driver's method and metric registry entries,
    registered in the actor's process before any work, so that a method or metric registered on the driver only (by
    a script, a plugin, a test) runs on Ray as it runs in process."""
    model_path: str
    load_kwargs: dict
    threads: int
    work: object
    entries: tuple = ()


def registry_entries() -> tuple:
    """Every method and metric entry registered in this (the driver's) process, for the actors to register."""
    from ..methods import registry
    from ..metrics import registry as metric_registry

    return (*registry.METHODS.values(), *metric_registry.METRICS.values())


def register_entries(entries) -> None:
    """Register the driver's registry ``entries`` (methods and metrics) in this process, replacing its own."""
    from ..methods import registry
    from ..metrics import registry as metric_registry

    for entry in entries:
        table = registry if isinstance(entry, registry.Method) else metric_registry
        table.register(entry, replace=True)


def worker_id() -> str:
    """``host:pid`` of this process (a column of the table: which actor made a row)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def npy(array: np.ndarray) -> bytes:
    """``array`` as ``.npy`` bytes (how a read picture travels from a read task to an actor)."""
    from ..runs.outputs import npy_bytes

    return npy_bytes(array)


def decode_batch(batch: dict, preprocessing, max_pixels) -> dict:
    """Ray task: the model input of each planned picture, as ``.npy`` bytes in column ``x`` (empty, with the cause
    in ``error``, for a picture that cannot be read: it becomes a ``failed`` row, the job goes on)."""
    xs, errors = [], []
    for path in batch["path"]:
        try:
            xs.append(npy(sources.load_input(str(path), preprocessing, max_pixels)))
            errors.append("")
        except InputError as exc:
            xs.append(b"")
            errors.append(str(exc))
    out = dict(batch)
    out["x"] = np.array(xs, dtype=object)
    out["error"] = np.array(errors, dtype=object)
    return out


class ModelActor:
    """Ray actor: the model loaded once (its sessions kept between batches); each call hands one batch of read
    pictures to ``spec.work``.

    ``work(m, read, failed) -> rows``: ``read`` holds (x (1, C, H, W), item) per picture read, ``failed`` (item,
    error) per picture that could not be, each ``item`` the picture's planned columns (``index``, ``path``,
    ``key`` and whatever the caller put in); ``rows``: JSON-serialisable dicts, handed to the driver as they are.
    Whatever it would say goes to the driver in its rows: the runs it calls get a silent reporter."""

    def __init__(self, spec: ActorSpec):
        import onnx_cnnviz as cv

        self.work, self.m, self.error = spec.work, None, None
        try:
            register_entries(spec.entries)
            kwargs = dict(spec.load_kwargs)
            task = kwargs.pop("task", None)
            if task is None:
                self.m = cv.load(spec.model_path, threads=spec.threads, **kwargs)
            else:  # loaded as the driver loaded it (a PicoDet file through its decoded head)
                from ..runs.detections import load_for_task

                self.m = load_for_task(spec.model_path, task, input_name=kwargs.pop("input", None),
                                       output_name=kwargs.pop("output", None), threads=spec.threads, **kwargs)
        except CnnvizError as exc:  # handed to the driver as the typed error it is (see error_row)
            self.error = exc

    def __call__(self, batch: dict) -> dict:
        if self.error is not None:
            return error_row(self.error)
        try:
            return self.run(batch)
        except CnnvizError as exc:
            return error_row(exc)

    def run(self, batch: dict) -> dict:
        planned = [name for name in batch if name not in ("x", "error")]
        read, failed = [], []
        for j, (blob, error) in enumerate(zip(batch["x"], batch["error"])):
            item = {name: plain(batch[name][j]) for name in planned}
            if error:
                failed.append((item, str(error)))
            else:
                read.append((np.load(io.BytesIO(blob), allow_pickle=False), item))
        rows = self.work(self.m, read, failed)
        return {"row": np.array([jsonio.dumps(r, indent=None) for r in rows], dtype=object)}


def error_row(exc: CnnvizError) -> dict:
    """A batch's result when the library raised a typed error in the actor: one row naming the error class and its
    message, which the driver raises again (a Ray wrapper would hide the class behind its own)."""
    return {"row": np.array([json.dumps({ERROR: [type(exc).__name__, str(exc)]})], dtype=object)}


#: The key of an error row.
ERROR = "__cnnviz_error__"
#: The ``status`` of an :class:`ExplainWork` (:class:`EvaluateWork`) row naming an image where a detector (segmenter)
#: found nothing: no file, table row or journal row is written for it.
STATUS_NOTHING = "nothing found"


def plain(value):
    """A numpy scalar of a batch column as the Python value it was planned as."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class ExplainWork:
    """``cnnviz explain`` as an actor's work: the run's settings (``job``: a
    :class:`~onnx_cnnviz.runs.explain_plan.RunSettings` whose output folder is absolute; a detector's or segmenter's
    :class:`~onnx_cnnviz.runs.detection_run.TaskRun`), the metrics (name ->
    parameters), the settings digest per method and the records table folder. Planned items carry ``methods`` (JSON
    list: the methods still to do) and ``skip`` (JSON list: record file names of results kept)."""
    job: object
    metrics: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    table: str = ""

    def __call__(self, m, read: list, failed: list) -> list:
        from ..runs.detection_run import TaskRun, explain_targets_group
        from ..runs.explain_run import Outcome, explain_group
        from ..runs.images import same_size_groups
        from ..runs.reporting import SilentReporter

        job, worker = self.job, worker_id()
        rows, returned, done, groups = [], [], set(), []
        for item, error in failed:
            rows.append(records.failed_row(path_of(item["path"]).resolve().__str__(), item["key"], error, worker))
            returned.append({"status": records.STATUS_FAILED, "image": rows[-1]["image"], "error": error,
                             "worker": worker})
        for j, (x, item) in enumerate(read):
            done.update(job.out / name for name in json.loads(item["skip"]))
            groups.append((x, (j, json.loads(item["methods"]))))
        paths = [path_of(item["path"]) for _, item in read]
        keys = [item["key"] for _, item in read]
        for x, items in same_size_groups(groups):
            written: list = []
            if isinstance(job, TaskRun):  # a detector's detections, a segmenter's regions
                outcome = Outcome(results=written)
                explain_targets_group(m, job, x, items, paths, keys, done, outcome, reporter=SilentReporter())
                returned += [{"status": STATUS_NOTHING, "image": image, "worker": worker}
                             for image in outcome.nothing_found]
            else:
                explain_group(m, job, x, items, paths, keys, done, written, reporter=SilentReporter())
            values = self.metric_values(m, x, items, paths, written)
            rows += records.rows_from_records(written, job, self.settings, values, worker)
            returned += [{"status": records.STATUS_OK, "record": rec, "worker": worker} for rec in written]
        records.write_part(Path(self.table), rows)
        return returned

    def metric_values(self, m, x: np.ndarray, items: list, paths: list, written: list) -> dict:
        """json path -> {metric: value} for the results just written: each metric run on the group's pictures and
        their maps (read back from the .npy files just written), per method and rank, as ``cnnviz evaluate`` feeds
        them (:func:`onnx_cnnviz.metrics.inputs.explanation_for`). A metric that cannot take a method's result
        gives NaN."""
        if not self.metrics or not written:
            return {}
        from ..metrics import registry as metric_registry
        from ..metrics.inputs import explanation_for

        row_of = {str(paths[j].resolve()): r for r, (j, _) in enumerate(items)}
        groups: dict = {}
        for rec in written:
            groups.setdefault((rec["method"], records.rank_of(rec["json"], rec["method"])), []).append(rec)
        values: dict = {}
        for (method, _), recs in groups.items():
            xs = x[[row_of[rec["image"]] for rec in recs]]
            maps = np.stack([np.load(rec["outputs"]["array"], allow_pickle=False) for rec in recs])
            targets = np.array([rec["class"] for rec in recs], dtype=np.int64)
            for metric, params in self.metrics.items():
                try:
                    explanation = explanation_for(metric, maps, method, params)
                    result = metric_registry.evaluate(metric, m, xs, explanation, targets, params=params,
                                                      batch_size=self.job.rows_per_run)
                    scores = [float(v) for v in result.values]
                except CnnvizError:
                    scores = [float("nan")] * len(recs)
                for rec, value in zip(recs, scores):
                    values.setdefault(rec["json"], {})[metric] = value
        return values


def path_of(text: str):
    """A planned picture's path: a :class:`~onnx_cnnviz.dataset.sources.Uri` for a URI, else a ``Path``."""
    return sources.Uri(text) if sources.is_uri(text) else Path(text)


#: The ``status`` of an :class:`EvaluateWork` row carrying a warning the actor could not give (its messages are
#: silenced), for the driver to give once.
STATUS_WARNING = "warning"


class JournalRows:
    """An actor's stand-in for ``cnnviz evaluate``'s journal: it collects the rows instead of writing them, so that
    the driver stays the only writer of results.jsonl (and --resume reads what a run without Ray would have left)."""

    def __init__(self):
        self.rows: list = []

    def append(self, rows: list) -> None:
        self.rows += rows


@dataclass(frozen=True)
class EvaluateWork:
    """``cnnviz evaluate`` as an actor's work: ``job`` is the run's
    :class:`~onnx_cnnviz.runs.evaluate_plan.Job`. Planned
    items carry ``index`` (the picture's place in the run's list: its settings and boxes are keyed by it) and
    ``missing`` (JSON list of the [method, metric] rows still to do).

    Each batch is evaluated with the single-process run's own
    :func:`~onnx_cnnviz.runs.evaluate_run.evaluate_group` (same
    classes, maps, metric inputs and journal rows); the actor writes nothing. A detector's job
    (:class:`~onnx_cnnviz.runs.detection_evaluate.DetectionJob`: the model loaded as a detector) is evaluated per
    detection with :func:`~onnx_cnnviz.runs.detection_evaluate.evaluate_detection_group`. It returns ``{"status":
    "ok", "row": journal row}`` per finished row, ``{"status": "failed", "image", "error"}`` per unreadable picture,
    ``{"status": "nothing found", "image", "reason"}`` per picture where a detector found nothing above --conf and
    ``{"status": "warning", "key", "message"}`` per once-per-run warning met. The page's example pictures are made
    on the driver (:func:`~onnx_cnnviz.runs.evaluate_run.complete_examples`), not here."""
    job: object

    def __call__(self, m, read: list, failed: list) -> list:
        from ..runs.detection_evaluate import DetectionJob, DetectionTally, evaluate_detection_group
        from ..runs.evaluate_run import Tally, evaluate_group
        from ..runs.images import same_size_groups

        rows = [{"status": records.STATUS_FAILED, "image": item["path"], "error": error} for item, error in failed]
        paths = {item["index"]: item["path"] for _, item in read}
        groups = [(x, (item["index"], [tuple(k) for k in json.loads(item["missing"])])) for x, item in read]
        detector = isinstance(self.job, DetectionJob)
        journal = JournalRows()
        tally = DetectionTally(make_examples=False) if detector else Tally(make_examples=False)
        for x, items in same_size_groups(groups):
            if detector:  # a detector's rows are per detection (runs.detection_evaluate)
                evaluate_detection_group(m, self.job, x, items, paths, journal, tally)
            else:
                evaluate_group(m, self.job, x, items, paths, journal, tally)
        rows += [{"status": records.STATUS_OK, "row": row} for row in journal.rows]
        if detector:
            rows += [{"status": STATUS_NOTHING, "image": found["image"], "reason": found["reason"]}
                     for found in tally.nothing_found]
        rows += [{"status": STATUS_WARNING, "key": key, "message": message} for key, message in tally.warnings.items()]
        return rows
