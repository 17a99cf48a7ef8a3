"""``cnnviz explain`` and ``cnnviz occlusion``: maps for many images, written as PNG overlays, raw ``.npy`` arrays
and one JSON record per result."""
from __future__ import annotations

import io
import json
from pathlib import Path

import click
import numpy as np

from onnx_cnnviz.errors import InputError

from onnx_cnnviz.methods import registry

from .common import (CsvChoice, MethodListOption, SizeType, collect_images, echo, emit_json, flatten_lists, global_flags, image_keys,
                     load_model, model_options, preprocessing_options, progress, resolve_labels,
                     resolve_preprocessing, settings, warn)



class BaselineType(click.ParamType):
    name = "FLOAT|mean"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value == "mean":
            return value
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number or 'mean'.", param, ctx)


def run_options(f):
    """Options shared by explain and occlusion: targets, layer, output, batching."""
    options = [
        click.argument("model", type=click.Path()),
        click.argument("images", nargs=-1, required=True),
        click.option("--target", type=int, default=None, help="Explain this class for every image."),
        click.option("--top-k", type=click.IntRange(min=1), default=None,
                     help="Explain each image's K best classes (one result per class)."),
        click.option("--layer", metavar="NAME", default=None,
                     help="Feature map for the CAM family (default: the last spatial map; see `cnnviz inspect`)."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False), default="cnnviz-out", show_default=True,
                     help="Folder for the PNG overlays, .npy maps and .json records."),
        click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Images read and explained together (memory stays bounded by this); the rows per "
                          "onnxruntime run are chosen by the library."),
        click.option("--recursive", "-r", is_flag=True, help="Also take images from subfolders."),
        click.option("--overwrite", is_flag=True, help="Replace existing results (never done otherwise)."),
        click.option("--resume", is_flag=True, help="Skip results whose .json record already exists."),
        click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                     help="Heat-map opacity in the overlays."),
        click.option("--colormap", default="jet", show_default=True, help="OpenCV colormap of the overlays."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def occlusion_options(f):
    options = [
        click.option("--window", type=SizeType(), default="16x16", show_default=True,
                     help="Occlusion window HxW (or one number)."),
        click.option("--stride", type=SizeType(), default="8x8", show_default=True, help="Occlusion stride HxW."),
        click.option("--baseline", type=BaselineType(), default=0.0, show_default=True,
                     help="Fill value of the occluded window (and the IG baseline), or 'mean' (occlusion only)."),
        click.option("--mode", "occlusion_mode", type=click.Choice(["score", "probability"]), default="score",
                     show_default=True, help="Occlusion map: score drop, or probability with the window occluded."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command("explain")
@run_options
@click.option("--method", "-m", "methods", cls=MethodListOption, type=CsvChoice(registry.names), multiple=True,
              help="Methods, comma-separated or repeated (default gradcam): {methods}.")
@occlusion_options
@click.option("--samples", type=click.IntRange(min=1), default=25, show_default=True, help="SmoothGrad samples.")
@click.option("--noise", type=click.FloatRange(min=0), default=0.15, show_default=True,
              help="SmoothGrad noise (fraction of the image's value range).")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True, help="Integrated-gradients steps.")
@preprocessing_options
@model_options
@global_flags
@click.pass_context
def explain_cmd(ctx, methods, window, stride, baseline, occlusion_mode, samples, noise, steps, **kw):
    """Explain the classification of IMAGES (files, folders, globs) with one or more methods.

    Writes, per image, method and class, into --out: NAME.METHOD.RANK.png (the picture), .npy (the raw map as the
    library returns it) and .json (model, image, class, class name, score, probability, method, parameters).
    RANK is top1 (default), topK with --top-k, or cN with --target N. Pictures over 100 megapixels are refused from
    their header (onnx_cnnviz.image.MAX_PIXELS) and skipped like unreadable ones.
    """
    params = {"window": window, "stride": stride, "baseline": baseline, "mode": occlusion_mode, "samples": samples,
              "noise": noise, "steps": steps}
    run(ctx, flatten_lists(methods) or ["gradcam"], params, **kw)


@click.command("occlusion")
@run_options
@occlusion_options
@preprocessing_options
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


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def run(ctx, methods, params, model, images, target, top_k, layer, out_dir, batch_size, recursive, overwrite, resume,
        alpha, colormap, preprocess, mean, std, size, order, scale, labels, device, input_name, output_name,
        input_size):
    from onnx_cnnviz import __version__, report
    from onnx_cnnviz.image import COLORMAPS, deprocess
    from onnx_cnnviz.image import preprocess as make_input

    if target is not None and top_k is not None:
        raise click.UsageError("--target and --top-k exclude each other; give one.")
    if colormap.lower() not in COLORMAPS:
        raise click.BadParameter(f"unknown colormap {colormap!r}; use one of {', '.join(sorted(COLORMAPS))}.",
                                 param_hint="--colormap")
    out = Path(out_dir)
    paths = collect_images(images, exclude=out)  # before loading the model: a typo fails fast
    m = load_model(model, device, input_name, output_name, input_size)
    pre = resolve_preprocessing(ctx, m, preprocess, mean, std, size, order, scale, input_size)
    names = resolve_labels(m, labels)
    layers = {name: registry.resolved_layer(m, name, layer) for name in methods}
    if target is not None:
        m.targets_for(target, 1)
    k = min(top_k, m.num_classes) if top_k else 1
    ranks = [f"top{r}" for r in range(1, k + 1)] if top_k else ([f"c{target}"] if target is not None else ["top1"])
    method_params = {}
    for name in methods:
        used = registry.parameters(name, params)
        if layers[name]:
            used["layer"] = layers[name]
        method_params[name] = used

    protected = {p.resolve() for p in paths} | {Path(model).resolve()}
    keys = image_keys(paths)

    def files(key, name, rank):
        stem = f"{key}.{name}.{rank}"
        return {"png": out / f"{stem}.png", "npy": out / f"{stem}.npy", "json": out / f"{stem}.json"}

    # What is left to do, per image: the methods with at least one record missing.
    todo, skipped, conflicts = [], [], []
    for i, (path, key) in enumerate(zip(paths, keys)):
        missing = []
        for name in methods:
            outs = [files(key, name, r) for r in ranks]
            for o in outs:
                for f in o.values():
                    if f.resolve() in protected:
                        raise InputError(f"the output {f} would replace an input file; choose another --out.")
            if resume and all(o["json"].exists() for o in outs):
                continue
            if not overwrite and not resume:
                conflicts += [f for o in outs for f in o.values() if f.exists()]
            missing.append(name)
        if missing:
            todo.append((i, missing))
        else:
            skipped.append(str(path))
    if conflicts:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise InputError(f"{conflicts[0]} already exists{more}; pass --overwrite to replace results or --resume to "
                         "skip finished ones.")
    if skipped:
        echo(f"resume: {len(skipped)} image(s) already done, skipped", err=True)

    results, failed = [], []
    model_path = str(Path(model).resolve())
    pre_info = report.preprocessing_info(pre)
    interrupted = False
    done_images = 0
    try:
        with progress(len(todo), "explaining") as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                # Read the batch; an unreadable image is reported and skipped.
                xs, ok = [], []
                for i, missing in chunk:
                    try:
                        xs.append(make_input([paths[i]], preset=pre))
                        ok.append((i, missing))
                    except InputError as exc:
                        failed.append({"image": str(paths[i]), "error": str(exc)})
                        warn(f"skipped: {exc}")
                # Images of one size run together (all of them, unless the preprocessing keeps native sizes).
                groups: dict = {}
                for x, item in zip(xs, ok):
                    groups.setdefault(x.shape, []).append((x, item))
                for group in groups.values():
                    x = np.concatenate([g[0] for g in group])
                    items = [g[1] for g in group]
                    results += _explain_group(m, x, items, methods, params, layer, k, top_k, target, ranks, paths,
                                              keys, files, names, pre, alpha, colormap, overwrite, resume,
                                              None, model_path, pre_info, method_params, deprocess, report,
                                              __version__)
                done_images += len(chunk)
                bar.update(len(chunk))
    except KeyboardInterrupt:
        interrupted = True

    summary = {"model": model_path, "out": str(out.resolve()), "device": m.device, "methods": methods,
               "results": results, "skipped": skipped, "failed": failed, "interrupted": interrupted}
    if settings().json:
        emit_json(summary)
    if interrupted:
        click.echo(f"cnnviz: interrupted after {done_images} of {len(todo)} image(s); the {len(results)} finished "
                   f"result(s) are kept in {out} (run again with --resume to finish)", err=True)
        ctx.exit(130)
    if failed:
        click.echo(f"cnnviz: error: {len(failed)} of {len(paths)} image(s) could not be explained (listed above); "
                   f"the other results are in {out}", err=True)
        ctx.exit(1)
    if not results and not skipped:
        raise InputError("nothing was explained.")
    echo(f"{len(results)} result(s) in {out}", err=True)


def _explain_group(m, x, items, methods, params, layer, k, top_k, target, ranks, paths, keys, files, names, pre,
                   alpha, colormap, overwrite, resume, batch_size, model_path, pre_info, method_params, deprocess, report,
                   version):
    from onnx_cnnviz.report import png_bytes, write_atomic

    scores = m.scores(x, batch_size=batch_size)
    probs = report.probabilities(scores, m.softmax_skipped)
    if top_k:
        classes = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    elif target is not None:
        classes = np.full((len(x), 1), int(target))
    else:
        classes = scores.argmax(axis=1)[:, None]
    views = deprocess(x, preset=pre)
    records = []
    for name in methods:
        meth = registry.get(name)
        sel = [j for j, (_, missing) in enumerate(items) if name in missing]
        if not sel:
            continue
        if meth.class_specific:
            xm = np.repeat(x[sel], k, axis=0)
            raw = registry.explain(m, name, xm, classes[sel].reshape(-1), layer=layer, params=params,
                                 batch_size=batch_size)
            raw = raw.reshape(len(sel), k, *raw.shape[1:])
        else:
            raw = registry.explain(m, name, x[sel], classes[sel][:, 0], layer=layer, params=params,
                                 batch_size=batch_size)
            raw = np.repeat(raw[:, None], k, axis=1)
        for row, j in enumerate(sel):
            i = items[j][0]
            for r in range(k):
                c = int(classes[j, r])
                result = raw[row, r]
                f = files(keys[i], name, ranks[r])
                if resume and not overwrite and f["json"].exists():
                    continue  # finished in an earlier run
                # Under --resume, files without their .json record are leftovers of an interrupted run: replaced.
                replace = overwrite or resume
                pic = report.picture(name, result, views[j], pre.order, alpha=alpha, colormap=colormap)
                write_atomic(f["png"], png_bytes(pic), overwrite=replace)
                write_atomic(f["npy"], _npy_bytes(result), overwrite=replace)
                record = {
                    "model": model_path, "image": str(paths[i].resolve()), "method": name, "title": meth.title,
                    "class": c, "class_name": names[c] if names else None,
                    "rank": r + 1 if top_k or target is None else None,
                    "score": float(scores[j, c]), "probability": float(probs[j, c]),
                    "class_specific": meth.class_specific, "parameters": method_params[name],
                    "preprocessing": pre_info, "device": m.device, "kind": meth.kind,
                    "outputs": {"picture": f["png"].name, "array": f["npy"].name},
                    "array_shape": list(result.shape), "cnnviz_version": version,
                }
                write_atomic(f["json"], json.dumps(record, indent=2, default=_default), overwrite=replace)
                record["json"] = str(f["json"])
                records.append(record)
                label = f" {names[c]}" if names else ""
                echo(f"{paths[i].name}  {name:<14} {c}{label}  p={probs[j, c]:.3f}  -> {f['png']}")
    return records


def _default(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
