"""Explain a folder of images into files, in process: what ``cnnviz explain`` writes, from Python.

    from onnx_cnnviz import runs

    document = runs.explain_images("model.onnx", ["photos/"], "out/", methods=["gradcam", "saliency"])

writes, per image, method and class, ``KEY.METHOD.RANK.png`` (the overlay), ``.npy`` (the raw map) and ``.json`` (the
record), exactly as the command does, and returns the document ``cnnviz explain --json`` prints. The steps are public
for the command line and the Ray pipeline, which run them with their own reporters: :func:`prepare` (images, model,
settings, plan), :func:`~onnx_cnnviz.runs.explain_run.explain_all` (the work) and :func:`summary` (the document).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import InputError
from .explain_plan import Plan, RunSettings, check_options, plan
from .detection_run import TaskRun, explain_targets_all, task_plan, task_summary
from .detections import open_task_run, run_task, task_line, task_options
from .explain_run import Outcome, explain_all
from .images import image_keys
from .labels import option_error
from .outputs import abspath
from .preprocessing import LIBRARY_DEFAULT
from .reporting import Reporter

def prepare(options: dict, methods: list, params: dict, reporter: Reporter) -> tuple:
    """Everything before the work: the images (:func:`~onnx_cnnviz.runs.images.collect_images`, before the model, so
    that a typo fails fast), the model loaded for the run's task (:func:`~onnx_cnnviz.runs.detections.load_for_task`:
    declared, or recognised from its head) and its preprocessing, the checked settings and the plan; the plan's
    resume lines go to ``reporter``. ``options``: the command's options by their names (model, images, out_dir,
    recursive, device, input_name, output_name, input_size, max_nodes, preprocess, mean, std, size, order, scale,
    labels, target, top_k, layer, overwrite, resume, batch_size, rows_per_run, alpha, colormap; task, conf, iou,
    max_det, region_class where given). Returns (model, settings, paths, keys, plan): the settings are a
    :class:`~onnx_cnnviz.runs.explain_plan.RunSettings` for a classifier, a
    :class:`~onnx_cnnviz.runs.detection_run.TaskRun` for a detector or a segmenter."""
    check_options(options)
    targets = task_options(options)
    out, paths, m, pre = open_task_run(options, reporter)
    if m.task != "classifier":
        reporter.info(task_line(m))
        for flag, key in (("--target", "target"), ("--top-k", "top_k")):
            if options.get(key) is not None:
                task = run_task(m, targets)
                hint = {"detector": "--conf, --iou and --max-det choose its detections",
                        "text": "--conf and --max-det choose its text lines"}.get(
                    task, "--region-class chooses its region")
                kind = "text detector" if task == "text" else task
                raise option_error(f"{flag} chooses a classifier's classes; this model is a {kind} ({hint}).", flag)
    elif targets.region_class is not None:
        raise option_error("--region-class chooses a segmenter's region; this model is a classifier (--target "
                           "chooses its class).", "--region-class")
    job = RunSettings.build(m, pre, methods, params, options, reporter)
    keys = image_keys(paths)
    if m.task == "classifier":
        work = plan(job, paths, keys, reporter)
    else:
        job = TaskRun(job, m.task, targets)
        work = task_plan(job, paths, keys, reporter)
    if work.skipped:
        reporter.info(f"resume: {len(work.skipped)} image(s) already done, skipped")
    if work.stale:
        reporter.info(f"resume: {len(work.stale)} result(s) were made with other settings ({', '.join(work.changed)}) "
                      "and are recomputed")
    if work.broken:
        reporter.info(f"resume: {len(work.broken)} result(s) have missing or broken files and are recomputed")
    return m, job, paths, keys, work


def run_work(m, job, paths: list, keys: list, work: Plan, reporter: Reporter) -> Outcome:
    """The planned work of :func:`prepare`'s settings in this process: a classifier's classes
    (:func:`~onnx_cnnviz.runs.explain_run.explain_all`), a detector's detections or a segmenter's regions
    (:func:`~onnx_cnnviz.runs.detection_run.explain_targets_all`)."""
    if isinstance(job, TaskRun):
        return explain_targets_all(m, job, paths, keys, work, reporter)
    return explain_all(m, job, paths, keys, work, reporter)


def summary(m, job: RunSettings, paths: list, keys: list, work: Plan, outcome: Outcome) -> tuple:
    """The run's document and how many planned images are complete. It counts exactly the results on disk: the
    records written by this run ("results") and, under resume, those kept; "files" maps each image to the files of
    its finished results (absolute paths, as everywhere in JSON). Raises :class:`InputError` when there was nothing
    to explain (no result, nothing skipped, nothing failed, not interrupted)."""
    if isinstance(job, TaskRun):
        return task_summary(m, job, paths, keys, work, outcome)
    results = outcome.results
    finished = {Path(r["json"]) for r in results} | {Path(abspath(p)) for p in work.done}

    def is_finished(files) -> bool:
        return Path(abspath(files.json)) in finished

    files = {}
    for path, key in zip(paths, keys):
        mine = [f for name in job.methods for rank in job.ranks
                for f in job.files(key, name, rank) if is_finished(job.files(key, name, rank))]
        if mine:
            files[abspath(path)] = [abspath(f) for f in mine]
    complete = sum(all(is_finished(job.files(keys[i], name, rank)) for name in missing for rank in job.ranks)
                   for i, missing in work.todo)
    if not results and not work.skipped and not outcome.failed and not outcome.interrupted:
        raise InputError("nothing was explained.")
    document = {"model": job.model_path, "out": abspath(job.out), "device": m.device, "task": m.task,
                "methods": job.methods,
                "results": results, "files": files, "skipped": work.skipped, "stale": work.stale,
                "broken": work.broken, "removed_temporary": [abspath(p) for p in work.removed],
                "failed": outcome.failed, "interrupted": outcome.interrupted, "unavailable": job.unavailable}
    return document, complete


def explain_images(model, images, out="cnnviz-out", *, methods=("gradcam",), params: dict | None = None,
                   target=None, top_k: int | None = None, layer: str | None = None, labels=None, preprocess=None,
                   mean=None, std=None, size=None, order=None, scale=None, input_size=None, device: str = "auto",
                   input_name: str | None = None, output_name: str | None = None, max_nodes=LIBRARY_DEFAULT,
                   max_pixels=LIBRARY_DEFAULT, batch_size: int = 8, rows_per_run: int | None = None,
                   recursive: bool = False, overwrite: bool = False, resume: bool = False, alpha: float = 0.5,
                   colormap: str = "jet", task: str = "auto", conf: float = 0.25, iou: float = 0.45,
                   max_det: int = 300, region_class=None, reporter: Reporter | None = None) -> dict:
    """Explain the images ``images`` with ``methods`` and write into the folder ``out`` exactly what ``cnnviz
    explain`` writes: per image, method and class, ``KEY.METHOD.RANK.png`` (the overlay), ``.npy`` (the raw map as the
    method returns it) and ``.json`` (model, image, class, class name, score, probability, method, parameters,
    preprocessing, files).

    For each image and class explained, each method's map ``M = method(model, x, c)`` of the preprocessed picture
    ``x = (pixels * scale - mean) / std`` (the preprocessing of the model's metadata unless given); the class ``c``
    is the top-1 (file rank ``top1``), each of the ``top_k`` best (``top1`` .. ``topK``) or ``target`` (``cN``).

    Args:
        model: the ONNX file.
        images: picture files, folders (their pictures) and globs, or one of them; the run's own results in ``out``
            are left out.
        out: the output folder.
        methods: method registry names (``onnx_cnnviz.methods.registry.names()``).
        params: the methods' own parameters, one dict for all: ``KEY`` (e.g. ``window``, ``samples``) for every
            method taking it, ``METHOD.KEY`` for one method; the others keep their registry defaults
            (:attr:`onnx_cnnviz.methods.registry.Method.params`, read from each method's function).
        target: a class index or class name explained for every image (excludes ``top_k``).
        top_k: explain the K best classes of each image.
        layer: the CAM family's feature map (default: the last spatial map).
        labels: a class-names file (default: the model's metadata).
        preprocess: a preset name of :data:`onnx_cnnviz.image.PRESETS` (``cnnviz``'s preprocessing flags).
        mean: overrides the preset's per-channel mean.
        std: overrides the preset's per-channel standard deviation.
        size: overrides the preset's (height, width) the pictures are resized to.
        order: overrides the preset's channel order ("RGB" or "BGR").
        scale: overrides the preset's pixel scale.
        input_size: the input size of a model that takes any size (:func:`onnx_cnnviz.load`).
        device: where onnxruntime runs the model (:func:`onnx_cnnviz.load`).
        input_name: the image input, when the model has several.
        output_name: the class-score output, when the model has several.
        max_nodes: refuse graphs with more nodes (:func:`onnx_cnnviz.load`).
        max_pixels: refuse pictures with more pixels (None: no limit; default: the library's).
        batch_size: images read and explained together.
        rows_per_run: rows per onnxruntime run.
        recursive: also take images from subfolders.
        overwrite: replace existing results. Input files are never written, whatever the flags.
        resume: keep the finished results made with the same settings (their files whole) and compute the rest.
        alpha: the overlays' opacity.
        colormap: the overlays' OpenCV colormap.
        task: "auto" (a known detector head is recognised, else a classifier), "classifier", "detector" or
            "segmenter" (:mod:`onnx_cnnviz.runs.detections`). A detector's and a segmenter's results are per
            detection (``KEY.METHOD.detNN``) or region (``KEY.METHOD.cC``), with ``KEY.detections.png|json``
            (``KEY.regions.png|json``): see :mod:`onnx_cnnviz.runs.detection_run`.
        conf: a detector's score threshold.
        iou: a detector's NMS overlap threshold.
        max_det: detections (regions) explained per image at most.
        region_class: a segmenter's region class (default: every predicted class).
        reporter: where lines, warnings and progress go (default: warnings through :func:`warnings.warn`).

    Returns:
        The run's document, as ``cnnviz explain --json`` prints it: "results" (the records written), "files" (image
        -> its files), "skipped", "stale", "broken", "removed_temporary", "failed", "interrupted", "unavailable"
        ({method: why it cannot run on this model}: the asked methods left out, the others run).

    Raises:
        InputError: a bad option, a parameter no method of the run takes, no images,
            an output that would replace an input or (without ``overwrite`` or
            ``resume``) a result, or nothing explained.
        ModelLoadError: the model cannot be loaded.
    """
    from ..image.reading import pixel_limit

    reporter = reporter or Reporter()
    options = {"model": str(model), "images": [images] if isinstance(images, (str, Path)) else list(images),
               "out_dir": str(out), "recursive": recursive, "device": device, "input_name": input_name,
               "output_name": output_name, "input_size": input_size, "max_nodes": max_nodes,
               "preprocess": preprocess, "mean": mean, "std": std, "size": size, "order": order, "scale": scale,
               "labels": labels, "target": target, "top_k": top_k, "layer": layer, "overwrite": overwrite,
               "resume": resume, "batch_size": int(batch_size), "rows_per_run": rows_per_run, "alpha": alpha,
               "colormap": colormap, "task": task, "conf": conf, "iou": iou, "max_det": max_det,
               "region_class": region_class}
    limit = contextlib.nullcontext() if max_pixels is LIBRARY_DEFAULT else pixel_limit(max_pixels)
    with limit:
        m, job, paths, keys, work = prepare(options, list(methods), dict(params or {}), reporter)
        outcome = run_work(m, job, paths, keys, work, reporter)
    return summary(m, job, paths, keys, work, outcome)[0]
