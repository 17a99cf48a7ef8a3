"""Incremental occlusion against the full occlusion graph over a window x stride grid, in one run.

    .venv/bin/python benchmarks/occlusion_grid.py [--models resnet18 mobilenet_v3_large resnet50] [--size 224]
        [--windows 16 32] [--strides 1 2 4 8 16] [--positions 64] [--repeat 3] [--captum]

Per model and (window, stride): the plan's estimated cost per window relative to a full forward
(``Plan.cost_fraction``), which graph :func:`onnx_cnnviz.occlusion` picks (``incremental`` when ``Plan.worthwhile``),
and the measured time per window of both graphs on the same ``--positions`` window positions (the first ones of the
grid: a dense stride has tens of thousands of windows, and the time per window does not depend on which), repeated
``--repeat`` times interleaved, median. ``measured`` is incremental / full; ``picked/full`` is the time of the graph
the library picks relative to the full graph (1.00 where it picks the full graph): the cost model is right when this
is never above 1. The models are torchvision architectures with fixed random weights (timings do not depend on the
weights). ``--captum`` adds ResNet-50 at batch 1, window 32 / stride 16 through :func:`onnx_cnnviz.occlusion` against
captum's ``Occlusion`` (perturbations_per_eval=32), whole maps, best of ``--repeat``.

Timings on a shared machine move with its load: compare numbers of one run only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.exporting import export_torchscript, torchvision_model  # noqa: E402  (the one export helper)


def export(arch: str, size: int, folder: Path) -> Path:
    import torch

    path = folder / f"{arch}.onnx"
    torch.manual_seed(0)
    return export_torchscript(torchvision_model(arch), torch.zeros(1, 3, size, size), path)


def per_window_times(m, x, window, stride, count: int, repeat: int):
    """Median seconds per window of the full graph and of the incremental one (None when nothing is incremental)."""
    from onnx_cnnviz.graph.occlusion import BASELINE, IMAGE, OUTPUT, POSITIONS, WINDOW, window_positions
    from onnx_cnnviz.methods.occlusion import incremental_plan, incremental_session, occlusion_session

    hw = x.shape[2:]
    positions = window_positions(hw, window, stride)[:count]
    fill = np.zeros(x.shape[1], dtype=np.float32)
    full = occlusion_session(m, hw)
    full_feed = {IMAGE: x, POSITIONS: positions, WINDOW: np.asarray(window, dtype=np.int64), BASELINE: fill}
    runs = {"full": lambda: full.run(full_feed, [OUTPUT])}
    if incremental_plan(m, hw, window, stride).incremental:
        inc = incremental_session(m, hw, window, stride)
        if inc is not None:
            originals = [n for n in inc.input_names if n not in (POSITIONS, BASELINE)]
            clean = m.run(x, outputs=[o for o in originals if o != m.input_name])
            feed = {POSITIONS: positions, BASELINE: fill,
                    **{o: x if o == m.input_name else clean.outputs[o] for o in originals}}
            runs["incremental"] = lambda: inc.run(feed, [OUTPUT])
    times = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(repeat):
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) / len(positions) for k, v in times.items()}


def captum_row(folder: Path, repeat: int, threads: int) -> str:
    import torch
    import torchvision
    from captum.attr import Occlusion

    import onnx_cnnviz as cv

    torch.set_num_threads(threads)
    path = export("resnet50", 224, folder)
    m = cv.load(path, device="cpu", threads=threads)
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    target = int(m.scores(x).argmax())
    occ = Occlusion(net)

    def ours():
        return cv.occlusion(m, x, window=32, stride=16)

    def theirs():
        with torch.no_grad():
            return occ.attribute(torch.from_numpy(x), sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16),
                                 baselines=0.0, target=target, perturbations_per_eval=32)
    a, b = ours(), theirs().numpy()[0].mean(axis=0)  # warm-up, and the two maps must agree
    diff = float(np.abs(a[0] - b).max() / max(np.abs(b).max(), 1e-12))
    t_ours, t_theirs = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs()
        t_theirs.append(time.perf_counter() - start)
    return (f"resnet50 batch 1 window 32 stride 16: ours {min(t_ours):.2f} s, captum {min(t_theirs):.2f} s, "
            f"speed-up {min(t_theirs) / min(t_ours):.2f}x (maps differ by {diff:.1e} of the largest)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["resnet18", "mobilenet_v3_large", "resnet50"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--windows", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--positions", type=int, default=64, help="windows timed per graph")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--captum", action="store_true")
    args = parser.parse_args()

    import onnx_cnnviz as cv
    from onnx_cnnviz.methods.occlusion import incremental_plan
    from onnx_cnnviz.runtime import default_threads

    threads = args.threads or default_threads()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} UTC, {threads} threads, {os.cpu_count()} cores (shared machine: "
          "other jobs run beside this one)")
    print(f"{'model':14s} {'window':>6s} {'stride':>6s} {'estimate':>8s} {'picks':>11s} {'full ms/win':>11s} "
          f"{'incr ms/win':>11s} {'measured':>8s} {'picked/full':>11s}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models:
            m = cv.load(export(arch, args.size, Path(tmp)), device="cpu", threads=threads)
            x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
            for window in args.windows:
                for stride in args.strides:
                    if stride > window:
                        continue
                    plan = incremental_plan(m, (args.size,) * 2, (window,) * 2, (stride,) * 2)
                    t = per_window_times(m, x, (window,) * 2, (stride,) * 2, args.positions, args.repeat)
                    inc = t.get("incremental")
                    measured = inc / t["full"] if inc is not None else float("nan")
                    picked = measured if plan.worthwhile else 1.0
                    worst = max(worst, picked)
                    print(f"{arch:14s} {window:6d} {stride:6d} {plan.cost_fraction:8.3f} "
                          f"{'incremental' if plan.worthwhile else 'full':>11s} {t['full'] * 1e3:11.2f} "
                          f"{inc * 1e3 if inc is not None else float('nan'):11.2f} {measured:8.2f} {picked:11.2f}",
                          flush=True)
        if args.models:
            print(f"# worst picked/full: {worst:.2f} (1.00 or less: the pick is never slower than the full graph)")
        if args.captum:
            print(captum_row(Path(tmp), args.repeat, threads))


if __name__ == "__main__":
    main()
