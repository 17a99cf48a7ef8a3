"""Hugging Face classifiers: do they load, explain, and give torch's input gradient? (issue 26)

    .venv/bin/python benchmarks/hf_sweep.py [--models vit,deit,...] [--limit-gb 6] [--write]

Seven ``transformers`` image classifiers at their library's default configuration but for 10 labels and 224x224
input (ViT, DeiT, ConvNeXt, ResNet, Swin, EfficientNet-B0, MobileViT), random weights (seed 0), exported by
TorchScript at opset 17 (tests/exporting.py) and cached in ``.cache/hf_sweep``. Each model runs alone in a child
process, under a watchdog that ends it past ``--limit-gb`` of resident memory (the machine is shared); a model that
fails, times out or is stopped is a row that says so, and the sweep goes on.

Per model: ``cv.load``; Grad-CAM at the default layer, saliency and occlusion on two real photos
(``/work/shared/images/imagenet-sample``, ImageNet-normalised) must give finite maps of the image's size; the scores
must equal torch's logits; and the input gradient of the targets' scores must equal torch autograd's to a relative
error <= 1e-4 (the largest difference over the largest reference entry, as in benchmarks/what_loads.py, whose check
this reuses: ReLU networks compared with torch's activation pattern pinned to the ONNX forward's).

BatchNorm: the random initialisation of HF's convolutional models leaves activations that shrink block after block
(MobileViT's reach denormals, EfficientNet's underflow to exact zeros), and a comparison of zeros passes vacuously.
Models with BatchNorm get scales redrawn in [0.5, 1.5), shifts ~ N(0, 0.1), and running statistics calibrated on
real photos (train-mode forward, cumulative average) before export; the two photos compared are not among those.

``--write`` writes docs/validation/huggingface.md (every model measured so far, from ``.cache/hf_sweep/results.json``)
with the date, commit and machine (benchmarks/pages.py), and the counts and table into docs/what_loads.md's
``hf_sweep`` section (benchmarks/what_loads.py keeps it when it rewrites the page).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
for folder in (ROOT, HERE):  # tests/exporting.py and tests/reference.py; what_loads.py and pages.py beside this
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
CACHE = ROOT / ".cache" / "hf_sweep"
RESULTS = CACHE / "results.json"
PAGE = ROOT / "docs" / "validation" / "huggingface.md"
WHAT_LOADS = ROOT / "docs" / "what_loads.md"
PHOTOS = Path("/work/shared/images/imagenet-sample")
SIZE = 224
TARGETS = [1, 2]
CALIBRATION_PHOTOS = 16  # the first photos (sorted by name) calibrate BatchNorm; the next two are the batch compared
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

#: key -> (row name, transformers class names: model, config; config keyword arguments)
MODELS = {
    "vit": ("ViT (base, patch 16)", "ViTForImageClassification", "ViTConfig", {"image_size": SIZE}),
    "deit": ("DeiT (base, patch 16)", "DeiTForImageClassification", "DeiTConfig", {"image_size": SIZE}),
    "convnext": ("ConvNeXt (tiny)", "ConvNextForImageClassification", "ConvNextConfig", {"image_size": SIZE}),
    "resnet": ("ResNet-50", "ResNetForImageClassification", "ResNetConfig", {}),
    "swin": ("Swin (tiny, window 7)", "SwinForImageClassification", "SwinConfig", {"image_size": SIZE}),
    "efficientnet": ("EfficientNet-B0 (1280x1280 ceil-mode pooler)", "EfficientNetForImageClassification",
                     "EfficientNetConfig", {"image_size": SIZE, "width_coefficient": 1.0, "depth_coefficient": 1.0,
                                            "hidden_dim": 1280}),
    "mobilevit": ("MobileViT (small)", "MobileViTForImageClassification", "MobileViTConfig", {"image_size": SIZE}),
}


def photos(first: int, count: int) -> np.ndarray:
    """``count`` photos from the sample folder (sorted by name, from index ``first``), 224x224, ImageNet-normalised
    NCHW float32."""
    from PIL import Image

    files = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[first:first + count]
    batch = []
    for path in files:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float64) / 255.0
        batch.append(((rgb - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(batch).astype(np.float32)


def calibrate_batchnorm(model, batch) -> bool:
    """Redraw BatchNorm scales and shifts and set the running statistics to ``batch``'s (a train-mode forward with a
    cumulative average); returns whether the model has any BatchNorm."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in norms:
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            module.momentum = None
            module.reset_running_stats()
        model.train()
        model(torch.from_numpy(batch))
    model.eval()
    return True


def torch_model(key: str):
    """The classifier as a torch module pixels -> logits (eval mode, BatchNorm calibrated), and whether it has
    BatchNorm."""
    import torch
    import transformers

    _, model_class, config_class, kwargs = MODELS[key]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(num_labels=10, **kwargs)
    inner = getattr(transformers, model_class)(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(pixel_values=x).logits

    model = Logits(inner).eval()
    for module in model.modules():  # the pinned reference replaces F.relu: nothing may run in place
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    has_bn = calibrate_batchnorm(model, photos(0, CALIBRATION_PHOTOS))
    return model, has_bn


def measure_one(key: str) -> dict:
    """The child's work for one model: export (cached), then what_loads' check (load, maps, scores, gradient)."""
    import torch
    import transformers

    import what_loads
    from tests.exporting import export_torchscript

    model, has_bn = torch_model(key)
    path = CACHE / f"{key}_t{transformers.__version__}.onnx"
    start = time.perf_counter()
    if not path.exists():
        try:
            export_torchscript(model, torch.zeros(1, 3, SIZE, SIZE), path)
        except Exception as exc:  # noqa: BLE001 - the exporter's failure is the row's result
            return {"status": "export fails", "text": f"export fails: {what_loads.first_line(exc)}"}
    x = photos(CALIBRATION_PHOTOS, 2)
    import onnx_cnnviz as cv

    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    result = what_loads.check_cell(what_loads.Case(path, x, what_loads.torch_reference(model)))
    result["scores_err"] = what_loads.rel_err(cv.load(path, device="cpu").scores(x), logits)
    result["batchnorm_calibrated"] = has_bn
    result["file_mb"] = round(path.stat().st_size / 1e6, 1)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


WATCHDOG = """
import os, resource, sys, threading, time
def _watch(limit=int(sys.argv[-1])):
    page = resource.getpagesize()
    while True:
        with open("/proc/self/statm") as f:
            if int(f.read().split()[1]) * page > limit:
                sys.stdout.write('{"status": "stopped", "text": "stopped by the memory watchdog"}\\n')
                sys.stdout.flush()
                os._exit(3)
        time.sleep(0.1)
threading.Thread(target=_watch, daemon=True).start()
sys.argv = sys.argv[1:]
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_child(key: str, limit: int, timeout: float) -> dict:
    command = [sys.executable, "-c", WATCHDOG, __file__, "--one", key, str(limit)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "text": f"timed out ({timeout:.0f} s)"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    tail = proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else f"exit {proc.returncode}"
    return {"status": "crashed", "text": f"crashed: {tail}"}


def counts(results: dict) -> str:
    statuses = [entry["status"] for entry in results.values()]
    loaded = sum(s in ("exact", "differs", "runs") for s in statuses)
    return (f"{len(statuses)} models: {loaded} load and explain, {statuses.count('exact')} with the input gradient "
            f"equal to torch autograd (<= 1e-4), {statuses.count('differs')} differ, "
            f"{len(statuses) - loaded} fail")


def table(results: dict) -> str:
    lines = ["| model | file (MB) | BatchNorm calibrated | result | scores vs torch |", "|---|---|---|---|---|"]
    for key, entry in results.items():
        scores = f"{entry['scores_err']:.0e}" if "scores_err" in entry else "—"
        lines.append(f"| {MODELS[key][0]} | {entry.get('file_mb', '—')} | "
                     f"{'yes' if entry.get('batchnorm_calibrated') else 'no'} | {entry['text']} | {scores} |")
    return "\n".join(lines)


def write(results: dict) -> None:
    import transformers

    import pages

    missing = [MODELS[k][0] for k in MODELS if k not in results]
    text = "\n".join([
        "# Hugging Face classifiers", "",
        pages.header("benchmarks/hf_sweep.py", "python benchmarks/hf_sweep.py --write",
                     f"transformers {transformers.__version__}."), "",
        f"**{counts(results)}.**" + (f" Not measured: {', '.join(missing)}." if missing else ""), "",
        "Each `transformers` classifier at its library's default configuration but for 10 labels and 224x224 input, "
        "random weights (seed 0), TorchScript export at opset 17, run alone in a child process. *exact (e)*: "
        "`cv.load` loads it, Grad-CAM (default layer), saliency and occlusion give finite maps of the image's size "
        "on two ImageNet photos, and the input gradient of the scores of classes 1 and 2 equals torch autograd's to "
        "relative error e <= 1e-4 (ReLU networks against torch with its activation pattern pinned to the ONNX "
        "forward's, as on the [What loads](../what_loads.md) page). *scores vs torch*: the same relative error of "
        "the logits.", "",
        "Random BatchNorm statistics make HF's convolutional models vanish: activations shrink block after block "
        "until MobileViT's are denormals and EfficientNet's exact zeros, and zeros compare equal to anything. "
        "Models with BatchNorm (*BatchNorm calibrated*) get scales redrawn in [0.5, 1.5), shifts ~ N(0, 0.1) and "
        "running statistics computed on 16 other ImageNet photos before export.", "",
        "Peak memory per phase for these models is on the [What loads](../what_loads.md) page (benchmarks/"
        "memory_phases.py).", "",
        table(results)])
    pages.write_page(PAGE, text)
    # The What loads page carries the counts and the table too (benchmarks/what_loads.py keeps this section).
    pages.write_section(WHAT_LOADS, "hf_sweep", "\n".join([
        "## Hugging Face classifiers (issue 26)", "",
        f"**{counts(results)}**" + (f" (not measured: {', '.join(missing)})" if missing else "") + ": each "
        "`transformers` classifier at its default configuration (10 labels, 224x224), random weights, BatchNorm "
        "calibrated on ImageNet photos, TorchScript export at opset 17; measured "
        f"{pages.now()} at commit {pages.commit()} by `benchmarks/hf_sweep.py --write`, which writes the details "
        "on [the Hugging Face page](validation/huggingface.md).", "",
        table(results)]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--limit-gb", type=float, default=6.0, help="watchdog: resident size that ends a child")
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--write", action="store_true", help="write docs/validation/huggingface.md")
    parser.add_argument("--no-run", action="store_true", help="measure nothing (with --write: the saved results)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child: one model, a JSON line on stdout
    args, rest = parser.parse_known_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one)), flush=True)
        return 0
    unknown = [k for k in args.models.split(",") if k not in MODELS]
    if unknown or rest:
        parser.error(f"unknown models {unknown} (choose from {', '.join(MODELS)})" if unknown else f"unknown {rest}")
    CACHE.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for key in [] if args.no_run else args.models.split(","):
        results[key] = run_child(key, int(args.limit_gb * 1e9), args.timeout)
        print(key, json.dumps(results[key]), flush=True)
        RESULTS.write_text(json.dumps(results, indent=1))
    results = {k: results[k] for k in MODELS if k in results}  # the page's order
    print(table(results))
    print(counts(results))
    if args.write:
        write(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
