"""Weakly supervised localisation accuracy of CAM, Grad-CAM and saliency+GrabCut on the reference GAP CNN.

    .venv/bin/python benchmarks/localisation.py [--model models/gap_cnn.onnx] [--n 500] [--seed TEST_SEED]
                                                [--threshold 0.2] [--threads 2] [--write]

In the manner of Table 2 of the CAM paper (Zhou et al., CVPR 2016), on ``--n`` held-out images of
``models/shapes_dataset.py`` (regenerated from ``--seed``, by default ``shapes_dataset.TEST_SEED``, which training never
uses), each with one object and its ground-truth box:

* **top-1 loc**: the top-1 class is right AND the box drawn for it has IoU >= 0.5 with the ground truth (the paper
  reports the error, 1 - this);
* **box (top-1 class)**: IoU >= 0.5 for the box of the predicted class, right or wrong;
* **box (GT class)**: IoU >= 0.5 for the box of the true class ("GT-known" localisation);
* **mean IoU**: of the predicted-class box.

Methods: ``localise(m, x, method=...)`` with "cam" and "gradcam" (threshold at ``--threshold`` of the map's maximum,
largest connected component; Zhou et al. Sec. 3.1) and "saliency" (GrabCut seeded by the 95% / 30% saliency
quantiles; Simonyan et al. Sec. 6). Baselines that look at no map: the whole image, and a centred box of the mean
ground-truth size (estimated on the training seed, not on the test images). A second table sweeps CAM's threshold
(20% is Zhou et al.'s choice for ImageNet, not tuned here). On a GAP -> linear head Grad-CAM's channel weights are
CAM's divided by the map's area, so the two rows agree (Selvaraju et al., Sec. 3.1). Times are wall-clock for each
method over all the images (the scores run once first, outside the timings). ``--write`` puts both tables, with the
date, commit and machine, in ``docs/guides/localisation.md`` (between its ``localisation`` markers).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(ROOT))

import pages  # noqa: E402  (benchmarks/pages.py: this script's folder is on sys.path)
import shapes_dataset as sd  # noqa: E402

PAGE = ROOT / "docs" / "guides" / "localisation.md"

METHODS = (("CAM, 20% threshold", "cam"), ("Grad-CAM, 20% threshold", "gradcam"),
           ("saliency + GrabCut", "saliency"))


def centre_box(width: float, height: float, size: int = sd.SIZE) -> tuple:
    x0, y0 = int(round((size - width) / 2)), int(round((size - height) / 2))
    return (x0, y0, x0 + int(round(width)), y0 + int(round(height)))


def evaluate(boxes_pred, boxes_gt, boxes_gt_class, correct) -> dict:
    from onnx_cnnviz import iou

    ious = np.array([iou(p, g) for p, g in zip(boxes_pred, boxes_gt)])
    ious_gt = np.array([iou(p, g) for p, g in zip(boxes_gt_class, boxes_gt)])
    hit = ious >= 0.5
    return {"top1_loc": float((hit & correct).mean()), "box_top1": float(hit.mean()),
            "box_gt": float((ious_gt >= 0.5).mean()), "miou": float(ious.mean())}


def run_benchmark(model_path: Path, n: int, seed: int, threshold: float = 0.2, threads: int | None = None,
                  methods=METHODS, sweep_thresholds=(), log=print) -> dict:
    """Returns ``{"classification": acc, "rows": [(name, metrics, seconds)], "n": n, "sweep": [(threshold,
    metrics)]}``; the sweep is CAM's box at each of ``sweep_thresholds`` for the predicted class."""
    import onnx_cnnviz as cv
    from onnx_cnnviz.image import Preprocessing, preprocess
    from onnx_cnnviz.methods.localise import box_from_map, localise

    start = time.perf_counter()
    images, labels, boxes = sd.make_dataset(n, seed)
    gt = [tuple(int(v) for v in b) for b in boxes]
    log(f"generated {n} test images (seed {seed}) in {time.perf_counter() - start:.1f} s")

    m = cv.load(model_path, device="cpu", threads=threads)
    prep = Preprocessing.from_metadata(m.metadata)
    x = preprocess(images, prep)
    pred = m.scores(x).argmax(1)
    correct = pred == labels
    rows = []

    whole = [(0, 0, sd.SIZE, sd.SIZE)] * n
    rows.append(("whole image (baseline)", evaluate(whole, gt, whole, correct), 0.0))
    _, _, train_boxes = sd.make_dataset(1000, seed=0)  # mean object size from the training distribution
    mean_wh = (train_boxes[:, 2:] - train_boxes[:, :2]).mean(0)
    centre = [centre_box(*mean_wh)] * n
    rows.append((f"centred {mean_wh[0]:.0f}x{mean_wh[1]:.0f} box (baseline)", evaluate(centre, gt, centre, correct),
                 0.0))

    for name, method in methods:
        t0 = time.perf_counter()
        kwargs = {"pictures": list(images)} if method == "saliency" else {}
        top1 = localise(m, x, method=method, top=1, threshold=threshold, **kwargs)
        boxes_top1 = [loc[0].box for loc in top1]
        seconds = time.perf_counter() - t0
        # GT-known: the true class's box; the same as top-1's where the prediction is right, so only the rest re-run.
        boxes_gt_class = list(boxes_top1)
        wrong = np.flatnonzero(~correct)
        if wrong.size:
            t0 = time.perf_counter()
            extra = localise(m, x[wrong], method=method, targets=labels[wrong], threshold=threshold,
                             **({"pictures": [images[i] for i in wrong]} if method == "saliency" else {}))
            for i, loc in zip(wrong, extra):
                boxes_gt_class[i] = loc[0].box
            seconds += time.perf_counter() - t0
        rows.append((name, evaluate(boxes_top1, gt, boxes_gt_class, correct), seconds))
        log(f"{name}: {seconds:.1f} s")
    sweep = []
    if sweep_thresholds:
        maps = cv.cam(m, x, pred, normalize=False)  # what localise(method="cam") thresholds
        for th in sweep_thresholds:
            boxes_th = [box_from_map(h, th)[1] for h in maps]
            sweep.append((th, evaluate(boxes_th, gt, boxes_th, correct)))
    return {"classification": float(correct.mean()), "rows": rows, "n": n, "sweep": sweep}


def markdown(result: dict) -> str:
    lines = ["| method | top-1 loc acc | box acc (top-1 class) | box acc (GT class) | mean IoU | time (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r, seconds in result["rows"]:
        lines.append(f"| {name} | {r['top1_loc']:.3f} | {r['box_top1']:.3f} | {r['box_gt']:.3f} | {r['miou']:.3f} | "
                     f"{seconds:.1f} |")
    return "\n".join(lines)


def sweep_markdown(result: dict) -> str:
    lines = ["| CAM threshold (fraction of max) | top-1 loc acc | box acc (top-1 class) | mean IoU |",
             "|---:|---:|---:|---:|"]
    for th, r in result["sweep"]:
        lines.append(f"| {th:g} | {r['top1_loc']:.3f} | {r['box_top1']:.3f} | {r['miou']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "gap_cnn.onnx")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=sd.TEST_SEED)
    parser.add_argument("--threshold", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sweep", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                        help="also report CAM's accuracy at these thresholds (none: skip)")
    parser.add_argument("--write", action="store_true",
                        help=f"write the tables into {PAGE.relative_to(ROOT)} (section localisation)")
    args = parser.parse_args()

    import onnxruntime as ort

    start = time.perf_counter()
    result = run_benchmark(args.model, args.n, args.seed, args.threshold, args.threads, sweep_thresholds=args.sweep,
                           log=lambda s: print(s, file=sys.stderr, flush=True))
    total = time.perf_counter() - start
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/localisation.py", *sys.argv[1:]])
    print(f"# {command}")
    print(f"# {args.model.name}: {result['n']} held-out images (seed {args.seed}), IoU >= 0.5, CAM threshold "
          f"{args.threshold:g}; onnxruntime {ort.__version__}, CPU")
    print(f"# top-1 classification accuracy: {result['classification']:.3f}")
    print()
    print(markdown(result))
    print()
    if result["sweep"]:
        print(sweep_markdown(result))
        print()
    print(f"# total {total:.1f} s (data generation, model load and scoring included)")
    if args.write:
        pages.write_section(PAGE, "localisation", section(result, args, command, total, ort.__version__))
        print(f"wrote the localisation section of {PAGE.relative_to(ROOT)}")


def section(result: dict, args, command: str, total: float, ort_version: str) -> str:
    """The guide's "Measured" tables, with what they say computed from them (CAM against Grad-CAM, the best
    threshold of the sweep)."""
    lines = [pages.header("benchmarks/localisation.py", command, f"The whole run took {total:.0f} s."), "",
             f"`{args.model.name}`: {result['n']} held-out images (seed {args.seed}), one object each, IoU >= 0.5, CAM "
             f"threshold {args.threshold:g} of the map's maximum, largest connected component; top-1 classification "
             f"accuracy {result['classification']:.3f}; onnxruntime {ort_version}, CPU. The script's docstring "
             "defines the columns.", "", markdown(result)]
    rows = {name: r for name, r, _ in result["rows"]}
    cam = next((r for name, r in rows.items() if name.startswith("CAM")), None)
    gradcam = next((r for name, r in rows.items() if name.startswith("Grad-CAM")), None)
    if cam is not None and gradcam is not None:
        same = all(abs(cam[k] - gradcam[k]) < 1e-12 for k in cam)
        lines += ["", "CAM and Grad-CAM " + ("coincide, as they must on a GAP + linear head (Selvaraju et al., "
                                             "Sec. 3.1)." if same else "differ on this model.")]
    if result["sweep"]:
        best = max(result["sweep"], key=lambda t: t[1]["top1_loc"])
        lines += ["", sweep_markdown(result), "",
                  f"The best threshold of the sweep is {best[0]:g} (top-1 localisation accuracy "
                  f"{best[1]['top1_loc']:.3f}); the paper's {args.threshold:g} was chosen for ImageNet, not tuned "
                  "here."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
