"""Peak memory of whole `cnnviz` commands, for the "Reliability and memory" page.

    .venv/bin/python benchmarks/memory_cli.py [--model PATH --preprocess NAME] [--images 300] [--write]

Each command runs in its own wrapper process whose only child is the command, so ``RUSAGE_CHILDREN``'s
``ru_maxrss`` is that command's peak resident memory. The default model is the ImageNet SqueezeNet 1.1 of
``../shared/models`` (caffe preprocessing); the pictures are copies of ``../shared/images`` (224x224) under other
names. Printed: a markdown table of command, what it does, peak MiB and seconds; ``--write`` also puts it, with the
date, commit and machine, in ``docs/validation/reliability.md`` (between its ``memory_cli`` markers).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pages

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
PAGE = ROOT / "docs" / "validation" / "reliability.md"

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


def reading(peaks: dict, n: int) -> str:
    """What the table says about streaming, computed from it: ``explain`` of ``n`` pictures against 30, and the
    report's growth per picture."""
    if n <= 30:
        return ""
    few, many = peaks["explain 30 images"], peaks[f"explain {n} images"]
    growth = (peaks[f"report {n} images"] - peaks["report 30 images"]) / (n - 30)
    return (f"`explain` of {n} pictures peaked at {many:.0f} MiB against {few:.0f} MiB for 30 "
            f"({many / few:.2f}x); `report` grew by {growth:.2f} MiB per picture between 30 and {n}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "squeezenet1.1-imagenet-fp16.onnx"))
    parser.add_argument("--preprocess", default="caffe")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--write", action="store_true",
                        help=f"write the table into {PAGE.relative_to(ROOT)} (section memory_cli)")
    args = parser.parse_args()
    started = time.perf_counter()
    sources = sorted((SHARED / "images").glob("*.png"))
    if not sources:
        raise SystemExit(f"no pictures in {SHARED / 'images'}")
    common = ["--preprocess", args.preprocess, "--quiet"]
    with tempfile.TemporaryDirectory(prefix="cnnviz-memory-") as tmp:
        tmp = Path(tmp)
        folders = {}
        for n in sorted({8, 30, args.images}):
            folder = tmp / f"images{n}"
            folder.mkdir()
            for i in range(n):
                shutil.copy(sources[i % len(sources)], folder / f"img{i:04d}.png")
            folders[n] = folder
        one = folders[30] / "img0000.png"
        rows = [
            (f"explain {n} images", "gradcam + saliency, batch 8",
             ["explain", args.model, folders[n], "--method", "gradcam,saliency", "--out", tmp / f"explain{n}"])
            for n in sorted({30, args.images})]
        rows += [
            (f"report {n} images", "gradcam + saliency", ["report", args.model, folders[n], "--method",
                                                          "gradcam,saliency", "--out", tmp / f"report{n}"])
            for n in sorted({30, args.images})]
        rows += [
            ("explain --top-k 100", "gradcam, 8 images", ["explain", args.model, folders[8], "--method", "gradcam",
                                                         "--top-k", "100", "--out", tmp / "topk8"]),
            ("explain --top-k 100", "gradcam, 1 image", ["explain", args.model, one, "--method", "gradcam",
                                                        "--top-k", "100", "--out", tmp / "topk"]),
            ("explain smoothgrad --samples 2000", "1 image", ["explain", args.model, one, "--method", "smoothgrad",
                                                              "--samples", "2000", "--out", tmp / "sg"]),
            ("explain ig --steps 2000", "1 image", ["explain", args.model, one, "--method", "ig", "--steps", "2000",
                                                    "--out", tmp / "ig"]),
        ]
        table = ["| command | what | peak MiB | seconds |", "|---|---|---:|---:|"]
        print("\n".join(table))
        peaks = {}
        for name, what, command in rows:
            peak, seconds = run(command + common)
            peaks[name] = peak
            table.append(f"| `{name}` | {what} | {peak:.0f} | {seconds:.0f} |")
            print(table[-1], flush=True)
    if args.write:
        model = Path(args.model)
        shown = model.relative_to(SHARED.parent) if model.is_relative_to(SHARED.parent) else model
        command = " ".join([".venv/bin/python benchmarks/memory_cli.py", *sys.argv[1:]])
        text = [pages.header("benchmarks/memory_cli.py", command,
                             f"The whole run took {time.perf_counter() - started:.0f} s."), "",
                f"Peak resident memory of whole commands: `{shown.as_posix()}`, `--preprocess {args.preprocess}`, "
                f"copies of the 224x224 pictures of `shared/images`, each command in its own process "
                "(`ru_maxrss` of its wrapper's only child).", "", *table, "", reading(peaks, args.images)]
        pages.write_section(PAGE, "memory_cli", "\n".join(text))
        print(f"wrote the memory_cli section of {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
