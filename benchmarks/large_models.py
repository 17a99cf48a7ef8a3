"""Models of over 2 GiB of weights: load time, memory and method times of torchvision's largest classifiers.

    .venv/bin/python benchmarks/large_models.py                       # vit_h_14 and regnet_y_128gf
    .venv/bin/python benchmarks/large_models.py --models vit_l_16 --keep-exports

Protobuf cannot copy a message of 2 GiB, so these models' weights are held beside the graph (onnx_cnnviz/graph/
held.py). Each model is exported with torch's dynamo exporter and a dynamic batch, as benchmarks/dynamo_sweep.py
exports it (random weights as in tests/conftest.py; torch writes weights this large as external data), in a child
process, then measured in a fresh child: ``cv.load``, Grad-CAM, saliency and scores
on two 224x224 images, each its first call (session build included), with the process's resident memory after each
step and its peak so far. The weights' size is the floor: every session reads the held weights in place.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / ".cache" / "large_models"
STEPS = ("load", "grad_cam", "saliency", "scores")


def export(name: str, path: Path) -> None:
    """The dynamo export of torchvision's ``name`` with a dynamic batch, made as benchmarks/dynamo_sweep.py makes it."""
    from benchmarks.dynamo_sweep import export as sweep_export, quiet
    from tests.exporting import torchvision_model

    quiet()
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_export(torchvision_model(name), 224, path, "dynamo")


def measure(path: Path) -> dict:
    import resource
    import time

    import numpy as np

    import onnx_cnnviz as cv
    from onnx_cnnviz.graph import held

    def rss() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 1e9

    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6

    row = {}
    start = time.perf_counter()
    m = cv.load(path, device="cpu")
    row["load"] = (time.perf_counter() - start, rss(), peak())
    row["weights_gb"] = held.held_bytes() / 1e9
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    for step, call in (("grad_cam", lambda: cv.grad_cam(m, x, targets=[1, 2])),
                       ("saliency", lambda: cv.saliency(m, x, targets=[1, 2])),
                       ("scores", lambda: m.scores(x))):
        start = time.perf_counter()
        call()
        row[step] = (time.perf_counter() - start, rss(), peak())
    return row


def child(args: list[str], timeout: float) -> str:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_h_14,regnet_y_128gf", help="torchvision classifier names")
    parser.add_argument("--keep-exports", action="store_true", help="keep the exports in .cache/large_models")
    parser.add_argument("--export", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.export:
        export(args.export[0], Path(args.export[1]))
        return 0
    if args.measure:
        print(json.dumps(measure(Path(args.measure))))
        return 0
    print("| model | weights | " + " | ".join(f"{s}: s, GB after (peak)" for s in STEPS) + " |")
    print("|---|---|" + "---|" * len(STEPS))
    for name in args.models.split(","):
        path = CACHE / f"{name}_dynamo.onnx"
        made = not path.exists()
        if made:
            child(["--export", name, str(path)], timeout=3600)
        try:
            row = json.loads(child(["--measure", str(path)], timeout=3600).strip().splitlines()[-1])
        finally:
            if made and not args.keep_exports:
                for file in path.parent.glob(f"{path.name}*"):
                    file.unlink()
        cells = " | ".join(f"{row[s][0]:.1f} s, {row[s][1]:.1f} GB ({row[s][2]:.1f})" for s in STEPS)
        print(f"| {name} | {row['weights_gb']:.2f} GB | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
