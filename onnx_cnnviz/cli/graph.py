"""``cnnviz export-graph``: save the rewritten graph (feature maps + gradients as outputs) for any ONNX runtime."""
from __future__ import annotations

import click

from onnx_cnnviz.graph.autodiff.rules import RULE_SETS
from onnx_cnnviz.errors import CnnvizError, ModelStructureError

from .common import (
    abspath,
    check_outputs,
    finish,
    global_flags,
    layer_option,
    load_model,
    model_options,
    out_model_option,
    overwrite_option,
)


@click.command("export-graph")
@click.argument("model", type=click.Path())
@layer_option("Feature map to expose with its gradient (repeatable; default: the default layer).", multiple=True,
              dest="layers")
@click.option("--rule", type=click.Choice(list(RULE_SETS)), default="vanilla", show_default=True,
              help="How ReLUs pass the gradient back.")
@click.option("--no-input-grad", is_flag=True, help="Do not add the gradient with respect to the image.")
@click.option("--target-mode", type=click.Choice(["input", "top1"]), default="input", show_default=True,
              help="input: the graph takes a (N, K) 'cnnviz/seed' input (one-hot rows pick the class); top1: the "
                   "gradient is of each image's best class (and 'cnnviz/target' is an output).")
@out_model_option
@overwrite_option
@model_options
@global_flags
def export_graph_cmd(model, layers, rule, no_input_grad, target_mode, out_path, overwrite, device, input_name,
                     output_name, input_size, max_nodes):
    """Save MODEL rewritten for explanation: outputs are the class scores, the --layer feature maps, and the
    gradients of the class score with respect to them (and to the image), named 'cnnviz/grad/TENSOR'.

    The file holds standard ONNX operators only: serve it with any onnxruntime. With --target-mode input, feed
    'cnnviz/seed' with one-hot rows of the classes to explain.
    \f
    The text above is ``cnnviz export-graph --help``; click stops at the form feed. The graph is
    :meth:`onnx_cnnviz.Model.build_graph`, checked by ``onnx.checker`` before it is written atomically.

    Args:
        model: MODEL: the ONNX file to rewrite.
        layers: ``--layer`` (repeatable): the feature maps to expose with their gradients (empty: the default
            layer).
        rule: ``--rule``: the rule set, vanilla, guided or deconvnet (how rectifiers pass the gradient back).
        no_input_grad: ``--no-input-grad``: leave out the gradient with respect to the image.
        target_mode: ``--target-mode``: ``input`` (the graph takes a one-hot ``cnnviz/seed``) or ``top1`` (each
            image's best class, seeded inside the graph).
        out_path: ``--out``: the ONNX file to write.
        overwrite: ``--overwrite``: replace ``out_path`` if it exists.
        device: ``--device``: auto, cpu, cuda or openvino (where onnxruntime runs the model).
        input_name: ``--input``: the image input, when the model has several (None: the only one).
        output_name: ``--output``: the class-score output, when the model has several (None: chosen from the
            graph).
        input_size: ``--input-size``: (H, W) for a model that takes any size (None: its metadata, else 224x224).
        max_nodes: ``--max-nodes``: the largest node count accepted, counted before the weights are read (None: no
            limit).

    Raises:
        onnx_cnnviz.errors.InputError: ``out_path`` exists without ``--overwrite``, or names an input.
        onnx_cnnviz.errors.CnnvizError: the model cannot be loaded or a layer is unknown.
    """
    import onnx

    from onnx_cnnviz.report import write_atomic

    check_outputs([out_path], overwrite, [model])
    m = load_model(model, device, input_name, output_name, input_size, max_nodes=max_nodes)
    names = [m.layer(name).name for name in layers] if layers else ([m.default_layer] if m.default_layer else [])
    wrt = tuple(names) + (() if no_input_grad else (m.input_name,))
    graph = m.build_graph(outputs=tuple(names), wrt=wrt, rule=rule, target_mode=target_mode)
    _declare_shapes(graph, m)
    try:
        onnx.checker.check_model(graph)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelStructureError(f"the rewritten graph of {model} fails onnx's checker ({first}); check the model "
                                  "file itself with onnx.checker.check_model, and report it if the file passes.") from e
    write_atomic(out_path, graph.SerializeToString(), overwrite=overwrite)
    info = {"model": abspath(model), "out": abspath(out_path), "rule": rule, "target_mode": target_mode,
            "inputs": [{"name": v.name, "shape": _shape(v)} for v in graph.graph.input],
            "outputs": [{"name": v.name, "shape": _shape(v)} for v in graph.graph.output]}
    lines = [f"wrote {out_path} ({rule} rule, target mode {target_mode})"]
    lines += [f"  {kind[:-1]:<6} {v['name']}  {v['shape']}" for kind in ("inputs", "outputs") for v in info[kind]]
    finish(info, "\n".join(lines))


def _declare_shapes(graph, m) -> None:
    """Give every graph input and output that declares no shape the shape the model measured (the batch as "N"):
    onnx's checker requires one on a main graph's inputs and outputs, and a file whose own output declares none runs
    in onnxruntime all the same. A gradient output ``cnnviz/grad/T`` has the shape of ``T``."""
    for v in list(graph.graph.input) + list(graph.graph.output):
        tensor = v.type.tensor_type
        if not v.type.HasField("tensor_type") or tensor.HasField("shape"):
            continue
        try:
            shape = m.tensor_shape(v.name.rsplit("cnnviz/grad/", 1)[-1])
        except CnnvizError:
            continue
        tensor.shape.SetInParent()
        for size in shape:
            dim = tensor.shape.dim.add()
            if size is None:
                dim.dim_param = "N"
            else:
                dim.dim_value = int(size)


def _shape(v):
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in v.type.tensor_type.shape.dim]
