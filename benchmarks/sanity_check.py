"""The model randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018) on the
flagship model: how far each method's map moves when the trained weights are destroyed, block by block from the
logits down.

    .venv/bin/python benchmarks/sanity_check.py [--stages 10] [--mode cascading] [--seed 0] [--init normal]
                                                [--out docs] [--photos chelsea coffee astronaut rocket]

Builds EfficientNet-Lite0 (``models/build_efficientnet_lite0.py``, kept when already built) and the sample
photographs (``models/sample_images.py``, into ``out/samples``), runs
:func:`onnx_cnnviz.metrics.sanity.randomisation_check` with every gradient method of the paper's Fig. 2 that the
registry has (gradient, gradient x input, integrated gradients, SmoothGrad, guided backprop, Grad-CAM, Guided
Grad-CAM; their registry defaults, but 16 integrated-gradients steps and 10 SmoothGrad samples to keep the run
short), and writes into ``--out``:

* ``sanity_check.md``: the mean Spearman rank correlation of the absolute maps per stage and method (and of the
  signed maps, and SSIM), with the command line that made it and its run time;
* ``sanity_check.png``: the paper's Fig. 2-style curves: rank correlation (absolute maps) against the stage, one
  line per method, the trained model first (1 by definition).

Prints the tables too. About 10 minutes on 2 busy CPU cores with the defaults.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnx_cnnviz import image as im  # noqa: E402
from onnx_cnnviz.methods import registry  # noqa: E402
from onnx_cnnviz.metrics import sanity  # noqa: E402

MODEL = ROOT / "models" / "efficientnet_lite0.onnx"
SAMPLES = ROOT / "out" / "samples"
#: The paper's methods, as this library names them, in the order of its Fig. 2.
METHODS = ("saliency", "ixg", "ig", "smoothgrad", "guided", "gradcam", "guided-gradcam")
TITLES = {"saliency": "Gradient", "ixg": "Gradient x input", "ig": "Integrated gradients",
          "smoothgrad": "SmoothGrad", "guided": "Guided backprop", "gradcam": "Grad-CAM",
          "guided-gradcam": "Guided Grad-CAM"}
MEASURE_TITLES = {"spearman_abs": "Spearman rank correlation, absolute maps",
                  "spearman": "Spearman rank correlation, signed maps",
                  "ssim": "SSIM of the [0, 1] absolute maps"}


def _script(name: str):
    """models/NAME.py as a module (models/ is a folder of scripts, not a package)."""
    path = ROOT / "models" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_cnnviz_models_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def table(result: sanity.SanityResult, measure: str) -> str:
    """A Markdown table: one row per stage (the trained model first), one column per method."""
    means = result.mean(measure)
    head = "| stage | randomised down to | " + " | ".join(TITLES.get(n, n) for n in result.methods) + " |"
    rule = "|---:|---|" + "---:|" * len(result.methods)
    rows = [head, rule, "| 0 | (trained model) | " + " | ".join("1.000" for _ in result.methods) + " |"]
    for k, stage in enumerate(result.stages):
        cells = " | ".join("n/a" if not np.isfinite(means[n][k]) else f"{means[n][k]:.3f}" for n in result.methods)
        rows.append(f"| {k + 1} | `{stage}` | {cells} |")
    return "\n".join(rows)


def plot(result: sanity.SanityResult, path: Path) -> Path:
    """The paper's Fig. 2-style curves with matplotlib (OpenCV when matplotlib is missing)."""
    try:
        import matplotlib
    except ImportError:
        return _plot_cv2(result, path)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = result.mean("spearman_abs")
    labels = ["trained"] + [s.split(" .. ")[-1] for s in result.stages]
    fig, ax = plt.subplots(figsize=(11.5, 5.2), dpi=110)
    for name in result.methods:
        ax.plot(range(len(labels)), np.r_[1.0, means[name]], marker="o", ms=4, label=TITLES.get(name, name))
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(-0.2, 1.05)
    ax.set_ylabel("rank correlation with the trained model's map (abs)")
    ax.set_xlabel(f"{result.mode} randomisation, from the logits down to ...")
    ax.set_title(f"Model randomisation test, EfficientNet-Lite0, {len(result.targets)} photos "
                 f"(init={result.init}, seed={result.seed})", fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: no curve hidden
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_cv2(result: sanity.SanityResult, path: Path) -> Path:
    import cv2

    w, h, margin = 900, 480, 60
    img = np.full((h, w, 3), 255, np.uint8)
    means = result.mean("spearman_abs")
    n = len(result.stages) + 1
    px = lambda i: int(margin + i * (w - 2 * margin) / max(n - 1, 1))  # noqa: E731
    py = lambda v: int(h - margin - (v + 0.2) / 1.25 * (h - 2 * margin))  # noqa: E731
    cv2.line(img, (margin, py(0)), (w - margin, py(0)), (160, 160, 160), 1)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194)]
    for j, name in enumerate(result.methods):
        values = np.r_[1.0, np.nan_to_num(means[name])]
        colour = colours[j % len(colours)][::-1]
        for i in range(1, n):
            cv2.line(img, (px(i - 1), py(values[i - 1])), (px(i), py(values[i])), colour, 2)
        cv2.putText(img, TITLES.get(name, name), (margin + 5, 20 + 16 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
    cv2.imwrite(str(path), img)
    return path


def summary(result: sanity.SanityResult, threshold: float = 0.5) -> str:
    """Per method: the first stage whose mean rank correlation (absolute maps) is below ``threshold``, and the value
    once every layer is randomised (the last cascading stage)."""
    means = result.mean("spearman_abs")
    rows = [f"| method | first stage below {threshold} | stage 1 | last stage |", "|---|---|---:|---:|"]
    for name in result.methods:
        below = np.flatnonzero(means[name] < threshold)
        first = f"{below[0] + 1} (`{result.stages[below[0]]}`)" if below.size else "never"
        rows.append(f"| {TITLES.get(name, name)} | {first} | {means[name][0]:.3f} | {means[name][-1]:.3f} |")
    return "\n".join(rows)


def markdown(result: sanity.SanityResult, command: str, seconds: float, photos: list) -> str:
    params = result.details.get("params", {})
    names = ", ".join(f"`{n}`" + (" (" + ", ".join(f"{k}={v}" for k, v in params[n].items()) + ")"
                                  if params.get(n) else "") for n in result.methods)
    top1 = ", ".join(str(int(t)) for t in result.targets)
    lines = [
        "# Model randomisation sanity check (Adebayo et al. 2018) on EfficientNet-Lite0",
        "",
        "Written by `benchmarks/sanity_check.py`; regenerate with:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"{result.mode.capitalize()} randomisation of the flagship model's learned weights, from the logits down "
        f"({len(result.stages)} stages over the model's blocks; stage k randomises every learnable layer from the "
        f"logits down to the block named), on {len(photos)} sample photographs ({', '.join(photos)}) at 224 px, "
        f"preprocessed as the model's metadata says ({result.details.get('preprocessing', 'see the model')}). "
        f"Weights re-drawn with `init={result.init!r}`, seed {result.seed} "
        "(see `onnx_cnnviz/metrics/sanity.py`). Each randomised model explains the trained model's top-1 class "
        f"({top1}). Methods (registry names; default parameters unless given): {names}. "
        f"Run time {seconds:.0f} s on {os.cpu_count()} {platform.machine()} CPU cores (shared with other jobs).",
        "",
        "![rank correlation against the stage](sanity_check.png)",
        "",
        "Where each method's map parts from the trained model's (mean Spearman rank correlation of the absolute "
        "maps):",
        "",
        summary(result),
        "",
    ]
    for measure in sanity.MEASURES:
        lines += [f"## Mean {MEASURE_TITLES[measure]}", "", table(result, measure), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, default=10, help="stages over the model's blocks (default 10)")
    parser.add_argument("--mode", choices=sanity.MODES, default="cascading")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", choices=sanity.INITS, default="normal")
    parser.add_argument("--photos", nargs="+", default=["chelsea", "coffee", "astronaut", "rocket"])
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m in registry.names()))
    parser.add_argument("--ig-steps", type=int, default=16, help="integrated gradients' steps (registry default 50; "
                        "fewer keep the run short, and the rank correlations barely move)")
    parser.add_argument("--sg-samples", type=int, default=10, help="SmoothGrad's noisy samples (registry default 25)")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for sanity_check.md/.png")
    args = parser.parse_args(argv)
    start = time.time()

    def log(message):
        print(f"[{time.time() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    model = _script("build_efficientnet_lite0").build(MODEL, log=log)
    samples = {p.stem: p for p in _script("sample_images").write_samples(SAMPLES, args.photos)}
    import onnx

    # The preprocessing the model records (TF-Lite's (x - 127) / 128, shorter side 256 + centre crop 224).
    prep = im.Preprocessing.from_metadata({p.key: p.value for p in onnx.load(str(model),
                                                                              load_external_data=False).metadata_props})
    x = im.preprocess([samples[name] for name in args.photos], preset=prep)
    methods = tuple(args.methods.split(","))
    params = {"ig": {"steps": args.ig_steps}, "smoothgrad": {"samples": args.sg_samples}}
    params = {name: value for name, value in params.items() if name in methods}

    def progress(done, total):
        log(f"{done}/{total} stage x method done")

    result = sanity.randomisation_check(model, x, methods, stages=args.stages, mode=args.mode, seed=args.seed,
                                        init=args.init, method_params=params, load_options={"device": "cpu"},
                                        progress=progress)
    seconds = time.time() - start
    result.details["params"] = params
    result.details["preprocessing"] = prep.describe()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    command = f".venv/bin/python benchmarks/sanity_check.py {argv_text}".rstrip()
    (out / "sanity_check.md").write_text(markdown(result, command, seconds, args.photos))
    plot(result, out / "sanity_check.png")
    for measure in sanity.MEASURES:
        print(f"\n{MEASURE_TITLES[measure]}\n{table(result, measure)}")
    log(f"wrote {out / 'sanity_check.md'} and {out / 'sanity_check.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
