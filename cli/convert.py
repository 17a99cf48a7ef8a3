"""``cnnviz convert``: framework models to ONNX, ready for explanation."""
from __future__ import annotations

import click

from .common import SizeType, echo, emit_json, global_flags, settings


@click.group("convert")
def convert_group():
    """Convert a framework model to ONNX (dynamic batch, eval mode, preprocessing and labels in the metadata)."""


@convert_group.command("torch")
@click.argument("source", metavar="NAME_OR_PY:ATTR")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="The .onnx file to write.")
@click.option("--input-size", type=SizeType(), default="224x224", show_default=True, help="Example input size HxW.")
@click.option("--opset", type=click.IntRange(7, 23), default=17, show_default=True,
              help="ONNX opset (the dynamo exporter writes 18 at least).")
@click.option("--dynamo", is_flag=True, help="Use the torch.export-based exporter (needs onnxscript).")
@click.option("--weights", default=None,
              help="torchvision weights enum name (e.g. IMAGENET1K_V1, DEFAULT); downloaded on first use, so it "
                   "needs the network. Default: random weights.")
@click.option("--preprocess", type=click.Choice(["imagenet", "caffe", "none"]), default=None,
              help="Preprocessing to record in the metadata (default: the weights' own; none for random weights).")
@click.option("--labels", type=click.Path(dir_okay=False), default=None, help="Class names file to record.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--no-check", is_flag=True, help="Skip the onnxruntime-vs-torch comparison.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@global_flags
def convert_torch(source, out_path, input_size, opset, dynamo, weights, preprocess, labels, seed, no_check,
                  overwrite):
    """Export a PyTorch classifier: a torchvision model name (resnet18), timm:NAME, FILE.py:ATTR or
    package.module:ATTR (ATTR: a module, a module class or a function returning one).

    The export is checked against torch on a random batch, in-place activations are made out-of-place and the
    batch dimension is dynamic.
    """
    from onnx_cnnviz.converters.torch import export

    path = export(source, out_path, input_size=input_size, opset=opset, dynamo=dynamo, weights=weights,
                  preprocessing=preprocess, labels=labels, seed=seed, check=not no_check, overwrite=overwrite)
    if settings().json:
        emit_json({"source": source, "out": str(path), "exporter": "dynamo" if dynamo else "torchscript",
                   "input_size": list(input_size)})
        return
    echo(f"wrote {path} ({'dynamo' if dynamo else 'TorchScript'} exporter, input {input_size[0]}x{input_size[1]})")
