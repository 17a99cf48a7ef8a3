"""``cnnviz inspect MODEL``: what the tool sees in a model."""
from __future__ import annotations

from pathlib import Path

import click

from onnx_cnnviz.errors import InputError

from .common import (abspath, choose_preprocessing, emit_json, global_flags, labels_option, load_model,
                     model_options, preprocessing_options, progress, resolve_labels, settings, warn)

#: How the check's warning names the preprocessing it judged, by where that preprocessing came from.
JUDGED = {"metadata": "the model's declared preprocessing", "flags": "the preprocessing the flags give",
          "assumed": "the assumed preprocessing", "model": "raw pixels"}


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=True))
@model_options
@preprocessing_options
@labels_option()
@click.option("--all-layers/--short", default=False, help="List every candidate layer (default: the last 12).")
@click.option("--classes", "list_classes", is_flag=True,
              help="List the class names (index and name), from --labels or the model's metadata.")
@click.option("--check-preprocessing", "check_folder", type=click.Path(), default=None, metavar="FOLDER",
              help="Score candidate preprocessings (imagenet, caffe, tflite, tf, raw, none, their channel swaps, "
                   "and the one the other commands would use) on the pictures of FOLDER and say which one the "
                   "weights fit. Labels: FOLDER/labels.csv (file,class_index), class sub-folders, or --check-labels; "
                   "without labels, the information of the predictions stands in for accuracy.")
@click.option("--check-labels", type=click.Path(dir_okay=False), default=None, metavar="CSV",
              help="The labels of --check-preprocessing's pictures: a CSV of file,class_index rows (a class name "
                   "works too). Default: FOLDER/labels.csv, else class sub-folders, else none.")
@click.option("--check-images", type=click.IntRange(min=1), default=500, show_default=True,
              help="Score at most this many pictures of --check-preprocessing (an even subsample).")
@global_flags
def inspect_cmd(model, device, input_name, output_name, input_size, max_nodes, preprocess, mean, std, size, order,
                scale, labels, all_layers, list_classes, check_folder, check_labels, check_images):
    """Inputs, outputs, the class-score tensor (and whether a final Softmax was skipped), what each loading pass
    changed, the preprocessing the other commands would use and where it comes from (the model's metadata, the
    flags, or the assumed default), candidate layers with their shapes, the default layer, op types, and whether
    every op on the gradient path has a backward rule. With --classes, the class names too. With
    --check-preprocessing FOLDER, which preprocessing the weights fit, with numbers, and a warning when the one in
    use is clearly not it.
    \f
    The text above is ``cnnviz inspect --help``; click stops at the form feed, so what follows is for the API
    reference only. The description is printed on stdout (one JSON document with ``--json``).

    Args:
        model: MODEL: the ONNX file.
        device: ``--device``: auto, cpu, cuda or openvino (where onnxruntime runs the model).
        input_name: ``--input``: the image input, when the model has several (None: the only one).
        output_name: ``--output``: the class-score output, when the model has several (None: chosen from the
            graph).
        input_size: ``--input-size``: (H, W) for a model that takes any size (None: its metadata, else 224x224).
        max_nodes: ``--max-nodes``: the largest node count accepted, counted before the weights are read (None: no
            limit).
        preprocess: ``--preprocess``: a preset name, or None for the model's metadata (else imagenet, warned).
        mean: ``--mean``: per-channel mean, in the model's channel order and scale (None: the preset's).
        std: ``--std``: per-channel std (None: the preset's).
        size: ``--size``: (H, W) the pictures are resized to (None: the model's or the preset's).
        order: ``--order``: RGB or BGR, the channel order the model expects (None: the metadata's, else RGB).
        scale: ``--scale``: the pixel scale applied before the mean (None: the preset's).
        labels: ``--labels``: a text file of class names, one per line (None: the model's metadata).
        all_layers: ``--all-layers``: list every candidate layer (False: the last 12).
        list_classes: ``--classes``: list the class names with their indices.
        check_folder: ``--check-preprocessing``: a folder of pictures to score the candidate preprocessings on
            (None: no check).
        check_labels: ``--check-labels``: a CSV of ``file,class_index`` rows for those pictures (None: the folder's
            labels.csv, else its class sub-folders, else none).
        check_images: ``--check-images``: score at most this many pictures (an even subsample).

    Raises:
        click.UsageError: ``--check-labels`` or ``--check-images`` without ``--check-preprocessing``.
        onnx_cnnviz.errors.CnnvizError: the model or a label file cannot be read (the group prints the one-line
            cause and exits with 1).
    """
    from onnx_cnnviz.report import describe, preprocessing_info

    if (check_labels or check_images != 500) and not check_folder:
        raise click.UsageError("--check-labels and --check-images go with --check-preprocessing FOLDER.")
    m = load_model(model, device, input_name, output_name, input_size, max_nodes=max_nodes)
    info = describe(m, model)
    info["score_choice"] = score_choice_info(m, output_name)
    info["loading"] = [record.to_dict() for record in m.load_passes]
    info["model"] = abspath(model)
    info["device"] = m.device
    info["provider"] = m.providers[0] if isinstance(m.providers[0], str) else m.providers[0][0]
    try:
        choice = choose_preprocessing(m, preprocess, mean, std, size, order, scale, input_size)
        pre = choice.preprocessing
        info["preprocessing_used"] = {"source": choice.source, "preset": choice.preset, "flags": list(choice.flags),
                                      "settings": {**preprocessing_info(pre), "resize": pre.resize,
                                                   "crop_fraction": pre.crop_fraction},
                                      "description": choice.describe(), "text": pre.describe()}
    except InputError as exc:  # a model that does not take 3-channel pictures
        choice = None
        info["preprocessing_used"] = {"source": None, "error": str(exc)}
    names = resolve_labels(m, labels)
    if list_classes:
        if not names:
            raise InputError(f"{Path(model).name} holds no class names in its metadata ('cnnviz.labels'); give them "
                             "with --labels FILE (one name per line).")
        info["classes"] = [{"index": i, "name": name} for i, name in enumerate(names)]
    check = None
    if check_folder:
        check = run_check(m, check_folder, check_labels, check_images, choice)
        info["preprocessing_check"] = check.to_dict()
    if settings().json:
        emit_json(info)
        return
    out = click.echo
    out(f"model        {model}  (IR {info['ir_version']}, opset {info['opset']}"
        + (f", {info['producer']}" if info["producer"] else "") + ")")
    for v in info["inputs"]:
        mark = "  <- image" if v["name"] == info["image_input"] else ""
        out(f"input        {v['name']}  {v['dtype']} {_dims(v['shape'])}{mark}")
    adapted = [what for what, plain in ((info["image_layout"], "NCHW"), (info["image_dtype"], "float32"))
               if what != plain]
    if adapted:
        out(f"             {' '.join(adapted)} image: give (N, C, H, W) "
            f"{'pixel values' if info['image_dtype'] != 'float32' else 'float arrays'}; the engine puts a Transpose "
            "in front of the graph"
            if info["image_layout"] == "NHWC" else
            f"             {' '.join(adapted)} image: give (N, C, H, W) pixel values (float or integer)")
    for v in info["outputs"]:
        out(f"output       {v['name']}  {v['dtype']} {_dims(v['shape'])}")
    score = info["score"]
    skipped = f" (input of the final {score['softmax_skipped']}, which is skipped)" if score["softmax_skipped"] \
        else ""
    out(f"score        {score['tensor']}{skipped}, {info['num_classes']} classes")
    picked = info["score_choice"]
    if len(picked["outputs"]) > 1:
        out(f"             from {picked['output']} ({picked['summary']}): {picked['reason']}")
    if info["static_batch"]:
        out("batch        the graph hard-codes batch 1: images run one at a time")
    out(f"device       {info['device']} (onnxruntime's {info['provider']})")
    print_loading(info["loading"], out)
    if choice is not None:
        used = info["preprocessing_used"]["settings"]
        out("preprocess   " + ", ".join(f"{k}={_value(v)}" for k, v in used.items()))
        out(f"             {choice.preprocessing.describe()}")
        out(f"             {choice.describe()}")
    else:
        out(f"preprocess   not applicable: {info['preprocessing_used']['error']}")
    source = f"from {labels}" if labels else "in the metadata"
    out("labels       " + (f"{len(names)} class names {source}" + ("" if list_classes else " (--classes lists them)")
                           if names else "none in the metadata (give --labels FILE)"))
    layers = info["layers"]
    shown = layers if all_layers or len(layers) <= 12 else layers[-12:]
    out(f"layers       {len(layers)} candidate feature maps" +
        ("" if shown is layers else f" (last {len(shown)}; --all-layers for all)") + ":")
    width = max((len(layer["name"]) for layer in shown), default=0)
    for layer in shown:
        mark = "  <- default" if layer["name"] == info["default_layer"] else ""
        out(f"  {layer['name']:<{width}}  {_dims(layer['shape']):<20} {layer['op_type']}{_view(layer['view'])}{mark}")
    out(f"default      {info['default_layer']}")
    out("op types     " + ", ".join(f"{k} x{v}" for k, v in info["op_types"].items()))
    grad = info["gradient_path"]
    if grad["ok"]:
        out(f"gradients    ok: every op on the path image -> score has a backward rule "
            f"({', '.join(grad['ops'])})")
    else:
        missing = f"no rule for {', '.join(grad['missing_rules'])}" if grad["missing_rules"] else ""
        out("gradients    NOT available: " + "; ".join(x for x in (missing, grad["error"]) if x))
        out("             (CAM, EigenCAM, Score-CAM and occlusion still work: they need no gradient)")
    if list_classes:
        out(f"classes      {len(names)}:")
        for i, name in enumerate(names):
            out(f"  {i:>{len(str(len(names) - 1))}}  {name}")
    if check is not None:
        print_check(check, out)


def print_loading(passes: list[dict], out) -> None:
    """Print the loading passes in the order they ran, each with what it found or changed (``*``: it changed the
    graph the engine runs, compared with the file).

    Args:
        passes: the passes' records as dicts (``pass``, ``changed``, ``summary``), from ``Model.load_passes``.
        out: prints one line.
    """
    changed = sum(1 for p in passes if p["changed"])
    out(f"loading      {len(passes)} passes, {changed} changed the graph (*):")
    width = max((len(p["pass"]) for p in passes), default=0)
    for p in passes:
        out(f"  {'*' if p['changed'] else ' '} {p['pass']:<{width}}  {p['summary']}")


def run_check(m, folder, labels, max_images, choice):
    """:func:`~onnx_cnnviz.preprocessing_check.check_preprocessing` with a progress bar, judging the preprocessing
    the other commands would use (``choice``); its warning goes through :func:`warn`.

    Args:
        m: the loaded model.
        folder: the folder of pictures to score.
        labels: a CSV of ``file,class_index`` rows, or None (the folder's labels.csv or class sub-folders).
        max_images: score at most this many pictures.
        choice: the preprocessing the other commands would use and where it comes from, or None when none can be
            chosen.

    Returns:
        The check (rows, resize comparison, verdict and warning).
    """
    from onnx_cnnviz.preprocessing_check import check_preprocessing

    with progress(1, "checking preprocessing", unit="candidates") as bar:
        def report(done: int, total: int) -> None:
            bar.total, bar.done = total, done
            bar.draw(force=done == total)
        check = check_preprocessing(m, folder, labels=labels, declared=choice.preprocessing if choice else None,
                                    max_images=max_images, progress=report, warn=False,
                                    declared_as=JUDGED.get(choice.source if choice else None,
                                                           "the preprocessing in use"))
    if check.warning:
        warn(check.warning)
    return check


def print_check(check, out) -> None:
    """Print the check's rows, best first, its resize comparison, and what to pass to use the best preprocessing.

    Args:
        check: the result of :func:`run_check`.
        out: prints one line.
    """
    from onnx_cnnviz.image import PRESETS

    source = f"labels from {check.labels_source}" if check.labelled else \
        "no labels (information H(mean p) - mean H(p) in nats stands in for accuracy)"
    out(f"check        {check.images} pictures, {source}:")
    for line in check.table():
        out(f"  {line}")
    for row in check.resize_rows:
        score = f"top-1 {row.top1:.0%}" if check.labelled else f"information {row.information:.2f}"
        out(f"  resize {row.preprocessing.resize:<7} {score}  ({row.preprocessing.describe_resize()})")
    out(f"verdict      {check.summary()}")
    best = check.best
    if not best.declared:
        if best.name in PRESETS:
            out(f"             use --preprocess {best.name}" +
                (" (or record it with `cnnviz convert`)" if check.declared is None else ""))
        else:
            pre = best.preprocessing
            # No preset is this one: its fields (--mean 0 and --std 1 drop the base preset's mean and std).
            fields = [f"--{k} {','.join(f'{x:g}' for x in v) if v else default}"
                      for k, v, default in (("mean", pre.mean, "0"), ("std", pre.std, "1"))]
            out(f"             use --preprocess raw {' '.join(fields)} --order {pre.order} --scale {pre.scale:g}")
    for line in check.skipped:
        out(f"  skipped {line}")


def score_choice_info(m, output_name) -> dict:
    """Which output holds the class scores and why (:func:`onnx_cnnviz.graph.head.choose_score` on the model's
    normalised graph, which keeps every output).

    Args:
        m: the loaded model.
        output_name: the ``--output`` given, or None.

    Returns:
        The chosen output, the reason, a one-line summary, and each output's role (name, kind, what it is computed
        from and its expression).
    """
    from onnx_cnnviz.graph.head import choose_score

    choice = choose_score(m.spec().model, output_name)
    return {"output": choice.output, "reason": choice.reason, "summary": choice.summary(),
            "outputs": [{"name": r.name, "kind": r.kind, "computed_from": r.source if r.from_output else None,
                         "expression": r.describe()} for r in choice.outputs]}


def _view(view) -> str:
    """How the model holds a layer shown as (N, C, h, w): channels-last, or tokens (prefix + the patch grid)."""
    if view is None:
        return ""
    if view["kind"] == "tokens":
        h, w = view["grid"]
        prefix = f"{view['prefix_tokens']} + " if view["prefix_tokens"] else ""
        return f"  (tokens {_dims(view['native_shape'])}: {prefix}{h}x{w})"
    return f"  ({view['kind']} {_dims(view['native_shape'])})"


def _value(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _dims(shape) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
