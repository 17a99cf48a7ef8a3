"""``cnnviz filters | activations | patches | embed | dream | invert | localize``: the feature-visualisation and
localisation functions of :mod:`onnx_cnnviz.methods.features`, ``optimise`` and ``localise`` on the command line."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from onnx_cnnviz.errors import InputError
from onnx_cnnviz.methods.localise import METHODS as LOCALISE_METHODS

from .common import (
    abspath,
    apply,
    batch_size_option,
    channel_order,
    check_outputs,
    check_top_k,
    collect_images,
    count,
    echo,
    emit_json,
    finish,
    flatten_lists,
    global_flags,
    image_keys,
    image_options,
    labels_option,
    layer_name,
    layer_option,
    load_model,
    method_option,
    model_and_preprocessing,
    model_options,
    order_option,
    out_folder,
    out_folder_option,
    out_picture_option,
    overwrite_option,
    preprocessing_options,
    progress,
    recursive_option,
    resolve_labels,
    resolve_target,
    save_json,
    save_npy,
    seed_option,
    settings,
    shared_option,
    steps_option,
    target_option,
    tile_option,
    top_k_option,
)


def _inputs(kw: dict, *images) -> list:
    """The files a command reads (model, labels and ``images``): no output may replace one."""
    return [kw["model"], kw.get("labels"), *images]


def _save_png(path, picture, overwrite) -> str:
    from onnx_cnnviz.image import save_image

    return str(save_image(path, picture, overwrite=overwrite))


def _one_input(path, pre):
    from onnx_cnnviz.image import preprocess

    return preprocess([path], preset=pre)


# ---------------------------------------------------------------------------------------------------------------------


@click.command("filters")
@click.argument("model", type=click.Path())
@layer_option("Produced by a convolution (default: the first convolution).")
@click.option("--max-filters", type=count(1), default=None, help="Show at most this many filters.")
@click.option("--max-channels", type=count(1), default=16, show_default=True,
              help="Input channels shown per filter for deeper layers.")
@tile_option(24)
@out_picture_option("filters")
@overwrite_option
@order_option("Colours of first-layer filters (default: the model's metadata, else RGB, with a warning).")
@model_options
@global_flags
def filters_cmd(layer, max_filters, max_channels, tile, out_path, overwrite, order, **kw):
    """The convolution kernels as a picture (first layer: one colour tile per filter, as in the AlexNet figure).
    Reads no picture: of the preprocessing, only the channel order matters.
    \f
    The text above is ``cnnviz filters --help``; click stops at the form
    feed. The work is :func:`onnx_cnnviz.methods.features.filters`.

    Args:
        layer: ``--layer``: a tensor produced by a convolution (None: the first convolution).
        max_filters: ``--max-filters``: show at most this many filters (None: all).
        max_channels: ``--max-channels``: input channels shown per filter of a deeper layer.
        tile: ``--tile``: the side of one tile in pixels.
        out_path: ``--out``: the .png file to write.
        overwrite: ``--overwrite``: replace ``out_path`` if it exists.
        order: ``--order``: RGB or BGR, the colours of first-layer filters (None: the metadata's, else RGB).
        **kw: MODEL (``model``) and the shared model options, by parameter name (``device``,
            ``input_name``, ``output_name``, ``input_size``, ``max_nodes``): see
            :func:`onnx_cnnviz.cli.inspect_cmd.inspect_cmd`.

    Raises:
        onnx_cnnviz.errors.InputError: an output would replace an input, or exists without ``--overwrite``.
        onnx_cnnviz.errors.CnnvizError: the model or a picture cannot be read, or the layer is unknown.
    """
    from onnx_cnnviz.methods import features

    check_outputs([out_path], overwrite, _inputs(kw))
    m = load_model(kw["model"], kw["device"], kw["input_name"], kw["output_name"], kw["input_size"],
                   max_nodes=kw["max_nodes"])
    picture = features.filters(m, layer=layer, order=channel_order(m, order, Path(kw["model"]).name),
                               max_filters=max_filters, max_channels=max_channels, tile=tile)
    _save_png(out_path, picture, overwrite)
    finish({"model": abspath(kw["model"]), "out": abspath(out_path), "layer": layer, "size": list(picture.shape[:2])},
           f"wrote {out_path} ({picture.shape[1]}x{picture.shape[0]})")


@click.command("activations")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@layer_option("Feature map (default: the default layer).")
@shared_option("--top-channels", "--top", "top", type=count(1), default=None, aliases=("--top",),
               help="Only the N most active channels.")
@click.option("--scale-by", "scale_by", type=click.Choice(["layer", "channel"]), default="layer", show_default=True,
              help="One gray scale for all maps, or one per map.")
@tile_option(48)
@recursive_option
@out_folder_option
@overwrite_option
@image_options
@preprocessing_options
@model_options
@global_flags
@click.pass_context
def activations_cmd(ctx, images, layer, top, scale_by, tile, recursive, out_dir, overwrite, **kw):
    """Feature maps of each image at a layer, as a grid of gray tiles (NAME.activations.png and .npy; NAME as in
    `cnnviz explain`: unique per image).
    \f
    The text above is ``cnnviz activations --help``; click stops at the form
    feed. The work is :func:`onnx_cnnviz.methods.features.activations`.

    Args:
        ctx: click's context (the model and preprocessing are resolved from it and ``kw``).
        images: IMAGES: picture files and folders.
        layer: ``--layer``: the feature map (None: the default layer).
        top: ``--top-channels``: show only this many channels, the most active first (None: all).
        scale_by: ``--scale-by``: ``layer`` (one grey scale for the whole map) or ``channel`` (each tile its own).
        tile: ``--tile``: the side of one tile in pixels.
        recursive: ``--recursive``: also take pictures from subfolders.
        out_dir: ``--out``: the folder the files are written to.
        overwrite: ``--overwrite``: replace files that exist.
        **kw: MODEL (``model``) and the shared model and preprocessing options, by parameter name (``device``,
            ``input_name``, ``output_name``, ``input_size``, ``max_nodes``, ``preprocess``, ``mean``, ``std``, ``size``,
            ``order``, ``scale``): see
            :func:`onnx_cnnviz.cli.inspect_cmd.inspect_cmd`.

    Raises:
        onnx_cnnviz.errors.InputError: an output would replace an input, or exists without ``--overwrite``.
        onnx_cnnviz.errors.CnnvizError: the model or a picture cannot be read, or the layer is unknown.
    """
    from onnx_cnnviz.methods import features

    out = out_folder(out_dir)
    paths = collect_images(images, exclude=out, recursive=recursive)
    keys = image_keys(paths)
    outputs = {path: (out / f"{key}.activations.png", out / f"{key}.activations.npy") for path, key in zip(paths, keys)}
    check_outputs([f for pair in outputs.values() for f in pair], overwrite, _inputs(kw, *paths))
    m, pre = model_and_preprocessing(ctx, kw)
    name = layer_name(m, layer)
    written, files = [], {}
    with progress(len(paths), "activations") as bar:
        for path in paths:
            png, npy = outputs[path]
            grid = features.activations(m, _one_input(path, pre), layer=name, top=top, scale=scale_by, tile=tile)
            _save_png(png, grid.image, overwrite)
            save_npy(npy, grid.maps, overwrite)
            written.append({"image": abspath(path), "picture": abspath(png), "array": abspath(npy),
                            "channels": [int(c) for c in grid.channels]})
            files[abspath(path)] = [abspath(png), abspath(npy)]
            bar.update(1)
    finish({"model": abspath(kw["model"]), "out": abspath(out), "layer": name, "results": written, "files": files},
           f"wrote {len(written)} grid(s) to {out}")


@click.command("patches")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@layer_option("Feature map (default: the deepest layer whose receptive field is at most half the image).")
@click.option("--channels", default=None, help="Channels to show, comma-separated (default: the first 16).")
@shared_option("--per-channel", "-k", "k", type=count(1), default=9, show_default=True, aliases=("-k",),
               help="Patches per channel.")
@click.option("--guided", is_flag=True, help="Add the guided backpropagation of each unit next to its patch.")
@tile_option(64)
@batch_size_option
@recursive_option
@out_picture_option("patches")
@overwrite_option
@image_options
@preprocessing_options
@model_options
@global_flags
@click.pass_context
def patches_cmd(ctx, images, layer, channels, k, guided, tile, batch_size, recursive, out_path, overwrite, **kw):
    """The image patches that activate each channel most, over a folder of IMAGES (one row per channel), with a
    .json beside the picture listing image, value, unit and box of every patch.
    \f
    The text above is ``cnnviz patches --help``; click stops at the form
    feed. The work is :func:`onnx_cnnviz.methods.features.top_patches`.

    Args:
        ctx: click's context (the model and preprocessing are resolved from it and ``kw``).
        images: IMAGES: picture files and folders.
        layer: ``--layer``: the feature map (None: the deepest whose receptive field is at most half the image).
        channels: ``--channels``: the channels to show, comma-separated (None: the first 16).
        k: ``--per-channel``: the number of patches per channel.
        guided: ``--guided``: add each unit's guided backpropagation next to its patch.
        tile: ``--tile``: the side of one tile in pixels.
        batch_size: ``--batch-size``: pictures read and run together.
        recursive: ``--recursive``: also take pictures from subfolders.
        out_path: ``--out``: the .png file to write (its .json beside it).
        overwrite: ``--overwrite``: replace files that exist.
        **kw: MODEL (``model``) and the shared model and preprocessing options, by parameter name (``device``,
            ``input_name``, ``output_name``, ``input_size``, ``max_nodes``, ``preprocess``, ``mean``, ``std``, ``size``,
            ``order``, ``scale``): see
            :func:`onnx_cnnviz.cli.inspect_cmd.inspect_cmd`.

    Raises:
        onnx_cnnviz.errors.InputError: an output would replace an input, or exists without ``--overwrite``.
        onnx_cnnviz.errors.CnnvizError: the model or a picture cannot be read, or the layer is unknown.
    """
    from onnx_cnnviz.methods import features

    meta = Path(out_path).with_suffix(".json")
    paths = collect_images(images, exclude=Path(out_path).parent, recursive=recursive)
    check_outputs([out_path, meta], overwrite, _inputs(kw, *paths))
    m, pre = model_and_preprocessing(ctx, kw)
    if channels:
        try:
            chosen = [int(c) for c in channels.split(",") if c.strip()]
        except ValueError:
            raise click.BadParameter(f"{channels!r}: give channel numbers such as 0,5,12.", param_hint="--channels")
    else:
        name = layer_name(m, layer) if layer else features.mid_layer(m)
        chosen = list(range(min(16, m.layer(name).shape[1])))
    result = features.top_patches(m, [str(p) for p in paths], layer=layer, channels=chosen, k=k, preprocess=pre,
                                  guided=guided, batch_size=batch_size)
    _save_png(out_path, result.grid(tile=tile), overwrite)
    document = {"model": abspath(kw["model"]), "layer": result.layer, "images": result.count, "out": abspath(out_path),
                "json": abspath(meta),
                "patches": {str(c): [{"image": abspath(p.source), "value": p.value, "unit": list(p.unit),
                                      "box": list(p.box)} for p in ps] for c, ps in result.patches.items()}}
    save_json(meta, document, overwrite)
    finish(document,
           f"wrote {out_path} and {meta} ({len(chosen)} channels x {k} patches from {result.count} images)")


@click.command("embed")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@layer_option("Tensor whose values are the code (default: the input of the last linear layer).")
@click.option("--projection", type=click.Choice(["pca", "tsne"]), default="pca", show_default=True,
              help="2-D map of the codes.")
@click.option("--neighbours", type=count(0), default=5, show_default=True,
              help="Nearest neighbours listed per image (0: none).")
@click.option("--mosaic-size", "mosaic_size", type=count(64), default=1024, show_default=True,
              help="Mosaic size in pixels.")
@click.option("--thumb", type=count(8), default=64, show_default=True, help="Thumbnail size.")
@batch_size_option
@recursive_option
@out_folder_option
@overwrite_option
@image_options
@preprocessing_options
@model_options
@global_flags
@click.pass_context
def embed_cmd(ctx, images, layer, projection, neighbours, mosaic_size, thumb, batch_size, recursive, out_dir,
              overwrite, **kw):
    """The code of every image (embeddings.npy), a 2-D map of them as a thumbnail mosaic (mosaic.png, as
    Karpathy's cnnembed) and each image's nearest neighbours (embed.json).
    \f
    The text above is ``cnnviz embed --help``; click stops at the form
    feed. The work is :mod:`onnx_cnnviz.methods.feature_space`.

    Args:
        ctx: click's context (the model and preprocessing are resolved from it and ``kw``).
        images: IMAGES: picture files and folders.
        layer: ``--layer``: the tensor whose values are the code (None: the input of the last linear layer).
        projection: ``--projection``: ``pca`` or ``tsne``, the 2-D map of the codes.
        neighbours: ``--neighbours``: nearest neighbours listed per image (0: none).
        mosaic_size: ``--mosaic-size``: the side of the mosaic in pixels.
        thumb: ``--thumb``: the side of a thumbnail in pixels.
        batch_size: ``--batch-size``: pictures read and run together.
        recursive: ``--recursive``: also take pictures from subfolders.
        out_dir: ``--out``: the folder the files are written to.
        overwrite: ``--overwrite``: replace files that exist.
        **kw: MODEL (``model``) and the shared model and preprocessing options, by parameter name (``device``,
            ``input_name``, ``output_name``, ``input_size``, ``max_nodes``, ``preprocess``, ``mean``, ``std``, ``size``,
            ``order``, ``scale``): see
            :func:`onnx_cnnviz.cli.inspect_cmd.inspect_cmd`.

    Raises:
        onnx_cnnviz.errors.InputError: an output would replace an input, or exists without ``--overwrite``.
        onnx_cnnviz.errors.CnnvizError: the model or a picture cannot be read, or the layer is unknown.
    """
    from onnx_cnnviz.methods import feature_space

    out = out_folder(out_dir)
    files = {"npy": out / "embeddings.npy", "mosaic": out / "mosaic.png", "json": out / "embed.json"}
    paths = collect_images(images, exclude=out, recursive=recursive)
    check_outputs(files.values(), overwrite, _inputs(kw, *paths))
    if len(paths) < 2:
        raise InputError("embed needs at least 2 images.")
    m, pre = model_and_preprocessing(ctx, kw)
    codes = feature_space.embeddings(m, [str(p) for p in paths], layer=layer, preprocess=pre, batch_size=batch_size)
    coords = feature_space.project_2d(codes, projection)
    k = min(neighbours, len(paths) - 1)
    near = feature_space.nearest_neighbours(codes, k=k) if k else (np.zeros((len(paths), 0), int), None)
    mosaic = feature_space.mosaic([str(p) for p in paths], coords, size=mosaic_size, thumb=thumb,
                                  snap=len(paths) <= (mosaic_size // thumb) ** 2)
    save_npy(files["npy"], codes, overwrite)
    _save_png(files["mosaic"], mosaic, overwrite)
    document = {"model": abspath(kw["model"]), "out": abspath(out),
                "files": {name: abspath(path) for name, path in files.items()},
                "layer": layer or feature_space.penultimate_layer(m), "dims": int(codes.shape[1]),
                "projection": projection,
                "images": [{"image": abspath(p), "xy": [float(v) for v in coords[i]],
                            "neighbours": [abspath(paths[j]) for j in near[0][i]]} for i, p in enumerate(paths)]}
    save_json(files["json"], document, overwrite)
    finish(document, f"wrote {', '.join(str(f) for f in files.values())} ({len(paths)} images, "
                     f"{codes.shape[1]}-d codes)")


def _optim_options(f):
    """--steps, --lr, --seed of the gradient-ascent commands (dream, invert)."""
    return apply(
        f,
        steps_option("gradient-ascent steps.", 200),
        shared_option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                      help="Step size of the gradient ascent (default: the library's)."),
        seed_option("(of the starting noise and the jitter)."))


@click.command("dream")
@click.argument("model", type=click.Path())
@target_option("Visualise it (Simonyan's class model).", aliases=("--class",))
@layer_option("Of the unit / channel to visualise.")
@click.option("--channel", type=count(0), default=None, help="Channel of --layer.")
@click.option("--unit", default=None, help="I,J: one unit of the channel (default: the channel's mean).")
@_optim_options
@click.option("--decay", type=click.FloatRange(min=0), default=None, help="L2 decay per step (Yosinski).")
@click.option("--blur-every", type=count(0), default=None, help="Gaussian blur every N steps (0: off).")
@click.option("--jitter", type=count(0), default=None, help="Random shift in pixels per step.")
@out_picture_option("dream")
@overwrite_option
@preprocessing_options
@labels_option()
@model_options
@global_flags
@click.pass_context
def dream_cmd(ctx, target, layer, channel, unit, steps, lr, seed, decay, blur_every, jitter, out_path, overwrite,
              **kw):
    """An image made by gradient ascent: the class model of a --target class (Simonyan et al. 2014) or what
    excites a --layer/--channel (activation maximisation), with Yosinski et al.'s regularisers.
    \f
    The text above is ``cnnviz dream --help``; click stops at the form
    feed. The work is :func:`onnx_cnnviz.methods.optimise.class_model` or ``neuron_model``.

    Args:
        ctx: click's context (the model and preprocessing are resolved from it and ``kw``).
        target: ``--target``: the class to visualise, an index or a name (None: a channel instead).
        layer: ``--layer``: the layer of the channel to visualise.
        channel: ``--channel``: the channel of ``layer`` (None: a class instead).
        unit: ``--unit``: ``"I,J"``, one unit of the channel (None: the channel's mean).
        steps: ``--steps``: the number of gradient-ascent steps.
        lr: ``--lr``: the step size (None: the library's).
        seed: ``--seed``: the seed of the starting noise and the jitter.
        decay: ``--decay``: L2 decay per step (None: the library's).
        blur_every: ``--blur-every``: a Gaussian blur every N steps (None: the library's; 0: off).
        jitter: ``--jitter``: the random shift in pixels per step (None: the library's).
        out_path: ``--out``: the .png file to write.
        overwrite: ``--overwrite``: replace ``out_path`` if it exists.
        **kw: MODEL (``model``) and the shared model and preprocessing options, by parameter name (``device``,
            ``input_name``, ``output_name``, ``input_size``, ``max_nodes``, ``preprocess``, ``mean``, ``std``, ``size``,
            ``order``, ``scale``, ``labels``): see
            :func:`onnx_cnnviz.cli.inspect_cmd.inspect_cmd`.

    Raises:
        click.UsageError: neither or both of ``--target`` and ``--channel``.
        onnx_cnnviz.errors.InputError: an output would replace an input, or exists without ``--overwrite``.
        onnx_cnnviz.errors.CnnvizError: the model or a picture cannot be read, or the layer is unknown.
    """
    from onnx_cnnviz.methods import optimise

    if (target is None) == (channel is None):
        raise click.UsageError("give --target CLASS, or --layer NAME with --channel C.")
    check_outputs([out_path], overwrite, _inputs(kw))
    m, pre = model_and_preprocessing(ctx, kw)
    extra = {k: v for k, v in {"lr": lr, "decay": decay, "blur_every": blur_every, "jitter": jitter}.items()
             if v is not None}
    if target is not None:
        names = resolve_labels(m, kw["labels"])
        target = resolve_target(target, names)
        result = optimise.class_model(m, target, steps=steps, seed=seed, preprocess=pre, **extra)
        what = {"class": target}
        if names:
            what["class_name"] = names[target]
    else:
        ij = None
        if unit:
            try:
                ij = tuple(int(v) for v in unit.split(","))
                assert len(ij) == 2
            except (ValueError, AssertionError):
                raise click.BadParameter(f"{unit!r}: write I,J.", param_hint="--unit") from None
        result = optimise.neuron_model(m, layer, channel, unit=ij, steps=steps, seed=seed, preprocess=pre, **extra)
        what = {"layer": layer or m.default_layer, "channel": channel, "unit": list(ij) if ij else None}
    _save_png(out_path, result.image, overwrite)
    finish({"model": abspath(kw["model"]), "out": abspath(out_path), **what, "steps": steps, "final": result.final,
            "history": [float(v) for v in result.history]},
           f"wrote {out_path} (objective {result.history[0]:.4g} -> {result.final:.4g} in {steps} steps)")


@click.command("invert")
@click.argument("model", type=click.Path())
@click.argument("image", type=click.Path())
@layer_option("Whose code is inverted (default: the deepest layer whose receptive field is at most half the image).")
@_optim_options
@click.option("--tv", "lambda_tv", type=click.FloatRange(min=0), default=None, help="Total-variation weight.")
@out_picture_option("invert")
@overwrite_option
@image_options
@preprocessing_options
@model_options
@global_flags
@click.pass_context
def invert_cmd(ctx, image, layer, steps, lr, seed, lambda_tv, out_path, overwrite, **kw):
    """Reconstruct IMAGE from its code at --layer (Mahendran & Vedaldi 2015): the picture the layer 'sees'.
    \f
    The text above is ``cnnviz invert --help``; click stops at the form
    feed. The work is :func:`onnx_cnnviz.methods.optimise.invert`.

    Args:
        ctx: click's context (the model and preprocessing are resolved from it and ``kw``).
        image: IMAGE: the picture whose code is inverted.
        layer: ``--layer``: whose code is inverted (None: the deepest whose receptive field is at most half the
            image).
        steps: ``--steps``: the number of gradient-ascent steps.
        lr: ``--lr``: the step size (None: the library's).
        seed: ``--seed``: the seed of the starting noise and the jitter.
        lambda_tv: ``--tv``: the total-variation weight (None: the library's).
        out_path: ``--out``: the .png file to write.
        overwrite: ``--overwrite``: replace ``out_path`` if it exists.
        **kw: MODEL (``model``) and the shared model and preprocessing options, by parameter name (``device``,
            ``input_name``, ``output_name``, ``input_size``, ``max_nodes``, ``preprocess``, ``mean``, ``std``, ``size``,
            ``order``, ``scale``): see
            :func:`onnx_cnnviz.cli.inspect_cmd.inspect_cmd`.

    Raises:
        onnx_cnnviz.errors.InputError: an output would replace an input, or exists without ``--overwrite``.
        onnx_cnnviz.errors.CnnvizError: the model or a picture cannot be read, or the layer is unknown.
    """
    from onnx_cnnviz.methods import optimise

    check_outputs([out_path], overwrite, _inputs(kw, image))
    m, pre = model_and_preprocessing(ctx, kw)
    x = _one_input(image, pre)
    name = layer_name(m, layer) if layer else None  # None: the library's choice (a mid-level layer)
    extra = {k: v for k, v in {"lr": lr, "lambda_tv": lambda_tv}.items() if v is not None}
    result = optimise.invert(m, x, name, steps=steps, seed=seed, preprocess=pre, **extra)
    _save_png(out_path, result.image, overwrite)
    finish({"model": abspath(kw["model"]), "image": abspath(image), "layer": result.layer, "out": abspath(out_path),
            "steps": steps,
            "relative_error": result.final},
           f"wrote {out_path} (relative code error {result.history[0]:.3f} -> {result.final:.3f})")


@click.command("localize")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@method_option(LOCALISE_METHODS, "One: the map the box comes from (saliency: with GrabCut). Default: gradcam.")
@top_k_option("one box per class (default 1).", aliases=("--top",))
@target_option("Its box instead of the best class's.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.2, show_default=True,
              help="Fraction of the map's maximum kept (CAM / Grad-CAM).")
@layer_option("Feature map of CAM / Grad-CAM (default: the last spatial map).")
@batch_size_option
@recursive_option
@out_folder_option
@overwrite_option
@image_options
@preprocessing_options
@labels_option()
@model_options
@global_flags
@click.pass_context
def localize_cmd(ctx, images, methods, top_k, target, threshold, layer, batch_size, recursive, out_dir, overwrite,
                 **kw):
    """Weakly supervised localisation: a bounding box per image and class from its CAM / Grad-CAM (Zhou et al.) or
    saliency + GrabCut (Simonyan et al.). Writes NAME.boxes.png (boxes drawn) and NAME.boxes.json (NAME as in
    `cnnviz explain`: unique per image).
    \f
    The text above is ``cnnviz localize --help``; click stops at the form
    feed. The work is :mod:`onnx_cnnviz.methods.localise`.

    Args:
        ctx: click's context (the model and preprocessing are resolved from it and ``kw``).
        images: IMAGES: picture files and folders.
        methods: ``--method``: one of gradcam, cam or saliency, as the values given (empty: gradcam).
        top_k: ``--top-k``: one box for each of the K best classes (None: 1).
        target: ``--target``: the class whose box is drawn instead of the best class's (an index or a name).
        threshold: ``--threshold``: the fraction of the map's maximum kept (CAM / Grad-CAM).
        layer: ``--layer``: the feature map of CAM / Grad-CAM (None: the last spatial map).
        batch_size: ``--batch-size``: pictures read and run together.
        recursive: ``--recursive``: also take pictures from subfolders.
        out_dir: ``--out``: the folder the files are written to.
        overwrite: ``--overwrite``: replace files that exist.
        **kw: MODEL (``model``) and the shared model and preprocessing options, by parameter name (``device``,
            ``input_name``, ``output_name``, ``input_size``, ``max_nodes``, ``preprocess``, ``mean``, ``std``, ``size``,
            ``order``, ``scale``, ``labels``): see
            :func:`onnx_cnnviz.cli.inspect_cmd.inspect_cmd`.

    Raises:
        click.BadParameter: more than one method.
        onnx_cnnviz.errors.InputError: an output would replace an input, or exists without ``--overwrite``.
        onnx_cnnviz.errors.CnnvizError: the model or a picture cannot be read, or the layer is unknown.
    """
    from onnx_cnnviz.image import deprocess, preprocess
    from onnx_cnnviz.methods import localise

    chosen = flatten_lists(methods) or ["gradcam"]
    if len(chosen) != 1:
        raise click.BadParameter(f"localize draws the boxes of one method; give one, not {', '.join(chosen)}.",
                                 param_hint="--method")
    method = chosen[0]
    if target is not None and top_k is not None:
        raise click.UsageError("--target and --top-k exclude each other; give one.")
    out = out_folder(out_dir)
    paths = collect_images(images, exclude=out, recursive=recursive)
    keys = image_keys(paths)
    check_outputs([out / f"{k}.boxes.{s}" for k in keys for s in ("png", "json")], overwrite, _inputs(kw, *paths))
    m, pre = model_and_preprocessing(ctx, kw)
    names = resolve_labels(m, kw["labels"])
    target = resolve_target(target, names)
    check_top_k(top_k, m.num_classes)
    results, files = [], {}
    with progress(len(paths), "localizing") as bar:
        for start in range(0, len(paths), batch_size):
            chunk = list(range(start, min(start + batch_size, len(paths))))
            x = np.concatenate([preprocess([paths[i]], preset=pre) for i in chunk])
            found = localise.localise(m, x, method=method, targets=target, top=top_k or 1, threshold=threshold,
                                      layer=layer, preprocess=pre)
            for row, i in enumerate(chunk):
                boxes = found[row]
                labels = [f"{b.target} {names[b.target]}" if names else str(b.target) for b in boxes]
                drawn = localise.draw_boxes(deprocess(x[row], preset=pre), [b.box for b in boxes], labels=labels)
                png, record_path = out / f"{keys[i]}.boxes.png", out / f"{keys[i]}.boxes.json"
                _save_png(png, drawn, overwrite)
                record = {"model": abspath(kw["model"]), "image": abspath(paths[i]), "method": method,
                          "threshold": threshold,
                          "boxes": [{"class": b.target, "class_name": names[b.target] if names else None,
                                     "score": b.score, "box": [int(v) for v in b.box]} for b in boxes]}
                save_json(record_path, record, overwrite)
                results.append({**record, "picture": abspath(png), "json": abspath(record_path)})
                files[abspath(paths[i])] = [abspath(png), abspath(record_path)]
                echo(f"{paths[i].name}  " + "; ".join(f"{lab} box {tuple(int(v) for v in b.box)}"
                                                        for lab, b in zip(labels, boxes)))
            bar.update(len(chunk))
    if settings().json:
        emit_json({"model": abspath(kw["model"]), "out": abspath(out), "results": results, "files": files})


COMMANDS = [filters_cmd, activations_cmd, patches_cmd, embed_cmd, dream_cmd, invert_cmd, localize_cmd]
