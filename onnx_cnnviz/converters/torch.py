"""PyTorch -> ONNX for explanation (installed as ``onnx_cnnviz.converters.torch``).

    from onnx_cnnviz.converters.torch import export
    export("resnet18", "resnet18.onnx")                    # torchvision's pretrained weights, from the hub cache
    export("resnet18", "r.onnx", random_weights=True)      # the architecture with random weights
    export(my_module, "mine.onnx", input_size=(160, 160), labels=["cat", "dog"])

What it does to the module (on a copy; the caller's module is left as it was):

* ``eval()`` mode, so BatchNorm uses its running statistics and Dropout is the identity;
* every ``inplace=True`` module attribute (``ReLU``, ``ReLU6``, ``Hardswish``, ``SiLU``, ``Dropout``, ...) set to
  False: in-place activations break hook-based tools comparing against this model and change nothing in ONNX;
* export with a symbolic batch dimension (``N``) on the input and the output, so one session runs any batch;
* optional ``metadata_props``: the preprocessing (:meth:`onnx_cnnviz.image.Preprocessing.to_metadata`), the class
  names (``cnnviz.labels``, newline-joined) and the input size (``cnnviz.input_size``, "HxW"), which ``cnnviz`` reads
  so that users need no preprocessing flags;
* a check: the ONNX model, run by onnxruntime on random inputs (batch 2), must match the module's outputs.

Exporters: ``dynamo=False`` (default) is the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``);
``dynamo=True`` uses ``torch.export`` + onnxscript (needs the ``onnxscript`` package) and writes opset 18 at least
(the exporter has no lower-opset implementations; asking for less falls back to 18); it traces an example batch of 2,
since a trace at batch 1 may bake that 1 into the graph.

Weights: a torchvision name gets torchvision's pretrained weights, ``weights`` (an enum value such as
``"IMAGENET1K_V1"`` or ``"ResNet18_Weights.IMAGENET1K_V1"``) or else the architecture's ``DEFAULT`` ones, read from
torch's hub cache (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``) only: nothing is ever
downloaded. When the file is not there, or torchvision has no weights for the architecture, a
:class:`~onnx_cnnviz.errors.ModelLoadError` says which file to put where. Random weights (fixed by ``seed``) only
with ``random_weights=True``. With pretrained weights, the class names (``weights.meta["categories"]``) and the
preprocessing of the weights' transforms are recorded. timm names follow the same rule (pretrained weights from the
Hugging Face cache, offline). A missing torch, torchvision or timm is a
:class:`~onnx_cnnviz.errors.MissingDependencyError` naming the pip command.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from onnx_cnnviz.errors import CnnvizError, InputError, MissingDependencyError, ModelLoadError, RuntimeFailure

from .metadata import set_metadata_props

DEFAULT_OPSET = 17
DYNAMO_MIN_OPSET = 18


def import_torch():
    """torch, imported.

    Returns:
        The ``torch`` module.

    Raises:
        MissingDependencyError: torch is not installed (the message gives the install command).
    """
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("converting PyTorch models needs torch: pip install torch torchvision (or "
                                     "'onnx-cnnviz[test]'), then run the command again.") from None
    return torch


def import_torchvision():
    """torchvision, imported.

    Returns:
        The ``torchvision`` module.

    Raises:
        MissingDependencyError: torchvision is not installed (the message gives the install command).
    """
    import_torch()
    try:
        import torchvision
    except ImportError:
        raise MissingDependencyError("torchvision model names need torchvision: pip install torchvision (the one "
                                     "matching your torch).") from None
    return torchvision


def resolve_module(spec, weights: str | None = None, seed: int = 0, random_weights: bool = False):
    """A ``torch.nn.Module`` from a module, a name or a ``FILE.py:ATTR`` reference.

    Names get pretrained weights from the local caches only (the module docstring), or random ones with
    ``random_weights``.

    Args:
        spec: a module (returned as is), a torchvision model name ("resnet18"), ``"torchvision:NAME"``,
            ``"timm:NAME"`` (needs timm), or ``"FILE.py:ATTR"`` / ``"package.module:ATTR"`` where ATTR is a module
            instance, a module class or a function returning a module (called without arguments).
        weights: a torchvision weights name for a named model (default: its default weights).
        seed: ``torch.manual_seed`` before the module is built (random weights).
        random_weights: the architecture with random weights.

    Returns:
        ``(module, info)``: ``info`` holds ``labels`` and ``preprocessing`` when the weights know them, and
        ``weights`` (what was loaded, or "random weights").

    Raises:
        InputError: both weight options, weights for a module, an unknown name, file or attribute, or an attribute
            that is not a module.
        ModelLoadError: the pretrained weights are not in the local cache (the message says where to put them).
        MissingDependencyError: torchvision or timm is missing.
    """
    torch = import_torch()

    info: dict = {}
    if weights is not None and random_weights:
        raise InputError("give pretrained weights or random weights, not both (--weights or --random-weights).")
    if isinstance(spec, torch.nn.Module):
        if weights is not None or random_weights:
            raise InputError("weights only apply to a model given by name; load the weights into the module first.")
        return spec, info
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"expected a torch.nn.Module or a model name, got {spec!r}.")
    spec = spec.strip()
    torch.manual_seed(seed)
    source, sep, rest = spec.partition(":")
    if sep and source == "timm":
        return _timm(rest, weights, random_weights, info), info
    if sep and source == "torchvision":
        return _torchvision(rest, weights, info, random_weights), info
    if sep and (source.endswith(".py") or "." in source or os.sep in source or "/" in source):
        if weights is not None or random_weights:
            raise InputError("weights (--weights, --random-weights) only apply to torchvision / timm names; a "
                             "module from a file keeps the weights it has.")
        return _from_attribute(source, rest), info
    if sep:
        raise InputError(f"cannot read {spec!r}: write a torchvision name (resnet18), timm:NAME, FILE.py:ATTR or "
                         "package.module:ATTR.")
    return _torchvision(spec, weights, info, random_weights), info


def cached_checkpoint(weight_enum) -> Path:
    """Where torchvision looks for a weights file before downloading it.

    Args:
        weight_enum: a torchvision weights entry.

    Returns:
        ``torch.hub.get_dir()`` (``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``) / ``checkpoints`` / the
        file name of its URL.
    """
    import torch
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weight_enum.url).path)


def _torchvision(name: str, weights: str | None, info: dict, random_weights: bool = False):
    torchvision = import_torchvision()

    available = torchvision.models.list_models()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise InputError(f"'{name}' is not a torchvision model.{hint} See torchvision.models.list_models(), or "
                         "give FILE.py:ATTR for your own module.")
    weight_enum = None
    if not random_weights:
        try:
            enum_class = torchvision.models.get_model_weights(name)
        except (ValueError, KeyError, AttributeError):
            enum_class = None
        if enum_class is None or not list(enum_class):
            raise ModelLoadError(f"torchvision has no pretrained weights for {name}; pass --random-weights "
                                 "(random_weights=True) to export the architecture with random weights.")
        try:
            if weights is None or weights.upper() == "DEFAULT":
                weight_enum = enum_class.DEFAULT
            else:
                weight_enum = torchvision.models.get_weight(
                    weights if "." in weights else f"{enum_class.__name__}.{weights}")
        except (ValueError, KeyError, AttributeError) as exc:
            choices = ", ".join(w.name for w in enum_class)
            raise InputError(f"unknown weights {weights!r} for {name} ({exc}); choose one of: {choices}, "
                             "or --random-weights for random weights.") from None
        checkpoint = cached_checkpoint(weight_enum)
        if not checkpoint.is_file():
            raise ModelLoadError(
                f"the pretrained weights {weight_enum} of {name} are not on this machine, and nothing is "
                f"downloaded: put the file {checkpoint.name} (from {weight_enum.url}) at {checkpoint} (torch's hub "
                "cache; set TORCH_HOME to use another folder), or pass --random-weights to export random weights.")
    kwargs = {}
    if name in ("googlenet", "inception_v3") and weight_enum is None:
        kwargs = {"aux_logits": False, "init_weights": True}
    try:
        module = torchvision.models.get_model(name, weights=weight_enum, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file in the cache
        if weight_enum is None:
            raise
        raise ModelLoadError(
            f"could not load the weights {weight_enum} from {cached_checkpoint(weight_enum)} "
            f"({type(exc).__name__}: {str(exc)[:200]}); replace the file with the one from {weight_enum.url}, or "
            "pass --random-weights.") from None
    info["weights"] = "random weights" if weight_enum is None else str(weight_enum)
    if weight_enum is not None:
        meta = weight_enum.meta
        if meta.get("categories"):
            info["labels"] = list(meta["categories"])
        transforms = weight_enum.transforms()
        mean, std = getattr(transforms, "mean", None), getattr(transforms, "std", None)
        crop = getattr(transforms, "crop_size", None)
        if mean is not None and std is not None:
            from onnx_cnnviz.image import Preprocessing

            size = tuple(crop) if crop else None
            size = (size * 2)[:2] if size and len(size) == 1 else size
            info["preprocessing"] = Preprocessing(size=size, mean=tuple(mean), std=tuple(std), order="RGB",
                                                  scale=1 / 255)
    return module


def _timm(name: str, weights: str | None, random_weights: bool, info: dict):
    if importlib.util.find_spec("timm") is None:
        raise MissingDependencyError("timm models need the timm package: pip install timm.")
    import timm

    if random_weights:
        info["weights"] = "random weights"
        return timm.create_model(name, pretrained=False)
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # the cache only: nothing is downloaded
    try:
        module = timm.create_model(name if weights in (None, "DEFAULT") else f"{name}.{weights}", pretrained=True)
    except Exception as exc:  # noqa: BLE001 - timm and huggingface_hub raise many kinds
        raise ModelLoadError(f"timm could not load the pretrained weights of {name!r} from the local Hugging Face "
                             f"cache ({type(exc).__name__}: {str(exc)[:200]}), and nothing is downloaded: fill the "
                             "cache (huggingface-cli download) or pass --random-weights.") from None
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved
    info["weights"] = f"timm pretrained {name}"
    return module


def _from_attribute(source: str, attr: str):
    import torch

    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"Python file '{path}' does not exist.")
        name = f"_cnnviz_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise InputError(f"running '{path}' failed: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path.remove(str(path.parent.resolve()))
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as exc:
            raise InputError(f"cannot import {source!r} ({exc}).") from None
    if not attr or not hasattr(module, attr):
        found = sorted(k for k, v in vars(module).items() if not k.startswith("_") and
                       (isinstance(v, torch.nn.Module) or (isinstance(v, type) and issubclass(v, torch.nn.Module))
                        or callable(v)))
        raise InputError(f"'{source}' has no attribute {attr!r}; candidates: {', '.join(found) or 'none'}.")
    obj = getattr(module, attr)
    if not isinstance(obj, torch.nn.Module) and callable(obj):
        try:
            obj = obj()
        except TypeError as exc:
            raise InputError(f"{source}:{attr} could not be called without arguments ({exc}); expose a module "
                             "instance or a function without parameters.") from None
    if not isinstance(obj, torch.nn.Module):
        raise InputError(f"{source}:{attr} is a {type(obj).__name__}, not a torch.nn.Module.")
    return obj


def prepare(module):
    """A copy of ``module`` in eval mode with every in-place flag switched off.

    Args:
        module: a ``torch.nn.Module`` (not changed).

    Returns:
        The copy.
    """
    module = copy.deepcopy(module).eval()
    for sub in module.modules():
        if isinstance(getattr(sub, "inplace", None), bool):
            sub.inplace = False
    return module


def export(module_or_name, path, input_size=(224, 224), opset: int = DEFAULT_OPSET, dynamo: bool = False,
           weights: str | None = None, preprocessing=None, labels=None, channels: int = 3, seed: int = 0,
           input_name: str = "input", output_name: str = "logits", overwrite: bool = False, check: bool = True,
           metadata: dict | None = None, random_weights: bool = False) -> Path:
    """Export a classifier to ONNX with a dynamic batch, checked against torch.

    H and W are fixed by the TorchScript exporter and by dynamo; the batch is dynamic.

    Args:
        module_or_name: anything :func:`resolve_module` takes.
        path: the ``.onnx`` file to write (atomically).
        input_size: (H, W) of the example input (an int = square).
        opset: the ONNX opset.
        dynamo: use torch's dynamo exporter instead of TorchScript.
        weights: for a name, see :func:`resolve_module`.
        preprocessing: a preset name ("imagenet", "caffe", "none") or a :class:`~onnx_cnnviz.image.Preprocessing`
            recorded in the metadata (default: the weights' own for named weights, else none recorded).
        labels: class names (a list, or a text file, one per line) recorded as ``cnnviz.labels``.
        channels: the input's channels.
        seed: ``torch.manual_seed`` before the module is built (random weights).
        input_name: the ONNX input's name.
        output_name: the ONNX output's name.
        overwrite: replace an existing file (otherwise it is kept and this raises).
        check: compare onnxruntime with torch on a random batch.
        metadata: more ``metadata_props`` entries.
        random_weights: for a name, the architecture with random weights.

    Returns:
        ``path``.

    Raises:
        InputError: the output exists or lacks ``.onnx``, a bad ``input_size``, a module that does not return one
            (N, K) tensor, labels that do not match the classes, or anything :func:`resolve_module` refuses.
        RuntimeFailure: the exporter failed, or the exported model does not run or differs from torch.
        MissingDependencyError: torch (or onnxscript, for dynamo) is missing.

    Example:
        ```python
        from onnx_cnnviz.converters import torch as convert
        convert.export("resnet18", "resnet18.onnx", random_weights=True)
        ```
    """
    torch = import_torch()
    import onnx

    from onnx_cnnviz.image import get_preprocessing
    from onnx_cnnviz.report import LABELS_KEY, read_labels, write_atomic

    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it.")
    if path.suffix.lower() != ".onnx":
        raise InputError(f"{path}: give the output a .onnx suffix.")
    hw = (int(input_size), int(input_size)) if np.ndim(input_size) == 0 else tuple(int(v) for v in input_size)
    if len(hw) != 2 or min(hw) < 1:
        raise InputError(f"input_size must be (H, W) or one int, got {input_size!r}.")
    module, info = resolve_module(module_or_name, weights, seed, random_weights)
    module = prepare(module)
    preprocessing = info.get("preprocessing") if preprocessing is None else get_preprocessing(preprocessing)
    if preprocessing is not None and preprocessing.size is not None:
        preprocessing = get_preprocessing(preprocessing, size=hw)  # the exported graph fixes H and W
    if isinstance(labels, (str, os.PathLike)):
        labels = read_labels(labels)
    if labels is None:
        labels = info.get("labels")
    if dynamo:
        if importlib.util.find_spec("onnxscript") is None:
            raise MissingDependencyError("the dynamo exporter needs the onnxscript package: pip install onnxscript.")
        opset = max(int(opset), DYNAMO_MIN_OPSET)

    x = torch.zeros(1, channels, *hw)
    with torch.no_grad():
        try:
            reference = module(x)
        except Exception as exc:
            raise InputError(f"the module does not run on a (1, {channels}, {hw[0]}, {hw[1]}) input: "
                             f"{type(exc).__name__}: {exc}") from None
    if isinstance(reference, (tuple, list)) or getattr(reference, "ndim", 0) != 2:
        raise InputError("the module must return one (N, K) tensor of class scores; got "
                         f"{type(reference).__name__} {tuple(getattr(reference, 'shape', ()))}.")
    if labels is not None and len(labels) != reference.shape[1]:
        raise InputError(f"{len(labels)} labels for a model with {reference.shape[1]} classes.")

    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.export.tmp")
    try:
        _run_exporter(module, x, temp, opset, dynamo, input_name, output_name)
        model = onnx.load(str(temp))
    except CnnvizError:
        raise
    except Exception as exc:
        raise RuntimeFailure(f"torch.onnx.export ({'dynamo' if dynamo else 'TorchScript'}) failed: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    finally:
        for leftover in (temp, Path(str(temp) + ".data")):
            if leftover.exists():
                leftover.unlink()
    props = {}
    if preprocessing is not None:
        props.update(preprocessing.to_metadata())
    if labels is not None:
        props[LABELS_KEY] = "\n".join(str(v) for v in labels)
    props["cnnviz.input_size"] = f"{hw[0]}x{hw[1]}"
    props["cnnviz.source"] = (f"torch {torch.__version__} "
                              f"{'dynamo' if dynamo else 'torchscript'} export of "
                              f"{module_or_name if isinstance(module_or_name, str) else type(module_or_name).__name__}"
                              + (f" ({info['weights']})" if info.get("weights") else ""))
    props.update(metadata or {})
    set_metadata_props(model, props)
    onnx.checker.check_model(model)
    if check:
        _check_outputs(module, model, channels, hw, input_name)
    write_atomic(path, model.SerializeToString(), overwrite=overwrite)
    return path


def _run_exporter(module, x, path: Path, opset: int, dynamo: bool, input_name: str, output_name: str) -> None:
    import logging

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not dynamo:
            torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=opset, input_names=[input_name],
                              output_names=[output_name],
                              dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}})
            return
        quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
        levels = [lg.level for lg in quiet]
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        # An example batch of 2, not 1: torch.export specialises sizes 0 and 1, so a batch-1 trace can bake that 1
        # into reshapes (torchvision's ViT attention: the export then fails at batch 2 although its input says any
        # batch) or refuse the dynamic range outright (ConvNeXt at 112 px).
        example = x.expand(2, *x.shape[1:]).contiguous()
        try:
            program = torch.onnx.export(module, (example,), None, dynamo=True, opset_version=opset,
                                        input_names=[input_name], output_names=[output_name],
                                        dynamic_shapes=({0: torch.export.Dim("N", min=1, max=65536)},),
                                        verbose=False, report=False)
            program.save(str(path), external_data=False)
        finally:
            for lg, level in zip(quiet, levels):
                lg.setLevel(level)


def _check_outputs(module, model, channels, hw, input_name, rtol=1e-3, atol=1e-4) -> None:
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, channels, *hw)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failure is raised as RuntimeFailure, never printed
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {input_name: x})[0]
    except Exception as exc:
        raise RuntimeFailure(f"onnxruntime cannot run the exported model: {str(exc)[:300]}") from None
    if got.shape != expected.shape:
        raise RuntimeFailure(f"the exported model returns shape {got.shape} for a batch of 2, torch {expected.shape}:"
                             " the batch dimension did not export as dynamic.")
    err = float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-12))
    if err > rtol and float(np.abs(got - expected).max()) > atol:
        raise RuntimeFailure(f"the exported model differs from torch (max relative error {err:.2e}); the module may "
                             "use control flow or ops the exporter does not capture. Try the other exporter.")


__all__ = ["export", "resolve_module", "prepare", "cached_checkpoint", "import_torch", "import_torchvision"]
