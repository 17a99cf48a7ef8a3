"""``cnnviz inspect MODEL``: what the tool sees in a model."""
from __future__ import annotations

from pathlib import Path

import click

from onnx_cnnviz.errors import InputError

from .common import (abspath, choose_preprocessing, emit_json, global_flags, labels_option, load_model,
                     model_options, preprocessing_options, resolve_labels, settings)


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=True))
@model_options
@preprocessing_options
@labels_option()
@click.option("--all-layers/--short", default=False, help="List every candidate layer (default: the last 12).")
@click.option("--classes", "list_classes", is_flag=True,
              help="List the class names (index and name), from --labels or the model's metadata.")
@global_flags
def inspect_cmd(model, device, input_name, output_name, input_size, max_nodes, preprocess, mean, std, size, order,
                scale, labels, all_layers, list_classes):
    """Inputs, outputs, the class-score tensor (and whether a final Softmax was skipped), the preprocessing the
    other commands would use and where it comes from (the model's metadata, the flags, or the assumed default),
    candidate layers with their shapes, the default layer, op types, and whether every op on the gradient path has a
    backward rule. With --classes, the class names too."""
    from onnx_cnnviz.report import describe, preprocessing_info

    m = load_model(model, device, input_name, output_name, input_size, max_nodes=max_nodes)
    info = describe(m, model)
    info["score_choice"] = score_choice_info(m, output_name)
    info["model"] = abspath(model)
    info["device"] = m.device
    try:
        choice = choose_preprocessing(m, preprocess, mean, std, size, order, scale, input_size)
        info["preprocessing_used"] = {"source": choice.source, "preset": choice.preset, "flags": list(choice.flags),
                                      "settings": preprocessing_info(choice.preprocessing),
                                      "description": choice.describe()}
    except InputError as exc:  # a model that does not take 3-channel pictures
        choice = None
        info["preprocessing_used"] = {"source": None, "error": str(exc)}
    names = resolve_labels(m, labels)
    if list_classes:
        if not names:
            raise InputError(f"{Path(model).name} holds no class names in its metadata ('cnnviz.labels'); give them "
                             "with --labels FILE (one name per line).")
        info["classes"] = [{"index": i, "name": name} for i, name in enumerate(names)]
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
    if choice is not None:
        used = info["preprocessing_used"]["settings"]
        out("preprocess   " + ", ".join(f"{k}={_value(v)}" for k, v in used.items()))
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


def score_choice_info(m, output_name) -> dict:
    """Which output holds the class scores and why (:func:`onnx_cnnviz.graph.head.choose_score` on the model's
    normalised graph, which keeps every output): the chosen output, the reason, and each output's role."""
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
