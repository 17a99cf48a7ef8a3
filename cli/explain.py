"""``cnnviz explain`` and ``cnnviz occlusion``: maps for many images, written as PNG overlays, raw ``.npy`` arrays
and one JSON record per result.

A run, :func:`run`, goes in steps: the options become one :class:`RunSettings` (checked against the loaded model);
:func:`plan` decides which images and methods are left to do, refusing to replace an input (whatever the flags) or,
without --overwrite or --resume, a result; under --resume it keeps the finished results made with the same settings,
recomputes the others and removes the temporary files a killed run left. :func:`explain_all` reads the images a batch
at a time (:func:`read_batch`), explains each group of same-size images (:func:`explain_group`) and writes each result
(:func:`write_result`), listing each one as soon as its record is on disk; :func:`finish_run` prints the summary (what
is on disk, also after Ctrl-C) and sets the exit code.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import click
import numpy as np

from onnx_cnnviz import jsonio
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.files import check_regular
from onnx_cnnviz.image import Preprocessing
from onnx_cnnviz.methods import registry

from .common import (EXIT_FAILURE, EXIT_INTERRUPTED, abspath, apply, batch_size_option, collect_images, echo,
                     emit_json, flatten_lists, global_flags, image_keys, image_options, labels_option, layer_option,
                     method_option, model_and_preprocessing, model_options, npy_bytes, occlusion_geometry,
                     occlusion_options, out_folder, out_folder_option, overwrite_option, preprocessing_options,
                     progress, protect_inputs, ray_option, recursive_option, remove_stale_temps, resolve_labels,
                     resolve_target, rows_per_run_option, save_json, settings, shared_option, smoothgrad_ig_options,
                     stack, target_option, top_k_option, warn, warn_occlusion_stride)


def run_options(f):
    """Options shared by explain and occlusion: targets, layer, output, batching."""
    return apply(
        f,
        click.argument("model", type=click.Path()),
        click.argument("images", nargs=-1, required=True),
        target_option("Explain it for every image."),
        top_k_option("one result per class (RANK topK in the file names)."),
        layer_option("Feature map of the CAM family (default: the last spatial map)."),
        out_folder_option,
        batch_size_option,
        rows_per_run_option(),
        recursive_option,
        overwrite_option,
        shared_option("--resume", is_flag=True,
                      help="Skip the results whose .json record exists and was made with the same model, parameters "
                           "and preprocessing; recompute the others (and the unfinished ones); remove the temporary "
                           "files of a killed run."),
        shared_option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                      help="Heat-map opacity in the overlays."),
        shared_option("--colormap", default="jet", show_default=True, help="OpenCV colormap of the overlays."),
        image_options)


@click.command("explain")
@run_options
@method_option(registry.names, "Default: gradcam.")
@occlusion_options
@stack(*smoothgrad_ig_options())
@preprocessing_options
@labels_option()
@model_options
@ray_option("Same outputs plus OUT/records.parquet (one row per result).")
@global_flags
@click.pass_context
def explain_cmd(ctx, methods, window, stride, baseline, occlusion_mode, samples, noise, steps, **kw):
    """Explain the classification of IMAGES (files, folders, globs) with one or more methods.

    Writes, per image, method and class, into --out: NAME.METHOD.RANK.png (the picture), .npy (the raw map as the
    library returns it) and .json (model, image, class, class name, score, probability, method, parameters).
    RANK is top1 (default), topK with --top-k, or cN with --target N; NAME is the image's file name without its
    suffix, or its path below the images' common folder (a__cat for a/cat.png) when two images share a name.
    Pictures over 100 megapixels are refused from their header (onnx_cnnviz.image.MAX_PIXELS; --max-pixels
    changes it) and skipped like unreadable ones. Input files are never written, whatever the flags. With --json the
    summary lists the records written ("results") and maps each image to the files of its finished results
    ("files"), also after Ctrl-C; paths in JSON are absolute.
    """
    params = {"window": window, "stride": stride, "baseline": baseline, "mode": occlusion_mode, "samples": samples,
              "noise": noise, "steps": steps}
    run(ctx, flatten_lists(methods) or ["gradcam"], params, **kw)


@click.command("occlusion")
@run_options
@occlusion_options
@preprocessing_options
@labels_option()
@model_options
@global_flags
@click.pass_context
def occlusion_cmd(ctx, window, stride, baseline, occlusion_mode, **kw):
    """Occlusion maps (Zeiler & Fergus 2014): slide a --window of --baseline values over each image with --stride
    and record how the class score drops (--mode score) or the class probability (--mode probability).

    Same outputs and options as `cnnviz explain --method occlusion`.
    """
    params = {"window": window, "stride": stride, "baseline": baseline, "mode": occlusion_mode}
    run(ctx, ["occlusion"], params, **kw)


# ---------------------------------------------------------------------------------------------------------------------
# Settings


class ResultFiles(NamedTuple):
    """The files of one result (image, method, class rank), in the order they are written: the record last, so that
    a record on disk means a finished result (what --resume looks for)."""
    png: Path
    npy: Path
    json: Path


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs besides the model and the images, fixed once from the command line.

    ``params``: the method parameters as given (what :func:`registry.explain` takes); ``method_params``: per method,
    the parameters it runs with and its layer, as its JSON records show them. ``ranks``: the file-name rank of each
    class explained per image (``top1`` .. ``topK`` with --top-k, ``cN`` with --target N, else ``top1``).
    ``labels``: the class names, or None. ``inputs``: the files the run reads (model, labels), which no output may
    replace.
    """
    out: Path
    methods: list
    params: dict
    layer: str | None
    method_params: dict
    ranks: list
    target: int | None
    top_k: int | None
    overwrite: bool
    resume: bool
    batch_size: int
    rows_per_run: int | None
    alpha: float
    colormap: str
    preprocessing: Preprocessing
    preprocessing_info: dict
    labels: list | None
    model_path: str
    version: str
    inputs: tuple = ()

    @classmethod
    def build(cls, m, pre: Preprocessing, methods: list, params: dict, options: dict) -> RunSettings:
        """Check the options against the loaded model ``m`` (labels, each method's layer, the target class, the
        occlusion window), so that a bad one fails before any image is read, and fix the settings."""
        from onnx_cnnviz import __version__, report

        labels = resolve_labels(m, options["labels"])
        target, top_k = resolve_target(options["target"], labels), options["top_k"]
        layers = {name: registry.resolved_layer(m, name, options["layer"]) for name in methods}
        if target is not None:
            m.targets_for(target, 1)  # a class out of range fails now, not after the first batch
        if top_k:
            ranks = [f"top{r}" for r in range(1, min(top_k, m.num_classes) + 1)]
        else:
            ranks = [f"c{target}"] if target is not None else ["top1"]
        if "occlusion" in methods and pre.size:
            occlusion_geometry(params["window"], params["stride"], pre.size)
        method_params = {}
        for name in methods:
            used = registry.parameters(name, params)
            if layers[name]:
                used["layer"] = layers[name]
            method_params[name] = used
        return cls(out=Path(options["out_dir"]), methods=methods, params=params, layer=options["layer"],
                   method_params=method_params, ranks=ranks, target=target, top_k=top_k,
                   overwrite=options["overwrite"], resume=options["resume"], batch_size=options["batch_size"],
                   rows_per_run=options["rows_per_run"],
                   alpha=options["alpha"], colormap=options["colormap"], preprocessing=pre,
                   preprocessing_info=report.preprocessing_info(pre), labels=labels,
                   model_path=str(Path(options["model"]).resolve()), version=__version__,
                   inputs=tuple(p for p in (options["model"], options["labels"]) if p))

    @property
    def k(self) -> int:
        """Classes explained per image."""
        return len(self.ranks)

    def files(self, key: str, method: str, rank: str) -> ResultFiles:
        """The files of one result: ``KEY.METHOD.RANK.png|npy|json`` in the output folder."""
        stem = f"{key}.{method}.{rank}"
        return ResultFiles(*(self.out / f"{stem}.{suffix}" for suffix in ResultFiles._fields))

    def result_settings(self, method: str) -> dict:
        """The settings a result of ``method`` is made with, as its record holds them: model, parameters,
        preprocessing and overlay (alpha, colormap). --resume keeps a result only if its record repeats them."""
        return {"model": self.model_path, "parameters": self.method_params[method],
                "preprocessing": self.preprocessing_info,
                "overlay": {"alpha": self.alpha, "colormap": self.colormap}}


def check_options(options: dict) -> None:
    """The usage errors (exit code 2) that need neither the images nor the model."""
    from onnx_cnnviz.image import COLORMAPS

    if options["target"] is not None and options["top_k"] is not None:
        raise click.UsageError("--target and --top-k exclude each other; give one.")
    colormap = options["colormap"]
    if colormap.lower() not in COLORMAPS:
        raise click.BadParameter(f"unknown colormap {colormap!r}; use one of {', '.join(sorted(COLORMAPS))}.",
                                 param_hint="--colormap")


# ---------------------------------------------------------------------------------------------------------------------
# The run


def run(ctx: click.Context, methods: list, params: dict, **options) -> None:
    """Explain the images of ``options`` (the click parameters of :func:`run_options`, the model and preprocessing
    options) with ``methods``; ``params``: the method parameters given on the command line."""
    check_options(options)
    out = out_folder(options["out_dir"])
    # Before the model: a typo fails fast.
    paths = collect_images(options["images"], exclude=out, recursive=options["recursive"])
    m, pre = model_and_preprocessing(ctx, options, options["rows_per_run"])
    job = RunSettings.build(m, pre, methods, params, options)
    keys = image_keys(paths)
    work = plan(job, paths, keys)
    if work.skipped:
        echo(f"resume: {len(work.skipped)} image(s) already done, skipped", err=True)
    if work.stale:
        echo(f"resume: {len(work.stale)} result(s) were made with other settings ({', '.join(work.changed)}) and "
             "are recomputed", err=True)
    if work.broken:
        echo(f"resume: {len(work.broken)} result(s) have missing or broken files and are recomputed", err=True)
    if options.get("ray_address"):
        # Imported only here: the core and the single-process run never import Ray.
        from onnx_cnnviz.dataset.pipeline import explain_on_ray

        outcome = explain_on_ray(m, job, paths, keys, work, options)
    else:
        outcome = explain_all(m, job, paths, keys, work)
    finish_run(ctx, m, job, paths, keys, work, outcome)


@dataclass
class Plan:
    """What is left to do: ``todo`` holds, per image with something to compute, (its index, the methods with at
    least one result to compute); ``skipped`` the images --resume finds finished; ``done`` the records of the results
    --resume keeps; ``stale`` the records made with other settings (recomputed), ``changed`` which settings differ;
    ``removed`` the temporary files of a killed run that --resume deleted; ``broken`` the records whose picture or
    array is missing or damaged (recomputed)."""
    todo: list
    skipped: list
    done: set = field(default_factory=set)
    stale: list = field(default_factory=list)
    changed: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    broken: list = field(default_factory=list)


def plan(job: RunSettings, paths: list, keys: list) -> Plan:
    """Which images and methods are left to do.

    Refuses (:class:`InputError`, before any work) an output that would replace an input image, the model or the
    labels, whatever the flags; without --overwrite or --resume, a result file that exists already; under --resume
    without --overwrite, a record of another image. Under --resume a result whose record exists and repeats this
    run's settings (:meth:`RunSettings.result_settings`) is kept; one made with other settings is stale and
    recomputed, and the temporary files a killed run left for this run's outputs are removed.
    """
    outputs = {(i, name): [job.files(key, name, rank) for rank in job.ranks]
               for i, key in enumerate(keys) for name in job.methods}
    every = [f for outs in outputs.values() for files in outs for f in files]
    protect_inputs(every, [*job.inputs, *paths])
    for f in every:
        check_regular(f, "the result file")  # a folder or a FIFO where a result goes: never replaced
    work = Plan([], [])
    conflicts, changed = [], set()
    for i, path in enumerate(paths):
        missing = []
        for name in job.methods:
            outs = outputs[(i, name)]
            if not job.resume:
                if not job.overwrite:
                    conflicts += [f for files in outs for f in files if f.exists()]
                missing.append(name)
                continue
            todo = False
            for files in outs:
                state, detail = record_state(job, name, path, files.json)
                if state == "done" and broken_file(files) is None:
                    work.done.add(files.json)
                    continue
                todo = True
                if state == "done":
                    work.broken.append(abspath(files.json))
                elif state == "stale":
                    work.stale.append(abspath(files.json))
                    changed.update(detail)
                elif state == "other" and not job.overwrite:
                    conflicts.append(f"{files.json} holds the result of another image ({detail})")
            if todo:
                missing.append(name)
        if missing:
            work.todo.append((i, missing))
        else:
            work.skipped.append(abspath(path))
    if conflicts:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        if job.resume:
            raise InputError(f"{conflicts[0]}{more}; choose another --out, or pass --overwrite to replace it.")
        raise InputError(f"{conflicts[0]} already exists{more}; pass --overwrite to replace results or --resume to "
                         "skip finished ones.")
    work.changed = sorted(changed)
    if job.resume:
        work.removed = remove_stale_temps(job.out, {f.name for f in every})
    return work


def record_state(job: RunSettings, name: str, image: Path, record_path: Path) -> tuple:
    """What --resume makes of the record ``record_path`` of method ``name`` on ``image``: ("missing", None),
    ("done", None) when it repeats this run's settings, ("stale", the names of the settings that differ) when not
    (or when it cannot be read), ("other", that image) when it is the result of another image."""
    if not record_path.exists():
        return "missing", None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return "stale", [f"unreadable record: {type(exc).__name__}"]
    if record.get("image") != str(image.resolve()):
        return "other", record.get("image")
    wanted = json.loads(jsonio.dumps(job.result_settings(name)))
    changed = []
    for key, value in wanted.items():
        found = record.get(key)
        if found == value:
            continue
        if isinstance(value, dict) and isinstance(found, dict):
            changed += [k for k in sorted(set(value) | set(found)) if value.get(k) != found.get(k)]
        else:
            changed.append(key)
    return ("stale", changed) if changed else ("done", None)


def broken_file(files: ResultFiles) -> Path | None:
    """The first of a finished result's picture and array that is missing, empty or damaged (not a PNG from its
    signature to its IEND chunk; an NPY whose header cannot be read or whose data is shorter than the header says),
    else None: --resume keeps a result only when every file its record stands for is whole."""
    import struct

    for path in (files.png, files.npy):
        try:
            with open(path, "rb") as handle:
                if path.suffix == ".png":
                    head = handle.read(8)
                    handle.seek(0, os.SEEK_END)
                    size = handle.tell()
                    handle.seek(max(0, size - 12))
                    tail = handle.read(12)
                    whole = head == b"\x89PNG\r\n\x1a\n" and size >= 20 and tail[4:8] == b"IEND" \
                        and struct.unpack(">I", tail[:4])[0] == 0
                else:
                    version = np.lib.format.read_magic(handle)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                                   np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(handle)
                    need = handle.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    handle.seek(0, os.SEEK_END)
                    whole = not dtype.hasobject and handle.tell() >= need
        except (OSError, ValueError, EOFError, TypeError):
            whole = False
        if not whole:
            return path
    return None


@dataclass
class Outcome:
    """What a run did: the records written (each listed once its file is on disk), the images that could not be
    read, whether Ctrl-C stopped it."""
    results: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    interrupted: bool = False


def explain_all(m, job: RunSettings, paths: list, keys: list, work: Plan) -> Outcome:
    """Do the planned work under a progress display (images done, and inside them the units of work of the running
    method: Score-CAM's channels, occlusion's windows, ...), --batch-size images read and explained at a time, so
    that memory stays bounded. Ctrl-C stops it: what is finished stays written and listed, and the outcome says
    interrupted."""
    outcome = Outcome()
    todo = work.todo
    checked: set = set()
    try:
        with progress(len(todo), "explaining") as bar:
            for start in range(0, len(todo), job.batch_size):
                chunk = todo[start:start + job.batch_size]
                read = read_batch(paths, chunk, job.preprocessing, outcome.failed)
                for x, items in same_size_groups(read):
                    if "occlusion" in job.methods and x.shape[2:] not in checked and not job.preprocessing.size:
                        checked.add(x.shape[2:])  # images kept at their own size: checked per size
                        warn_occlusion_stride(job.params["stride"], x.shape[2:])
                    explain_group(m, job, x, items, paths, keys, work.done, outcome.results, bar)
                bar.update(len(chunk))
    except KeyboardInterrupt:
        outcome.interrupted = True
    return outcome


def read_batch(paths: list, chunk: list, pre: Preprocessing, failed: list) -> list:
    """The model inputs of the images of ``chunk`` (plan items) as (x (1, C, H, W), item) pairs. An unreadable image
    is warned about, added to ``failed`` at once (a Ctrl-C during the batch keeps it listed) and left out."""
    from onnx_cnnviz.image import preprocess

    read = []
    for item in chunk:
        i = item[0]
        try:
            read.append((preprocess([paths[i]], preset=pre), item))
        except InputError as exc:
            failed.append({"image": abspath(paths[i]), "error": str(exc)})
            warn(f"skipped: {exc}")
    return read


def same_size_groups(read: list):
    """(batch, items) per input size, in the order first seen: images of one size run together (all of them, unless
    the preprocessing keeps native sizes)."""
    groups: dict = {}
    for x, item in read:
        groups.setdefault(x.shape, []).append((x, item))
    for group in groups.values():
        yield np.concatenate([x for x, _ in group]), [item for _, item in group]


class ImageRow(NamedTuple):
    """One image of a group as its results need it: file, file-name key, the model's view of it (under the
    pictures), its class scores and probabilities."""
    path: Path
    key: str
    view: np.ndarray
    scores: np.ndarray
    probs: np.ndarray


def explain_group(m, job: RunSettings, x: np.ndarray, items: list, paths: list, keys: list, done: set,
                  records: list, bar=None) -> None:
    """Explain the same-size images ``x`` (one row per plan item of ``items``) with each method still missing for
    them, for the run's classes (top-1, the top-k or --target), and write every result not in ``done`` (records
    --resume keeps), appending each record to ``records`` once it is on disk. ``bar``: the run's
    :class:`~onnx_cnnviz.cli.common.Progress`, told each method's units of work."""
    from onnx_cnnviz import report
    from onnx_cnnviz.image import deprocess

    # The rows per onnxruntime run are --rows-per-run, else left to the library; --batch-size only bounds the images
    # read at once.
    scores = m.scores(x, batch_size=job.rows_per_run)
    probs = report.probabilities(scores, m.softmax_skipped)
    classes = explained_classes(job, scores)
    views = deprocess(x, preset=job.preprocessing)
    for name in job.methods:
        rows = [j for j, (_, missing) in enumerate(items) if name in missing]
        if not rows:
            continue
        maps = method_maps(m, job, name, x[rows], classes[rows],
                           progress=bar.method_progress(name) if bar is not None else None)
        for row, j in enumerate(rows):
            i = items[j][0]
            image = ImageRow(paths[i], keys[i], views[j], scores[j], probs[j])
            for r in range(job.k):
                if job.files(image.key, name, job.ranks[r]).json not in done:
                    write_result(m, job, name, image, r, int(classes[j, r]), maps[row, r], records)


def explained_classes(job: RunSettings, scores: np.ndarray) -> np.ndarray:
    """(N, k) the classes explained per image, best first: the top-k, --target, or the top-1."""
    if job.top_k:
        return np.argsort(-scores, axis=1, kind="stable")[:, :job.k]
    if job.target is not None:
        return np.full((len(scores), 1), int(job.target))
    return scores.argmax(axis=1)[:, None]


def method_maps(m, job: RunSettings, name: str, x: np.ndarray, classes: np.ndarray, progress=None) -> np.ndarray:
    """Method ``name``'s results for the images ``x`` and their ``classes`` (N, k), as (N, k, ...). A method that
    does not depend on the class runs once per image, its result standing for each class. ``progress``: told the
    method's units of work (see :func:`registry.explain`)."""
    if registry.get(name).class_specific:
        raw = registry.explain(m, name, np.repeat(x, job.k, axis=0), classes.reshape(-1), layer=job.layer,
                               params=job.params, batch_size=job.rows_per_run, progress=progress)
        return raw.reshape(len(x), job.k, *raw.shape[1:])
    raw = registry.explain(m, name, x, classes[:, 0], layer=job.layer, params=job.params,
                           batch_size=job.rows_per_run, progress=progress)
    return np.repeat(raw[:, None], job.k, axis=1)


def write_result(m, job: RunSettings, name: str, image: ImageRow, r: int, c: int, result: np.ndarray,
                 records: list) -> None:
    """Write one result, method ``name`` on ``image`` for class ``c`` (rank index ``r``): the picture, the raw array
    and, last, the JSON record, which is appended (with its "json" path) to ``records`` once it is on disk, also when
    Ctrl-C comes during the write."""
    from onnx_cnnviz import report

    meth = registry.get(name)
    files = job.files(image.key, name, job.ranks[r])
    # Under --resume, files without their record are leftovers of an interrupted run, and stale results were made
    # with other settings: both are replaced.
    replace = job.overwrite or job.resume
    if replace:
        # The old record goes first: a record on disk always describes the picture and array beside it.
        files.json.unlink(missing_ok=True)
    pic = report.picture(name, result, image.view, job.preprocessing.order, alpha=job.alpha, colormap=job.colormap)
    report.write_atomic(files.png, report.png_bytes(pic), overwrite=replace)
    report.write_atomic(files.npy, npy_bytes(result), overwrite=replace)
    names = job.labels
    record = {
        "model": job.model_path, "image": str(image.path.resolve()), "method": name, "title": meth.title,
        "class": c, "class_name": names[c] if names else None,
        "rank": r + 1 if job.top_k or job.target is None else None,
        "score": float(image.scores[c]), "probability": float(image.probs[c]),
        "class_specific": meth.class_specific, **job.result_settings(name), "device": m.device, "kind": meth.kind,
        "outputs": {"picture": abspath(files.png), "array": abspath(files.npy)},
        "array_shape": list(result.shape), "cnnviz_version": job.version,
    }
    try:
        save_json(files.json, record, replace)
    finally:
        # Listed exactly when the record is on disk: a Ctrl-C inside save_json may come before or after the rename.
        if files.json.exists():
            records.append({**record, "json": abspath(files.json)})
    label = f" {names[c]}" if names else ""
    echo(f"{image.path}  {name:<14} {c}{label}  p={image.probs[c]:.3f}  -> {files.png}")  # the path: names repeat


def finish_run(ctx: click.Context, m, job: RunSettings, paths: list, keys: list, work: Plan,
               outcome: Outcome) -> None:
    """The run's summary (the JSON document under --json, a line on stderr otherwise) and its exit code: 130 when
    interrupted, 1 when an image could not be explained, an error when there was nothing to explain, else 0.

    Both count exactly the results on disk: the records written by this run ("results") and, under --resume, those
    kept; "files" maps each image to the files of its finished results (absolute paths, as everywhere in JSON)."""
    results = outcome.results
    finished = {Path(r["json"]) for r in results} | {Path(abspath(p)) for p in work.done}

    def is_finished(files) -> bool:
        return Path(abspath(files.json)) in finished

    files = {}
    for i, (path, key) in enumerate(zip(paths, keys)):
        mine = [f for name in job.methods for rank in job.ranks
                for f in job.files(key, name, rank) if is_finished(job.files(key, name, rank))]
        if mine:
            files[abspath(path)] = [abspath(f) for f in mine]
    complete = sum(all(is_finished(job.files(keys[i], name, rank)) for name in missing for rank in job.ranks)
                   for i, missing in work.todo)
    if not results and not work.skipped and not outcome.failed and not outcome.interrupted:
        raise InputError("nothing was explained.")
    if settings().json:
        emit_json({"model": job.model_path, "out": abspath(job.out), "device": m.device,
                   "methods": job.methods, "results": results, "files": files, "skipped": work.skipped,
                   "stale": work.stale, "broken": work.broken, "removed_temporary": [abspath(p) for p in work.removed],
                   "failed": outcome.failed, "interrupted": outcome.interrupted})
    if outcome.interrupted:
        click.echo(f"cnnviz: interrupted after {complete} of {len(work.todo)} image(s); the {len(results)} result(s) "
                   f"written are kept in {job.out} (run again with --resume to finish)", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    if outcome.failed:
        click.echo(f"cnnviz: error: {len(outcome.failed)} of {len(paths)} image(s) could not be explained (listed "
                   f"above); the other results are in {job.out}", err=True)
        ctx.exit(EXIT_FAILURE)
    echo(f"{len(results)} result(s) in {job.out}", err=True)
