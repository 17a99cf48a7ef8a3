"""Evaluating explanation methods with metrics, the plan: the settings of a run (:class:`Job`, checked against the
loaded model and the ground-truth boxes before any image is explained), the files it writes, :func:`plan` (which
rows are left to do; inputs never replaced, results only with ``overwrite`` or ``resume``) and the journal
``results.jsonl``: one JSON line per finished (image, method, metric) row, what ``resume`` reads and the tables are
made from."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import jsonio
from ..errors import InputError
from ..files import check_regular
from ..image import Preprocessing
from ..methods import registry
from ..metrics import registry as metric_registry
from .labels import option_error, resolve_labels, resolve_target
from .method_layers import method_layers
from .outputs import abspath, open_journal, protect_inputs, remove_stale_temps

#: The confidence interval the summary reports, in words (the CSV header and the JSON say it).
CI_FORMULA = ("mean +- t(0.975, n - 1) * std / sqrt(n), Student's t quantile, std the sample standard deviation "
              "(ddof=1; the interval is the mean alone when n = 1)")
#: A row's ``value`` is null where the metric is undefined for that image (a constant map's rank correlation, ...);
#: ``reason`` then says why (and is empty for every measured value).
RESULT_FIELDS = ["image", "method", "metric", "value", "class", "output", "reason"]

#: ``n``: the values the mean is over; ``undefined``: the rows of the (method, metric) whose value is null.
#: ``ci95_clipped``: the interval reached past the metric's range and was clipped to it.
SUMMARY_FIELDS = ["method", "metric", "mean", "std", "n", "undefined", "ci95_low", "ci95_high", "ci95_clipped",
                  "higher_is_better", "output"]

DEFAULT_METRICS = ["deletion", "insertion"]

#: The journal of finished rows (JSON lines): what --resume reads and the tables are written from.
JOURNAL = "results.jsonl"

TABLES = ("results.csv", "results.json", "summary.csv", "summary.json")

PAGE = "report.html"

#: Images shown with every method's map on the page (the first ones read).
EXAMPLES = 3


def needs_boxes(metric: str) -> bool:
    """Metric ``metric`` scores maps against ground-truth boxes (the registry's ``needs_boxes``)."""
    return bool(getattr(metric_registry.get(metric), "needs_boxes", False))

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
    #: {method: why it cannot run on this model}: the asked methods left out (:mod:`.method_layers`).
    unavailable: dict = field(default_factory=dict)
    #: The methods' own parameters, one dict for all (``KEY`` or ``METHOD.KEY``; see
    #: :func:`onnx_cnnviz.methods.registry.parameters`); empty: the registry's defaults.
    method_params: dict = field(default_factory=dict)
    _settings: dict = field(default_factory=dict, repr=False)  # (method, metric) -> the settings but the boxes

    def own_params(self, method: str) -> dict:
        """The parameters method ``method`` runs with (its layer aside)."""
        return registry.parameters(method, self.method_params, shared=True)

    def row_settings(self, method: str, metric: str, image: int) -> dict:
        """The settings an (image, method, metric) row is made with, as its journal line holds them: --resume keeps
        a row only if its line repeats them (the model, preprocessing, class, the method's layer and parameters, the
        metric's parameters and, for the localisation metrics, the image's boxes)."""
        key = (method, metric)
        if key not in self._settings:
            out = {"model": self.model_path, "preprocessing": self.preprocessing_info, "target": self.target,
                   "method": {"layer": self.layers[method], "parameters": self.own_params(method)},
                   "parameters": metric_registry.parameters(metric, self.params[metric])}
            self._settings[key] = json.loads(jsonio.dumps(out, indent=None))  # as read back (tuples as lists)
        if needs_boxes(metric):
            return {**self._settings[key], "boxes": boxes_setting(self.boxes[image])}
        return self._settings[key]

def build_job(m, pre: Preprocessing, paths: list, methods: list, metrics: list, params: dict, boxes_file,
              options: dict, reporter=None) -> Job:
    """Check the options against the loaded model ``m`` (labels, the target class, each method's layer, the boxes of
    every image), so that a bad one fails before any image is explained, and fix the settings. A method that cannot
    run on ``m`` is left out and told to ``reporter`` (:func:`~.method_layers.method_layers`)."""
    from .. import report

    labels = resolve_labels(m, options["labels"])
    target = resolve_target(options["target"], labels)
    if target is not None:
        m.targets_for(target, 1)  # a class out of range fails now, not after the first batch
    method_params = dict(options.get("method_params") or {})
    registry.check_parameters(methods, method_params)
    layers, unavailable = method_layers(m, methods, options["layer"], reporter)
    methods = list(layers)
    wanting = [name for name in metrics if needs_boxes(name)]
    boxes = ground_truth_boxes(boxes_file, paths, pre, wanting, m.num_classes) if wanting else None
    return Job(out=Path(options["out_dir"]), methods=methods, metrics=metrics, params=params, target=target,
               layer=options["layer"], layers=layers, preprocessing=pre,
               preprocessing_info=report.preprocessing_info(pre), labels=labels,
               model_path=str(Path(options["model"]).resolve()), overwrite=options["overwrite"],
               resume=options["resume"], batch_size=options["batch_size"], rows_per_run=options["rows_per_run"],
               boxes=boxes, inputs=tuple(p for p in (options["model"], options["labels"], boxes_file) if p),
               unavailable=unavailable, method_params=method_params)

def ground_truth_boxes(boxes_file, paths: list, pre: Preprocessing, wanting: list, num_classes=None) -> list:
    """Per image of ``paths``, its ground-truth boxes (:class:`~onnx_cnnviz.metrics.boxes.Box`) in model-input
    pixels, all checked before any work: :func:`~onnx_cnnviz.metrics.boxes.read_boxes` reads the file (keyed by file
    name or path), an image it gives no box is an :class:`InputError` about --boxes naming it, and
    :func:`~onnx_cnnviz.metrics.boxes.to_input` maps each image's boxes through the preprocessing's resize, refusing
    one outside the picture (:class:`InputError`). The original sizes come from reading each picture once here (the
    resize is the only step that moves pixels); a picture that cannot be read gets None and is skipped, with its
    error, when the run reaches it."""
    from ..image import read_image
    from ..metrics import boxes as box_io

    check_regular(boxes_file, "boxes file")  # a FIFO would block the read
    # Only the run's images are kept as the rows arrive; a label that is no class of the model is refused now
    # (it would score 0.0 on every localisation metric).
    table = box_io.read_boxes(boxes_file, images=[str(p) for p in paths], num_classes=num_classes)
    missing = box_io.images_without_boxes(table, [str(p) for p in paths])
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise option_error(f"{boxes_file} has no box for image '{missing[0]}'{more}; {', '.join(wanting)} "
                           "score(s) every image against its boxes: add them, or leave the image out.", "--boxes")
    out = []
    for path in paths:
        try:
            size = read_image(path).shape[:2]
        except InputError:
            out.append(None)
            continue
        region = pre.input_region(size) if pre.size else None  # a centre crop moves and cuts the boxes
        out.append(box_io.to_input(box_io.lookup(table, str(path)), size, pre.size, str(path), region=region))
    return out

def boxes_setting(boxes) -> list | None:
    """An image's boxes as its rows' settings hold them: [x0, y0, x1, y1, label] in model-input pixels."""
    return None if boxes is None else [[*box.coords, box.label] for box in boxes]

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

def plan(job: Job, outputs: dict, paths: list, reporter=None, state=None) -> Plan:
    """Which rows are left to do.

    Refuses (:class:`InputError`, before any work) an output that would replace an input (whatever the flags) or is
    not a regular file; without --overwrite or --resume, any output that exists already. Under --resume, the rows of
    the journal made with this run's settings are kept and the others recomputed; the tables, curves and page are
    written again from the journal, so they may be replaced only when the journal is there (else they are not this
    tool's results, and --overwrite is needed).

    ``state``: how the journal's rows are read (:func:`journal_state`'s signature and result; a detector's run reads
    rows per detection, :func:`onnx_cnnviz.runs.detection_evaluate.journal_state`).
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
        work.removed = remove_stale_temps(job.out, {f.name for f in files}, reporter)
        drop_partial_line(journal)
        bad: list = []
        work.done, work.stale, work.changed = (state or journal_state)(job, journal, paths, bad)
        if bad and reporter is not None:
            lines = ", ".join(f"line {n} ({why})" for n, why in bad[:5]) + (f" and {len(bad) - 5} more"
                                                                             if len(bad) > 5 else "")
            reporter.warn(f"resume: skipped {len(bad)} line(s) of {journal} that are no journal row: {lines}; "
                          "their rows are recomputed (the lines stay in the file, unread).")
    for i in range(len(paths)):
        missing = {(method, metric) for method in job.methods for metric in job.metrics
                   if (i, method, metric) not in work.done}
        if missing:
            work.todo.append((i, missing))
    return work

def journal_lines(path: Path, bad: list | None = None):
    """The rows of the journal at ``path``, in order. A line that is not a journal row (invalid UTF-8, not JSON, a
    field of the wrong type: :func:`row_problem`; the journal is the user's file and may have been edited) is
    skipped, so its row is recomputed, and ``(line number, why)`` appended to ``bad``; a blank line is skipped
    silently. Read as bytes, line by line, so one bad line never stops the others."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problem = "not UTF-8 text"
            except ValueError:
                problem = "not a JSON line"
            except RecursionError:
                problem = "JSON nested too deep"
            else:
                problem = row_problem(row)
                if problem is None:
                    yield row
                    continue
            if bad is not None:
                bad.append((number, problem))


def row_problem(row) -> str | None:
    """Why ``row`` (a parsed journal line) is not a journal row, or None when it is: an object with the image,
    method and metric as strings, the settings as an object, the value a number or null (undefined, with a
    reason), the class an integer, the curve null or a list of numbers and nulls; a detector's row also its
    ``detection`` number, 1 to its image's ``detections``."""
    if not isinstance(row, dict):
        return "not a JSON object"
    missing = [k for k in ("image", "method", "metric", "settings", "value") if k not in row]
    if missing:
        return f"no {missing[0]!r}"
    for key in ("image", "method", "metric"):
        if not isinstance(row[key], str):
            return f"{key!r} is not a string"
    if not isinstance(row["settings"], dict):
        return "'settings' is not an object"
    value = row["value"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"'value' is {value!r}, not a number"
    if isinstance(row.get("class"), bool) or not isinstance(row.get("class"), int):
        return "'class' is not an integer"
    curve = row.get("curve")
    if curve is not None and (not isinstance(curve, list)
                              or any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))
                                     for v in curve)):
        return "'curve' is not a list of numbers"
    if "detection" in row:  # a detector's row (:mod:`.detection_evaluate`): its number among its image's detections
        for key in ("detection", "detections"):
            number = row.get(key)
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                return f"{key!r} is not a whole number >= 1"
        if row["detection"] > row["detections"]:
            return "'detection' is over 'detections'"
    return None


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

def journal_state(job: Job, journal: Path, paths: list, bad: list | None = None) -> tuple:
    """(done rows, count of stale rows, names of the settings that differ): an (image, method, metric) of this run
    is done when a line of the journal was made with this run's settings (an earlier run's line counts too: the
    same settings give the same row), and stale when its lines were all made with other settings. ``bad``: gets
    (line number, why) of each line that is no journal row (:func:`journal_lines`; its row is recomputed)."""
    index = {abspath(p): i for i, p in enumerate(paths)}
    done, other = set(), {}
    for row in journal_lines(journal, bad):
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
        self.handle.write("".join(jsonio.dumps(row, indent=None) + "\n" for row in rows))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
