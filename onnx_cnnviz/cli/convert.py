"""``cnnviz convert``: framework models to ONNX, ready for explanation."""
from __future__ import annotations

from pathlib import Path

import click

from onnx_cnnviz.errors import InputError

from .common import (
    abspath,
    check_outputs,
    finish,
    global_flags,
    input_size_option,
    labels_option,
    no_check_option,
    opset_option,
    out_model_option,
    overwrite_option,
    preprocess_option,
    preset,
    seed_option,
)


@click.group("convert")
def convert_group():
    """Convert a framework model to ONNX (dynamic batch, eval mode, preprocessing and labels in the metadata):
    torch (PyTorch) or keras (Keras / TensorFlow via tf2onnx, with the keras extra).
    \f
    The group itself does nothing; ``cnnviz convert torch`` and ``cnnviz convert keras`` do the work.
    """


@convert_group.command("torch")
@click.argument("source", metavar="NAME_OR_PY:ATTR")
@out_model_option
@input_size_option("the size it is exported at (the exported graph fixes H and W).", "224x224")
@opset_option("(the dynamo exporter writes 18 at least).")
@click.option("--dynamo", is_flag=True, help="Use the torch.export-based exporter (needs onnxscript).")
@click.option("--weights", default=None,
              help="torchvision weights enum name (e.g. IMAGENET1K_V1; default: the architecture's DEFAULT ones), "
                   "read from torch's hub cache ($TORCH_HOME/hub/checkpoints): nothing is downloaded.")
@click.option("--random-weights", is_flag=True,
              help="Export a torchvision / timm architecture with random weights (fixed by --seed) instead of its "
                   "pretrained ones.")
@preprocess_option("Recorded in the metadata (default: the pretrained weights' own; none for random weights).")
@labels_option("Recorded in the metadata (default: the pretrained weights' categories).")
@seed_option("(of the random weights).")
@no_check_option("(torch).")
@overwrite_option
@global_flags
def convert_torch(source, out_path, input_size, opset, dynamo, weights, random_weights, preprocess, labels, seed,
                  no_check, overwrite):
    """Export a PyTorch classifier: a torchvision model name (resnet18), timm:NAME, FILE.py:ATTR or
    package.module:ATTR (ATTR: a module, a module class or a function returning one).

    A name gets its pretrained weights (and their class names and preprocessing, recorded in the metadata) from the
    local cache only: when the file is not there the command says where to put it; --random-weights exports the
    architecture with random weights. The export is checked against torch on a random batch, in-place activations
    are made out-of-place and the batch dimension is dynamic.
    \f
    The text above is ``cnnviz convert torch --help``; click stops at the form feed. The work is
    :func:`onnx_cnnviz.converters.torch.export`.

    Args:
        source: NAME_OR_PY:ATTR: a torchvision name, ``timm:NAME``, ``FILE.py:ATTR`` or ``package.module:ATTR``.
        out_path: ``--out``: the ONNX file to write.
        input_size: ``--input-size``: the (H, W) the model is exported at.
        opset: ``--opset``: the ONNX opset to write.
        dynamo: ``--dynamo``: use torch's dynamo exporter instead of the TorchScript one.
        weights: ``--weights``: a torchvision weights enum name (None: the architecture's default weights).
        random_weights: ``--random-weights``: export the architecture with random weights (seeded by ``seed``).
        preprocess: ``--preprocess``: the preprocessing preset recorded in the metadata (None: the weights' own).
        labels: ``--labels``: a text file of class names recorded in the metadata (None: the weights' categories).
        seed: ``--seed``: the seed of the random weights.
        no_check: ``--no-check``: skip the comparison with torch on a random batch.
        overwrite: ``--overwrite``: replace ``out_path`` if it exists.

    Raises:
        click.UsageError: ``--weights`` with ``--random-weights``.
        onnx_cnnviz.errors.CnnvizError: torch is missing, the weights are not in the local cache, the export fails
            or differs from torch, or ``out_path`` would replace an input or exists without ``--overwrite``.
    """
    from onnx_cnnviz.converters.torch import export, import_torch

    if weights is not None and random_weights:
        raise click.UsageError("--weights and --random-weights exclude each other; give one.")
    import_torch()  # the install hint before anything else
    check_outputs([out_path], overwrite, [labels, _source_file(source)])
    recorded = preset(preprocess) if preprocess == "tf" else preprocess
    path = export(source, out_path, input_size=input_size, opset=opset, dynamo=dynamo, weights=weights,
                  random_weights=random_weights, preprocessing=recorded, labels=labels, seed=seed,
                  check=not no_check, overwrite=overwrite)
    meta = _metadata(path)
    used = _weights_of(meta.get("cnnviz.source", ""))
    classes = len(meta["cnnviz.labels"].splitlines()) if meta.get("cnnviz.labels") else 0
    finish({"source": source, "out": abspath(path), "exporter": "dynamo" if dynamo else "torchscript",
            "input_size": list(input_size), "weights": used, "labels": classes or None,
            "preprocessing_recorded": any(k.startswith("cnnviz.preprocess.") for k in meta)},
           f"wrote {path} ({'dynamo' if dynamo else 'TorchScript'} exporter, input {input_size[0]}x{input_size[1]}"
           + (f", {used}" if used else "") + (f", {classes} class names" if classes else "") + ")")


@convert_group.command("keras")
@click.argument("model_path", metavar="MODEL.keras", type=click.Path())
@out_model_option
@input_size_option("to fix for a model built for any size (default: the model's own input size).", None)
@opset_option("(for tf2onnx).")
@click.option("--channels-first", is_flag=True,
              help="The Keras model already takes (N, C, H, W) input. Default: its input is (N, H, W, C) and the "
                   "ONNX input becomes (N, C, H, W) (a Transpose in front of the graph).")
@click.option("--keep-nhwc", is_flag=True,
              help="Keep the (N, H, W, C) input, as plain tf2onnx writes it (what deployed TensorFlow models look "
                   "like); cnnviz reads the layout from the graph and still takes NCHW arrays.")
@preprocess_option("Recorded in the metadata (imagenet = Keras's torch mode; default: none recorded).")
@labels_option("Recorded in the metadata.")
@no_check_option("(Keras).")
@overwrite_option
@global_flags
def convert_keras(model_path, out_path, input_size, opset, channels_first, keep_nhwc, preprocess, labels, no_check,
                  overwrite):
    """Convert a Keras classifier saved as .keras or .h5 with tf2onnx (needs the keras extra:
    pip install 'onnx-cnnviz[keras]').

    The ONNX input is NCHW (NHWC with --keep-nhwc) with a dynamic batch, and the conversion is checked against Keras
    on a random batch.
    The final softmax stays in the graph; explanations use the score before it.
    \f
    The text above is ``cnnviz convert keras --help``; click stops at the form feed. The work is
    :func:`onnx_cnnviz.converters.keras.export`.

    Args:
        model_path: MODEL.keras: the saved Keras model (.keras or .h5).
        out_path: ``--out``: the ONNX file to write.
        input_size: ``--input-size``: the (H, W) to fix for a model built for any size (None: its own).
        opset: ``--opset``: the ONNX opset tf2onnx writes.
        channels_first: ``--channels-first``: the Keras model already takes (N, C, H, W).
        keep_nhwc: ``--keep-nhwc``: keep the (N, H, W, C) input as tf2onnx writes it.
        preprocess: ``--preprocess``: the preprocessing preset recorded in the metadata (None: none recorded).
        labels: ``--labels``: a text file of class names recorded in the metadata.
        no_check: ``--no-check``: skip the comparison with Keras on a random batch.
        overwrite: ``--overwrite``: replace ``out_path`` if it exists.

    Raises:
        onnx_cnnviz.errors.InputError: ``--keep-nhwc`` with ``--channels-first``, or ``out_path`` would replace an
            input or exists without ``--overwrite``.
        onnx_cnnviz.errors.CnnvizError: TensorFlow or tf2onnx is missing (the keras extra), or the conversion fails
            or differs from Keras.
    """
    from onnx_cnnviz.converters.keras import export, import_tensorflow

    import_tensorflow()  # the missing-extra message before anything else
    if channels_first and keep_nhwc:
        raise InputError("--keep-nhwc keeps a channels-last input; it cannot be combined with --channels-first.")
    check_outputs([out_path], overwrite, [model_path, labels])
    path = export(model_path, out_path, input_size=input_size, opset=opset, channels_last_input=not channels_first,
                  preprocess=preprocess, labels=labels, check=not no_check, overwrite=overwrite, keep_nhwc=keep_nhwc)
    layout = ("NCHW input" if channels_first else "NHWC input kept" if keep_nhwc
              else "NHWC input transposed to NCHW")
    finish({"source": abspath(model_path), "out": abspath(path), "converter": "tf2onnx",
            "input_layout": "NCHW" if channels_first else "NHWC", "onnx_input_layout": "NHWC" if keep_nhwc else "NCHW",
            "opset": opset,
            "input_size": list(input_size) if input_size else None},
           f"wrote {path} (tf2onnx, {layout})")


def _metadata(path) -> dict:
    """The metadata_props of the ONNX model at ``path`` (its weights left unread where they are external)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _weights_of(source: str) -> str | None:
    """The weights part of a ``cnnviz.source`` value: "... (ResNet18_Weights.IMAGENET1K_V1)" -> that."""
    return source[source.rindex("(") + 1:-1] if source.endswith(")") and "(" in source else None


def _source_file(source: str) -> str | None:
    """The Python file of a FILE.py:ATTR source (the file the export reads), else None."""
    file, colon, _ = source.rpartition(":")
    return file if colon and file.endswith(".py") and Path(file).is_file() else None
