"""The one way the tests and the benchmarks export a torch module to ONNX, with the project's settings.

Two exporters, as users meet them:

* :func:`export_torchscript`: ``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter), opset
  :data:`TORCHSCRIPT_OPSET`, input ``"input"``, output ``"logits"`` (or the name given), the batch declared dynamic
  (``dynamic_axes``: dimension 0 named ``"N"``) unless asked not to. Every exported test model is made this way unless
  the test is about another exporter.
* :func:`export_dynamo`: ``torch.onnx.export(..., dynamo=True)`` (the default since torch 2.9), opset
  :data:`DYNAMO_OPSET`, the batch a ``torch.export.Dim`` (``batch="dim"``), ``Dim.DYNAMIC`` (``"dynamic"``) or the
  example's (``"static"``), the program saved with its weights inside the file.

Both silence the exporters' warnings and logs (the tests check what *the library* prints, not torch), create the
parent folder, and return the path. torch is imported inside the functions: importing this module costs nothing.

The benchmarks reach this module with the repository root on ``sys.path`` (each puts it there):
``from tests.exporting import export_torchscript``. ``tests/conftest.py``'s ``export_onnx`` is
:func:`export_torchscript` (the name the older tests use).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

#: The TorchScript exporter's opset for every exported test model (the oldest the library is tested at for torch
#: files; newer opsets are covered by the dynamo exports).
TORCHSCRIPT_OPSET = 17
#: The dynamo exporter's opset (torch's own default since 2.9).
DYNAMO_OPSET = 18
INPUT = "input"
OUTPUT = "logits"
#: The largest batch a ``batch="dim"`` dynamo export declares.
MAX_BATCH = 1024

_TORCH_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo", "torch.fx", "torch._guards")


def export_torchscript(model, x, path, opset: int = TORCHSCRIPT_OPSET, output: str = OUTPUT,
                       dynamic_batch: bool = True, input: str = INPUT) -> Path:
    """Export ``model`` with the TorchScript exporter.

    Args:
        model: a ``torch.nn.Module`` in eval mode, one input, one output.
        x: the example input (a tensor; its batch is traced, then declared dynamic when ``dynamic_batch``).
        path: the ``.onnx`` file to write (its folder is created).
        opset: the ONNX opset.
        output: the name of the output tensor.
        dynamic_batch: declare dimension 0 of the input and the output as ``"N"``.
        input: the name of the input tensor (ultralytics' exporter says ``images``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {input: {0: "N"}, output: {0: "N"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, input_names=[input],
                          output_names=[output], dynamic_axes=axes)
    return path


def export_dynamo(model, x, path, batch: str = "dim", opset: int = DYNAMO_OPSET, output: str = OUTPUT,
                  max_batch: int = MAX_BATCH) -> Path:
    """Export ``model`` with the dynamo exporter (``torch.export``), as users call it.

    torch.export specialises batch sizes 0 and 1: from an example batch of 1 it refuses a ``Dim`` range for some
    models ("Invalid ranges [2:1]": ConvNeXt, Swin) and bakes 1 into others (torchvision's ViT). Callers that want a
    dynamic batch from every model retry with an example batch of 2 (the converter does the same).

    Args:
        model: a ``torch.nn.Module`` in eval mode, one input, one output.
        x: the example input.
        path: the ``.onnx`` file to write (its folder is created); the weights are saved inside it.
        batch: ``"dim"`` (``Dim("N", min=1, max=max_batch)``), ``"dynamic"`` (``Dim.DYNAMIC``) or ``"static"`` (the
            example's batch baked into the graph).
        opset: the ONNX opset.
        output: the name of the output tensor.
        max_batch: the largest batch of ``batch="dim"``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        KeyError: ``batch`` is none of the three.
        Exception: whatever torch.export raises when it refuses the model or the batch range.
    """
    import torch

    shapes = {"dim": ({0: torch.export.Dim("N", min=1, max=max_batch)},), "dynamic": ({0: torch.export.Dim.DYNAMIC},),
              "static": None}[batch]
    for name in _TORCH_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {} if shapes is None else {"dynamic_shapes": shapes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), None, dynamo=True, opset_version=opset, input_names=[INPUT],
                                    output_names=[output], verbose=False, report=False, **kwargs)
    program.save(str(path), external_data=False)
    return path


def torchvision_model(name: str, seed: int = 0):
    """A torchvision model with fixed random weights, in eval mode, its activations not in place (hook-based
    references need the pre-activation tensors intact).

    Args:
        name: a ``torchvision.models`` builder (``"resnet18"``, ``"vit_b_16"``, ...).
        seed: torch's seed for the random weights.

    Returns:
        the ``torch.nn.Module``.
    """
    import torch
    import torchvision

    torch.manual_seed(seed)
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return model
