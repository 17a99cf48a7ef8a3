"""Pointing game, energy-based pointing game and localisation accuracy of the map methods on the reference GAP CNN.

    .venv/bin/python benchmarks/pointing_game.py [--model models/gap_cnn.onnx] [--n 500] [--seed TEST_SEED]
                                                 [--methods cam,gradcam,...] [--tolerance 15] [--small-tolerance 4]
                                                 [--threads N] [--out docs/pointing_game.md | --no-write]

On ``--n`` held-out images of ``models/shapes_dataset.py`` (the data of ``benchmarks/localisation.py``: seed
``shapes_dataset.TEST_SEED``, which training never uses; one object per 64x64 image and its tight box), each method of
:mod:`onnx_cnnviz.methods.registry` explains the image's true class (the pointing game's protocol: a map per class
present in the image; "GT-known" localisation) with its registry defaults, and :func:`onnx_cnnviz.metrics.localisation`
scores the maps against the box:

* **PG @15 px**: Zhang et al.'s pointing game with the paper's 15 px tolerance. On 64x64 images whose objects are
  14-39 px across that tolerance is lenient (a third of the image side can miss the box and still count), so
* **PG @4 px**: the same with 15 px scaled from a 224 px input to 64 px (15 * 64 / 224 = 4.3);
* **energy PG**: Score-CAM's energy-based pointing game, the share of the map's positive part inside the box;
* **loc (GT-known)**: the box of the map's largest region at >= 20% of its maximum has IoU >= 0.5 with the truth;
* **loc (top-1)**: that, and the model's top-1 class is right (CAM's Table 2 metric).

Maps are each method's default output (``registry.explain``: the CAM family and saliency min-max normalised; signed
methods raw). (N, C, H, W) results (guided backprop, SmoothGrad, IG, ...) are reduced per pixel by the max over
channels of ``|value|``, TorchRay's reduction of gradients for its pointing game (``--channels`` changes it).
Baselines that look at no image: a centred Gaussian (sigma = a quarter of the side; its first maximum is pixel
(31, 31), next to TorchRay's "center" point (32, 32)), and a uniform random map (seed 0). A last row repeats
CAM with raw maps (``normalize=False``, what ``localise(method="cam")`` thresholds), so its GT-known column is
``benchmarks/localisation.py``'s "box acc (GT class)" for CAM. Times are wall-clock seconds to compute each method's
maps for all images (the scores run once first, outside the timings).
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

import localisation as loc_bench  # noqa: E402  (benchmarks/localisation.py: its data, its shapes_dataset)

sd = loc_bench.sd
METHODS = ("cam", "gradcam", "gradcampp", "hirescam", "xgradcam", "layercam", "eigencam", "scorecam", "saliency",
           "guided", "deconvnet", "guided-gradcam", "ixg", "smoothgrad", "ig", "occlusion")
COLUMNS = ("PG @{tol} px", "PG @{small} px", "energy PG", "loc (GT-known)", "loc (top-1)")


def gaussian_maps(n: int, size: int) -> np.ndarray:
    """(n, size, size) centred Gaussians, sigma = size / 4."""
    c = (size - 1) / 2.0
    g = np.exp(-((np.arange(size) - c) ** 2) / (2 * (size / 4.0) ** 2))
    return np.broadcast_to(np.outer(g, g).astype(np.float32), (n, size, size)).copy()


def random_maps(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size) uniform random maps."""
    return np.random.default_rng(seed).random((n, size, size)).astype(np.float32)


def score(m, x, maps, boxes, labels, tolerance, small, channels) -> list:
    """The five columns for one set of maps."""
    from onnx_cnnviz import metrics

    r = metrics.localisation(m, x, maps, boxes, labels, tolerance=tolerance, variant="top-1", channels=channels)
    near = metrics.pointing_game(m, x, maps, labels, boxes=boxes, tolerance=small, channels=channels)
    acc = r["localisation-accuracy"]
    return [r["pointing-game"].mean(), near.mean(), r["energy-pointing-game"].mean(),
            float(acc.details["gt_known"].mean()), acc.mean()]


def run_benchmark(model_path: Path, n: int, seed: int, methods=METHODS, tolerance: float = 15, small: float = 4,
                  channels: str = "max-abs", threads: int | None = None, log=print) -> dict:
    """``{"rows": [(name, [5 values], seconds)], "classification": acc, "n": n}``."""
    import onnx_cnnviz as cv
    from onnx_cnnviz.image import Preprocessing, preprocess
    from onnx_cnnviz.methods import registry
    from onnx_cnnviz.metrics import Box

    start = time.perf_counter()
    images, labels, gt = sd.make_dataset(n, seed)
    log(f"generated {n} test images (seed {seed}) in {time.perf_counter() - start:.1f} s")
    m = cv.load(model_path, device="cpu", threads=threads)
    x = preprocess(images, Preprocessing.from_metadata(m.metadata))
    correct = m.scores(x).argmax(1) == labels
    boxes = [[Box(*(int(v) for v in b), label=int(c))] for b, c in zip(gt, labels)]
    side = x.shape[-1]
    rows = [("centred Gaussian (baseline)", score(m, x, gaussian_maps(n, side), boxes, labels, tolerance, small,
                                                  channels), 0.0),
            ("uniform random (baseline)", score(m, x, random_maps(n, side), boxes, labels, tolerance, small,
                                                channels), 0.0)]
    for name in methods:
        t0 = time.perf_counter()
        maps = registry.explain(m, name, x, labels)
        seconds = time.perf_counter() - t0
        rows.append((name, score(m, x, maps, boxes, labels, tolerance, small, channels), seconds))
        log(f"{name}: {seconds:.1f} s")
    if "cam" in methods:
        raw = cv.cam(m, x, labels, normalize=False)
        rows.append(("cam, raw maps (as localise)", score(m, x, raw, boxes, labels, tolerance, small, channels),
                     0.0))
    return {"rows": rows, "classification": float(correct.mean()), "n": n}


def markdown(result: dict, tolerance: float, small: float) -> str:
    heads = [c.format(tol=f"{tolerance:g}", small=f"{small:g}") for c in COLUMNS]
    lines = ["| method | " + " | ".join(heads) + " | time (s) |", "|---|" + "---:|" * (len(heads) + 1)]
    for name, values, seconds in result["rows"]:
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {seconds:.1f} |")
    return "\n".join(lines)


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"commit {head}" + (" + uncommitted changes" if dirty else "")


NOTES = """\
Conventions (`onnx_cnnviz/metrics/pointing.py`): the pointing game's point is the map's first maximum in raster
order and a hit is a point inside the box or at distance d < tolerance from its nearest pixel (TorchRay's test); the
energy is the map's positive part; localisation boxes come from `methods.localise.box_from_map` (20% of the maximum,
largest 8-connected component) and `onnx_cnnviz.iou`. Every value is a mean over images (TorchRay reports the mean of
per-class means; the six classes are near balanced here). With n = 500 a proportion near 0.5 has a 95% interval of
about +-0.044, near 0.9 of +-0.026."""


def reading(result: dict, tolerance: float, small: float) -> str:
    """What the table says, computed from it: the baseline's score at each tolerance, Grad-CAM against saliency, the
    CAM-family rows that coincide, and the raw-CAM row against benchmarks/localisation.py's definition."""
    rows = {name: values for name, values, _ in result["rows"]}
    lines = []
    gauss = rows.get("centred Gaussian (baseline)")
    if gauss is not None:
        lines.append(f"A centred Gaussian that looks at no image scores {gauss[0]:.3f} at {tolerance:g} px and "
                     f"{gauss[1]:.3f} at {small:g} px: on 64x64 images with 14-39 px objects the paper's tolerance "
                     "barely separates methods; the tighter tolerance, the energy share and the box IoU do.")
    if "gradcam" in rows and "saliency" in rows:
        g, s = rows["gradcam"], rows["saliency"]
        lines.append("Grad-CAM against saliency: " + ", ".join(
            f"{head.format(tol=f'{tolerance:g}', small=f'{small:g}')} {a:.3f} vs {b:.3f}"
            for head, a, b in zip(COLUMNS, g, s)) + ".")
    same = [name for name in ("gradcam", "hirescam", "xgradcam") if name in rows and "cam" in rows
            and np.allclose(rows[name], rows["cam"])]
    if same:
        lines.append(f"{', '.join(same)} score as CAM: on a GAP -> linear head their maps are CAM's up to a positive "
                     "scale (Selvaraju et al., Sec. 3.1), which min-max normalisation removes.")
    if "cam, raw maps (as localise)" in rows:
        raw = rows["cam, raw maps (as localise)"]
        lines.append(f"CAM on raw maps: GT-known {raw[3]:.3f}, top-1 {raw[4]:.3f}, the localise + iou rule of "
                     "benchmarks/localisation.py (the localisation guide's table).")
    return " ".join(lines)


def document(result: dict, command: str, args, total: float, ort_version: str) -> str:
    return "\n".join([
        "# Pointing game on the reference GAP CNN", "",
        f"<!-- generated by benchmarks/pointing_game.py ({date.today().isoformat()}, {commit()}); do not edit by hand "
        "-->", "",
        "```bash", command, "```", "",
        f"`{args.model.name}`: {result['n']} held-out shapes images (seed {args.seed}), 64x64, one object each; maps "
        f"of the true class; gradient-type results reduced by `{args.channels}` over channels. Top-1 classification "
        f"accuracy {result['classification']:.3f}. onnxruntime {ort_version}, CPU; total {total:.0f} s.", "",
        markdown(result, args.tolerance, args.small_tolerance), "",
        reading(result, args.tolerance, args.small_tolerance), "",
        NOTES, ""])


def kept_sections(path: Path) -> str:
    """The sections other scripts write into this page (``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->``, as
    ``benchmarks/detector_pointing_game.py``'s), kept when this script rewrites the page."""
    if not path.is_file():
        return ""
    text, out = path.read_text(), []
    for name in ("detector_pointing_game",):
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin in text and end in text:
            out.append(text[text.index(begin):text.index(end) + len(end)])
    return "".join("\n" + part + "\n" for part in out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "gap_cnn.onnx")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=sd.TEST_SEED)
    parser.add_argument("--methods", default=",".join(METHODS), help="registry names, comma-separated")
    parser.add_argument("--tolerance", type=float, default=15)
    parser.add_argument("--small-tolerance", type=float, default=4)
    parser.add_argument("--channels", default="max-abs", choices=("sum", "abs-sum", "max-abs"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "pointing_game.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()

    import onnxruntime as ort

    start = time.perf_counter()
    methods = [name for name in args.methods.split(",") if name]
    result = run_benchmark(args.model, args.n, args.seed, methods, args.tolerance, args.small_tolerance,
                           args.channels, args.threads, log=lambda s: print(s, file=sys.stderr, flush=True))
    total = time.perf_counter() - start
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/pointing_game.py", *sys.argv[1:]])
    text = document(result, command, args, total, ort.__version__)
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + kept_sections(args.out))
        print(f"# written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
