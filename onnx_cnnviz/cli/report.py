"""``cnnviz report``: one self-contained HTML page with the predictions and every requested method per image."""
from __future__ import annotations

from pathlib import Path

import click

from onnx_cnnviz.methods import registry

from .common import (
    EXIT_FAILURE,
    abspath,
    check_input_size,
    check_outputs,
    check_top_k,
    collect_images,
    echo,
    finish,
    flatten_lists,
    global_flags,
    image_options,
    labels_option,
    layer_option,
    method_option,
    method_parameter_options,
    method_params,
    metric_options,
    model_and_preprocessing,
    model_options,
    out_folder,
    out_folder_option,
    overwrite_option,
    parse_metric_params,
    preprocessing_options,
    progress,
    recursive_option,
    resolve_labels,
    resolve_target,
    rows_per_run_option,
    shared_option,
    target_option,
    task_options,
    task_options_from,
    top_k_option,
    warn,
)

DEFAULT_METHODS = ["gradcam", "gradcampp", "saliency", "guided", "guided-gradcam"]


@click.command("report")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@out_folder_option
@click.option("--name", default="report.html", show_default=True, help="File name of the report inside --out.")
@method_option(registry.names, f"Default: {','.join(DEFAULT_METHODS)}.")
@target_option("Explain it for every image (default: each image's top-1); its row in the predictions table is "
               "marked, and shown also when the class is not among the predictions listed.")
@top_k_option("one row of maps per class.")
@shared_option("--predictions", "--top", "predictions", type=click.IntRange(1, 100), default=5, show_default=True,
               aliases=("--top",), help="Rows of the predictions table.")
@layer_option("Feature map of the CAM family (default: the last spatial map).")
@click.option("--title", default=None, help="Page title.")
@method_parameter_options
@task_options
@metric_options("Shown under each map, for its class (default: none). Metrics that need boxes are for "
                "cnnviz evaluate.")
@rows_per_run_option(aliases=("--batch-size",))
@recursive_option
@overwrite_option
@image_options
@preprocessing_options
@labels_option()
@model_options
@global_flags
@click.pass_context
def report_cmd(ctx, images, out_dir, name, methods, target, top_k, predictions, layer, title, rows_per_run, recursive,
               overwrite, metrics, metric_params, **kw):
    """Write one self-contained HTML page (pictures embedded, no network needed) showing, per image, the top
    predictions and all requested methods side by side with the parameters used (one row per class with
    --top-k).

    On a detector (recognised from its head, or --task detector) the page shows, per image, its detections drawn
    (number, class, score) and listed, and per detection each method's map; on a segmenter (--task segmenter), its
    predicted-class regions (--region-class C: that class only)."""
    from onnx_cnnviz.report import make_report, write_report

    model = kw["model"]
    if Path(name).name != name or not name or name in (".", ".."):
        raise click.BadParameter("give a file name, not a path.", param_hint="--name")
    if target is not None and top_k is not None:
        raise click.UsageError("--target and --top-k exclude each other; give one.")
    out = out_folder(out_dir) / name
    paths = collect_images(images, exclude=Path(out_dir), recursive=recursive)
    check_outputs([out], overwrite, [model, kw["labels"], *paths])
    targets = task_options_from(kw)
    m, pre = model_and_preprocessing(ctx, kw, rows_per_run, task=targets.task)
    names = resolve_labels(m, kw["labels"])
    if m.task != "classifier":
        from onnx_cnnviz.runs.detections import run_task

        task = run_task(m, targets)
        shown = {"detector": "detections", "text": "text lines"}.get(task, "regions")
        for flag, value in (("--target", target), ("--top-k", top_k), ("--metric", flatten_lists(metrics) or None)):
            if value is not None:
                raise click.BadParameter(f"this model is a {'text detector' if task == 'text' else task}: the "
                                         f"report shows each of its {shown}, not a classifier's classes ({flag} is "
                                         "for classifiers).", param_hint=flag)
        return _task_report(ctx, m, pre, names, paths, out, targets, methods, layer, title, rows_per_run,
                            overwrite, kw)
    if targets.region_class is not None:
        raise click.BadParameter("--region-class chooses a segmenter's region; this model is a classifier.",
                                 param_hint="--region-class")
    target = resolve_target(target, names)
    check_top_k(top_k, m.num_classes)
    chosen = flatten_lists(methods) or DEFAULT_METHODS
    metrics = flatten_lists(metrics)
    metric_params = parse_metric_params(metric_params, metrics)
    params = method_params(kw, chosen)
    if pre.size:
        check_input_size(chosen, params, pre.size)
    errors: list = []
    with progress(len(paths), "explaining") as bar:
        page = make_report(m, paths, chosen, preprocessing=pre, labels=names, target=target, layer=layer,
                           params=params, predictions=predictions, top_k=top_k, batch_size=rows_per_run,
                           progress=bar.update, step_progress=bar.step_progress, title=title,
                           model_name=Path(model).name, errors=errors, metrics=metrics,
                           metric_params=metric_params)
    write_report(out, page, overwrite=overwrite)
    for image, message in errors:
        warn(f"skipped: {message}")
    finish({"model": abspath(model), "report": abspath(out), "images": [abspath(p) for p in paths],
            "methods": chosen, "target": target, "top_k": top_k, "predictions": predictions,
            "bytes": out.stat().st_size, "failed": [{"image": abspath(i), "error": e} for i, e in errors]},
           f"wrote {out} ({len(paths)} image(s), {len(chosen)} method(s))")
    if errors:
        click.echo(f"cnnviz: error: {len(errors)} of {len(paths)} image(s) could not be read (listed above; the "
                   "report shows the others)", err=True)
        ctx.exit(EXIT_FAILURE)


def _task_report(ctx, m, pre, names, paths, out, targets, methods, layer, title, rows_per_run, overwrite, kw):
    """The report of a detector or a segmenter (:func:`onnx_cnnviz.runs.task_report.make_task_report`): per image
    its targets drawn and listed, and per target each method's map."""
    from onnx_cnnviz.report import write_report
    from onnx_cnnviz.runs.detections import run_task, task_line
    from onnx_cnnviz.runs.task_report import make_task_report

    echo(task_line(m), err=True)
    chosen = flatten_lists(methods) or DEFAULT_METHODS
    params = method_params(kw, chosen)
    if pre.size:
        check_input_size(chosen, params, pre.size)
    errors: list = []
    with progress(len(paths), "explaining") as bar:
        page = make_task_report(m, paths, chosen, pre, targets, labels=names, layer=layer, params=params,
                                batch_size=rows_per_run, progress=bar.update, title=title,
                                model_name=Path(kw["model"]).name, errors=errors)
    write_report(out, page, overwrite=overwrite)
    for image, message in errors:
        warn(f"skipped: {message}")
    task = run_task(m, targets)
    finish({"model": abspath(kw["model"]), "report": abspath(out), "task": task,
            "task_options": targets.settings(task), "images": [abspath(p) for p in paths], "methods": chosen,
            "bytes": out.stat().st_size, "failed": [{"image": abspath(i), "error": e} for i, e in errors]},
           f"wrote {out} ({len(paths)} image(s), {len(chosen)} method(s), a "
           f"{'text detector' if task == 'text' else task}'s report)")
    if errors:
        click.echo(f"cnnviz: error: {len(errors)} of {len(paths)} image(s) could not be read (listed above; the "
                   "report shows the others)", err=True)
        ctx.exit(EXIT_FAILURE)
