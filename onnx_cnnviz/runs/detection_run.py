"""Explaining a detector's detections (or a segmenter's regions) into files: the plan and the work.

Per image ``KEY`` the run finds its targets (:func:`onnx_cnnviz.runs.detections.find_targets`) and writes

* ``KEY.detections.png``: the picture with every box drawn, its number, class (name) and score (a segmenter:
  ``KEY.regions.png``; a text detector's lines, class name "text": ``KEY.detections.png``, as a detector's);
* per method and target, ``KEY.METHOD.detNN.png|npy|json`` (``NN`` the detection's number, 01 the best score; a
  segmenter's region of class ``c``: ``KEY.METHOD.cC``): the overlay, the raw map and the record (box, class, class
  name, score, the map files and the boxes picture);
* last, ``KEY.detections.json`` (``KEY.regions.json``): the image's targets and, per target, its files.

Every detection of a group of images is explained in the same batched runs (one cotangent row per detection,
:func:`onnx_cnnviz.tasks.explain`'s way), --batch-size detections at a time. An image where nothing scores --conf
gets no file, and a line saying so; a run where no image has a detection is an :class:`InputError`.

--resume keeps an image's results when its ``KEY.detections.json`` repeats this run's settings (model,
preprocessing, overlay, --conf/--iou/--max-det) and every result it lists has its record, with the same settings,
and its picture and array whole (:func:`~onnx_cnnviz.runs.outputs.broken_file`); the rest is recomputed. Without
--overwrite or --resume an existing file of an image is refused before any work; inputs are never written.
"""
from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import jsonio
from ..errors import InputError
from ..files import check_regular
from .detections import TaskOptions, find_targets, target_record
from .explain_plan import Plan, ResultFiles, RunSettings, refuse_conflicts
from .explain_run import Outcome
from .images import read_batch, same_size_groups
from .outputs import abspath, broken_file, npy_bytes, protect_inputs, remove_stale_temps, save_json

__all__ = ["TaskRun", "check_task_methods", "task_plan", "explain_targets_all", "task_summary", "WORDS"]

#: The word of an image's own files per task: ``KEY.detections.png|json``, ``KEY.regions.png|json``.
WORDS = {"detector": "detections", "segmenter": "regions", "text": "detections"}


@dataclass(frozen=True)
class TaskRun:
    """A detector's, segmenter's or text detector's run: the run's :class:`RunSettings`, the task loaded and its
    options. A segmenter loaded for ``--task text`` (or recognised as DBNet under ``auto``) runs as "text"
    (:meth:`TaskOptions.run_task`): its targets are text lines, numbered like detections."""
    job: RunSettings
    task: str
    options: TaskOptions

    def __post_init__(self):
        object.__setattr__(self, "task", self.options.run_task(self.task))

    def __getattr__(self, name: str):
        # The run's settings (out, methods, preprocessing, labels, batch_size, ...) read through, so that the CLI and
        # the Ray pipeline take a TaskRun where they take RunSettings.
        if name == "job" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.job, name)

    @property
    def word(self) -> str:
        return WORDS[self.task]

    def image_files(self, key: str) -> tuple:
        """The image's boxes picture and its index record (written last)."""
        return self.job.out / f"{key}.{self.word}.png", self.job.out / f"{key}.{self.word}.json"

    def rank(self, target, index: int) -> str:
        """A target's file-name part: ``detNN`` (1-based, best first) for a detection, ``cC`` for a region."""
        return f"c{int(target.cls)}" if self.task == "segmenter" else f"det{index + 1:02d}"

    def files(self, key: str, method: str, rank: str) -> ResultFiles:
        return self.job.files(key, method, rank)

    def settings(self) -> dict:
        """What every file of the run depends on (the index records hold it; --resume compares it)."""
        return {"model": self.job.model_path, "preprocessing": self.job.preprocessing_info,
                "overlay": {"alpha": self.job.alpha, "colormap": self.job.colormap},
                "targets": self.options.settings(self.task)}

    def result_settings(self, method: str) -> dict:
        return {**self.job.result_settings(method), "targets": self.options.settings(self.task)}

    def existing(self, key: str) -> list:
        """This image's files already in the output folder: its own picture and index, and every result file of
        the run's methods (``KEY.METHOD.detNN.*`` / ``KEY.METHOD.cC.*``)."""
        found = [p for p in self.image_files(key) if p.exists() or p.is_symlink()]
        pattern = "c[0-9]*" if self.task == "segmenter" else "det[0-9]*"
        for method in self.job.methods:
            stem = glob.escape(f"{key}.{method}.")
            found += sorted(p for suffix in ResultFiles._fields
                            for p in self.job.out.glob(f"{stem}{pattern}.{suffix}"))
        return found


def check_task_methods(m, methods: list, layer: str | None = None, task: str | None = None) -> None:
    """Refuse, before any image is read or any file written, the asked methods that cannot explain a detector's
    detections (a segmenter's regions, a text detector's lines) on ``m``, in one line that names the methods that
    can.

    A method is refused where the model's structure rules it out (a :class:`ModelStructureError`): CAM (Zhou et
    al., CVPR 2016) weights a feature map by a classifier's head, ``L = sum_k w_{c,k} A^k`` with ``w`` the linear
    layer after global average pooling, which a detector's head is not (its layer rule); Recipro-CAM (Byun & Lee
    2022) scores ``S_c(head(A (.) M^(ij)))``, the network from its layer on run as a model of its own
    (:func:`onnx_cnnviz.methods.reciprocam.head_graph`), which a head reading a batch-sized tensor from before the
    layer (the anchor grid a YOLO export concatenates) cannot be. A wrong ``layer`` stays the user's error (the
    run's own :class:`InputError` about it). A classifier is not checked here.

    Args:
        m: the loaded model.
        methods: the asked method names.
        layer: the run's --layer, or None.
        task: the run's task ("text" for a text detector; None: ``m.task``).

    Raises:
        InputError: about --methods (a usage error on the command line), naming the refused methods, why, and the
            methods that apply to this model.
    """
    from ..errors import ModelStructureError, UnknownLayerError
    from ..methods import registry
    from ..methods.reciprocam import head_graph, reciprocam
    from .labels import option_error

    if m.task == "classifier":
        return

    def why_not(name: str, wanted: str | None) -> str | None:
        try:
            chosen = registry.resolved_layer(m, name, wanted)
            if chosen is not None and registry.get(name).func is reciprocam:
                # Recipro-CAM runs the network from its layer on as a model of its own: a head that reads a tensor
                # sized by the batch before the layer (YOLO's anchor Concat) cannot run h*w masked copies.
                spec = m.spec()
                head_graph(spec.model, chosen, m.score_name, m.input_name, spec.info, spec.constants)
        except ModelStructureError as exc:
            return str(exc)
        except (InputError, UnknownLayerError):
            return None  # the layer asked for is wrong: the run says so about --layer
        return None

    refused = {}
    for name in methods:
        meth = registry.get(name)
        why = why_not(meth.name, layer)
        if why is not None:
            refused[meth.name] = why
    if not refused:
        return
    usable = [n for n in registry.names() if why_not(n, None) is None]
    task = task or m.task
    kind = {"detector": "detector's detections", "text": "text detector's lines"}.get(task, f"{task}'s regions")
    first = next(iter(refused.values()))
    reason = first.split(" (")[0].split(";")[0].rstrip(".")
    raise option_error(f"{', '.join(refused)} cannot explain this {kind}: {reason}. The methods that apply to it: "
                       f"{', '.join(usable)}.", "--methods")


def task_plan(run: TaskRun, paths: list, keys: list, reporter=None) -> Plan:
    """Which images and methods are left to do (see the module's text for --resume and --overwrite)."""
    job = run.job
    fixed = [f for key in keys for f in run.image_files(key)]
    existing = {key: run.existing(key) for key in keys}
    every = fixed + [f for files in existing.values() for f in files]
    protect_inputs(every, [*job.inputs, *paths])
    for f in every:
        check_regular(f, "the result file")
    work = Plan([], [])
    conflicts, changed = [], set()
    for i, (path, key) in enumerate(zip(paths, keys)):
        if not job.resume:
            if not job.overwrite:
                conflicts += [str(f) for f in existing[key]]
            work.todo.append((i, list(job.methods)))
            continue
        state, detail = _index_state(run, path, run.image_files(key)[1])
        if state == "other" and not job.overwrite:
            conflicts.append(f"{run.image_files(key)[1]} holds the result of another image ({detail})")
            continue
        if state == "stale":
            work.stale.append(abspath(run.image_files(key)[1]))
            changed.update(detail)
        if state != "done":
            work.todo.append((i, list(job.methods)))
            continue
        missing = []
        for method in job.methods:
            listed = [job.out / name for name in detail.get(method, [])]
            whole = len(listed) == detail["count"] and all(_result_done(run, method, path, f) for f in listed)
            if whole:
                work.done.update(listed)
                work.kept.setdefault(abspath(path), []).extend(listed)
            else:
                missing.append(method)
                work.broken.append(abspath(run.image_files(key)[1]))
        if missing:
            work.todo.append((i, missing))
        else:
            work.skipped.append(abspath(path))
    refuse_conflicts(conflicts, job.resume)
    work.changed = sorted(changed)
    if job.resume:
        names = {f.name for f in every} | {f.name for key in keys for f in run.image_files(key)}
        work.removed = remove_stale_temps(job.out, names, reporter)
    return work


def _read(path: Path):
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"unreadable record: {type(exc).__name__}"
    return (record, None) if isinstance(record, dict) else (None, "unreadable record: not a JSON object")


def _index_state(run: TaskRun, image: Path, index: Path) -> tuple:
    """("missing", None), ("other", that image), ("stale", changed settings) or ("done", {method: [its result
    records' names], "count": targets}) for the image's index record."""
    if not index.exists():
        return "missing", None
    record, why = _read(index)
    if record is None:
        return "stale", [why]
    if record.get("image") != str(image.resolve()):
        return "other", record.get("image")
    wanted = json.loads(jsonio.dumps(run.settings()))
    changed = [k for k, v in wanted.items() if record.get(k) != v]
    if changed:
        return "stale", changed
    targets = record.get("targets_found")
    if not isinstance(targets, list):
        return "stale", ["unreadable record: no targets_found"]
    listed: dict = {"count": len(targets)}
    for t in targets:
        for method, name in (t.get("records") or {}).items() if isinstance(t, dict) else ():
            listed.setdefault(method, []).append(Path(str(name)).name)
    return "done", listed


def _result_done(run: TaskRun, method: str, image: Path, record_path: Path) -> bool:
    """A result --resume keeps: its record exists, is this image's, repeats the run's settings, and its picture and
    array are whole."""
    record, _ = _read(record_path) if record_path.exists() else (None, None)
    if record is None or record.get("image") != str(image.resolve()):
        return False
    wanted = json.loads(jsonio.dumps(run.result_settings(method)))
    if any(record.get(k) != v for k, v in wanted.items()):
        return False
    return broken_file(ResultFiles(record_path.with_suffix(".png"), record_path.with_suffix(".npy"),
                                   record_path)) is None


def explain_targets_all(m, run: TaskRun, paths: list, keys: list, work: Plan, reporter) -> Outcome:
    """Do the planned work (see the module's text) under a progress display, --batch-size images read at a time;
    Ctrl-C stops it, what is finished stays written and listed. Images where nothing is found are listed in
    ``Outcome.nothing_found``. A method the model's structure rules out is refused first
    (:func:`check_task_methods`), before any file is written."""
    # Before the first image: a method the model's structure rules out would otherwise fail after the first
    # boxes picture is written.
    check_task_methods(m, list(run.job.methods), run.job.layer, run.task)
    outcome = Outcome()
    todo = work.todo
    job = run.job
    try:
        with reporter.progress(len(todo), "explaining") as bar:
            for start in range(0, len(todo), job.batch_size):
                chunk = todo[start:start + job.batch_size]
                read = read_batch(paths, chunk, job.preprocessing, outcome.failed, reporter)
                for x, items in same_size_groups(read):
                    explain_targets_group(m, run, x, items, paths, keys, work.done, outcome, bar, reporter)
                bar.update(len(chunk))
    except KeyboardInterrupt:
        outcome.interrupted = True
    return outcome


def explain_targets_group(m, run: TaskRun, x: np.ndarray, items: list, paths: list, keys: list, done: set,
                          outcome: Outcome, bar=None, reporter=None) -> None:
    """Find the targets of the same-size images ``x`` (one row per plan item of ``items``), draw them, explain them
    with each method still missing (all the group's targets in batched runs, --batch-size targets per run), write
    every result not in ``done`` and, last, each image's index record."""
    from .. import report
    from . import task_report
    from ..image import deprocess
    from ..methods import registry

    job = run.job
    per_image = find_targets(m, x, run.options, job.rows_per_run, job.labels, task=run.task)
    views = deprocess(x, preset=job.preprocessing)
    replace = job.overwrite or job.resume
    found = []
    for j, (i, _) in enumerate(items):
        targets = per_image[j]
        if not targets:
            outcome.nothing_found.append(abspath(paths[i]))
            if reporter is not None:
                reporter.info(f"{paths[i]}: {nothing_line(run)}")
            if replace:  # an earlier run's files of this image would describe detections it no longer has
                remove_outdated(run, keys[i], set())
            continue
        found.append(j)
        picture, index = run.image_files(keys[i])
        if replace:
            index.unlink(missing_ok=True)  # the index goes first: on disk, it always describes the files beside it
        report.write_atomic(picture, report.png_bytes(task_report.targets_picture(views[j], targets, job.labels)),
                            overwrite=replace)
    records: dict = {}
    for name in job.methods:
        meth = job.method(name)
        pending = [(j, d) for j in found if name in items[j][1] for d in range(len(per_image[j]))
                   if run.files(keys[items[j][0]], name, run.rank(per_image[j][d], d)).json not in done]
        if not pending:
            continue
        progress = bar.method_progress(name) if bar is not None else None
        step = max(1, job.batch_size)
        for start in range(0, len(pending), step):
            chunk = pending[start:start + step]
            targets = [per_image[j][d] for j, d in chunk]
            maps = registry.explain(m, meth, x[[j for j, _ in chunk]], targets, layer=job.layer,
                                    params=job.own_params(name), batch_size=job.rows_per_run, progress=progress)
            for (j, d), result in zip(chunk, maps):
                i = items[j][0]
                written = write_target_result(m, run, name, paths[i], keys[i], views[j], per_image[j][d], d, result,
                                              outcome.results, reporter)
                records[(j, d, name)] = written
    for j in found:
        i = items[j][0]
        picture, index = run.image_files(keys[i])
        listed = []
        for d, target in enumerate(per_image[j]):
            files = {name: run.files(keys[i], name, run.rank(target, d)) for name in job.methods}
            listed.append({"number": d + 1, **target_record(target, job.labels),
                           "records": {name: abspath(f.json) for name, f in files.items()},
                           "pictures": {name: abspath(f.png) for name, f in files.items()}})
        document = {"image": str(paths[i].resolve()), "task": run.task, **run.settings(), "device": m.device,
                    "picture": abspath(picture), "targets_found": listed, "cnnviz_version": job.version}
        save_json(index, document, replace)
        if replace:
            keep = {picture, index} | {run.files(keys[i], name, run.rank(t, d))[k] for name in job.methods
                                       for d, t in enumerate(per_image[j]) for k in range(3)}
            remove_outdated(run, keys[i], keep)


def remove_outdated(run: TaskRun, key: str, keep: set) -> list:
    """Under --overwrite or --resume, delete the image's result files of this run's methods that are not in
    ``keep`` (an earlier run found more detections, or other regions): they would stand beside the new index as if
    they belonged to it. Only names this run writes are touched (:meth:`TaskRun.existing`)."""
    removed = [f for f in run.existing(key) if f not in keep]
    for f in removed:
        f.unlink(missing_ok=True)
    return removed


def nothing_line(run: TaskRun) -> str:
    """What an image where nothing is found gets said."""
    if run.task == "detector":
        return (f"no detection scores at least --conf {run.options.conf:g}; nothing written for it (lower --conf to "
                "explain weaker detections)")
    if run.task == "text":
        return (f"no text line scores at least --conf {run.options.conf:g} (its mean probability); nothing written "
                "for it (lower --conf to explain fainter lines)")
    which = f"class {run.options.region_class}" if run.options.region_class is not None else "any class"
    return f"no pixel is predicted as {which}; nothing written for it"


def write_target_result(m, run: TaskRun, name: str, path: Path, key: str, view: np.ndarray, target, d: int,
                        result: np.ndarray, records: list, reporter=None) -> dict:
    """Write one target's result of method ``name``: the picture, the raw array and, last, the JSON record (box,
    class, class name, score, files), appended (with its "json" path) to ``records`` once on disk."""
    from .. import report

    job = run.job
    meth = job.method(name)
    files = run.files(key, name, run.rank(target, d))
    replace = job.overwrite or job.resume
    if replace:
        files.json.unlink(missing_ok=True)
    pic = report.picture(meth, result, view, job.preprocessing.order, alpha=job.alpha, colormap=job.colormap)
    report.write_atomic(files.png, report.png_bytes(pic), overwrite=replace)
    report.write_atomic(files.npy, npy_bytes(result), overwrite=replace)
    described = target_record(target, job.labels)
    record = {
        "model": job.model_path, "image": str(path.resolve()), "method": name, "title": meth.title,
        "task": run.task, "number": d + 1, **described, "class_specific": meth.class_specific,
        **run.result_settings(name), "device": m.device, "kind": meth.kind,
        "outputs": {"picture": abspath(files.png), "array": abspath(files.npy),
                    WORDS[run.task]: abspath(run.image_files(key)[0])},
        "array_shape": list(np.shape(result)), "cnnviz_version": job.version,
    }
    try:
        save_json(files.json, record, replace)
    finally:
        if files.json.exists():
            records.append({**record, "json": abspath(files.json)})
    if reporter is not None:
        label = f" {described['class_name']}" if described["class_name"] else ""
        reporter.result(f"{path}  {name:<14} #{d + 1} {described['class']}{label}  score={described['score']:.3f}  "
                        f"-> {files.png}")
    return record


def task_summary(m, run: TaskRun, paths: list, keys: list, work: Plan, outcome: Outcome) -> tuple:
    """The run's document (as :func:`onnx_cnnviz.runs.explain.summary`'s, with "task", "task_options" and
    "nothing_found": the images where nothing was found) and how many planned images are complete.

    Raises:
        InputError: nothing to explain: no image had a detection (or region), nothing was kept or failed.
    """
    results = outcome.results
    files: dict = {}
    for path, key in zip(paths, keys):
        picture, index = run.image_files(key)
        own = [abspath(picture), abspath(index)] if index.exists() else []
        for record in work.kept.get(abspath(path), []):
            record = Path(record)
            own += [abspath(record.with_suffix(".png")), abspath(record.with_suffix(".npy")), abspath(record)]
        if own:
            files[abspath(path)] = own
    for r in results:
        files.setdefault(r["image"], []).extend([r["outputs"]["picture"], r["outputs"]["array"], r["json"]])
    complete = sum(run.image_files(keys[i])[1].exists() or abspath(paths[i]) in outcome.nothing_found
                   for i, _ in work.todo)
    if not results and not work.skipped and not outcome.failed and not outcome.interrupted:
        if outcome.nothing_found:
            raise InputError(f"nothing to explain: {nothing_line(run)} in any of the {len(outcome.nothing_found)} "
                             "image(s).")
        raise InputError("nothing was explained.")
    document = {"model": run.job.model_path, "out": abspath(run.job.out), "device": m.device, "task": run.task,
                "task_options": run.options.settings(run.task), "methods": run.job.methods, "results": results,
                "files": files, "skipped": work.skipped, "stale": work.stale, "broken": sorted(set(work.broken)),
                "removed_temporary": [abspath(p) for p in work.removed], "failed": outcome.failed,
                "nothing_found": outcome.nothing_found, "interrupted": outcome.interrupted,
                "unavailable": run.job.unavailable}
    return document, complete
