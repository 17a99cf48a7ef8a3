"""``cnnviz evaluate``: which explanation can you trust? Every method on every image, scored by every metric.

A run explains each batch of images with each --method (:func:`onnx_cnnviz.methods.registry.explain`), scores the
maps with each --metric (:func:`onnx_cnnviz.metrics.registry.evaluate`, on the same preprocessed batch, for the same
classes; the localisation metrics also get each image's ground-truth boxes from --boxes) and writes into --out:

* ``results.jsonl``: the journal, one JSON line per (image, method, metric) row with the settings it was made with
  and its curve, appended and flushed as each metric finishes on a batch. It is what --resume reads and what the
  tables are made from, so a Ctrl-C (or a kill) never loses a finished row and never leaves half a table;
* ``results.csv`` / ``results.json``: one row per image x method x metric (image, method, metric, value, class, and
  what the metric read from the model);
* ``summary.csv`` / ``summary.json``: per method x metric the mean, the sample standard deviation (ddof=1; 0 for a
  single image), n and the Student-t 95% confidence interval ``mean +- t(0.975, n - 1) std / sqrt(n)``;
* ``curve.METHOD.METRIC.png``: the mean curve over the images of each metric that has one (deletion, insertion,
  ROAD), drawn with OpenCV;
* ``report.html``: one self-contained page (:mod:`onnx_cnnviz.evaluation_page`) with the ranking, the curves, the
  model, the preprocessing and a few example images with every method's map;

and prints, per metric, the methods ranked best first (the direction is the metric registry's
``higher_is_better``). Memory stays bounded: --batch-size images are read, explained and scored at a time; the
journal is read back a line at a time, keeping the per-row values and the running sums of the curves.

With --ray [ADDRESS] the same plan runs on Ray (:func:`onnx_cnnviz.dataset.pipeline.evaluate_on_ray`): Ray tasks read
the pictures, a pool of actors each holding the model runs :func:`evaluate_group` on each batch and sends back the
journal rows, and this process appends them to the journal as they arrive, so it stays the journal's only writer and
--resume, the tables, the page (its example maps are made here) and the exit codes are the single-process run's.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from onnx_cnnviz import jsonio
from onnx_cnnviz.errors import CnnvizError, InputError, NumericalError
from onnx_cnnviz.files import check_regular
from onnx_cnnviz.image import Preprocessing
from onnx_cnnviz.metrics import registry as metric_registry
from onnx_cnnviz.metrics.inputs import explanation_for
from onnx_cnnviz.metrics.intervals import mean_interval
from onnx_cnnviz.methods import registry

from .common import (EXIT_FAILURE, EXIT_INTERRUPTED, abspath, batch_size_option, collect_images, echo, emit_json,
                     flatten_lists, global_flags, image_options, labels_option, layer_option, method_option,
                     metric_options, model_and_preprocessing, model_options, out_folder, out_folder_option,
                     overwrite_option, parse_metric_params, preprocessing_options, progress, protect_inputs,
                     ray_option, recursive_option,
                     remove_stale_temps, resolve_labels, resolve_target, rows_per_run_option, save_json, settings,
                     shared_option, target_option, warn, reporter)
from onnx_cnnviz.runs.images import read_batch, same_size_groups

#: The confidence interval the summary reports, in words (the CSV header and the JSON say it).
CI_FORMULA = ("mean +- t(0.975, n - 1) * std / sqrt(n), Student's t quantile, std the sample standard deviation "
              "(ddof=1; the interval is the mean alone when n = 1)")
RESULT_FIELDS = ["image", "method", "metric", "value", "class", "output"]
SUMMARY_FIELDS = ["method", "metric", "mean", "std", "n", "ci95_low", "ci95_high", "higher_is_better", "output"]
DEFAULT_METRICS = ["deletion", "insertion"]
#: The journal of finished rows (JSON lines): what --resume reads and the tables are written from.
JOURNAL = "results.jsonl"
TABLES = ("results.csv", "results.json", "summary.csv", "summary.json")
PAGE = "report.html"
#: Images shown with every method's map on the page (the first ones read).
EXAMPLES = 3
#: Curves whose points are random samples, not steps of a progression (sensitivity-max's perturbations): their mean
#: is no curve, so no picture is drawn for them.
UNORDERED_AXES = {"perturbation sample"}
#: --resume's help: the same words as explain's (one meaning per flag, tests/cli/test_one_tool.py), with a note.
RESUME_HELP = ("Skip the results whose .json record exists and was made with the same model, parameters and "
               "preprocessing; recompute the others (and the unfinished ones); remove the temporary files of a killed "
               "run.")
RESUME_NOTE = (f"Here a result is an (image, method, metric) row of {JOURNAL}, and its settings also cover the metric "
               "parameters, the class, the layer and the boxes.")


@click.command("evaluate")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@method_option(registry.names, "Default: gradcam.")
@metric_options("Default: deletion,insertion.")
@click.option("--boxes", "boxes_file", type=click.Path(dir_okay=False), default=None,
              help="Ground-truth boxes of the images (CSV or JSON, keyed by image file name or path, in the "
                   "original pictures' pixels), for the localisation metrics (pointing-game, energy-pointing-game, "
                   "localisation-accuracy).")
@target_option("Evaluate it for every image (default: each image's top-1 class).")
@layer_option("Feature map of the CAM family (default: the last spatial map).")
@out_folder_option
@batch_size_option
@rows_per_run_option()
@recursive_option
@overwrite_option
@shared_option("--resume", is_flag=True, help=RESUME_HELP, note=RESUME_NOTE)
@image_options
@preprocessing_options
@labels_option()
@model_options
@ray_option(f"Same outputs; only this process writes {JOURNAL} (the actors send it their rows), so --resume works as "
            "without --ray.")
@global_flags
@click.pass_context
def evaluate_cmd(ctx, methods, metrics, metric_params, boxes_file, **options):
    """Score explanation METHODS on IMAGES with faithfulness METRICS (deletion, insertion, average drop, ROAD, ...)
    and localisation metrics (pointing game, with --boxes), and rank the methods per metric.

    Writes into --out: results.jsonl (every finished row, what --resume reads), results.csv/.json (one row per image
    x method x metric), summary.csv/.json (per method x metric: mean, std, n and the Student-t 95% confidence interval
    mean +- t std/sqrt(n)), curve.METHOD.METRIC.png (the mean curve of each curve metric) and report.html (the ranking,
    curves, model and example maps on one page). Existing files are never replaced without --overwrite or
    --resume; input files never. With --ray the images are read and evaluated on Ray; the outputs are the same.
    """
    methods = flatten_lists(methods) or ["gradcam"]
    metrics = flatten_lists(metrics) or list(DEFAULT_METRICS)
    check_boxes_usage(metrics, boxes_file)
    params = parse_metric_params(metric_params, metrics)
    run(ctx, methods, metrics, params, boxes_file, options)


# ---------------------------------------------------------------------------------------------------------------------
# Options


def needs_boxes(metric: str) -> bool:
    """Metric ``metric`` scores maps against ground-truth boxes (the registry's ``needs_boxes``)."""
    return bool(getattr(metric_registry.get(metric), "needs_boxes", False))


def check_boxes_usage(metrics: list, boxes_file) -> None:
    """A metric that needs boxes without --boxes is a usage error (exit code 2), before the model is read; --boxes
    with no such metric is only a warning (the file is not read)."""
    wanting = [name for name in metrics if needs_boxes(name)]
    if wanting and not boxes_file:
        raise click.UsageError(f"{', '.join(wanting)} score maps against ground-truth boxes: give them with --boxes "
                               "FILE (CSV or JSON, keyed by image file name).")
    if boxes_file and not wanting:
        warn(f"--boxes is ignored: none of {', '.join(metrics)} uses boxes.")


# ---------------------------------------------------------------------------------------------------------------------
# Settings


@dataclass
class Job:
    """Everything a run needs besides the model and the images, fixed once from the command line and checked
    against the loaded model.

    ``params``: per metric, the parameters as given (what :func:`metric_registry.evaluate` takes); ``layers``: per
    method, the layer it reads (None for the methods that read none); ``boxes``: per image (in ``paths`` order), its
    ground-truth boxes in model-input pixels, or None without --boxes. ``inputs``: the files the run reads, which no
    output may replace.
    """
    out: Path
    methods: list
    metrics: list
    params: dict
    target: int | None
    layer: str | None
    layers: dict
    preprocessing: Preprocessing
    preprocessing_info: dict
    labels: list | None
    model_path: str
    overwrite: bool
    resume: bool
    batch_size: int
    rows_per_run: int | None
    boxes: list | None = None
    inputs: tuple = ()
    _settings: dict = field(default_factory=dict, repr=False)  # (method, metric) -> the settings but the boxes

    def row_settings(self, method: str, metric: str, image: int) -> dict:
        """The settings an (image, method, metric) row is made with, as its journal line holds them: --resume keeps
        a row only if its line repeats them (the model, preprocessing, class, the method's layer and parameters, the
        metric's parameters and, for the localisation metrics, the image's boxes)."""
        key = (method, metric)
        if key not in self._settings:
            out = {"model": self.model_path, "preprocessing": self.preprocessing_info, "target": self.target,
                   "method": {"layer": self.layers[method], "parameters": registry.parameters(method, None)},
                   "parameters": metric_registry.parameters(metric, self.params[metric])}
            self._settings[key] = json.loads(jsonio.dumps(out, indent=None))  # as read back (tuples as lists)
        if needs_boxes(metric):
            return {**self._settings[key], "boxes": boxes_setting(self.boxes[image])}
        return self._settings[key]


def build_job(m, pre: Preprocessing, paths: list, methods: list, metrics: list, params: dict, boxes_file,
              options: dict) -> Job:
    """Check the options against the loaded model ``m`` (labels, the target class, each method's layer, the boxes of
    every image), so that a bad one fails before any image is explained, and fix the settings."""
    from onnx_cnnviz import report

    labels = resolve_labels(m, options["labels"])
    target = resolve_target(options["target"], labels)
    if target is not None:
        m.targets_for(target, 1)  # a class out of range fails now, not after the first batch
    layers = {name: registry.resolved_layer(m, name, options["layer"]) for name in methods}
    wanting = [name for name in metrics if needs_boxes(name)]
    boxes = ground_truth_boxes(boxes_file, paths, pre, wanting) if wanting else None
    return Job(out=Path(options["out_dir"]), methods=methods, metrics=metrics, params=params, target=target,
               layer=options["layer"], layers=layers, preprocessing=pre,
               preprocessing_info=report.preprocessing_info(pre), labels=labels,
               model_path=str(Path(options["model"]).resolve()), overwrite=options["overwrite"],
               resume=options["resume"], batch_size=options["batch_size"], rows_per_run=options["rows_per_run"],
               boxes=boxes, inputs=tuple(p for p in (options["model"], options["labels"], boxes_file) if p))


def ground_truth_boxes(boxes_file, paths: list, pre: Preprocessing, wanting: list) -> list:
    """Per image of ``paths``, its ground-truth boxes (:class:`~onnx_cnnviz.metrics.boxes.Box`) in model-input
    pixels, all checked before any work: :func:`~onnx_cnnviz.metrics.boxes.read_boxes` reads the file (keyed by file
    name or path), an image it gives no box is a usage error naming it (exit code 2), and
    :func:`~onnx_cnnviz.metrics.boxes.to_input` maps each image's boxes through the preprocessing's resize, refusing
    one outside the picture (:class:`InputError`). The original sizes come from reading each picture once here (the
    resize is the only step that moves pixels); a picture that cannot be read gets None and is skipped, with its
    error, when the run reaches it."""
    from onnx_cnnviz.image import read_image
    from onnx_cnnviz.metrics import boxes as box_io

    check_regular(boxes_file, "boxes file")  # a FIFO would block the read
    table = box_io.read_boxes(boxes_file)
    missing = box_io.images_without_boxes(table, [str(p) for p in paths])
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise click.BadParameter(f"{boxes_file} has no box for image '{missing[0]}'{more}; {', '.join(wanting)} "
                                 "score(s) every image against its boxes: add them, or leave the image out.",
                                 param_hint="--boxes")
    out = []
    for path in paths:
        try:
            size = read_image(path).shape[:2]
        except InputError:
            out.append(None)
            continue
        out.append(box_io.to_input(box_io.lookup(table, str(path)), size, pre.size, str(path)))
    return out


def boxes_setting(boxes) -> list | None:
    """An image's boxes as its rows' settings hold them: [x0, y0, x1, y1, label] in model-input pixels."""
    return None if boxes is None else [[*box.coords, box.label] for box in boxes]


# ---------------------------------------------------------------------------------------------------------------------
# The run


def run(ctx: click.Context, methods: list, metrics: list, params: dict, boxes_file, options: dict) -> None:
    """Evaluate ``methods`` x ``metrics`` on the images of ``options`` and write the tables, curves and page."""
    out = out_folder(options["out_dir"])
    paths = collect_images(options["images"], exclude=out, recursive=options["recursive"])
    m, pre = model_and_preprocessing(ctx, options, options["rows_per_run"])
    job = build_job(m, pre, paths, methods, metrics, params, boxes_file, options)
    outputs = output_files(out, methods, metrics)
    work = plan(job, outputs, paths)
    if work.done:
        echo(f"resume: {len(work.done)} row(s) already done with the same settings, skipped", err=True)
    if work.stale:
        echo(f"resume: {work.stale} row(s) were made with other settings ({', '.join(work.changed)}) and are "
             "recomputed", err=True)
    if options.get("ray_address"):
        # Imported only here: the core and the single-process run never import Ray.
        from onnx_cnnviz.dataset.pipeline import evaluate_on_ray

        tally = evaluate_on_ray(job, paths, work, outputs[JOURNAL], options)
    else:
        tally = evaluate_all(m, job, paths, work, outputs[JOURNAL])
    finish_run(ctx, m, job, outputs, paths, work, tally, options)


def output_files(out: Path, methods: list, metrics: list) -> dict:
    """Every file a run may write, by role: the journal, the four tables, the page and one curve picture per method
    x metric (written only for the metrics that have a curve, but all checked before any work so that a run never
    stops on a conflict)."""
    files = {name: out / name for name in (JOURNAL, *TABLES, PAGE)}
    for method in methods:
        for metric in metrics:
            files[("curve", method, metric)] = out / f"curve.{method}.{metric}.png"
    return files


@dataclass
class Plan:
    """What is left to do: ``todo`` holds, per image with something to compute, (its index, the set of (method,
    metric) pairs to compute); ``done`` the (image, method, metric) rows --resume keeps; ``stale`` how many rows
    were made with other settings (recomputed) and ``changed`` which settings differ; ``removed`` the temporary
    files of a killed run that --resume deleted."""
    todo: list
    done: set = field(default_factory=set)
    stale: int = 0
    changed: list = field(default_factory=list)
    removed: list = field(default_factory=list)


def plan(job: Job, outputs: dict, paths: list) -> Plan:
    """Which rows are left to do.

    Refuses (:class:`InputError`, before any work) an output that would replace an input (whatever the flags) or is
    not a regular file; without --overwrite or --resume, any output that exists already. Under --resume, the rows of
    the journal made with this run's settings are kept and the others recomputed; the tables, curves and page are
    written again from the journal, so they may be replaced only when the journal is there (else they are not this
    tool's results, and --overwrite is needed).
    """
    files = list(outputs.values())
    protect_inputs(files, [*job.inputs, *paths])
    for f in files:
        check_regular(f, "the output")
    journal = outputs[JOURNAL]
    if not job.overwrite:
        existing = [f for f in files if f.exists()]
        if existing and not job.resume:
            raise InputError(f"{existing[0]} already exists; pass --overwrite to replace the results or --resume to "
                             "keep the finished rows.")
        if existing and not journal.exists():
            raise InputError(f"{existing[0]} already exists but {journal} does not, so it is not a result --resume "
                             "can build on; choose another --out, or pass --overwrite to replace it.")
    if job.resume and journal.is_symlink():
        # Appending (or cutting a half line) would write into whatever the link points to.
        raise InputError(f"{journal} is a symbolic link; --resume never appends through a link: replace it with the "
                         "journal file itself, or choose another --out.")
    work = Plan([])
    if job.resume:
        work.removed = remove_stale_temps(job.out, {f.name for f in files})
        drop_partial_line(journal)
        work.done, work.stale, work.changed = journal_state(job, journal, paths)
    for i in range(len(paths)):
        missing = {(method, metric) for method in job.methods for metric in job.metrics
                   if (i, method, metric) not in work.done}
        if missing:
            work.todo.append((i, missing))
    return work


# ---------------------------------------------------------------------------------------------------------------------
# The journal: one JSON line per finished row


def journal_lines(path: Path):
    """The rows of the journal at ``path``, in order: a line that is not a JSON object (the half-written last line of
    a killed run) is skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and {"image", "method", "metric", "settings"} <= set(row):
                yield row


def drop_partial_line(path: Path) -> None:
    """Cut a half-written last line (a run killed while appending) off the journal, so that new lines start on
    their own line."""
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def row_key(row: dict, index: dict):
    """(image index, method, metric) of a journal row, or None for a row of an image this run does not read."""
    i = index.get(row["image"])
    return None if i is None else (i, row["method"], row["metric"])


def journal_state(job: Job, journal: Path, paths: list) -> tuple:
    """(done rows, count of stale rows, names of the settings that differ): an (image, method, metric) of this run
    is done when a line of the journal was made with this run's settings (an earlier run's line counts too: the
    same settings give the same row), and stale when its lines were all made with other settings."""
    index = {abspath(p): i for i, p in enumerate(paths)}
    done, other = set(), {}
    for row in journal_lines(journal):
        key = row_key(row, index)
        if key is None or row["method"] not in job.layers or row["metric"] not in job.params:
            continue
        wanted = job.row_settings(key[1], key[2], key[0])
        if row["settings"] == wanted:
            done.add(key)
        else:
            other[key] = differences(wanted, row["settings"])
    stale = [key for key in other if key not in done]
    return done, len(stale), sorted({name for key in stale for name in other[key]})


def differences(wanted: dict, found) -> list:
    """The names of the settings that differ between ``wanted`` and ``found`` (one level into nested dicts, as
    explain's --resume names them: ``pixels_per_step``, ``layer``, ``model``)."""
    if not isinstance(found, dict):
        return ["unreadable settings"]
    out = []
    for key, value in wanted.items():
        other = found.get(key)
        if value == other:
            continue
        if isinstance(value, dict) and isinstance(other, dict):
            out += [k for k in sorted(set(value) | set(other)) if value.get(k) != other.get(k)]
        else:
            out.append(key)
    return out


class Journal:
    """The journal, opened at the first row (so a run stopped before any row leaves no file, and an --overwrite run
    replaces the old journal only once it has a row of its own): appended to under --resume, else started afresh.
    :meth:`append` writes whole lines, flushed and synced, so a row is on disk complete or not at all (a half line
    from a kill is skipped when read)."""

    def __init__(self, path: Path, resume: bool):
        self.path, self.mode, self.handle = path, "a" if resume else "w", None

    def append(self, rows: list) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open_journal(self.path, self.mode == "a")
        self.handle.write("".join(json.dumps(row, default=jsonio.to_jsonable) + "\n" for row in rows))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


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


# ---------------------------------------------------------------------------------------------------------------------
# Evaluating


@dataclass
class Tally:
    """What this run did: how many rows it added to the journal, the images that could not be read, the example
    pictures for the page, whether Ctrl-C stopped it. ``make_examples`` False: no pictures are kept (a Ray actor's
    tally: the page's examples are made on the driver, :func:`complete_examples`); ``warnings``: key -> message of
    the warnings given once per run, which an actor hands to the driver to give."""
    computed: int = 0
    wrote: bool = False  # the journal was opened for this run's rows (an --overwrite run's old journal is replaced)
    failed: list = field(default_factory=list)
    examples: dict = field(default_factory=dict)  # image index -> Example
    interrupted: bool = False
    make_examples: bool = True
    warnings: dict = field(default_factory=dict)


@dataclass
class Example:
    """One image shown on the page: its model view, the class explained and its probability, and each method's
    picture."""
    path: str
    view: np.ndarray
    cls: int
    probability: float
    pictures: dict = field(default_factory=dict)


def evaluate_all(m, job: Job, paths: list, work: Plan, journal_path: Path) -> Tally:
    """Read --batch-size images at a time, explain each same-size group with every method still missing for it and
    score every missing metric on those maps, each finished (method, metric) appended to the journal at once.
    Ctrl-C stops it, keeping what was measured."""
    tally = Tally()
    journal = Journal(journal_path, job.resume)
    try:
        with progress(len(work.todo), "evaluating") as bar:
            for start in range(0, len(work.todo), job.batch_size):
                chunk = work.todo[start:start + job.batch_size]
                for x, items in same_size_groups(read_batch(paths, chunk, job.preprocessing, tally.failed, reporter())):
                    evaluate_group(m, job, x, items, paths, journal, tally, bar)
                bar.update(len(chunk))
    except KeyboardInterrupt:
        tally.interrupted = True
    finally:
        tally.wrote = journal.handle is not None
        journal.close()
    return tally


def evaluate_group(m, job: Job, x: np.ndarray, items: list, paths: list, journal: Journal, tally: Tally,
                   bar=None) -> None:
    """The missing method x metric rows of the same-size images ``x`` (one per plan item of ``items``), for
    --target or each image's top-1. ``paths``: the run's images, indexed by the items' image indices (a list, or a
    dict of the items' only: a Ray actor's batch); ``journal``: anything with ``append(rows)``."""
    scores = m.scores(x, batch_size=job.rows_per_run)
    warn_probability_output(m, scores, tally)
    targets = m.targets_for(job.target, len(x)) if job.target is not None else scores.argmax(axis=1)
    for method in job.methods:
        rows = [j for j, (_, missing) in enumerate(items) if any(k[0] == method for k in missing)]
        if not rows:
            continue
        images = [items[j][0] for j in rows]
        maps = method_maps(m, method, x[rows], targets[rows], job.layer, job.rows_per_run,
                           [paths[i] for i in images], bar.method_progress(method) if bar is not None else None)
        keep_examples(m, job, tally, method, x[rows], images, paths, maps, scores[rows], targets[rows])
        for metric in job.metrics:
            sub = [r for r, j in enumerate(rows) if (method, metric) in items[j][1]]
            if sub:
                result = score(m, job, metric, method, x[rows][sub], maps[sub], targets[rows][sub],
                               [images[r] for r in sub], bar)
                record(job, journal, tally, [images[r] for r in sub], paths, method, metric, result)


def method_maps(m, method: str, x: np.ndarray, targets: np.ndarray, layer, rows_per_run, paths: list,
                progress=None) -> np.ndarray:
    """Method ``method``'s result on ``x`` (the images ``paths``), checked to be a map over the image: (N, H, W), or
    (N, C', H, W) with C' 1 or the images' channels (attributions, reduced per pixel by the metrics), of finite
    numbers. A wrong shape is an :class:`InputError`, NaN or Inf a :class:`NumericalError`, naming the method (and
    the image): a metric of such a map would be no measurement."""
    result = np.asarray(registry.explain(m, method, x, targets, layer=layer, batch_size=rows_per_run,
                                         progress=progress))
    n, c, h, w = x.shape
    fits = (result.ndim == 3 or (result.ndim == 4 and result.shape[1] in (1, c))) \
        and result.shape[0] == n and tuple(result.shape[-2:]) == (h, w)
    if not fits:
        raise InputError(f"method {method!r} returns an array of shape {tuple(result.shape)}, not a map over the "
                         f"{h}x{w} image ({n}, {h}, {w}) or ({n}, {c}, {h}, {w}); it cannot be evaluated.")
    if not (np.issubdtype(result.dtype, np.number) or result.dtype == bool):
        raise InputError(f"method {method!r} returns an array of {result.dtype}, not numbers; it cannot be "
                         "evaluated.")
    bad = ~np.isfinite(result.reshape(n, -1)).all(axis=1)
    if bad.any():
        raise NumericalError(f"method {method!r} returns NaN or Inf in its map of '{paths[int(np.argmax(bad))]}'; "
                             "a metric of it would mean nothing (check the method, or leave that image out).")
    return result


def score(m, job: Job, metric: str, method: str, x: np.ndarray, maps: np.ndarray, targets: np.ndarray,
          images: list, bar=None):
    """Metric ``metric`` on ``method``'s ``maps`` of the images ``x`` (indices ``images`` of the run)."""
    params = job.params[metric]
    extra = {"boxes": [job.boxes[i] for i in images]} if needs_boxes(metric) else {}
    return metric_registry.evaluate(metric, m, x, explanation_for(metric, maps, method, params), targets, params=params,
                                    batch_size=job.rows_per_run,
                                    progress=bar.method_progress(metric) if bar is not None else None, **extra)


def warn_probability_output(m, scores: np.ndarray, tally: Tally | None = None) -> None:
    """Say once when the model's output is already a probability (rows summing to 1, no Softmax for the engine to
    skip): the metrics then read that output as it is, not a softmax of it, and the tables' ``output`` says so.
    The message is also kept in ``tally.warnings``: a Ray actor's warnings are silenced, the driver gives them."""
    from onnx_cnnviz.metrics.base import looks_like_probabilities

    if m.softmax_skipped is None and looks_like_probabilities(scores):
        message = (f"the model's output '{m.output_name}' is already a probability (its rows sum to 1 and it ends in "
                   "no Softmax to skip): the metrics read it as it is, 'probability (the model's own output, already "
                   "normalised; no softmax applied)', as the tables' output column says.")
        if tally is not None:
            tally.warnings["probability-output"] = message
        warn(message, once="probability-output")


def record(job: Job, journal: Journal, tally: Tally, images: list, paths: list, method: str, metric: str,
           result) -> None:
    """Append ``result`` (a :class:`~onnx_cnnviz.metrics.MetricResult` on the run's images ``images``) to the
    journal: one line per image, with its settings and its curve."""
    ordered = result.curve is not None and result.axis_name not in UNORDERED_AXES
    axis = None if result.axis is None else np.asarray(result.axis).tolist()
    lines = []
    for r, i in enumerate(images):
        lines.append({"image": abspath(paths[i]), "method": method, "metric": metric,
                      "value": float(result.values[r]), "class": int(result.targets[r]), "output": result.output,
                      "settings": job.row_settings(method, metric, i),
                      "curve": np.asarray(result.curve[r], dtype=np.float64).tolist() if ordered else None,
                      "axis": axis if ordered else None, "axis_name": result.axis_name if ordered else None})
    journal.append(lines)
    tally.computed += len(lines)


def keep_examples(m, job: Job, tally: Tally, method: str, x: np.ndarray, images: list, paths: list,
                  maps: np.ndarray, scores: np.ndarray, targets: np.ndarray) -> None:
    """Keep the pictures of ``method``'s maps of the first :data:`EXAMPLES` images of the run, for the page (the
    first readable ones: :func:`complete_examples` adds those this run did not explain)."""
    from onnx_cnnviz import report
    from onnx_cnnviz.image import deprocess

    if not tally.make_examples:
        return
    for r, i in enumerate(images):
        if i >= EXAMPLES + len(tally.failed):
            continue
        view = deprocess(x[r], preset=job.preprocessing)
        if i not in tally.examples:
            c = int(targets[r])
            probs = report.probabilities(scores[r:r + 1], m.softmax_skipped)[0]
            tally.examples[i] = Example(abspath(paths[i]), thumbnail(view), c, float(probs[c]))
        pic = report.picture(method, maps[r], view, job.preprocessing.order)
        tally.examples[i].pictures[method] = thumbnail(pic)


def thumbnail(picture: np.ndarray, side: int = 160) -> np.ndarray:
    """``picture`` shrunk (area interpolation) so that its longer side is at most ``side`` pixels."""
    import cv2

    h, w = picture.shape[:2]
    if max(h, w) <= side:
        return picture
    f = side / max(h, w)
    return cv2.resize(picture, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def complete_examples(m, job: Job, paths: list, tally: Tally) -> None:
    """Explain the example images whose pictures this run did not make (rows kept by --resume), so that the page
    shows every method on the first images, whatever was skipped."""
    from onnx_cnnviz.image import preprocess

    failed = {f["image"] for f in tally.failed}
    wanted = [i for i, p in enumerate(paths) if abspath(p) not in failed][:EXAMPLES]
    for i in wanted:
        example = tally.examples.get(i)
        missing = [name for name in job.methods if example is None or name not in example.pictures]
        if not missing:
            continue
        try:
            x = preprocess([paths[i]], preset=job.preprocessing)
        except InputError:
            continue
        scores = m.scores(x, batch_size=job.rows_per_run)
        targets = m.targets_for(job.target, 1) if job.target is not None else scores.argmax(axis=1)
        for name in missing:
            maps = method_maps(m, name, x, targets, job.layer, job.rows_per_run, [paths[i]])
            keep_examples(m, job, tally, name, x, [i], paths, maps, scores, targets)


# ---------------------------------------------------------------------------------------------------------------------
# Reading the journal back: rows and mean curves


@dataclass
class Results:
    """The rows of this run's request (image x method x metric) read back from the journal, in image, method, metric
    order; per (method, metric) the values and the running sum of the curves (with their abscissae)."""
    rows: list = field(default_factory=list)
    values: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)  # (method, metric) -> [sum of curves, count, axis, axis_name]
    mixed: set = field(default_factory=set)  # (method, metric) whose curves differ in length: no mean curve


def read_results(job: Job, journal: Path, paths: list) -> Results:
    """The journal's rows for this run: per (image, method, metric) its last line made with this run's settings.
    Two passes over the file, so that only the chosen lines' curves are ever summed and none is kept."""
    index = {abspath(p): i for i, p in enumerate(paths)}
    chosen: dict = {}
    for n, row in enumerate(journal_lines(journal)):
        key = row_key(row, index)
        if key is not None and row["method"] in job.layers and row["metric"] in job.params \
                and row["settings"] == job.row_settings(key[1], key[2], key[0]):
            chosen[key] = n
    lines = set(chosen.values())
    picked: dict = {}
    results = Results()
    for n, row in enumerate(journal_lines(journal)):
        if n in lines:
            key = row_key(row, index)
            picked[key] = {f: row[f] for f in RESULT_FIELDS}
            add_curve(results, (key[1], key[2]), row)
    order = {name: k for k, name in enumerate(job.methods)}, {name: k for k, name in enumerate(job.metrics)}
    for key in sorted(picked, key=lambda k: (k[0], order[0][k[1]], order[1][k[2]])):
        row = picked[key]
        results.rows.append(row)
        results.values.setdefault((key[1], key[2]), []).append(float(row["value"]))
    return results


def add_curve(results: Results, key: tuple, row: dict) -> None:
    """Add a journal row's curve to the running sum of its (method, metric)."""
    if row.get("curve") is None or key in results.mixed:
        return
    curve = np.asarray(row["curve"], dtype=np.float64)
    if key not in results.curves:
        results.curves[key] = [curve.copy(), 1, np.asarray(row["axis"]) if row.get("axis") else None,
                               row.get("axis_name")]
    elif results.curves[key][0].shape != curve.shape:
        # Images kept at their own sizes give curves of other lengths: no single mean curve.
        results.mixed.add(key)
        del results.curves[key]
    else:
        results.curves[key][0] += curve
        results.curves[key][1] += 1


def mean_curves(results: Results) -> dict:
    """(method, metric) -> (mean curve, axis, axis name, n)."""
    return {key: (total / count, axis, name, count) for key, (total, count, axis, name) in results.curves.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Statistics, tables, ranking


def summary_row(method: str, metric: str, values, output: str | None = None) -> dict:
    """Mean, sample std (ddof=1; 0 for one value), n and the Student-t 95% interval
    (:func:`onnx_cnnviz.metrics.intervals.mean_interval`); ``output``: what the metric read from the model."""
    stats = mean_interval(values)
    return {"method": method, "metric": metric, "mean": stats["mean"], "std": stats["std"], "n": stats["n"],
            "ci95_low": stats["low"], "ci95_high": stats["high"],
            "higher_is_better": metric_registry.get(metric).higher_is_better, "output": output}


def outputs_read(rows: list) -> dict:
    """(method, metric) -> what the metric read from the model, in words (several, joined, if the rows differ)."""
    seen: dict = {}
    for row in rows:
        texts = seen.setdefault((row["method"], row["metric"]), [])
        if row["output"] not in texts:
            texts.append(row["output"])
    return {key: "; ".join(t for t in texts if t) or None for key, texts in seen.items()}


def summarise(results: Results, methods: list, metrics: list) -> list:
    outputs = outputs_read(results.rows)
    return [summary_row(method, metric, results.values[(method, metric)], outputs.get((method, metric)))
            for method in methods for metric in metrics if results.values.get((method, metric))]


def ranking(summary: list, metrics: list) -> dict:
    """Per metric, the methods best first (by mean, in the metric's direction)."""
    out = {}
    for metric in metrics:
        rows = [r for r in summary if r["metric"] == metric]
        if rows:
            better = metric_registry.get(metric).higher_is_better
            out[metric] = [r["method"] for r in sorted(rows, key=lambda r: -r["mean"] if better else r["mean"])]
    return out


def csv_text(fields: list, rows: list, header: list | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header or fields)
    for row in rows:
        writer.writerow([row[f] for f in fields])
    return buffer.getvalue()


def summary_header() -> list:
    """The summary CSV's column names: the interval's columns carry their formula."""
    ci = {"ci95_low": "ci95_low (mean - t*std/sqrt(n))", "ci95_high": "ci95_high (mean + t*std/sqrt(n))"}
    return [ci.get(name, name) for name in SUMMARY_FIELDS]


def ranking_text(summary: list, metrics: list) -> str:
    """The ranking table printed at the end: per metric, its direction and what it read, then the methods best
    first."""
    lines = []
    for metric, order in ranking(summary, metrics).items():
        meta = metric_registry.get(metric)
        by_method = {r["method"]: r for r in summary if r["metric"] == metric}
        reads = by_method[order[0]]["output"]
        lines.append(f"{meta.title} ({metric}, {'higher' if meta.higher_is_better else 'lower'} is better"
                     + (f"; reads {reads}" if reads else "") + ")")
        for rank, method in enumerate(order, 1):
            r = by_method[method]
            lines.append(f"  {rank}. {method:<16} {r['mean']:.4f}  "
                         f"[{r['ci95_low']:.4f}, {r['ci95_high']:.4f}]  n={r['n']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Curves


def curve_picture(curve: np.ndarray, axis: np.ndarray, title: str, axis_name: str | None,
                  width: int = 480, height: int = 320) -> np.ndarray:
    """The mean curve as an RGB uint8 picture (OpenCV only: no plotting library): a polyline over the axis range,
    the y range [min(0, lowest), max(1, highest)] so that probability curves share a scale."""
    import cv2

    pic = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 56, width - 16, 34, height - 40
    x = np.asarray(axis, dtype=np.float64) if axis is not None and len(axis) == len(curve) else \
        np.linspace(0.0, 1.0, len(curve))
    y0, y1 = min(0.0, float(curve.min())), max(1.0, float(curve.max()))
    x0, x1 = float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1.0
    px = left + (x - x0) / (x1 - x0) * (right - left)
    py = bottom - (curve - y0) / (y1 - y0) * (bottom - top)
    black, font = (0, 0, 0), cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(pic, (left, top), (right, bottom), (160, 160, 160), 1)
    points = np.stack([px, py], axis=1).round().astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(pic, [points], False, (0, 80, 200), 2, cv2.LINE_AA)
    cv2.putText(pic, title, (left, 22), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.putText(pic, f"{y1:.2f}", (4, top + 5), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(pic, f"{y0:.2f}", (4, bottom + 5), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(pic, f"{x0:g}", (left - 4, bottom + 16), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(pic, f"{x1:g}", (right - 24, bottom + 16), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(pic, axis_name or "step", (left + 60, height - 8), font, 0.4, black, 1, cv2.LINE_AA)
    return pic


def curve_pictures(results: Results) -> dict:
    """(method, metric) -> the picture of its mean curve."""
    pictures = {}
    for (method, metric), (curve, axis, axis_name, n) in mean_curves(results).items():
        title = f"{method}: mean {metric_registry.get(metric).title} curve (n={n})"
        pictures[(method, metric)] = curve_picture(curve, axis, title, axis_name)
    return pictures


# ---------------------------------------------------------------------------------------------------------------------
# Writing and the summary


def write_outputs(outputs: dict, document: dict, results: Results, summary: list, pictures: dict, page: str,
                  replace: bool) -> dict:
    """Write the tables, the curves and the page, each atomically; returns what was written, by role (absolute
    paths)."""
    from onnx_cnnviz import report

    written = {}
    report.write_atomic(outputs["results.csv"], csv_text(RESULT_FIELDS, results.rows), overwrite=replace)
    save_json(outputs["results.json"], {**document, "rows": results.rows}, replace)
    report.write_atomic(outputs["summary.csv"], csv_text(SUMMARY_FIELDS, summary, summary_header()),
                        overwrite=replace)
    save_json(outputs["summary.json"], {**document, "summary": summary}, replace)
    for name in (JOURNAL, *TABLES):
        written[name] = abspath(outputs[name])
    curves = {}
    for (method, metric), pic in pictures.items():
        path = outputs[("curve", method, metric)]
        report.write_atomic(path, report.png_bytes(pic), overwrite=replace)
        curves[f"{method}.{metric}"] = abspath(path)
    written["curves"] = curves
    report.write_atomic(outputs[PAGE], page, overwrite=replace)
    written["page"] = abspath(outputs[PAGE])
    return written


def run_document(m, job: Job) -> dict:
    """What every table's JSON repeats: the model, device, methods, metrics with their parameters, the interval."""
    return {"model": job.model_path, "device": m.device, "methods": job.methods,
            "preprocessing": job.preprocessing_info, "target": job.target,
            "layers": {name: layer for name, layer in job.layers.items() if layer},
            "metrics": {name: {"title": metric_registry.get(name).title,
                               "higher_is_better": metric_registry.get(name).higher_is_better,
                               "parameters": metric_registry.parameters(name, job.params[name])}
                        for name in job.metrics},
            "confidence_interval": CI_FORMULA}


def page_text(m, job: Job, options: dict, document: dict, summary: list, pictures: dict, tally: Tally,
              paths: list) -> str:
    """The HTML page of the run (:func:`onnx_cnnviz.evaluation_page.render`)."""
    from onnx_cnnviz import evaluation_page, report

    examples = [tally.examples[i] for i in sorted(tally.examples)][:EXAMPLES]
    metrics = {}
    for name in job.metrics:
        meta = metric_registry.get(name)
        metrics[name] = {**document["metrics"][name], "paper": meta.paper}
    return evaluation_page.render(
        model=report.describe(m, job.model_path), preprocessing=job.preprocessing_info, summary=summary,
        ranking=ranking(summary, job.metrics), metrics=metrics, curves=pictures,
        examples=[evaluation_page.ExampleRow(e.path, e.view, e.cls, job.labels[e.cls] if job.labels else None,
                                             e.probability, [(name, e.pictures[name]) for name in job.methods
                                                             if name in e.pictures]) for e in examples],
        images=len(paths), failed=tally.failed, interrupted=tally.interrupted, ci_formula=CI_FORMULA,
        title=f"cnnviz evaluate — {Path(options['model']).name}")


def finish_run(ctx, m, job: Job, outputs: dict, paths: list, work: Plan, tally: Tally, options: dict) -> None:
    """Write what the journal holds for this run (also after Ctrl-C), print the ranking (or the --json document) and
    set the exit code: 130 interrupted, 1 when an image could not be evaluated, an error when nothing was
    measured."""
    # Without --resume the journal holds this run's rows only once it has written one (an old one is not read).
    ours = job.resume or tally.wrote
    results = read_results(job, outputs[JOURNAL], paths) if ours else Results()
    if not results.rows:
        if tally.interrupted:
            click.echo("cnnviz: interrupted before any image was evaluated; nothing written", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        raise InputError("no image could be evaluated (all were skipped, listed above).")
    if not tally.interrupted:
        try:
            complete_examples(m, job, paths, tally)
        except CnnvizError as exc:  # the page's pictures are not worth the tables: they are written all the same
            warn(f"the page shows fewer example maps: {exc}")
    summary = summarise(results, job.methods, job.metrics)
    document = run_document(m, job)
    pictures = curve_pictures(results)
    page = page_text(m, job, options, document, summary, pictures, tally, paths)
    files = write_outputs(outputs, document, results, summary, pictures, page, job.overwrite or job.resume)
    if settings().json:
        emit_json({**document, "out": abspath(job.out), "results": results.rows, "summary": summary,
                   "ranking": ranking(summary, job.metrics), "files": files, "failed": tally.failed,
                   "computed": tally.computed, "kept": len(work.done), "stale": work.stale,
                   "removed_temporary": [abspath(p) for p in work.removed], "interrupted": tally.interrupted})
    else:
        echo(ranking_text(summary, job.metrics))
    if tally.interrupted:
        click.echo(f"cnnviz: interrupted; the {len(results.rows)} row(s) measured are written in {job.out} (run "
                   "again with --resume to finish)", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    if tally.failed:
        click.echo(f"cnnviz: error: {len(tally.failed)} of {len(paths)} image(s) could not be evaluated (listed "
                   f"above); the other results are in {job.out}", err=True)
        ctx.exit(EXIT_FAILURE)
    echo(f"{len(results.rows)} row(s) in {job.out} ({tally.computed} computed, {len(work.done)} kept)", err=True)
