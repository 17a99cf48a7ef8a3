"""Evaluate explanation methods with faithfulness and localisation metrics on a folder of images, in process: what
``cnnviz evaluate`` writes, from Python.

    from onnx_cnnviz import runs

    document = runs.evaluate_images("model.onnx", ["photos/"], "eval/", methods=["gradcam", "saliency"],
                                    metrics=["deletion", "insertion"])

writes ``results.jsonl`` (the journal), ``results.csv`` / ``.json``, ``summary.csv`` / ``.json``, the mean curves and
``report.html`` exactly as the command does, and returns the document ``cnnviz evaluate --json`` prints. The steps
are public for the command line and the Ray pipeline: :func:`prepare` (images, model, settings, plan),
:func:`~onnx_cnnviz.runs.evaluate_run.evaluate_all` (the work) and :func:`finish` (tables, curves, page, document).
A detector (recognised from its head, or ``task="detector"``) is evaluated per detection through the same steps
(:mod:`onnx_cnnviz.runs.detection_evaluate`; :func:`run_work` does either run's work).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import CnnvizError, InputError, ModelStructureError
from ..metrics import registry as metric_registry
from ..tasks.head import NotAClassifierError
from . import detection_evaluate
from .detection_evaluate import build_detection_job, evaluate_detections_all, split_params
from .detections import open_task_run, task_line, task_options
from .evaluate_plan import DEFAULT_METRICS, JOURNAL, Plan, build_job, needs_boxes, output_files, plan
from .evaluate_run import Tally, complete_examples, evaluate_all
from .labels import option_error
from .evaluate_tables import Results, read_results, run_document, summarise, write_run
from .preprocessing import LIBRARY_DEFAULT, open_run
from .reporting import Reporter


def check_metrics(metrics: list, metric_params: dict | None, boxes_file, reporter: Reporter) -> dict:
    """The metrics' parameters, each checked against its metric (an unknown metric or key is an
    :class:`InputError`); a metric that needs boxes without ``boxes_file`` is an :class:`InputError` about --boxes,
    ``boxes_file`` with no such metric a warning (the file is not read). Returns {metric: parameters as given}."""
    wanting = [name for name in metrics if needs_boxes(name)]
    if wanting and not boxes_file:
        raise InputError(f"{', '.join(wanting)} score maps against ground-truth boxes: give them with --boxes FILE "
                         "(CSV or JSON, keyed by image file name).")
    if boxes_file and not wanting:
        reporter.warn(f"--boxes is ignored: none of {', '.join(metrics)} uses boxes.")
    params = {name: dict((metric_params or {}).get(name) or {}) for name in metrics}
    unknown = sorted(set(metric_params or {}) - set(metrics))
    if unknown:
        raise InputError(f"metric_params names {unknown[0]!r}, which is not evaluated; evaluated: "
                         f"{', '.join(metrics)}.")
    for name in metrics:
        # A detector's own keys (deletion.score, pointing-game.iou_threshold) are checked once the task is known.
        metric_registry.parameters(name, split_params(name, params[name])[0])
    return params


def prepare(options: dict, methods: list, metrics: list, params: dict, boxes_file, reporter: Reporter) -> tuple:
    """Everything before the work: the images, the model and its preprocessing, the checked settings (:class:`Job`),
    the output files and the plan; the plan's resume lines go to ``reporter``. ``options``: the command's options by
    their names (see :func:`onnx_cnnviz.runs.explain.prepare`). Returns (model, job, paths, outputs, plan).
    The metrics' parameters are checked against their caps first, before any image is read or the model loaded
    (:func:`onnx_cnnviz.metrics.registry.check_values`: ``samples=100000000`` costs nothing)."""
    for name in metrics:
        metric_registry.check_values(name, split_params(name, params.get(name))[0])
    task = task_options(options)
    if task.task in ("segmenter", "text"):
        raise option_error(f"cnnviz evaluate measures a classifier's or a detector's maps; --task {task.task} is "
                           "not evaluated (explain it with cnnviz explain).", "--task")
    out, paths, m, pre = open_evaluated(options, task, reporter)
    if m.task == "detector":
        reporter.info(task_line(m))
        job = build_detection_job(m, pre, paths, methods, metrics, params, boxes_file, options, task, reporter)
        outputs = output_files(out, job.methods, metrics)
        work = plan(job, outputs, paths, reporter, state=detection_evaluate.journal_state)
        say_resumed(work, reporter, "image x method x metric group(s) of detections", "group(s)")
        return m, job, paths, outputs, work
    for name in metrics:  # a detector's own key (deletion.score) given to a classifier: as any unknown key
        try:
            metric_registry.parameters(name, params.get(name))
        except InputError as exc:
            raise option_error(str(exc), "--metric-param") from None
    job = build_job(m, pre, paths, methods, metrics, params, boxes_file, options, reporter)
    outputs = output_files(out, methods, metrics)
    work = plan(job, outputs, paths, reporter)
    say_resumed(work, reporter, "row(s)", "row(s)")
    return m, job, paths, outputs, work


def say_resumed(work: Plan, reporter: Reporter, done: str, stale: str) -> None:
    """Tell ``reporter`` what --resume found in the journal: how many ``done`` (what the plan counts: a classifier's
    rows, a detector's groups of detections) are kept, and how many ``stale`` ones, made with other settings (named),
    are recomputed."""
    if work.done:
        reporter.info(f"resume: {len(work.done)} {done} already done with the same settings, skipped")
    if work.stale:
        reporter.info(f"resume: {work.stale} {stale} were made with other settings ({', '.join(work.changed)}) and "
                      "are recomputed")


def run_work(m, job, paths: list, work: Plan, journal, reporter: Reporter) -> Tally:
    """The planned work in this process: a classifier's rows (:func:`~onnx_cnnviz.runs.evaluate_run.evaluate_all`)
    or a detector's, per detection (:func:`~onnx_cnnviz.runs.detection_evaluate.evaluate_detections_all`)."""
    if isinstance(job, detection_evaluate.DetectionJob):
        return evaluate_detections_all(m, job, paths, work, journal, reporter)
    return evaluate_all(m, job, paths, work, journal, reporter)


def open_evaluated(options: dict, task, reporter: Reporter) -> tuple:
    """The output folder, images, model and preprocessing of an evaluation (:func:`open_run`): a classifier, or a
    detector when --task says so or, under ``auto``, when the classifier's loader refuses the model and
    :func:`~onnx_cnnviz.runs.detections.load_for_task` recognises a detector head. Anything else keeps the
    refusal (a segmenter or a text detector recognised under ``auto`` is refused: evaluate measures neither)."""
    if task.task == "detector":
        return open_task_run({**options, "task": "detector"}, reporter)
    try:
        return open_run(options, reporter)
    except ModelStructureError as exc:
        if task.task == "classifier":
            if isinstance(exc, NotAClassifierError) and "this is a detector" in str(exc):
                raise NotAClassifierError(f"{str(exc).split('. Load it with')[0]}. Evaluate it per detection with "
                                          "--task detector (or auto).") from None
            raise
        refusal = exc
    loaded = open_task_run({**options, "task": "auto"}, reporter)
    if loaded[2].task != "detector":  # auto loads a segmenter only for a DBNet text detector's map
        raise ModelStructureError(f"{Path(options['model']).name} is a text detector (one probability map, DBNet); "
                                  "cnnviz evaluate measures a classifier's or a detector's maps: explain its text "
                                  "lines with cnnviz explain.") from refusal
    return loaded


def finish(m, job, outputs: dict, paths: list, work: Plan, tally: Tally, model_name: str,
           reporter: Reporter) -> tuple:
    """Write what the journal holds for this run (also after Ctrl-C): the tables, the curves and the page. Returns
    (the run's document, the rows read back). Raises :class:`InputError` when no image could be evaluated (for a
    detector, also when no image had a detection); returns (None, empty results) when the run was interrupted
    before any row."""
    if isinstance(job, detection_evaluate.DetectionJob):
        return detection_evaluate.finish(m, job, outputs, paths, work, tally, model_name, reporter)
    # Without resume the journal holds this run's rows only once it has written one (an old one is not read).
    ours = job.resume or tally.wrote
    results = read_results(job, outputs[JOURNAL], paths) if ours else Results()
    if not results.rows:
        if tally.interrupted:
            return None, results
        raise InputError("no image could be evaluated (all were skipped, listed above).")
    if not tally.interrupted:
        try:
            complete_examples(m, job, paths, tally)
        except CnnvizError as exc:  # the page's pictures are not worth the tables: they are written all the same
            reporter.warn(f"the page shows fewer example maps: {exc}")
    summary = summarise(results, job.methods, job.metrics)
    return write_run(m, job, outputs, paths, work, tally, model_name, results, summary, run_document(m, job), reporter,
                     kept=len(work.done)), results


def evaluate_images(model, images, out="cnnviz-out", *, methods=("gradcam",), metrics=tuple(DEFAULT_METRICS),
                    metric_params: dict | None = None, params: dict | None = None, boxes=None, target=None,
                    layer: str | None = None,
                    labels=None, preprocess=None, mean=None, std=None, size=None, order=None, scale=None,
                    input_size=None, device: str = "auto", input_name: str | None = None,
                    output_name: str | None = None, max_nodes=LIBRARY_DEFAULT, max_pixels=LIBRARY_DEFAULT,
                    batch_size: int = 8, rows_per_run: int | None = None, recursive: bool = False,
                    overwrite: bool = False, resume: bool = False, task: str = "auto", conf: float = 0.25,
                    iou: float = 0.45, max_det: int = 300, reporter: Reporter | None = None) -> dict:
    """Score explanation ``methods`` on ``images`` with ``metrics`` and write into the folder ``out`` exactly what
    ``cnnviz evaluate`` writes: ``results.jsonl`` (one line per finished image x method x metric row),
    ``results.csv`` / ``.json``, ``summary.csv`` / ``.json`` (per method x metric: mean, sample std, n and the
    Student-t 95% interval ``mean +- t(0.975, n - 1) std / sqrt(n)``), ``curve.METHOD.METRIC.png`` and
    ``report.html``.

    Args:
        model: the ONNX file.
        images: picture files, folders and globs (or one of them).
        out: the output folder.
        methods: method registry names.
        metrics: metric registry names (``onnx_cnnviz.metrics.registry``).
        metric_params: {metric: {key: value}}, checked against each metric's parameters.
        params: the methods' own parameters, one dict for all (``KEY`` or ``METHOD.KEY``, as
            :func:`onnx_cnnviz.runs.explain_images` takes them; default: the registry's).
        boxes: ground-truth boxes file (CSV or JSON) for the localisation metrics.
        target: a class index or name evaluated for every image (default: each image's top-1).
        layer: as in :func:`onnx_cnnviz.runs.explain_images`.
        labels: as in :func:`onnx_cnnviz.runs.explain_images`.
        preprocess: as in :func:`onnx_cnnviz.runs.explain_images`.
        mean: as in :func:`onnx_cnnviz.runs.explain_images`.
        std: as in :func:`onnx_cnnviz.runs.explain_images`.
        size: as in :func:`onnx_cnnviz.runs.explain_images`.
        order: as in :func:`onnx_cnnviz.runs.explain_images`.
        scale: as in :func:`onnx_cnnviz.runs.explain_images`.
        input_size: as in :func:`onnx_cnnviz.runs.explain_images`.
        device: as in :func:`onnx_cnnviz.runs.explain_images`.
        input_name: as in :func:`onnx_cnnviz.runs.explain_images`.
        output_name: as in :func:`onnx_cnnviz.runs.explain_images`.
        max_nodes: as in :func:`onnx_cnnviz.runs.explain_images`.
        max_pixels: as in :func:`onnx_cnnviz.runs.explain_images`.
        batch_size: as in :func:`onnx_cnnviz.runs.explain_images`.
        rows_per_run: as in :func:`onnx_cnnviz.runs.explain_images`.
        recursive: as in :func:`onnx_cnnviz.runs.explain_images`.
        overwrite: replace existing results.
        resume: keep the journal's rows made with the same settings.
        task: "auto" (a classifier, or a detector recognised from its head), "classifier" or "detector". A
            detector is evaluated per detection (:mod:`onnx_cnnviz.runs.detection_evaluate`): metrics deletion,
            insertion (of the detection's D-RISE similarity), pointing-game (against its matched box) and
            model-randomisation, one row per image x detection x method x metric.
        conf: a detector's score threshold (:func:`onnx_cnnviz.tasks.detect`).
        iou: a detector's NMS overlap threshold.
        max_det: detections evaluated per image at most, best first.
        reporter: where lines, warnings and progress go (default: warnings through :func:`warnings.warn`).

    Returns:
        The run's document, as ``cnnviz evaluate --json`` prints it ("results", "summary", "ranking", "files", ...);
        "interrupted" is true after Ctrl-C.

    Raises:
        InputError: a bad option, no images, an output that would replace an input or (without ``overwrite`` or
            ``resume``) a result, no image that could be evaluated, or (a detector) no image with a detection or a
            metric with no per-detection meaning.
        ModelLoadError: the model cannot be loaded.
    """
    from ..image.reading import pixel_limit

    reporter = reporter or Reporter()
    methods, metrics = list(methods), list(metrics)
    method_params = dict(params or {})
    params = check_metrics(metrics, metric_params, boxes, reporter)
    options = {"model": str(model), "images": [images] if isinstance(images, (str, Path)) else list(images),
               "out_dir": str(out), "recursive": recursive, "device": device, "input_name": input_name,
               "output_name": output_name, "input_size": input_size, "max_nodes": max_nodes,
               "preprocess": preprocess, "mean": mean, "std": std, "size": size, "order": order, "scale": scale,
               "labels": labels, "target": target, "layer": layer, "overwrite": overwrite, "resume": resume,
               "batch_size": int(batch_size), "rows_per_run": rows_per_run, "method_params": method_params,
               "task": task, "conf": conf, "iou": iou, "max_det": max_det}
    limit = contextlib.nullcontext() if max_pixels is LIBRARY_DEFAULT else pixel_limit(max_pixels)
    with limit:
        m, job, paths, outputs, work = prepare(options, methods, metrics, params, boxes, reporter)
        tally = run_work(m, job, paths, work, outputs[JOURNAL], reporter)
        document, _ = finish(m, job, outputs, paths, work, tally, Path(model).name, reporter)
    return document if document is not None else {"results": [], "interrupted": True}
