"""What loads: one representative model of each family, exported by each exporter, loaded and checked.

    .venv/bin/python benchmarks/what_loads.py                      # the whole table: docs/what_loads.md + README
    .venv/bin/python benchmarks/what_loads.py --only resnet,keras  # some rows (families matching), printed only
    .venv/bin/python benchmarks/what_loads.py --only vit --columns fp16,uint8 --write   # ... merged and written

Rows are model families (torchvision, timm, keras.applications; random weights, fixed seed, small inputs where the
architecture allows); columns are the ways a model reaches ONNX: torch's TorchScript exporter, its dynamo exporter
with a dynamic and with a static batch, tf2onnx with the input transposed to NCHW and kept NHWC (plain tf2onnx), a
uint8-pixel input with the preprocessing inside the graph, a float16 conversion, paddle2onnx, CNTK. Every cell is
measured, never typed:

* **exact (e)**: ``cv.load`` loads it, Grad-CAM (at the default layer), saliency and occlusion return finite maps
  of the right shape, and the input gradient ``cv.gradients`` equals the framework's own autograd on the same
  weights and the same batch to relative error ``e`` <= 1e-4 (torch: ``tests/reference.py``'s autograd with the
  ReLU/MaxPool pattern pinned to the ONNX forward's; Keras: ``tf.GradientTape``, pinned the same way by
  ``tests/keras/parity.py``; Paddle: ``paddle.grad``, unpinned). For fp16 files the reference is the float32 model
  (pinned to the fp16 file's pattern), so the gap is the weights' rounding to float16: exact means <= 1e-2.
* **runs**: loads and explains; no reference to compare with.
* **differs (e)**: loads and explains, but the gradient is off by ``e`` (with "kinks not pinned": the reference could
  not be pinned to the ONNX activation pattern, so a ReLU that flips between the two frameworks' float32 kernels may
  explain it).
* otherwise the first line of the error: the library's typed error (``ModelStructureError: ...``), an untyped error
  (a bug to fix), the exporter's failure ("export fails: ..."), "timed out" or "crashed" (the cell's process died:
  memory?), "not tested: <why>" or "—" (the column does not apply to the row's framework).

Each row runs in a worker process of the framework's venv (torch rows in this one, Keras rows in ``.venv-keras``,
Paddle cells in ``.cache/venv-paddle``); a cell over ``--cell-timeout`` seconds or a crash kills that worker only, the
row goes on in a fresh one. Exports are cached in ``.cache/what_loads`` (``--fresh`` re-exports). Results are merged
into ``.cache/what_loads/results.json``; ``docs/what_loads.md`` and the README's table (between
``<!-- what_loads:begin -->`` and ``<!-- what_loads:end -->``) are rewritten from it after a full run, or with
``--write``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the worker imports tests.conftest / tests.reference / tests.keras.parity
    sys.path.insert(0, str(ROOT))
CACHE = ROOT / ".cache" / "what_loads"
RESULTS = CACHE / "results.json"
DOC = ROOT / "docs" / "what_loads.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- what_loads:begin -->", "<!-- what_loads:end -->"
KERAS_PYTHON = ROOT / ".venv-keras" / "bin" / "python"
PADDLE_PYTHON = ROOT / ".cache" / "venv-paddle" / "bin" / "python"
PADDLE_INSTALL = "python3 -m venv .cache/venv-paddle && .cache/venv-paddle/bin/python -m pip install paddlepaddle " \
                 "paddle2onnx -e ."

EXACT = 1e-4  # relative error of the input gradient against the framework's autograd
EXACT_FP16 = 1e-2  # ... for a float16 file against the float32 model: the weights' rounding
BATCH = 2
TARGETS = [1, 2]
MAX_TEXT = 220  # characters of an error line kept in a cell


@dataclass(frozen=True)
class Row:
    family: str
    framework: str  # "torchvision" | "timm" | "keras"
    name: str  # the constructor's name in its framework
    size: int  # H = W of the exported input
    kwargs: dict = field(default_factory=dict)
    paddle: str | None = None  # the same family in paddle.vision.models
    paddle_kwargs: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.family.lower().replace(" ", "-")


ROWS = [
    Row("ResNet", "torchvision", "resnet18", 64, paddle="resnet18"),
    Row("MobileNetV2", "torchvision", "mobilenet_v2", 64, paddle="mobilenet_v2"),
    Row("MobileNetV3", "torchvision", "mobilenet_v3_small", 64, paddle="mobilenet_v3_small"),
    Row("EfficientNet", "torchvision", "efficientnet_b0", 64),
    Row("RegNet", "torchvision", "regnet_y_400mf", 64),
    Row("DenseNet", "torchvision", "densenet121", 64, paddle="densenet121"),
    # VGG's adaptive 7x7 average pool exports (TorchScript) only from 224.
    Row("VGG", "torchvision", "vgg11_bn", 224, paddle="vgg11", paddle_kwargs={"batch_norm": True}),
    Row("ConvNeXt", "torchvision", "convnext_tiny", 64),
    Row("SqueezeNet", "torchvision", "squeezenet1_1", 64, paddle="squeezenet1_1"),
    Row("ViT", "torchvision", "vit_b_16", 112, kwargs={"image_size": 112}),
    Row("Swin", "torchvision", "swin_t", 224),
    Row("MaxViT", "torchvision", "maxvit_t", 224),  # its 7x7 partitions need H/32 to be a multiple of 7
    Row("timm NF-ResNet", "timm", "nf_resnet26", 64),
    Row("timm ViT", "timm", "vit_tiny_patch16_224", 112, kwargs={"img_size": 112}),
    Row("Keras MobileNetV2", "keras", "MobileNetV2", 96),
    Row("Keras ResNet50", "keras", "ResNet50", 96),
    Row("Keras EfficientNetB0", "keras", "EfficientNetB0", 96),
]

COLUMNS = {  # key -> header
    "torchscript": "TorchScript",
    "dynamo": "dynamo, dynamic batch",
    "dynamo-static": "dynamo, static batch",
    "tf2onnx-nchw": "tf2onnx NCHW",
    "tf2onnx-nhwc": "tf2onnx NHWC",
    "uint8": "uint8 input",
    "fp16": "fp16",
    "paddle": "Paddle",
    "cntk": "CNTK",
}
TORCH_ONLY = {"torchscript", "dynamo", "dynamo-static"}
KERAS_ONLY = {"tf2onnx-nchw", "tf2onnx-nhwc"}


# =====================================================================================================================
# cells (run inside a worker, in the framework's venv)


@dataclass
class Case:
    """An exported file, the batch a user passes to onnx_cnnviz (NCHW; raw pixels for uint8 inputs), and the
    framework's input gradient of sum_n S[n, targets[n]] as a function of the loaded Model (NCHW)."""
    path: Path
    x: np.ndarray
    reference: object | None  # callable(m, x, targets) -> (grad, note) or None
    tolerance: float = EXACT


class ExportFailed(Exception):
    """The exporter itself failed: the cell says so (the model never reached onnx_cnnviz)."""


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(exc: BaseException) -> str:
    """The error's first line, without terminal colours; for torch.export's wrapped errors the line of their
    "Exception summary" (the first line only says that torch.export failed)."""
    lines = [line.strip() for line in ANSI.sub("", str(exc)).strip().splitlines()]
    text = (lines or [""])[0]
    if "## Exception summary" in lines:
        rest = [line for line in lines[lines.index("## Exception summary") + 1:] if line]
        text = rest[0] if rest else text
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def cached(path: Path, make, fresh: bool) -> Path:
    """``path``, made by ``make(tmp)`` when missing (or ``fresh``); an exporter's failure is :class:`ExportFailed`."""
    if path.exists() and not fresh:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.onnx")
    try:
        with quiet_logs():
            make(tmp)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - the exporter's error is the cell's content
        raise ExportFailed(f"{type(exc).__name__}: {first_line(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def quiet_logs():
    import logging
    import warnings

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo", "tf2onnx",
                                              "paddle2onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def to_fp16(src: Path, dst: Path) -> None:
    """A float16 copy of an ONNX file (onnxruntime's converter, the one onnxconverter-common ships): weights and
    activations float16, the input and output too (``keep_io_types=False``), as a half-precision deployment."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=False), str(dst))


def check_cell(case: Case) -> dict:
    """Load, explain, compare: the cell's result (see the module docstring)."""
    import onnx_cnnviz as cv
    from onnx_cnnviz.errors import CnnvizError

    stage = "load"
    try:
        m = cv.load(case.path, device="cpu")
        stage = "explain"
        h, w = m.input_shape[1:]
        maps = [cv.saliency(m, case.x, targets=TARGETS),
                cv.occlusion(m, case.x, targets=TARGETS, window=(h // 2, w // 2), stride=(h // 2, w // 2))]
        if m.default_layer is not None:
            maps.append(cv.grad_cam(m, case.x, targets=TARGETS))
        for result in maps:
            if result.shape != (BATCH, h, w) or not np.isfinite(result).all():
                return {"status": "error", "text": f"a map of shape {result.shape} or not finite (wrong layout?)"}
        stage = "gradient"
        grads = cv.gradients(m, case.x, targets=TARGETS)
    except CnnvizError as exc:
        return {"status": "error", "text": f"{type(exc).__name__}: {first_line(exc)}"}
    except Exception as exc:  # noqa: BLE001 - an untyped error is a bug: shown as such
        return {"status": "error", "text": f"untyped {type(exc).__name__} at {stage}: {first_line(exc)}"}
    if case.reference is None:
        return {"status": "runs", "text": "runs"}
    try:
        expected, note = case.reference(m, case.x, TARGETS)
    except Exception as exc:  # noqa: BLE001
        return {"status": "runs", "text": f"runs (reference failed: {type(exc).__name__}: {first_line(exc)})"}
    if not np.abs(expected).max() > 0:
        return {"status": "runs", "text": "runs (the reference gradient is zero: nothing to compare)"}
    err = rel_err(grads, expected)
    if err <= case.tolerance:
        return {"status": "exact", "text": f"exact ({err:.0e})", "rel_err": err}
    return {"status": "differs", "text": f"differs ({err:.0e}{', ' + note if note else ''})", "rel_err": err}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# --- torch ----------------------------------------------------------------------------------------------------------
def torch_module(row: Row):
    """The row's torch model: random weights (seed 0), eval mode, nothing in place (for the pinned reference, as
    tests/conftest.py's torchvision_model does). A classifier head initialised to zeros (torchvision's ViT) gets
    random weights: with it every gradient is zero and any comparison passes."""
    import torch

    if row.framework == "torchvision" and not row.kwargs:
        from tests.exporting import torchvision_model

        model = torchvision_model(row.name, seed=0)
    else:
        torch.manual_seed(0)
        if row.framework == "torchvision":
            import torchvision

            model = getattr(torchvision.models, row.name)(weights=None, **row.kwargs).eval()
        else:
            import timm

            model = timm.create_model(row.name, pretrained=False, **row.kwargs).eval()
        for module in model.modules():
            if isinstance(getattr(module, "inplace", None), bool):
                module.inplace = False
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                module.weight.normal_(0.0, 0.02)
    return model


def torch_reference(model, to_model=None, from_model=None):
    """``(m, x, targets) -> (grad, note)``: torch autograd of ``model`` with its kink pattern pinned to the ONNX
    forward of ``m`` (tests/reference.py), one sample at a time (a graph exported at batch 1 runs only that);
    unpinned when the patterns do not line up (an exporter that reorders or rewrites the ReLU/MaxPool nodes).
    ``to_model``/``from_model`` map the user's NCHW batch to the module's input and the gradient back (uint8 wrapper:
    NHWC pixels)."""
    from tests.reference import onnx_kink_pattern, torch_rule_grad

    to_model = to_model or (lambda x: x)
    from_model = from_model or (lambda g: g)

    def one(m, x, target):
        xin = np.ascontiguousarray(to_model(x))
        try:
            return from_model(torch_rule_grad(model, xin, [target], "vanilla", onnx_kink_pattern(m, x))), ""
        except (AssertionError, IndexError, RuntimeError):
            return from_model(torch_rule_grad(model, xin, [target], "vanilla")), "kinks not pinned"

    def reference(m, x, targets):
        x = np.asarray(x, dtype=np.float32)
        grads, notes = zip(*(one(m, x[i:i + 1], t) for i, t in enumerate(targets)))
        return np.concatenate(grads), next((n for n in notes if n), "")

    return reference


def torch_case(row: Row, column: str, fresh: bool) -> Case:
    import torch

    model = torch_module(row)
    s = row.size
    x = np.random.default_rng(0).standard_normal((BATCH, 3, s, s)).astype(np.float32)
    base = CACHE / f"{row.key}_{s}"
    if column == "torchscript":
        return Case(torchscript(model, base, s, fresh), x, torch_reference(model))
    if column in ("dynamo", "dynamo-static"):
        name = f"{base}_dynamo-batch2.onnx" if column == "dynamo" else f"{base}_dynamo-static.onnx"
        path = cached(Path(name), lambda p: dynamo_export(model, s, p, column == "dynamo"), fresh)
        return Case(path, x, torch_reference(model))
    if column == "fp16":
        path = cached(Path(f"{base}_fp16.onnx"), lambda p: to_fp16(torchscript(model, base, s, fresh), p), fresh)
        return Case(path, x, torch_reference(model), EXACT_FP16)
    if column == "uint8":
        wrapper = Uint8Pixels(model)
        from tests.exporting import export_torchscript

        path = cached(Path(f"{base}_uint8.onnx"),
                      lambda p: export_torchscript(wrapper, torch.zeros(1, s, s, 3, dtype=torch.uint8), p), fresh)
        pixels = np.random.default_rng(0).integers(0, 256, (BATCH, 3, s, s)).astype(np.uint8)
        return Case(path, pixels, torch_reference(wrapper, lambda x: x.transpose(0, 2, 3, 1),
                                                  lambda g: g.transpose(0, 3, 1, 2)))
    raise KeyError(column)


def torchscript(model, base: Path, size: int, fresh: bool) -> Path:
    import torch

    from tests.exporting import export_torchscript

    return cached(Path(f"{base}_torchscript.onnx"),
                  lambda p: export_torchscript(model, torch.zeros(1, 3, size, size), p), fresh)


def dynamo_export(model, size: int, path: Path, dynamic_batch: bool) -> None:
    """``torch.onnx.export(..., dynamo=True)``, what users get from torch 2.9 on: with ``dynamic_shapes`` for the
    batch, traced at an example batch of 2 (torch.export specialises sizes 0 and 1: traced at batch 1, ConvNeXt and
    Swin fail with "Invalid ranges [2:1]", as converters/torch.py notes), or without (the example batch of 1 is then
    baked into the graph)."""
    import torch

    from tests.exporting import export_dynamo

    x = torch.zeros(2 if dynamic_batch else 1, 3, size, size)
    export_dynamo(model, x, path, batch="dim" if dynamic_batch else "static", max_batch=1024)


def Uint8Pixels(model):  # noqa: N802 - builds a torch module class lazily (torch is not imported at module level)
    """``model`` behind a deployed model's front: raw (N, H, W, 3) uint8 pixels -> Cast -> Transpose -> /255 ->
    ImageNet mean/std, inside the graph. Float pixel values go through the same forward (for autograd)."""
    import torch

    class Pixels(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1))

        def forward(self, pixels):
            x = pixels.float().permute(0, 3, 1, 2) / 255.0
            return self.net((x - self.mean) / self.std)

    return Pixels(model).eval()


# --- Keras ----------------------------------------------------------------------------------------------------------
def keras_case(row: Row, column: str, fresh: bool) -> Case:
    import keras

    from onnx_cnnviz.converters.keras import export
    from tests.keras.parity import linear_head, pinned_tape_gradient, tape_gradient

    keras.utils.set_random_seed(0)
    s = row.size
    model = getattr(keras.applications, row.name)(input_shape=(s, s, 3), weights=None)
    rng = np.random.default_rng(0)
    # EfficientNet takes 0..255 pixels (its Rescaling and Normalization are inside); the others [-1, 1] or caffe.
    x = (rng.uniform(0, 255, (BATCH, 3, s, s)) if row.name.startswith("EfficientNet")
         else rng.uniform(-1, 1, (BATCH, 3, s, s))).astype(np.float32)
    base = CACHE / f"{row.key}_{s}"

    linear = linear_head(model)  # the pre-softmax score, as onnx_cnnviz differentiates

    def reference_of(linear_model):
        """tf.GradientTape with the ReLU/ReLU6/MaxPool decisions pinned to the ONNX forward's (unpinned when they
        do not line up)."""
        def reference(m, xx, targets):
            try:
                return pinned_tape_gradient(linear_model, m, xx, targets), ""
            except AssertionError:
                return tape_gradient(linear_model, np.asarray(xx, np.float32).transpose(0, 2, 3, 1),
                                     targets), "kinks not pinned"
        return reference

    def exported(keep_nhwc):
        name = f"{base}_tf2onnx_{'nhwc' if keep_nhwc else 'nchw'}.onnx"
        return cached(Path(name), lambda p: export(model, p, keep_nhwc=keep_nhwc, overwrite=True), fresh)

    if column in ("tf2onnx-nchw", "tf2onnx-nhwc"):
        return Case(exported(column == "tf2onnx-nhwc"), x, reference_of(linear))
    if column == "fp16":
        path = cached(Path(f"{base}_fp16.onnx"), lambda p: to_fp16(exported(True), p), fresh)
        return Case(path, x, reference_of(linear), EXACT_FP16)
    if column == "uint8":
        def wrap(dtype, net):
            inp = keras.Input((s, s, 3), dtype=dtype)
            return keras.Model(inp, net(keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)))

        u8 = wrap("uint8", model)
        path = cached(Path(f"{base}_uint8.onnx"), lambda p: export(u8, p, keep_nhwc=True, overwrite=True), fresh)
        pixels = rng.integers(0, 256, (BATCH, 3, s, s)).astype(np.uint8)
        return Case(path, pixels, reference_of(wrap("float32", linear)))
    raise KeyError(column)


# --- Paddle ---------------------------------------------------------------------------------------------------------
def paddle_case(row: Row, column: str, fresh: bool) -> Case:
    import paddle
    from paddle.static import InputSpec

    paddle.seed(0)
    model = getattr(paddle.vision.models, row.paddle)(pretrained=False, **row.paddle_kwargs)
    model.eval()
    s = row.size
    x = np.random.default_rng(0).standard_normal((BATCH, 3, s, s)).astype(np.float32)

    def make(path: Path):
        prefix = str(path)[:-len(".onnx")]
        paddle.onnx.export(model, prefix, input_spec=[InputSpec([None, 3, s, s], "float32", "input")],
                           opset_version=17)

    path = cached(CACHE / f"{row.key}_{s}_paddle.onnx", make, fresh)

    def reference(m, xx, targets):
        xt = paddle.to_tensor(np.asarray(xx, np.float32), stop_gradient=False)
        out = model(xt)
        picked = paddle.stack([out[i, t] for i, t in enumerate(targets)]).sum()
        (grad,) = paddle.grad(picked, xt)
        return grad.numpy(), "kinks not pinned"

    return Case(path, x, reference)


# --- the worker -----------------------------------------------------------------------------------------------------
def run_cell(row: Row, column: str, fresh: bool) -> dict:
    started = time.time()
    try:
        if column == "paddle":
            case = paddle_case(row, column, fresh)
        elif row.framework == "keras":
            case = keras_case(row, column, fresh)
        else:
            case = torch_case(row, column, fresh)
        result = check_cell(case)
    except ExportFailed as exc:
        result = {"status": "export", "text": f"export fails: {exc}"}
    except Exception as exc:  # noqa: BLE001 - one cell's failure never stops the table
        result = {"status": "error", "text": f"untyped {type(exc).__name__} in the check: {first_line(exc)}",
                  "traceback": traceback.format_exc(limit=4)}
    result["seconds"] = round(time.time() - started, 1)
    return result


def worker(row_key: str, columns: list[str], log: Path, fresh: bool) -> int:
    """Run the cells in order, appending ``{"column", "event": "start"}`` and ``{"column", "result"}`` lines to
    ``log`` (the parent watches it: a cell that runs too long or kills the process is recorded there)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    row = next(r for r in ROWS if r.key == row_key)
    for column in columns:
        with open(log, "a") as f:
            f.write(json.dumps({"column": column, "event": "start", "t": time.time()}) + "\n")
        result = run_cell(row, column, fresh)
        with open(log, "a") as f:
            f.write(json.dumps({"column": column, "result": result}) + "\n")
    return 0


# =====================================================================================================================
# the table (the parent process, in the main venv)


def applies(row: Row, column: str) -> str | None:
    """None when the cell is measured, else what it says instead."""
    if column in TORCH_ONLY and row.framework == "keras":
        return "—"
    if column in KERAS_ONLY and row.framework != "keras":
        return "—"
    if column == "paddle" and row.paddle is None:
        return "— (not in paddle.vision)" if row.framework != "keras" else "—"
    return None


def python_for(row: Row, column: str) -> Path:
    if column == "paddle":
        return PADDLE_PYTHON
    return KERAS_PYTHON if row.framework == "keras" else Path(sys.executable)


def unavailable(python: Path, column: str, row: Row) -> str | None:
    if python.exists():
        return None
    if column == "paddle":
        return f"not tested: paddlepaddle not installed ({PADDLE_INSTALL})"
    return f"not tested: {python.relative_to(ROOT)} missing (.ci/run makes it)"


def cntk_status() -> str:
    """The CNTK column, measured by asking pip (``pip index versions cntk``) for a wheel for this Python and, when
    there is none, for the newest Python that has one."""
    if importlib.util.find_spec("cntk") is not None:
        return "not tested: cntk is installed but this script has no CNTK export yet"

    def has_wheel(version: str | None) -> bool | None:
        extra = ["--python-version", version, "--only-binary=:all:"] if version else []
        try:
            done = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "cntk", *extra],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if "No matching distribution" in done.stdout + done.stderr:
            return False
        return True if done.returncode == 0 else None

    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = has_wheel(None)
    if found is None:
        return "not tested: cntk is not installed (pip could not be asked for a wheel)"
    if found:
        return "not tested: cntk has a wheel for this Python but is not installed"
    newest = next((f"3.{minor}" for minor in range(sys.version_info.minor - 1, 4, -1) if has_wheel(f"3.{minor}")),
                  None)
    return f"not tested: no CNTK wheel for Python {here}" + (f" (newest with one: {newest})" if newest else "")


def run_row(row: Row, columns: list[str], timeout: float, fresh: bool, log) -> dict:
    """The row's cells: measured in workers (one per venv; restarted after a timeout or a crash)."""
    results = {}
    by_python: dict[Path, list[str]] = {}
    for column in columns:
        text = applies(row, column)
        if column == "cntk":
            text = text or CNTK_TEXT[0]
        if text is None:
            python = python_for(row, column)
            text = unavailable(python, column, row)
            if text is None:
                by_python.setdefault(python, []).append(column)
                continue
        results[column] = {"status": "n/a" if text.startswith("—") else "not tested", "text": text}
    for python, pending in by_python.items():
        while pending:
            done = run_worker(python, row, pending, timeout, fresh)
            for column, result in done.items():
                results[column] = result
                log(f"  {row.family:22s} {COLUMNS[column]:22s} {result['text']}  [{result.get('seconds', '?')} s]")
            pending = [c for c in pending if c not in done]
    return results


def run_worker(python: Path, row: Row, columns: list[str], timeout: float, fresh: bool) -> dict:
    """Start a worker on ``columns``; return the results it finished, plus a "timed out"/"crashed" one for the cell
    it was in when it was killed or died (the caller restarts a worker on the rest)."""
    with tempfile.TemporaryDirectory(prefix="what_loads_") as tmp:
        log_path = Path(tmp) / "cells.jsonl"
        log_path.touch()
        args = [str(python), str(Path(__file__).resolve()), "--worker", row.key, "--columns", ",".join(columns)]
        if fresh:
            args.append("--fresh")
        with open(Path(tmp) / "output.txt", "w") as out:
            proc = subprocess.Popen(args + ["--log", str(log_path)], stdout=out, stderr=subprocess.STDOUT,
                                    cwd=ROOT, start_new_session=True)
            done, current = {}, None
            while True:
                finished = proc.poll() is not None
                done, current = read_log(log_path)
                if finished:
                    break
                if current is not None and time.time() - current[1] > timeout:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    done, current = read_log(log_path)
                    if current is not None:
                        done[current[0]] = {"status": "error", "text": f"timed out (over {timeout:.0f} s)",
                                            "seconds": round(timeout)}
                    return done
                time.sleep(0.5)
        if current is not None:
            tail = (Path(tmp) / "output.txt").read_text(errors="replace").strip().splitlines()[-1:]
            how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
            done[current[0]] = {"status": "error", "text": f"crashed ({how}{': ' + tail[0][:120] if tail else ''})"}
        elif not done and proc.returncode != 0:  # died before its first cell (an import error)
            tail = (Path(tmp) / "output.txt").read_text(errors="replace").strip().splitlines()[-1:]
            for column in columns:
                done[column] = {"status": "error", "text": f"worker failed: {tail[0][:160] if tail else '?'}"}
        return done


def read_log(path: Path) -> tuple[dict, tuple | None]:
    """(finished results by column, (column, start time) of the cell in progress or None)."""
    done, current = {}, None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if record.get("event") == "start":
            current = (record["column"], record["t"])
        elif "result" in record:
            done[record["column"]] = record["result"]
            current = None
    return done, current


CNTK_TEXT = [""]


def versions() -> str:
    """The versions the table was measured with (each venv asked)."""
    parts = [f"Python {platform.python_version()}"]
    probes = [(Path(sys.executable), "torch", "import torch, torchvision, timm, onnxruntime, onnx; print("
               "f'torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
               "onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}')"),
              (KERAS_PYTHON, "keras", "import tensorflow as tf, keras, tf2onnx; print(f'TensorFlow {tf.__version__},"
               " Keras {keras.__version__}, tf2onnx {tf2onnx.__version__}')"),
              (PADDLE_PYTHON, "paddle", "import paddle, paddle2onnx; print(f'PaddlePaddle {paddle.__version__}, "
               "paddle2onnx {paddle2onnx.__version__}')")]
    for python, _, code in probes:
        if not python.exists():
            continue
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        lines = done.stdout.strip().splitlines()
        if done.returncode == 0 and lines:
            parts.append(lines[-1])
    return "; ".join(parts)


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return done.stdout.strip() + (" + uncommitted changes" if dirty else "")


def table(results: dict, columns: list[str]) -> str:
    header = "| family | model (size) | " + " | ".join(COLUMNS[c] for c in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for row in ROWS:
        cells = results.get(row.key, {})
        what = f"{'timm' if row.framework == 'timm' else ''} {row.name}".strip() + f" ({row.size})"
        texts = [cells.get(c, {}).get("text", "not run").replace("|", "\\|") for c in columns]
        lines.append(f"| {row.family} | {what} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def counts(results: dict, columns: list[str]) -> str:
    tally: dict[str, int] = {}
    for row in ROWS:
        for column in columns:
            status = results.get(row.key, {}).get(column, {}).get("status", "not run")
            tally[status] = tally.get(status, 0) + 1
    order = ["exact", "runs", "differs", "error", "export", "not tested", "n/a", "not run"]
    return ", ".join(f"{tally[k]} {k}" for k in order if tally.get(k))


LEGEND = ("**exact (e)**: loads, Grad-CAM/saliency/occlusion give finite maps of the right shape, and the input "
          "gradient equals the framework's autograd on the same weights to relative error e (torch and Keras: ReLU and "
          "max-pool decisions pinned to the ONNX forward's; fp16: against the float32 model, exact means <= 1e-2); "
          "**runs**: "
          "loads and explains, no reference; **differs (e)**: loads and explains, gradient off by e; otherwise the "
          "first line of the error (typed errors by class name; \"untyped ...\" is a bug); \"export fails\": the "
          "exporter, not onnx_cnnviz; —: the column is not this framework's.")


def document(results: dict, columns: list[str], meta: dict) -> str:
    return "\n".join([
        "# What loads",
        "",
        "Generated by `benchmarks/what_loads.py` (do not edit by hand: rerun it). One representative model per family "
        "(random weights, fixed seed), exported by each exporter, loaded by `cv.load` and checked; batch of "
        f"{BATCH}, targets {TARGETS}.",
        "",
        f"Measured {meta['date']} at commit {meta['commit']}, in {meta['seconds'] / 60:.0f} minutes on "
        f"{meta['cpus']} CPU cores{' (exports already in .cache/what_loads reused)' if not meta['fresh'] else ''}. "
        f"{meta['versions']}.",
        "",
        table(results, columns),
        "",
        f"Cells: {counts(results, columns)}.",
        "",
        LEGEND,
        "",
        "Columns: *TorchScript*: `torch.onnx.export(dynamo=False)`, dynamic batch (tests/conftest.py's export_onnx); "
        "*dynamo*: `torch.onnx.export(dynamo=True, opset_version=18)` with `dynamic_shapes` for the batch (traced at "
        "batch 2: torch.export specialises a size of 1, and traced at batch 1 ConvNeXt and Swin fail with \"Invalid "
        "ranges [2:1]\"), or without (*static batch*: exported at batch 1, run at batch 2); *tf2onnx NCHW / NHWC*: "
        "`onnx_cnnviz.converters.keras.export` with the input transposed (`inputs_as_nchw`) or kept NHWC "
        "(`keep_nhwc=True`, what plain tf2onnx gives); *uint8 input*: the model behind a front that takes raw "
        "(N, H, W, 3) uint8 pixels and casts, transposes and normalises them inside the graph (torch: a wrapper module "
        "exported with TorchScript; Keras: `keras.Input(dtype=\"uint8\")` -> `Rescaling` -> the model, tf2onnx NHWC), "
        "fed raw pixels, gradients with respect to the pixel values; *fp16*: the TorchScript (torch) or tf2onnx NHWC "
        "(Keras) file converted by `onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=False)`; "
        "*Paddle*: the same family from `paddle.vision.models`, `paddle.onnx.export` (paddle2onnx), opset 17, "
        "reference `paddle.grad` (unpinned); *CNTK*: what pip finds (`pip index versions cntk`).",
        "",
    ])


#: Sections of docs/what_loads.md written by other sweeps (benchmarks/hf_sweep.py, benchmarks/memory_phases.py), kept
#: when this one rewrites the file.
KEPT = [("<!-- memory_phases:begin -->", "<!-- memory_phases:end -->"),
        ("<!-- hf_sweep:begin -->", "<!-- hf_sweep:end -->")]


def kept_sections(doc: Path) -> str:
    text = doc.read_text() if doc.exists() else ""
    parts = []
    for begin, end in KEPT:
        if begin in text and end in text:
            parts.append("\n" + text[text.index(begin):text.index(end) + len(end)] + "\n")
    return "".join(parts)


def write_readme(results: dict, columns: list[str], meta: dict) -> bool:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        return False
    block = "\n".join([BEGIN,
                       f"<!-- generated by benchmarks/what_loads.py ({meta['date']}, commit {meta['commit']}); "
                       "do not edit by hand -->",
                       "", table(results, columns), "", f"Cells: {counts(results, columns)}. " + LEGEND,
                       "Versions and details: [docs/what_loads.md](docs/what_loads.md).", "", END])
    start, end = text.index(BEGIN), text.index(END) + len(END)
    README.write_text(text[:start] + block + text[end:])
    return True


def select(items, only: str | None, key) -> list:
    if not only:
        return list(items)
    wanted = [w.strip().lower() for w in only.split(",") if w.strip()]
    return [item for item in items if any(w in key(item).lower() for w in wanted)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="rows whose family contains one of these (comma-separated, any case)")
    parser.add_argument("--columns", help="columns (keys: " + ", ".join(COLUMNS) + ")")
    parser.add_argument("--cell-timeout", type=float, default=300.0, help="seconds per cell (default 300)")
    parser.add_argument("--fresh", action="store_true", help="export again instead of using .cache/what_loads")
    parser.add_argument("--write", action="store_true", help="write docs/what_loads.md and the README after a "
                        "partial run (--only/--columns) too")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.columns.split(","), Path(args.log), args.fresh)

    rows = select(ROWS, args.only, lambda r: f"{r.family} {r.name}")
    columns = select(COLUMNS, args.columns, lambda c: c)
    if not rows or not columns:
        parser.error("no row or column matches --only / --columns")
    CACHE.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    started = time.time()
    CNTK_TEXT[0] = cntk_status() if "cntk" in columns else ""

    def log(message):
        print(message, flush=True)

    for row in rows:
        log(f"{row.family} ({row.framework} {row.name}, {row.size}x{row.size})")
        results.setdefault(row.key, {}).update(run_row(row, columns, args.cell_timeout, args.fresh, log))
        RESULTS.write_text(json.dumps(results, indent=1))
    partial = args.only or args.columns
    print("\n" + table({r.key: results.get(r.key, {}) for r in ROWS}, list(COLUMNS)))
    if partial and not args.write:
        return 0
    meta = {"date": datetime.date.today().isoformat(), "commit": commit(), "seconds": time.time() - started,
            "cpus": os.cpu_count(), "versions": versions(), "fresh": args.fresh}
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(document(results, list(COLUMNS), meta) + kept_sections(DOC))
    wrote = write_readme(results, list(COLUMNS), meta)
    print(f"\nwrote {DOC.relative_to(ROOT)}" + (" and the README's table" if wrote else
                                              f" (README has no {BEGIN} ... {END} markers)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
