"""Peak memory of the options whose work grows without bound: top-k, SmoothGrad samples, IG steps, occlusion stride.

    .venv/bin/python benchmarks/memory_options.py [--size 224] [--threads 2] [--batch-size N] [--only NAME,...]
                                                  [--library PATH] [--occlusion-windows N] [--write]

Each row is one explain-like run on one ``--size``² image (random pixels) of torchvision's ResNet-18 with random
weights (exported as tests/conftest.py does: TorchScript exporter, opset 17, dynamic batch), in a child process of
its own that loads the model, runs the method through the library (``top_k`` / ``registry.explain``, as the CLI
does) and reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: the peak resident memory of the whole run, model
and onnxruntime included. The "load + 1 forward" row is the floor every run starts from.

The batch size is the rows made and run at once: ``--batch-size`` if given, else what the library chooses
(``auto_batch_size``: a memory budget, at most 64). Until these options streamed their work (issue 15), top-k 100
repeated the image 100 times in one call, SmoothGrad built all its noisy copies at once (2000 samples: 7.7 GB) and
occlusion held (windows x H) and (windows x classes) float64 matrices; ``--library PATH`` runs the children against
another checkout's ``onnx_cnnviz`` to compare.

Occlusion at stride 1 runs a forward pass per window (43 681 windows of 16x16 at 224 px): about an hour on 2 free
cores. ``--occlusion-windows N`` stops it after N windows (the row then says so): the windows' scores are streamed and
reduced to one float64 per window as they come, so the peak is reached within the first runs; the rest of the run
repeats them.

Printed: a markdown table of run, batch size, peak RSS and seconds; ``--write`` also writes it, with the date, commit,
machine (its load average included) and the command, as the page ``docs/validation/speed-memory-options.md``
(``benchmarks/pages.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pages  # benchmarks/pages.py (a script's own folder is first on sys.path)

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "benchmarks"
#: The page ``--write`` writes (whole: this script owns it).
PAGE = ROOT / "docs" / "validation" / "speed-memory-options.md"

#: name -> (label, what the child runs)
OPTIONS = {
    "floor": ("load + 1 forward", {"kind": "floor"}),
    "topk": ("top-k 100, Grad-CAM", {"kind": "topk", "method": "gradcam", "k": 100}),
    "smoothgrad": ("SmoothGrad, 2000 samples", {"kind": "explain", "method": "smoothgrad",
                                                "params": {"samples": 2000}, "rows": 2000, "backward": True}),
    "ig": ("IG, 2000 steps", {"kind": "explain", "method": "ig", "params": {"steps": 2000}, "rows": 2000,
                              "backward": True}),
    "occlusion": ("occlusion 16x16, stride 1", {"kind": "explain", "method": "occlusion",
                                                "params": {"window": [16, 16], "stride": [1, 1]}, "backward": False}),
}

CHILD = r"""
import json, resource, sys, time
import numpy as np
spec = json.loads(sys.argv[1])
import onnx_cnnviz as cv
from onnx_cnnviz.methods import registry
from onnx_cnnviz.methods.attribution import auto_batch_size
m = cv.load(spec["model"], threads=spec["threads"])
size = spec["size"]
x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
m.scores(x)
bs = spec["batch_size"]
start = time.perf_counter()
if spec["kind"] == "topk":
    rows = spec["k"]
    used = bs or auto_batch_size(m, (size, size), rows, backward=registry.get(spec["method"]).gradients)
    maps, classes = cv.top_k(spec["method"], m, x, k=spec["k"], batch_size=bs)
    shape = maps.shape
elif spec["kind"] == "explain":
    params = dict(spec["params"])
    if spec["method"] == "occlusion":
        from onnx_cnnviz.graph.occlusion import window_positions
        rows = len(window_positions((size, size), params["window"], params["stride"])) + 1
    else:
        rows = spec["rows"]
    used = bs or auto_batch_size(m, (size, size), rows, backward=spec["backward"])
    if spec.get("stop_after"):
        # Stop after that many units of work (the progress callback raises), for runs too long to finish here.
        class Stop(Exception):
            pass

        def stop(done, total):
            partial.update(done=done, total=total)
            if done >= spec["stop_after"]:
                raise Stop

        partial = {}
        kwargs = registry.parameters(spec["method"], params)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        try:
            registry.get(spec["method"]).func(m, x, None, batch_size=bs, progress=stop, **kwargs)
        except Stop:
            pass
        shape = partial
    else:
        out = registry.explain(m, spec["method"], x, None, params=params, batch_size=bs)
        shape = out.shape
else:
    used, shape = None, None
seconds = time.perf_counter() - start
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "batch_size": used,
                  "seconds": seconds, "shape": shape}))
"""


def export_resnet18(size: int) -> Path:
    """ResNet-18 with random weights (seed 0), ReLUs not in place, exported with a dynamic batch; cached."""
    path = CACHE / f"resnet18_s0_{size}.onnx"
    if path.exists():
        return path
    from memory_sessions import export  # the same export as the session benchmark (benchmarks/ is on sys.path)

    return export("resnet18", path, size)


def measure(spec: dict, library: Path | None, timeout: float) -> dict:
    env = dict(os.environ)
    paths = [str(library)] if library else []
    env["PYTHONPATH"] = os.pathsep.join(paths + [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                              env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {proc.returncode}: {last[:100]}", "wall": time.perf_counter() - start}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="rows per run (default: the library's choice)")
    parser.add_argument("--only", default=",".join(OPTIONS), help=f"comma-separated subset of {', '.join(OPTIONS)}")
    parser.add_argument("--library", type=Path, default=None,
                        help="a folder holding another onnx_cnnviz package to measure instead of this checkout's")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per row")
    parser.add_argument("--occlusion-windows", type=int, default=None,
                        help="stop the occlusion run after this many windows (its peak is reached in the first runs: "
                             "the windows' scores are streamed); default: all of them")
    parser.add_argument("--write", action="store_true",
                        help=f"also write the table as {PAGE.relative_to(ROOT)} (date, commit, machine, command)")
    args = parser.parse_args()
    model = export_resnet18(args.size)
    import onnxruntime

    title = (f"ResNet-18 (random weights), one {args.size}x{args.size} image, {args.threads} threads, onnxruntime "
             f"{onnxruntime.__version__}, CPU; peak RSS of the whole child process (ru_maxrss)")
    print(title)
    print()
    lines = [f"| {'run':<50} | {'batch size':>10} | {'peak RSS':>9} | {'time':>8} |",
             f"|{'-' * 52}|{'-' * 11}:|{'-' * 10}:|{'-' * 9}:|"]
    print("\n".join(lines), flush=True)
    for name in args.only.split(","):
        label, spec = OPTIONS[name]
        spec = dict(spec, model=str(model), size=args.size, threads=args.threads, batch_size=args.batch_size)
        if name == "occlusion" and args.occlusion_windows:
            spec["stop_after"] = args.occlusion_windows
        result = measure(spec, args.library, args.timeout)
        if "error" in result:
            lines.append(f"| {label:<50} | {'':>10} | {result['error']:>9} | {'':>8} |")
        else:
            bs = "" if result["batch_size"] is None else str(result["batch_size"])
            mib = result["peak_kib"] / 1024
            peak = f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"
            if isinstance(result["shape"], dict):  # stopped early
                label += f" (first {result['shape']['done']} of {result['shape']['total']})"
            lines.append(f"| {label:<50} | {bs:>10} | {peak:>9} | {result['seconds']:>7.1f}s |")
        print(lines[-1], flush=True)
    if args.write:
        pages.write_page(PAGE, page(title, lines, args))
        print(f"wrote {PAGE.relative_to(ROOT)}")


def page(title: str, lines: list, args) -> str:
    """The page ``--write`` writes: what was measured, how, when and where, then the table."""
    flags = [f"--size {args.size}", f"--threads {args.threads}"]
    if args.batch_size:
        flags.append(f"--batch-size {args.batch_size}")
    if args.only != ",".join(OPTIONS):
        flags.append(f"--only {args.only}")
    if args.occlusion_windows:
        flags.append(f"--occlusion-windows {args.occlusion_windows}")
    command = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/memory_options.py " + " ".join(flags) + " --write"
    intro = ("Peak memory of the options whose work grows with a parameter (top-k, SmoothGrad samples, IG steps, "
             "occlusion stride): each row is one run through the library, as the CLI makes it, in a child process of "
             "its own; the peak is that process's whole resident memory (model and onnxruntime included), the time "
             "its run's wall-clock seconds (the machine is shared: see the load average). The batch size is the rows "
             "run at once (the library's memory-budgeted choice unless `--batch-size` is given); the peak must not "
             "grow with the parameter, only with the batch size.")
    return "\n".join(["# Memory and time of the unbounded options", "",
                      pages.header("benchmarks/memory_options.py", command), "", intro, "", title + ".", "",
                      *lines])

if __name__ == "__main__":
    main()
