"""Saliency and guided backpropagation against a forward pass, in one run.

    .venv/bin/python benchmarks/backward_speed.py [--model resnet50] [--batches 1 8] [--repeat 7] [--cpu-time]
        [--profile] [--against REF]

The model is a torchvision architecture with fixed random weights (timings do not depend on the weights), exported to
ONNX once. Per batch size: a bare onnxruntime forward pass of that file (the session options our sessions use), then
:func:`onnx_cnnviz.saliency` and :func:`onnx_cnnviz.gradients` with ``rule="guided"``, each run once untimed (graph
building, session creation), then ``--repeat`` rounds in which the three run one after the other (interleaved, so a
change in the machine's load touches all three alike); the median of each is reported with its ratio to the forward.
``--cpu-time`` measures the process's CPU time instead of wall time, with onnxruntime's spinning threads turned off
in every session: steadier on a machine other jobs share, but not what a user waits for. ``--profile`` adds, per
batch size, the kernel time of the forward and of the saliency graph from onnxruntime's profiler: each node's
fastest run of ``--profile-runs`` (after one untimed run, which allocates and pre-packs), summed by op type. On a
shared machine a node's fastest run is the one other jobs disturbed least, so the sum of those minima (and its ratio
to the forward's) moves far less with the load than any whole-run timing; it leaves out what the runtime spends
between kernels. The saliency graph's time is split into its forward part (the model's own nodes, some changed by the
backward pass: a MaxPool that also returns its Indices leaves the blocked layout), its backward part (``cnnviz/``
nodes) and the layout conversions onnxruntime inserts, with the costliest backward nodes listed.
``--against REF`` (a git commit, e.g. ``HEAD~3``) measures a change of the backward rules before and after in the same
run: the input-gradient graphs (vanilla and guided) are built by this checkout and, in a subprocess, by the package as
it was at REF (``git archive``), and the four sessions run interleaved with the forward (rows ``graph`` and
``graph@REF``: session runs only, no map post-processing).

Each row gives the median and the best (min) of the rounds: on a machine other jobs share, the best is the steadier
figure. Timings on a shared machine move with its load: compare the numbers of one run only.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.exporting import export_torchscript, torchvision_model  # noqa: E402  (the one export helper)


def export(arch: str, folder: Path) -> Path:
    import torch

    path = folder / f"{arch}.onnx"
    torch.manual_seed(0)
    return export_torchscript(torchvision_model(arch), torch.zeros(1, 3, 224, 224), path)


def session(model, threads: int, spin: bool, profile_prefix: str | None = None):
    """An onnxruntime session with the options and disabled optimisers of :mod:`onnx_cnnviz.runtime`."""
    import onnxruntime as ort

    from onnx_cnnviz.runtime import DISABLED_OPTIMIZERS, Session

    options = Session._options(threads)  # spinning as the library's sessions (runtime.SPINNING)
    if spin != (options.get_session_config_entry("session.intra_op.allow_spinning") == "1"):
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS)


_BUILD = """
import sys
sys.path.insert(0, sys.argv[1])
import onnx
import onnx_cnnviz as cv
assert cv.__file__.startswith(sys.argv[1]), cv.__file__
m = cv.load(sys.argv[2], device="cpu")
for rule in ("vanilla", "guided"):
    onnx.save(m.build_graph(wrt=[m.input_name], target_mode="top1", rule=rule), f"{sys.argv[3]}_{rule}.onnx")
"""


def graphs_at(ref: str, model: Path, folder: Path) -> dict:
    """The vanilla and guided input-gradient graphs of ``model`` built by the package at git commit ``ref``:
    {rule: path}. The package is unpacked from git into ``folder`` and imported in a subprocess (by path, ahead of
    the installed one)."""
    tree = folder / "at_ref"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "onnx_cnnviz"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    prefix = folder / "graph_at_ref"
    subprocess.run([sys.executable, "-c", _BUILD, str(tree), str(model), str(prefix)], check=True, cwd=folder)
    return {rule: Path(f"{prefix}_{rule}.onnx") for rule in ("vanilla", "guided")}


def kernel_profile(sess, feed: dict, runs: int = 5) -> dict:
    """Each node's fastest kernel time in milliseconds over ``runs`` profiled runs after one unprofiled warm-up
    (onnxruntime's profiler; the session must have been made with profiling on): ``{node: (op_type, ms)}``."""
    for _ in range(runs + 1):
        sess.run(None, feed)
    path = sess.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    first_timed = starts[1]  # the first run allocates its buffers and pre-packs weights: not timed
    fastest: dict = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first_timed:
            name = event["name"][:-len("_kernel_time")]
            ms = event["dur"] / 1000
            if name not in fastest or ms < fastest[name][1]:
                fastest[name] = (event["args"]["op_name"], ms)
    return fastest


def part_of(node: str) -> str:
    """Which part of a gradient graph an (optimised) node belongs to: ``backward`` (the nodes this package adds,
    named ``cnnviz/...``, and the blocked-layout nodes onnxruntime derives from them), ``layout`` (conversions
    onnxruntime inserts between plain and blocked layouts) or ``forward``."""
    if node.startswith("cnnviz/"):
        return "backward"
    if node.startswith(("ReorderInput", "ReorderOutput")):
        return "layout"
    return "forward"


def by_op_type(fastest: dict, part: str | None = None) -> dict:
    """Milliseconds summed by op type (of one part only, when given), largest first."""
    totals: collections.Counter = collections.Counter()
    for node, (op, ms) in fastest.items():
        if part is None or part_of(node) == part:
            totals[op] += ms
    return dict(totals.most_common())


def print_profiles(forward: dict, graph: dict, top: int = 8) -> None:
    """The forward's and the saliency graph's kernel times (:func:`kernel_profile`), the graph's split by part."""
    fmt = lambda ops: ", ".join(f"{op} {ms:.1f}" for op, ms in ops.items() if ms >= 0.05)  # noqa: E731
    f_total = sum(ms for _, ms in forward.values())
    g_total = sum(ms for _, ms in graph.values())
    print(f"  kernel time (each node's fastest run, summed): forward {f_total:.1f} ms ({fmt(by_op_type(forward))})")
    parts = {p: sum(ms for n, (_, ms) in graph.items() if part_of(n) == p) for p in ("forward", "backward", "layout")}
    print(f"  saliency graph {g_total:.1f} ms = {g_total / f_total:.2f}x the forward's: forward part "
          f"{parts['forward']:.1f} ({fmt(by_op_type(graph, 'forward'))}), backward part {parts['backward']:.1f} "
          f"({fmt(by_op_type(graph, 'backward'))}), layout conversions {parts['layout']:.1f} ms")
    costly = sorted(((ms, op, n) for n, (op, ms) in graph.items() if part_of(n) == "backward"), reverse=True)[:top]
    print("  costliest backward nodes: " + ", ".join(f"{n} ({op}) {ms:.2f}" for ms, op, n in costly))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time, onnxruntime spinning off")
    parser.add_argument("--profile", action="store_true", help="kernel time by op type and part (load-robust)")
    parser.add_argument("--profile-runs", type=int, default=5, help="profiled runs per graph (default 5)")
    parser.add_argument("--against", metavar="REF", help="also time the gradient graphs built at this git commit")
    args = parser.parse_args()

    import onnx_cnnviz as cv
    from onnx_cnnviz import runtime

    threads = args.threads or runtime.default_threads()
    clock = time.process_time if args.cpu_time else time.perf_counter
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} UTC, {args.model}, {threads} threads, {os.cpu_count()} cores, "
          f"{'CPU' if args.cpu_time else 'wall'} time, median of {args.repeat} interleaved rounds (shared machine: "
          "other jobs run beside this one)")
    with tempfile.TemporaryDirectory() as tmp:
        path = export(args.model, Path(tmp))
        bare = session(str(path), threads, spin=not args.cpu_time)
        if args.cpu_time:  # the library's sessions, spinning off too
            runtime.SPINNING = False
        m = cv.load(path, device="cpu", threads=threads)
        graphs = {}
        if args.against:
            for rule, built in graphs_at(args.against, path, Path(tmp)).items():
                graphs[f"{rule} graph@{args.against}"] = session(str(built), threads, not args.cpu_time)
            for rule in ("vanilla", "guided"):
                here = m.build_graph(wrt=[m.input_name], target_mode="top1", rule=rule).SerializeToString()
                graphs[f"{rule} graph"] = session(here, threads, not args.cpu_time)
        for batch in args.batches:
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            runs = {"forward": lambda: bare.run(None, {"input": x}),
                    "saliency": lambda: cv.saliency(m, x),
                    "guided": lambda: cv.gradients(m, x, rule="guided")}
            runs.update({k: (lambda s=s: s.run(None, {"input": x})) for k, s in graphs.items()})
            times = {k: [] for k in runs}
            for fn in runs.values():
                fn()
            for _ in range(args.repeat):
                for k, fn in runs.items():
                    start = clock()
                    fn()
                    times[k].append(clock() - start)
            forward, best = statistics.median(times["forward"]), min(times["forward"])
            print(f"batch {batch}: " + ", ".join(
                f"{k} {statistics.median(v) * 1e3:.1f} ms ({statistics.median(v) / forward:.2f}x; best "
                f"{min(v) * 1e3:.1f} ms, {min(v) / best:.2f}x)" for k, v in times.items()), flush=True)
            if args.profile:
                graph = m.build_graph(wrt=[m.input_name], target_mode="top1").SerializeToString()
                prefix = str(Path(tmp) / "profile")
                profiles = [kernel_profile(session(model, threads, not args.cpu_time, prefix), {"input": x},
                                           args.profile_runs) for model in (str(path), graph)]
                print_profiles(*profiles)


if __name__ == "__main__":
    main()
