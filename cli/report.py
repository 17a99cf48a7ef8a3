"""``cnnviz report``: one self-contained HTML page with the predictions and every requested method per image."""
from __future__ import annotations

from pathlib import Path

import click

from onnx_cnnviz.methods import registry

from .common import (EXIT_FAILURE, BaselineType, CsvChoice, MethodListOption, SizeType, check_outputs, collect_images,
                     finish, flatten_lists, global_flags, image_options, model_and_preprocessing, model_options,
                     occlusion_geometry, out_folder, preprocessing_options, progress, recursive_option,
                     resolve_labels, warn)

DEFAULT_METHODS = ["gradcam", "gradcampp", "saliency", "guided", "guided-gradcam"]


@click.command("report")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder for the report.")
@click.option("--name", default="report.html", show_default=True, help="File name of the report inside --out.")
@click.option("--methods", "-m", cls=MethodListOption, type=CsvChoice(registry.names), multiple=True,
              help=f"Methods side by side (default {','.join(DEFAULT_METHODS)}); any of: {{methods}}.")
@click.option("--target", type=int, default=None, help="Explain this class for every image (default: the top-1).")
@click.option("--top", type=click.IntRange(1, 100), default=5, show_default=True, help="Predictions listed.")
@click.option("--layer", metavar="NAME", default=None, help="Feature map for the CAM family.")
@click.option("--title", default=None, help="Page title.")
@click.option("--window", type=SizeType(), default="16x16", show_default=True, help="Occlusion window.")
@click.option("--stride", type=SizeType(), default="8x8", show_default=True, help="Occlusion stride.")
@click.option("--baseline", type=BaselineType(), default=0.0, show_default=True, help="Occlusion / IG baseline.")
@click.option("--samples", type=click.IntRange(min=1), default=25, show_default=True, help="SmoothGrad samples.")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True, help="Integrated-gradients steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Rows per onnxruntime run.")
@recursive_option
@click.option("--overwrite", is_flag=True, help="Replace an existing report.")
@image_options
@preprocessing_options
@model_options
@global_flags
@click.pass_context
def report_cmd(ctx, images, out_dir, name, methods, target, top, layer, title, window, stride, baseline, samples, steps,
               batch_size, recursive, overwrite, **kw):
    """Write one self-contained HTML page (pictures embedded, no network needed) showing, per image, the top
    predictions and all requested methods side by side with the parameters used."""
    from onnx_cnnviz.report import make_report, write_report

    model = kw["model"]
    if Path(name).name != name or not name or name in (".", ".."):
        raise click.BadParameter("give a file name, not a path.", param_hint="--name")
    out = out_folder(out_dir) / name
    paths = collect_images(images, exclude=Path(out_dir), recursive=recursive)
    check_outputs([out], overwrite, [model, kw["labels"], *paths])
    m, pre = model_and_preprocessing(ctx, kw, batch_size)
    names = resolve_labels(m, kw["labels"])
    chosen = flatten_lists(methods) or DEFAULT_METHODS
    params = {"window": window, "stride": stride, "baseline": baseline, "samples": samples, "steps": steps}
    if "occlusion" in chosen and pre.size:
        occlusion_geometry(window, stride, pre.size)
    errors: list = []
    with progress(len(paths), "explaining images") as bar:
        page = make_report(m, paths, chosen, preprocessing=pre, labels=names, target=target, layer=layer,
                           params=params, top=top, batch_size=batch_size, progress=bar.update, title=title,
                           model_name=Path(model).name, errors=errors)
    write_report(out, page, overwrite=overwrite)
    for image, message in errors:
        warn(f"skipped: {message}")
    finish({"model": str(model), "report": str(out.resolve()), "images": [str(p) for p in paths],
            "methods": chosen, "bytes": out.stat().st_size, "failed": [{"image": i, "error": e} for i, e in errors]},
           f"wrote {out} ({len(paths)} image(s), {len(chosen)} method(s))")
    if errors:
        click.echo(f"cnnviz: error: {len(errors)} of {len(paths)} image(s) could not be read (listed above; the "
                   "report shows the others)", err=True)
        ctx.exit(EXIT_FAILURE)
