"""``cnnviz explain`` and ``cnnviz occlusion``: maps for many images, written as PNG overlays, raw ``.npy`` arrays
and one JSON record per result.

The run is the library's (:mod:`onnx_cnnviz.runs.explain`): :func:`~onnx_cnnviz.runs.explain.prepare` checks the
options against the model and plans (refusing to replace an input, whatever the flags, or without --overwrite or
--resume a result; under --resume keeping the finished results whose files are whole),
:func:`~onnx_cnnviz.runs.explain_run.explain_all` (or the Ray pipeline with --ray) does the work, and
:func:`~onnx_cnnviz.runs.explain.summary` counts what is on disk. This module parses the flags, prints and sets the
exit code.
"""
from __future__ import annotations

import click

from onnx_cnnviz.methods import registry
from onnx_cnnviz.runs import explain as runs_explain

from .common import (
    apply,
    batch_size_option,
    emit_json,
    exit_for_outcome,
    flatten_lists,
    global_flags,
    image_options,
    labels_option,
    layer_option,
    method_option,
    method_parameter_options,
    method_params,
    model_options,
    occlusion_only_options,
    out_folder_option,
    overwrite_option,
    preprocessing_options,
    ray_option,
    recursive_option,
    reporter,
    rows_per_run_option,
    settings,
    shared_option,
    target_option,
    task_options,
    top_k_option,
    usage_errors,
)


def run_options(f):
    """Options shared by explain and occlusion: targets, output, batching (--layer: :func:`explain_cmd`'s only, as
    occlusion reads no layer)."""
    return apply(
        f,
        click.argument("model", type=click.Path()),
        click.argument("images", nargs=-1, required=True),
        target_option("Explain it for every image."),
        top_k_option("one result per class, written as NAME.METHOD.topK.png (.npy, .json), top1 the best."),
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
@layer_option("Feature map of the CAM family (default: the last spatial map).")
@method_parameter_options
@task_options
@preprocessing_options
@labels_option()
@model_options
@ray_option("Same outputs plus OUT/records.parquet (one row per result).")
@global_flags
@click.pass_context
def explain_cmd(ctx, methods, **kw):
    """Explain the classification (or detections, or segmentation) of IMAGES (files, folders, globs) with one or
    more methods.

    Writes, per image, method and class, into --out: NAME.METHOD.RANK.png (the picture), .npy (the raw map as the
    library returns it) and .json (model, image, class, class name, score, probability, method, parameters).
    RANK is top1 (default), topK with --top-k, or cN with --target N; NAME is the image's file name without its
    suffix, or its path below the images' common folder (a__cat for a/cat.png) when two images share a name.
    Pictures over 100 megapixels are refused from their header (onnx_cnnviz.image.MAX_PIXELS; --max-pixels
    changes it) and skipped like unreadable ones. Input files are never written, whatever the flags. With --json the
    summary lists the records written ("results") and maps each image to the files of its finished results
    ("files"), also after Ctrl-C; paths in JSON are absolute.

    A detector (recognised from its head, or --task detector) is explained per detection: its detections scoring
    --conf, after NMS at --iou, at most --max-det per image, all of an image's detections in the same batched runs.
    Per image NAME.detections.png (the boxes with number, class and score) and NAME.detections.json (the
    detections and their files), per method and detection NAME.METHOD.detNN.png|npy|json (01 the best; the record
    has the box, class, class name and score). A segmenter (--task segmenter) is explained per predicted class
    region (--region-class C: that class only; pytorch-grad-cam's SemanticSegmentationTarget): NAME.regions.png|json and
    NAME.METHOD.cC.png|npy|json. An image where nothing is found gets no file; a run where nothing is found in any
    image is an error (exit code 1).

    A method that cannot run on the model (Grad-CAM on an MLP: no spatial layer) is left out with a warning and the
    others run. Exit codes: 0 all done; 1 an image could not be explained or a method could not run (the rest is
    written; "failed" and "unavailable" in --json say which); 2 a usage error; 130 interrupted (--resume finishes).
    """
    methods = flatten_lists(methods) or ["gradcam"]
    params = method_params(kw, methods)
    run(ctx, methods, params, **kw)


@click.command("occlusion")
@run_options
@occlusion_only_options
@preprocessing_options
@labels_option()
@model_options
@global_flags
@click.pass_context
def occlusion_cmd(ctx, **kw):
    """Occlusion maps (Zeiler & Fergus 2014): slide a --window of --baseline values over each image with --stride
    and record how the class score drops (--mode score) or the class probability (--mode probability).

    Same outputs and options as `cnnviz explain --method occlusion`.
    """
    params = method_params(kw, ["occlusion"])
    run(ctx, ["occlusion"], params, layer=None, **kw)


# ---------------------------------------------------------------------------------------------------------------------
# The run


def check_options(options: dict) -> None:
    """The usage errors (exit code 2) that need neither the images nor the model."""
    from onnx_cnnviz.image import COLORMAPS

    if options["target"] is not None and options["top_k"] is not None:
        raise click.UsageError("--target and --top-k exclude each other; give one.")
    colormap = options["colormap"]
    if colormap.lower() not in COLORMAPS:
        raise click.BadParameter(f"unknown colormap {colormap!r}; use one of {', '.join(sorted(COLORMAPS))}.",
                                 param_hint="--colormap")


def run(ctx: click.Context, methods: list, params: dict, **options) -> None:
    """Explain the images of ``options`` (the click parameters of :func:`run_options`, the model and preprocessing
    options) with ``methods``; ``params``: the method parameters given on the command line."""
    check_options(options)
    talk = reporter()
    with usage_errors():
        m, job, paths, keys, work = runs_explain.prepare(options, methods, params, talk)
    if options.get("ray_address"):
        # Imported only here: the core and the single-process run never import Ray.
        from onnx_cnnviz.dataset.pipeline import explain_on_ray

        s = settings()
        outcome = explain_on_ray(m, job, paths, keys, work, options, talk, progress=not (s.quiet or s.json))
    else:
        outcome = runs_explain.run_work(m, job, paths, keys, work, talk)
    document, complete = runs_explain.summary(m, job, paths, keys, work, outcome)
    if settings().json:
        emit_json(document)
    results = outcome.results
    exit_for_outcome(
        ctx,
        interrupted=(f" after {complete} of {len(work.todo)} image(s); the {len(results)} result(s) written are kept "
                     f"in {job.out} (run again with --resume to finish)") if outcome.interrupted else None,
        failed=(f"{len(outcome.failed)} of {len(paths)} image(s) could not be explained (listed above); the other "
                f"results are in {job.out}") if outcome.failed else None,
        unavailable=job.unavailable, out=job.out)
    talk.info(f"{len(results)} result(s) in {job.out}")
