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
    --top-k)."""
    from onnx_cnnviz.report import make_report, write_report

    model = kw["model"]
    if Path(name).name != name or not name or name in (".", ".."):
        raise click.BadParameter("give a file name, not a path.", param_hint="--name")
    if target is not None and top_k is not None:
        raise click.UsageError("--target and --top-k exclude each other; give one.")
    out = out_folder(out_dir) / name
    paths = collect_images(images, exclude=Path(out_dir), recursive=recursive)
    check_outputs([out], overwrite, [model, kw["labels"], *paths])
    m, pre = model_and_preprocessing(ctx, kw, rows_per_run)
    names = resolve_labels(m, kw["labels"])
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
