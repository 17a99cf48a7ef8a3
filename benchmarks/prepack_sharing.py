"""Weight sharing against onnxruntime's weight pre-packing: the speed of each way of holding a model's weights.

    .venv/bin/python benchmarks/prepack_sharing.py [--models convnext_tiny resnet50] [--batches 1 8] [--repeat 7]
        [--settings unshared shared ...] [--profile] [--wall]

Each model is a torchvision architecture with fixed random weights, exported as the tests do (tests/exporting.py).
One :class:`onnx_cnnviz.Model` per setting is loaded in this process, its sessions built under that setting (see
:data:`SETTINGS`); then ``--repeat`` rounds run the forward (``Model.scores``), saliency and Grad-CAM of every setting
one after the other (interleaved, so a change of the machine's load touches all alike). Times are the process's CPU
time with onnxruntime's spinning threads off (steady on a shared machine; ``--wall`` for wall time). Each row gives
the median and best of the rounds, and the best's ratio to the unshared setting's best. ``--profile`` adds the
forward's kernel time summed by op type (onnxruntime's profiler) per setting. Memory is measured separately, in a
child process per setting: ``benchmarks/memory_sessions.py --settings``.
"""
from __future__ import annotations

import argparse
import collections
import json
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

#: setting -> the attributes of onnx_cnnviz.runtime it sets while its model's sessions are built: one private copy of
#: the weights per session (onnxruntime's default); the model's one copy shared (the library's default); shared with
#: onnxruntime's pre-packing on (a packed copy per session, ``runtime.PREPACK_SHARED``); shared with the process's
#: arena denied to graphs of 512 MiB of declared activations per image (``ARENA_MAX_ACTIVATION_BYTES`` before issue 25).
SETTINGS = {"unshared": {"SHARE_WEIGHTS": False}, "shared": {"SHARE_WEIGHTS": True},
            "shared+prepack": {"SHARE_WEIGHTS": True, "PREPACK_SHARED": True},
            "shared/arena512": {"SHARE_WEIGHTS": True, "ARENA_MAX_ACTIVATION_BYTES": 512 * 2 ** 20}}


def apply(setting: str | None, runtime) -> None:
    """Set ``setting``'s runtime attributes (None: back to the defaults)."""
    if not hasattr(apply, "defaults"):
        apply.defaults = {k: getattr(runtime, k) for v in SETTINGS.values() for k in v}
    for key, value in apply.defaults.items():
        setattr(runtime, key, value)
    for key, value in SETTINGS.get(setting, {}).items():
        setattr(runtime, key, value)


def export(arch: str, folder: Path) -> Path:
    import torch

    path = folder / f"{arch}.onnx"
    if not path.exists():
        torch.manual_seed(0)
        export_torchscript(torchvision_model(arch), torch.zeros(1, 3, 224, 224), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["convnext_tiny", "resnet50"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=["forward", "saliency", "grad_cam"])
    parser.add_argument("--wall", action="store_true", help="wall time instead of CPU time")
    parser.add_argument("--profile", nargs="?", const="forward", choices=("forward", "saliency", "grad_cam"),
                        help="kernel time by op type per setting, of this method (default: the forward)")
    parser.add_argument("--folder", help="keep the exported models here (default: a temporary folder)")
    args = parser.parse_args()

    import onnx_cnnviz as cv
    from onnx_cnnviz import runtime

    threads = args.threads or runtime.default_threads()
    clock = time.perf_counter if args.wall else time.process_time
    runtime.SPINNING = False  # the library's default; CPU time then counts work, not waiting
    original = runtime.Session._options
    profiling = {"on": False, "prefix": None}

    def options(*a, **k):
        opts = original(*a, **k)
        if profiling["on"]:
            opts.enable_profiling = True
            opts.profile_file_prefix = profiling["prefix"]
        return opts
    runtime.Session._options = staticmethod(options)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} UTC, onnxruntime {__import__('onnxruntime').__version__}, "
          f"{threads} threads, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"{'wall' if args.wall else 'CPU'} time, {args.repeat} interleaved rounds")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for arch in args.models:
            path = export(arch, folder)
            xs = {b: np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
                  for b in args.batches}
            models = {}
            for setting in args.settings:
                apply(setting, runtime)
                m = models[setting] = cv.load(path, device="cpu", threads=threads)
                for x in xs.values():  # builds the sessions under this setting
                    m.scores(x), cv.saliency(m, x), cv.grad_cam(m, x)
            apply(None, runtime)
            calls = {"forward": lambda m, x: m.scores(x), "saliency": cv.saliency, "grad_cam": cv.grad_cam}
            for batch, x in xs.items():
                times = collections.defaultdict(list)
                for r in range(args.repeat):
                    for method in args.methods:
                        order = list(models.items())
                        for setting, m in order[r % len(order):] + order[:r % len(order)]:  # each goes first in turn
                            start = clock()
                            calls[method](m, x)
                            times[method, setting].append(clock() - start)
                for method in args.methods:
                    base = min(times[method, args.settings[0]])
                    print(f"{arch} batch {batch} {method}: " + ", ".join(
                        f"{s} {statistics.median(times[method, s]) * 1e3:.0f}/{min(times[method, s]) * 1e3:.0f} ms "
                        f"({min(times[method, s]) / base:.3f}x)" for s in args.settings), flush=True)
            if args.profile:
                x = xs[args.batches[0]]
                for setting in args.settings:
                    apply(setting, runtime)
                    profiling.update(on=True, prefix=str(folder / "profile"))
                    m = cv.load(path, device="cpu", threads=threads)
                    calls[args.profile](m, x)
                    profiling["on"] = False
                    sess = next(v for v in m._cache._items.values() if isinstance(v, runtime.Session))._session
                    for _ in range(5):
                        calls[args.profile](m, x)
                    totals = collections.Counter()
                    with open(sess.end_profiling()) as f:
                        for event in json.load(f):
                            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                                totals[event["args"]["op_name"]] += event["dur"] / 1000 / 6
                    print(f"  {arch} {args.profile} batch {args.batches[0]} {setting}: " + ", ".join(
                        f"{op} {ms:.1f}" for op, ms in totals.most_common() if ms >= 0.1) + " (ms per run)")
                apply(None, runtime)


if __name__ == "__main__":
    main()
