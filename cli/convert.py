"""``cnnviz convert``: framework models to ONNX, ready for explanation."""
from __future__ import annotations

from pathlib import Path

import click

from .common import SizeType, check_outputs, finish, global_flags


@click.group("convert")
def convert_group():
    """Convert a framework model to ONNX (dynamic batch, eval mode, preprocessing and labels in the metadata):
    torch (PyTorch) or keras (Keras / TensorFlow via tf2onnx, with the keras extra)."""


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

    check_outputs([out_path], overwrite, [labels, _source_file(source)])
    path = export(source, out_path, input_size=input_size, opset=opset, dynamo=dynamo, weights=weights,
                  preprocessing=preprocess, labels=labels, seed=seed, check=not no_check, overwrite=overwrite)
    finish({"source": source, "out": str(path), "exporter": "dynamo" if dynamo else "torchscript",
            "input_size": list(input_size)},
           f"wrote {path} ({'dynamo' if dynamo else 'TorchScript'} exporter, input {input_size[0]}x{input_size[1]})")


@convert_group.command("keras")
@click.argument("model_path", metavar="MODEL.keras", type=click.Path())
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="The .onnx file to write.")
@click.option("--input-size", type=SizeType(), default=None,
              help="HxW to fix for a model built for any size (default: the model's own input size).")
@click.option("--opset", type=click.IntRange(7, 23), default=17, show_default=True, help="ONNX opset for tf2onnx.")
@click.option("--channels-first", is_flag=True,
              help="The Keras model already takes (N, C, H, W) input. Default: its input is (N, H, W, C) and the "
                   "ONNX input becomes (N, C, H, W) (a Transpose in front of the graph).")
@click.option("--preprocess", type=click.Choice(["imagenet", "caffe", "tf", "none"]), default=None,
              help="Preprocessing to record in the metadata (tf: x/127.5 - 1, imagenet = Keras's torch mode). "
                   "Default: none recorded.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None, help="Class names file to record.")
@click.option("--no-check", is_flag=True, help="Skip the onnxruntime-vs-Keras comparison.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@global_flags
def convert_keras(model_path, out_path, input_size, opset, channels_first, preprocess, labels, no_check, overwrite):
    """Convert a Keras classifier saved as .keras or .h5 with tf2onnx (needs the keras extra:
    pip install 'onnx-cnnviz[keras]').

    The ONNX input is NCHW with a dynamic batch, and the conversion is checked against Keras on a random batch.
    The final softmax stays in the graph; explanations use the score before it.
    """
    from onnx_cnnviz.converters.keras import export, import_tensorflow

    import_tensorflow()  # the missing-extra message before anything else
    check_outputs([out_path], overwrite, [model_path, labels])
    path = export(model_path, out_path, input_size=input_size, opset=opset, channels_last_input=not channels_first,
                  preprocess=preprocess, labels=labels, check=not no_check, overwrite=overwrite)
    layout = "NCHW input" if channels_first else "NHWC input transposed to NCHW"
    finish({"source": str(model_path), "out": str(path), "converter": "tf2onnx",
            "input_layout": "NCHW" if channels_first else "NHWC", "opset": opset,
            "input_size": list(input_size) if input_size else None},
           f"wrote {path} (tf2onnx, {layout})")


def _source_file(source: str) -> str | None:
    """The Python file of a FILE.py:ATTR source (the file the export reads), else None."""
    file, colon, _ = source.rpartition(":")
    return file if colon and file.endswith(".py") and Path(file).is_file() else None
