"""Peak memory of whole `cnnviz` commands, for the README's reliability section.

    .venv/bin/python benchmarks/memory_cli.py [--model PATH --preprocess NAME] [--images 300]

Each command runs in its own wrapper process whose only child is the command, so ``RUSAGE_CHILDREN``'s
``ru_maxrss`` is that command's peak resident memory. The default model is the ImageNet SqueezeNet 1.1 of
``../shared/models`` (caffe preprocessing); the pictures are copies of ``../shared/images`` (224x224) under other
names. Printed: a markdown table of command, what it does, peak MiB and seconds.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"

MEASURE = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.stderr.write(proc.stderr[-3000:])
"""


def run(args) -> tuple[float, float]:
    """(peak MiB, seconds) of ``cnnviz ARGS``."""
    command = [sys.executable, "-c", MEASURE, sys.executable, "-c",
               "import sys; from onnx_cnnviz.cli.main import main; sys.exit(main())", *map(str, args)]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    code, kib = proc.stdout.split()
    if code != "0":
        raise SystemExit(f"cnnviz {' '.join(map(str, args))} failed ({code}):\n{proc.stderr}")
    return int(kib) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "squeezenet1.1-imagenet-fp16.onnx"))
    parser.add_argument("--preprocess", default="caffe")
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    sources = sorted((SHARED / "images").glob("*.png"))
    if not sources:
        raise SystemExit(f"no pictures in {SHARED / 'images'}")
    common = ["--preprocess", args.preprocess, "--quiet"]
    with tempfile.TemporaryDirectory(prefix="cnnviz-memory-") as tmp:
        tmp = Path(tmp)
        folders = {}
        for n in sorted({30, args.images}):
            folder = tmp / f"images{n}"
            folder.mkdir()
            for i in range(n):
                shutil.copy(sources[i % len(sources)], folder / f"img{i:04d}.png")
            folders[n] = folder
        one = folders[30] / "img0000.png"
        rows = [
            (f"explain {n} images", "gradcam + saliency, batch 8",
             ["explain", args.model, folders[n], "--method", "gradcam,saliency", "--out", tmp / f"explain{n}"])
            for n in sorted(folders)]
        rows += [
            (f"report {n} images", "gradcam + saliency", ["report", args.model, folders[n], "--method",
                                                          "gradcam,saliency", "--out", tmp / f"report{n}"])
            for n in sorted(folders)]
        rows += [
            ("explain --top-k 100", "gradcam, 1 image", ["explain", args.model, one, "--method", "gradcam",
                                                        "--top-k", "100", "--out", tmp / "topk"]),
            ("explain smoothgrad --samples 2000", "1 image", ["explain", args.model, one, "--method", "smoothgrad",
                                                              "--samples", "2000", "--out", tmp / "sg"]),
            ("explain ig --steps 2000", "1 image", ["explain", args.model, one, "--method", "ig", "--steps", "2000",
                                                    "--out", tmp / "ig"]),
        ]
        print("| command | what | peak MiB | seconds |")
        print("|---|---|---:|---:|")
        for name, what, command in rows:
            peak, seconds = run(command + common)
            print(f"| `{name}` | {what} | {peak:.0f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
