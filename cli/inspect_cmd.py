"""``cnnviz inspect MODEL``: what the tool sees in a model."""
from __future__ import annotations

import click

from .common import emit_json, global_flags, load_model, model_options, settings


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=True))
@model_options
@click.option("--all-layers/--short", default=False, help="List every candidate layer (default: the last 12).")
@global_flags
def inspect_cmd(model, device, input_name, output_name, input_size, max_nodes, all_layers):
    """Inputs, outputs, the class-score tensor (and whether a final Softmax was skipped), candidate layers with
    their shapes, the default layer, op types, and whether every op on the gradient path has a backward rule."""
    from onnx_cnnviz.report import describe

    m = load_model(model, device, input_name, output_name, input_size, max_nodes=max_nodes)
    info = describe(m, model)
    info["device"] = m.device
    if settings().json:
        emit_json(info)
        return
    out = click.echo
    out(f"model        {model}  (IR {info['ir_version']}, opset {info['opset']}"
        + (f", {info['producer']}" if info["producer"] else "") + ")")
    for v in info["inputs"]:
        mark = "  <- image" if v["name"] == info["image_input"] else ""
        out(f"input        {v['name']}  {v['dtype']} {_dims(v['shape'])}{mark}")
    for v in info["outputs"]:
        out(f"output       {v['name']}  {v['dtype']} {_dims(v['shape'])}")
    score = info["score"]
    skipped = f" (input of the final {score['softmax_skipped']}, which is skipped)" if score["softmax_skipped"] \
        else ""
    out(f"score        {score['tensor']}{skipped}, {info['num_classes']} classes")
    if info["static_batch"]:
        out("batch        the graph hard-codes batch 1: images run one at a time")
    pre = info["preprocessing"]
    out("preprocess   " + (", ".join(f"{k}={v}" for k, v in pre.items()) if pre else
                           "not in the metadata (give --preprocess when explaining)"))
    out("labels       " + (f"{info['labels']} class names in the metadata" if info["labels"] else
                           "none in the metadata (give --labels FILE)"))
    layers = info["layers"]
    shown = layers if all_layers or len(layers) <= 12 else layers[-12:]
    out(f"layers       {len(layers)} candidate feature maps" +
        ("" if shown is layers else f" (last {len(shown)}; --all-layers for all)") + ":")
    width = max((len(layer["name"]) for layer in shown), default=0)
    for layer in shown:
        mark = "  <- default" if layer["name"] == info["default_layer"] else ""
        out(f"  {layer['name']:<{width}}  {_dims(layer['shape']):<20} {layer['op_type']}{mark}")
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


def _dims(shape) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
