"""Every torchvision classifier through torch's dynamo exporter, with and without a dynamic batch: does it load, does it
batch, are its input gradients exact?

    .venv/bin/python benchmarks/dynamo_sweep.py                          # every classifier, dynamo both ways
    .venv/bin/python benchmarks/dynamo_sweep.py --only resnet18,vit_b_16 --exporters dynamo,torchscript
    .venv/bin/python benchmarks/dynamo_sweep.py --size 112 --timeout 900 --out .cache/dynamo_sweep/table.md
    .venv/bin/python benchmarks/dynamo_sweep.py --merge part1.md part2.md --out docs/dynamo_sweep.md

``torch.onnx.export(..., dynamo=True)`` is what users get from torch 2.9 on. Each (model, exporter) cell is measured
in a child process of its own (a crash or a timeout costs that cell only), with random weights (fixed seed, ReLUs
not in place, as tests/conftest.py's ``torchvision_model``):

* **export**: ``dynamo``: ``dynamic_shapes`` with a batch dimension (``Dim("N", min=1)``, or ``Dim.DYNAMIC`` where
  torch.export refuses that range, as it does for ConvNeXt); ``dynamo-static``: no ``dynamic_shapes`` (the example
  batch of 1 is baked in); ``torchscript``: the TorchScript exporter with a dynamic batch (the tests' export);
* **load**: ``cv.load`` and the time it took, or the typed error (an untyped one is a bug);
* **batch**: ``batched`` (a batch runs in one onnxruntime call) or ``one at a time`` (the loader found the batch baked
  in where it could not be rewritten, and runs images one by one: correct, slower);
* **gradient**: the largest per-sample ``max |ours - torch| / max |torch|`` of the input gradients of two images
  (targets 1 and 5, or an image's top class where its target's score is exactly 0, as squeezenet's ReLU'd head gives
  with random weights) against torch autograd with the activation pattern pinned to the ONNX forward
  (tests/reference.py); ``unpinned`` where the patterns cannot be lined up (torch's reference then runs plain, so a
  ReLU flipping between the two frameworks' float32 kernels can show). Exact means <= 1e-4.

Exports go to ``.cache/dynamo_sweep`` and are deleted after their cell (all of torchvision is tens of GB) unless
``--keep-exports`` (then a later run reuses them; ``--fresh`` re-exports). The table is printed as Markdown and written
to ``--out`` after every cell.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / ".cache" / "dynamo_sweep"
EXPORTERS = ("dynamo", "dynamo-static", "torchscript")
TARGETS = [1, 5]
EXACT = 1e-4


def classifiers() -> list[str]:
    """torchvision's image classifiers (not its detection, segmentation, video or optical-flow models)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def quiet():
    for name in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo", "torch.fx", "torch._guards"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")


def export(model, size: int, path: Path, exporter: str) -> str:
    """Write ``model`` to ``path`` with ``exporter``; returns how the batch was declared. ``dynamo`` tries what users
    write first (an example batch of 1 with ``Dim("N", min=1)``), then an example batch of 2 (torch.export
    specialises sizes 0 and 1: it refuses the range from a batch-1 trace of some models, and for others, torchvision's
    ViT, it returns a graph whose batch is the constant 1 — taken for a refusal here), then ``Dim.DYNAMIC``."""
    import torch

    if exporter == "torchscript":
        from tests.exporting import export_torchscript

        export_torchscript(model, torch.zeros(1, 3, size, size), path)
        return "dynamic_axes"
    from tests.exporting import export_dynamo

    attempts = [("static", 1, "static")] if exporter == "dynamo-static" else \
        [("Dim N, example batch 1", 1, "dim"), ("Dim N, example batch 2", 2, "dim"), ("Dim.DYNAMIC", 1, "dynamic")]
    error = None
    for label, batch, shapes in attempts:
        try:
            export_dynamo(model, torch.zeros(batch, 3, size, size), path, batch=shapes, max_batch=4096)
        except Exception as exc:  # noqa: BLE001 - torch.export's refusal of one batch range: try the next
            error = exc
            continue
        if shapes != "static" and batch == 1 and declared_batch(path) is not None:
            # torch.export accepted Dim N from a batch-1 trace yet specialised the batch to 1 (torchvision's ViT):
            # the file is a static export. A user asking for a dynamic batch retries with an example batch of 2.
            error = RuntimeError("torch.export specialised Dim N to the example batch of 1")
            continue
        return label
    raise error


def declared_batch(path: Path) -> int | None:
    """The image input's batch as the file declares it: an int, or None when symbolic."""
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") else None


def cell(name: str, exporter: str, size: int, fresh: bool, keep: bool = False) -> dict:
    """Export (cached), load, batch and compare one model: the row of the table, as a dict. The export is deleted
    afterwards unless ``keep``."""
    path = CACHE / f"{name}_{size}_{exporter}.onnx"
    try:
        return measure(name, exporter, size, fresh, path)
    finally:
        if not keep and path.exists():
            path.unlink()


def measure(name: str, exporter: str, size: int, fresh: bool, path: Path) -> dict:
    import numpy as np

    quiet()
    import onnx_cnnviz as cv
    from onnx_cnnviz.errors import CnnvizError
    from tests.conftest import rel_err
    from tests.exporting import torchvision_model
    from tests.reference import onnx_kink_pattern, torch_rule_grad

    row = {"model": name, "exporter": exporter}
    model = torchvision_model(name)
    if hasattr(model, "heads"):  # torchvision's ViT starts with a zero head: every gradient would be 0
        import torch

        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    CACHE.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        if fresh or not path.exists():
            row["declared"] = export(model, size, path, exporter)
    except Exception as exc:  # noqa: BLE001
        return {**row, "load": f"export fails: {type(exc).__name__}: {first_line(exc)}"}
    row["export_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    try:
        m = cv.load(path, device="cpu")
    except CnnvizError as exc:
        return {**row, "load": f"{type(exc).__name__}: {first_line(exc)}"}
    except Exception as exc:  # noqa: BLE001 - a bug: shown as such
        return {**row, "load": f"untyped {type(exc).__name__}: {first_line(exc)}"}
    row["load"] = f"ok ({time.perf_counter() - start:.2f} s)"
    row["batch"] = "one at a time" if m.static_batch else "batched"
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    targets = live_targets(model, x)
    try:
        ours = cv.gradients(m, x, targets=targets)
    except CnnvizError as exc:
        return {**row, "gradient": f"{type(exc).__name__}: {first_line(exc)}"}
    except Exception as exc:  # noqa: BLE001
        return {**row, "gradient": f"untyped {type(exc).__name__}: {first_line(exc)}"}
    # A model run one image at a time has a graph of batch 1: its activation pattern is read image by image too.
    parts = [(x[i:i + 1], targets[i:i + 1]) for i in range(len(x))] if m.static_batch else [(x, targets)]
    refs, note = [], ""
    for xs, ts in parts:
        try:
            refs.append(torch_rule_grad(model, xs, ts, "vanilla", onnx_kink_pattern(m, xs)))
        except Exception:  # noqa: BLE001 - the patterns do not line up (see the module docstring)
            refs.append(torch_rule_grad(model, xs, ts, "vanilla"))
            note = ", unpinned"
    ref = np.concatenate(refs)
    if not np.abs(ref).max() > 0:  # a dead target (a ReLU'd score of 0, as in squeezenet1_0): nothing to compare
        row["gradient"] = f"runs (zero reference gradient for targets {targets}; ours max {np.abs(ours).max():.1e})"
        return row
    err = max(rel_err(ours[i], ref[i]) for i in range(len(x)))
    row["rel_err"] = err
    row["gradient"] = f"{'exact' if err <= EXACT else 'DIFFERS'} ({err:.1e}{note})"
    return row


def live_targets(model, x) -> list[int]:
    """TARGETS, except where an image's score for its target is exactly 0 (a ReLU'd head, as squeezenet's, with random
    weights): that image's highest-scoring class then, so the comparison is not vacuous."""
    import torch

    with torch.no_grad():
        scores = model(torch.from_numpy(x)).numpy()
    return [t if scores[i, t] != 0 else int(scores[i].argmax()) for i, t in enumerate(TARGETS)]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:160]


def run_child(name: str, exporter: str, size: int, fresh: bool, timeout: float, keep: bool) -> dict:
    """One cell in a fresh interpreter: its memory is returned when it ends, a crash or a hang costs that cell."""
    args = [sys.executable, __file__, "--cell", name, exporter, "--size", str(size)] + (["--fresh"] if fresh else []) \
        + (["--keep-exports"] if keep else [])
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"model": name, "exporter": exporter, "load": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1][:160]
        return {"model": name, "exporter": exporter, "load": f"crashed (exit {done.returncode}): {tail}"}
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    head = ("| model | exporter | export | load | batch | input gradient vs torch autograd |\n"
            "|---|---|---|---|---|---|\n")
    return head + "".join(f"| {r['model']} | {r['exporter']} | {r.get('declared', 'cached')} | {r.get('load', '')} | "
                          f"{r.get('batch', '')} | {r.get('gradient', '')} |\n" for r in rows)


def summary(rows: list[dict]) -> str:
    exact = sum(1 for r in rows if r.get("gradient", "").startswith("exact"))
    batched = sum(1 for r in rows if r.get("batch") == "batched")
    loaded = sum(1 for r in rows if str(r.get("load", "")).startswith("ok"))
    return f"{len(rows)} cells: {loaded} load, {batched} run batched, {exact} exact (<= {EXACT:g})."


def read_table(path: Path) -> list[dict]:
    """The rows of a table this script wrote (the Markdown back into cells)."""
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or cells[0] in ("model", "---"):
            continue
        rows.append(dict(zip(("model", "exporter", "declared", "load", "batch", "gradient"), cells)))
    return rows


def merge(paths: list[Path], out: Path) -> str:
    """One table from several runs (a sweep over all of torchvision is hours on 2 cores: it is run in parts), one
    row per (model, exporter), a later file's cell replacing an earlier one's, sorted by model; written to ``out``
    with the files it came from."""
    cells: dict = {}
    for path in paths:
        for row in read_table(path):
            cells[(row["model"], row["exporter"])] = row
    rows = [cells[k] for k in sorted(cells, key=lambda k: (k[0], EXPORTERS.index(k[1])))]
    models = len({r["model"] for r in rows})
    text = (f"# Every torchvision classifier through torch's dynamo exporter\n\n"
            f"Written by `benchmarks/dynamo_sweep.py --merge {' '.join(str(p) for p in paths)}` from runs of "
            "`benchmarks/dynamo_sweep.py --only ...` (each cell in a child process of its own; see the script's "
            "docstring for what each column means). A model's cells come from the last run that measured it.\n\n"
            f"{models} models ({len(classifiers())} torchvision classifiers). {summary(rows)}\n\n{table(rows)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model names (default: every torchvision classifier)")
    parser.add_argument("--skip", default="", help="comma-separated model names to leave out")
    parser.add_argument("--exporters", default="dynamo,dynamo-static", help=f"any of {', '.join(EXPORTERS)}")
    parser.add_argument("--size", type=int, default=224, help="image size of the export (default 224)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per cell")
    parser.add_argument("--fresh", action="store_true", help="re-export even when a cached export exists")
    parser.add_argument("--keep-exports", action="store_true", help="keep the .onnx files for a later run")
    parser.add_argument("--out", type=Path, default=CACHE / "table.md")
    parser.add_argument("--cell", nargs=2, metavar=("MODEL", "EXPORTER"), help=argparse.SUPPRESS)
    parser.add_argument("--merge", nargs="+", type=Path, metavar="TABLE",
                        help="combine tables of earlier runs (later ones win per cell) into --out; run nothing")
    args = parser.parse_args(argv)
    if args.merge:
        missing = [str(p) for p in args.merge if not p.is_file()]
        if missing:
            parser.error(f"no such table: {', '.join(missing)}")
        print(merge(args.merge, args.out))
        return 0
    if args.cell:
        print(json.dumps(cell(args.cell[0], args.cell[1], args.size, args.fresh, args.keep_exports)), flush=True)
        return 0
    exporters = [e for e in args.exporters.split(",") if e]
    unknown = [e for e in exporters if e not in EXPORTERS]
    if unknown:
        parser.error(f"unknown exporter(s) {unknown}; choose from {', '.join(EXPORTERS)}")
    names = args.only.split(",") if args.only else classifiers()
    names = [n for n in names if n not in set(args.skip.split(","))]
    rows = []
    for name in names:
        for exporter in exporters:
            start = time.perf_counter()
            row = run_child(name, exporter, args.size, args.fresh, args.timeout, args.keep_exports)
            rows.append(row)
            print(f"{name:24s} {exporter:14s} {time.perf_counter() - start:6.0f} s  {row.get('load', '')} | "
                  f"{row.get('batch', '')} | {row.get('gradient', '')}", file=sys.stderr, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(table(rows) + "\n" + summary(rows) + "\n")
    print(table(rows))
    print(summary(rows))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
