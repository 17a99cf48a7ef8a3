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

A detector's rows are per (image, detection, method, metric) (:mod:`onnx_cnnviz.runs.detection_evaluate`): each
detection explained and scored on its own, the summary averaging over detections; --ray runs it the same way.

The run is the library's (:mod:`onnx_cnnviz.runs.evaluate`); this module parses the flags, prints the ranking and
sets the exit code. With --ray [ADDRESS] the same plan runs on Ray
(:func:`onnx_cnnviz.dataset.pipeline.evaluate_on_ray`): Ray tasks read the pictures, a pool of actors each holding
the model runs :func:`~onnx_cnnviz.runs.evaluate_run.evaluate_group` on each batch and sends back the journal rows,
and this process appends them to the journal as they arrive, so it stays the journal's only writer and --resume, the
tables, the page (its example maps are made here) and the exit codes are the single-process run's.
"""
from __future__ import annotations

import click

from onnx_cnnviz.methods import registry
from onnx_cnnviz.runs import evaluate as runs_evaluate
from onnx_cnnviz.runs.evaluate_plan import DEFAULT_METRICS, JOURNAL, Journal, needs_boxes  # noqa: F401
from onnx_cnnviz.runs.detection_evaluate import DetectionJob
from onnx_cnnviz.runs.evaluate_tables import ranking_text

from .common import (
    EXIT_INTERRUPTED,
    batch_size_option,
    emit_json,
    exit_for_outcome,
    flatten_lists,
    global_flags,
    image_options,
    labels_option,
    layer_option,
    method_option,
    metric_options,
    model_options,
    out_folder_option,
    overwrite_option,
    param_option,
    parse_method_params,
    parse_metric_params,
    preprocessing_options,
    ray_option,
    recursive_option,
    reporter,
    rows_per_run_option,
    settings,
    shared_option,
    target_option,
    task_options,
    usage_errors,
    warn,
)

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
@param_option
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
@task_options
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

    A detector (recognised from its head, or --task detector) is evaluated per detection: each image's detections
    scoring --conf, after NMS at --iou, at most --max-det, all explained by each method in batched runs and scored
    with deletion / insertion of the detection's D-RISE similarity (Petsiuk et al. 2021; deletion.score=element
    follows its own head element), pointing-game against the ground-truth box matched to it (same class, IoU >=
    pointing-game.iou_threshold, 0.5; a detection matched to no box is written with an undefined value and why)
    and model-randomisation (Adebayo et al.'s sanity check, each map explaining its detection on the randomised
    detectors). Rows are per image x detection x method x metric (results.csv adds detection, box and score, in
    the model input's pixels), the summary averages over detections and says how many were scored. Other metrics
    are refused on a detector; an image with no detection is listed as skipped, and a run with none in any image
    is an error. With --ray a detector is evaluated per detection on Ray; the outputs are the same.

    A method that cannot run on the model (Grad-CAM on an MLP: no spatial layer) is left out with a warning and the
    others are measured. Exit codes: 0 all done; 1 an image could not be evaluated or a method could not run (the
    rest is written; "failed" and "unavailable" in --json say which); 2 a usage error; 130 interrupted.
    """
    methods = flatten_lists(methods) or ["gradcam"]
    metrics = flatten_lists(metrics) or list(DEFAULT_METRICS)
    check_boxes_usage(metrics, boxes_file)
    params = metric_parameters(metric_params, metrics)
    options["method_params"] = parse_method_params(options.get("method_params") or (), methods)
    run(ctx, methods, metrics, params, boxes_file, options)


# ---------------------------------------------------------------------------------------------------------------------
# Options


def check_boxes_usage(metrics: list, boxes_file) -> None:
    """A metric that needs boxes without --boxes is a usage error (exit code 2), before the model is read; --boxes
    with no such metric is only a warning (the file is not read)."""
    wanting = [name for name in metrics if needs_boxes(name)]
    if wanting and not boxes_file:
        raise click.UsageError(f"{', '.join(wanting)} score maps against ground-truth boxes: give them with --boxes "
                               "FILE (CSV or JSON, keyed by image file name).")
    if boxes_file and not wanting:
        warn(f"--boxes is ignored: none of {', '.join(metrics)} uses boxes.")


def metric_parameters(items, metrics: list) -> dict:
    """--metric-param's items as {metric: {key: value}} (:func:`parse_metric_params`), the keys that only a
    detector's metric takes (deletion.score, pointing-game.iou_threshold) set apart first: the task is known only
    once the model is loaded, and the library checks them then against the task's metric."""
    from onnx_cnnviz.runs.detection_evaluate import split_params

    detector_only: list = []
    rest = []
    for item in items or ():
        name, _, _ = str(item).partition("=")
        metric, _, key = name.partition(".")
        if metric in metrics and key and split_params(metric, {key: None})[1]:
            detector_only.append(item)
        else:
            rest.append(item)
    params = parse_metric_params(rest, metrics)
    for metric, given in parse_metric_params_loosely(detector_only).items():
        params[metric].update(given)
    return params


def parse_metric_params_loosely(items) -> dict:
    """``METRIC.KEY=VALUE`` items as {metric: {key: value}} (VALUE read as JSON, else as text), unchecked."""
    import json

    out: dict = {}
    for item in items:
        name, _, value = item.partition("=")
        metric, _, key = name.partition(".")
        try:
            out.setdefault(metric, {})[key] = json.loads(value)
        except (ValueError, RecursionError):
            out.setdefault(metric, {})[key] = value
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The run


def run(ctx: click.Context, methods: list, metrics: list, params: dict, boxes_file, options: dict) -> None:
    """Evaluate ``methods`` x ``metrics`` on the images of ``options`` and write the tables, curves and page
    (:mod:`onnx_cnnviz.runs.evaluate`); print the ranking (or the --json document) and set the exit code: 130
    interrupted, 1 when an image could not be evaluated or a method could not run on the model (the others are
    measured), an error when nothing was measured."""
    from pathlib import Path

    talk = reporter()
    with usage_errors():
        m, job, paths, outputs, work = runs_evaluate.prepare(options, methods, metrics, params, boxes_file, talk)
    detector = isinstance(job, DetectionJob)
    if options.get("ray_address"):
        # Imported only here: the core and the single-process run never import Ray.
        from onnx_cnnviz.dataset.pipeline import evaluate_on_ray

        s = settings()
        tally = evaluate_on_ray(job, paths, work, outputs[JOURNAL], options, talk, progress=not (s.quiet or s.json))
    else:
        tally = runs_evaluate.run_work(m, job, paths, work, outputs[JOURNAL], talk)
    document, results = runs_evaluate.finish(m, job, outputs, paths, work, tally, Path(options["model"]).name, talk)
    if document is None:
        click.echo("cnnviz: interrupted before any image was evaluated; nothing written", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    if settings().json:
        emit_json(document)
    else:
        talk.result(ranking_text(document["summary"], job.metrics))
    if detector:
        counted = document["detections"]
        talk.info(f"{counted['scored']} detection(s) of {counted['images']} image(s) scored"
                  + (f"; {counted['nothing_found']} image(s) had no detection above --conf (skipped)"
                     if counted["nothing_found"] else ""))
    exit_for_outcome(
        ctx,
        interrupted=(f"; the {len(results.rows)} row(s) measured are written in {job.out} (run again with --resume "
                     "to finish)") if tally.interrupted else None,
        failed=(f"{len(tally.failed)} of {len(paths)} image(s) could not be evaluated (listed above); the other "
                f"results are in {job.out}") if tally.failed else None,
        unavailable=job.unavailable, out=job.out)
    talk.info(f"{len(results.rows)} row(s) in {job.out} ({tally.computed} computed, {len(work.done)} kept)")
