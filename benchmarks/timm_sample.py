"""A seeded random sample of timm's classifiers, each exported as users export it: does it load, batch, and are its
input gradients exact?

    .venv/bin/python benchmarks/timm_sample.py                       # the sample (100 models) + the issue's models
    .venv/bin/python benchmarks/timm_sample.py --part 2/4            # every 4th model from the 2nd: one share
    .venv/bin/python benchmarks/timm_sample.py --only levit_128s,resnetblur50 --memory-gb 8
    .venv/bin/python benchmarks/timm_sample.py --report-only         # rewrite docs/timm_sample.md from the results

The sample is ``random.Random(SEED).sample(sorted(timm.list_models()), SIZE)`` (timm's architectures, whatever
weights they have; ``pretrained=False``, so nothing is downloaded), plus the models issue 24 named (resnetblur50,
mvitv2_base_cls, levit_128s, hiera_base_plus_224, fbnetv3_d) in a section of their own. Each model runs in a child
process of its own, pinned to one core (the machine is shared), under a memory watchdog that kills it above
``--memory-gb`` of resident memory; a crash, a hang or the watchdog costs that model only. Per model:

* **export**: timm's model (random weights, ``torch.manual_seed(0)``, eval, activations not in place; a classifier
  timm initialises to zero, as Hiera's, drawn from N(0, 0.02) instead, else every gradient is 0) exported by
  the TorchScript exporter at opset 17 with a dynamic batch (tests/conftest.py's ``export_onnx``), at the input size
  of its pretrained config (square);
* **forward**: ``max |onnxruntime - torch| / max |torch|`` of the scores of a plain onnxruntime session of the exported
  file (not the library's): where this is large, the export itself differs from torch and no gradient can match;
* **load** and **batch** as in docs/dynamo_sweep.md; **layers**: the number of candidate layers and the default one;
* **gradient**: the largest per-image ``max |ours - torch| / max |torch|`` of the input gradients of two images
  (targets 1 and 5) against torch autograd with the activation pattern pinned to the ONNX forward
  (tests/reference.py); ``unpinned`` where the patterns cannot be lined up. Exact means <= 1e-4. Where it is not
  exact, **f64**: ours and torch's float32 gradients against torch's float64 autograd; a network whose float32
  gradient is ill-conditioned at random weights shows torch as far from float64 as ours.

Results are appended to ``--results`` (JSON lines) as each model ends, so a run can stop at any time and a later run
(or another share, ``--part``) goes on with the models not yet measured; ``--out`` (Markdown, with the counts) is
rewritten from all results after every model.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / ".cache" / "timm_sample"
SEED, SIZE = 24, 100
ISSUE_MODELS = ("resnetblur50", "mvitv2_base_cls", "levit_128s", "hiera_base_plus_224", "fbnetv3_d")
TARGETS = [1, 5]
EXACT = 1e-4


def sample(seed: int = SEED, size: int = SIZE) -> list[str]:
    import timm

    return random.Random(seed).sample(sorted(timm.list_models()), size)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:160]


def quiet():
    import logging

    for name in ("torch.onnx", "torch.jit", "timm"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")


def measure(name: str) -> dict:
    """Build, export, load and compare one model (in the child process): its row, as a dict."""
    import numpy as np
    import onnxruntime as ort
    import timm
    import torch

    quiet()
    torch.set_num_threads(1)
    import onnx_cnnviz as cv
    from onnx_cnnviz.errors import CnnvizError
    from tests.conftest import rel_err
    from tests.exporting import export_torchscript
    from tests.reference import onnx_kink_pattern, torch_rule_grad

    row: dict = {"model": name}
    torch.manual_seed(0)
    try:
        net = timm.create_model(name, pretrained=False).eval()
    except Exception as exc:  # noqa: BLE001
        return {**row, "export": f"timm cannot build it: {type(exc).__name__}: {first_line(exc)}"}
    for module in net.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    if isinstance(head, torch.nn.Linear) and not head.weight.detach().abs().max() > 0:
        # timm zero-initialises some heads (Hiera's head_init_scale): every gradient would be 0
        torch.nn.init.normal_(head.weight, std=0.02)
        row["head"] = "zero head re-drawn"
    size = int(net.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    row["size"] = size
    row["params_m"] = round(sum(p.numel() for p in net.parameters()) / 1e6, 1)
    # A folder per model: a large export writes its weights beside the .onnx, and the parent removes the folder
    # even when the watchdog killed this process before its own clean-up (the leftovers were gigabytes).
    path = work_dir(name) / f"{name}_{size}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        export_torchscript(net, torch.zeros(1, 3, size, size), path)
    except Exception as exc:  # noqa: BLE001
        return {**row, "export": f"fails: {type(exc).__name__}: {first_line(exc)}"}
    try:
        row["export"] = f"ok ({time.perf_counter() - start:.0f} s)"
        x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
        with torch.no_grad():
            scores = net(torch.from_numpy(x)).numpy()
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 4
            plain = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            row["forward_err"] = rel_err(plain.run(None, {"input": x})[0], scores)
        except Exception as exc:  # noqa: BLE001
            row["forward_err"] = None
            row["forward_note"] = f"{type(exc).__name__}: {first_line(exc)}"
        start = time.perf_counter()
        try:
            m = cv.load(path, device="cpu", threads=1)
        except CnnvizError as exc:
            return {**row, "load": f"{type(exc).__name__}: {first_line(exc)}"}
        except Exception as exc:  # noqa: BLE001 - a bug: shown as such
            return {**row, "load": f"untyped {type(exc).__name__}: {first_line(exc)}"}
        row["load"] = f"ok ({time.perf_counter() - start:.0f} s)"
        row["batch"] = "one at a time" if m.static_batch else "batched"
        row["layers"] = len(m.layers)
        row["default_layer"] = m.default_layer
        try:
            ours = cv.gradients(m, x, targets=TARGETS)
        except CnnvizError as exc:
            return {**row, "gradient": f"{type(exc).__name__}: {first_line(exc)}"}
        except Exception as exc:  # noqa: BLE001
            return {**row, "gradient": f"untyped {type(exc).__name__}: {first_line(exc)}"}
        parts = [(x[i:i + 1], TARGETS[i:i + 1]) for i in range(len(x))] if m.static_batch else [(x, TARGETS)]
        refs, note = [], ""
        for xs, ts in parts:
            try:
                refs.append(torch_rule_grad(net, xs, ts, "vanilla", onnx_kink_pattern(m, xs)))
            except Exception:  # noqa: BLE001 - the patterns do not line up
                refs.append(torch_rule_grad(net, xs, ts, "vanilla"))
                note = ", unpinned"
        ref = np.concatenate(refs)
        if not np.abs(ref).max() > 0:
            return {**row, "gradient": "runs (zero reference gradient)"}
        err = max(rel_err(ours[i], ref[i]) for i in range(len(x)))
        row["rel_err"] = err
        row["gradient"] = f"{'exact' if err <= EXACT else 'DIFFERS'} ({err:.1e}{note})"
        if err > EXACT:
            row.update(float64_check(net, x, ours, ref))
        return row
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def float64_check(net, x, ours, ref) -> dict:
    """Where ours and torch's float32 gradients differ: both against torch's float64 autograd (unpinned), to tell a
    network whose float32 gradient is ill-conditioned at these random weights (torch's own float32 gradient is as
    far from float64 as ours) from a wrong rule (ours alone is far)."""
    import numpy as np
    import torch

    from tests.conftest import rel_err

    try:
        net64 = net.double()
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
        out = net64(xt)
        out[torch.arange(len(x)), torch.as_tensor(TARGETS)].sum().backward()
        r64 = xt.grad.numpy()
    except Exception as exc:  # noqa: BLE001 - a model that does not run in float64
        return {"f64": f"no float64 run: {type(exc).__name__}"}
    ours64 = max(rel_err(ours[i], r64[i]) for i in range(len(x)))
    torch64 = max(rel_err(ref[i], r64[i]) for i in range(len(x)))
    return {"ours_vs_f64": ours64, "torch_vs_f64": torch64,
            "f64": f"float64: ours {ours64:.1e}, torch float32 {torch64:.1e}"}


def conditioned(row: dict) -> bool:
    """Not exact, but torch's own float32 gradient is at least a third as far from float64 as ours: float32
    conditioning of the random-weight network, not a rule of ours."""
    return "ours_vs_f64" in row and row["torch_vs_f64"] > EXACT and row["ours_vs_f64"] <= 3 * row["torch_vs_f64"]


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def work_dir(name: str) -> Path:
    """Where one model's export lives while it is measured (removed afterwards, by the child or the parent)."""
    return CACHE / "work" / name


def run_child(name: str, timeout: float, memory_gb: float, core: int) -> dict:
    """One model in a fresh interpreter on one core, killed above ``memory_gb`` resident or after ``timeout`` s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, __file__, "--cell", name]
    start, peak, why = time.monotonic(), 0, None
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                             preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    try:
        while child.poll() is None:
            peak = max(peak, rss_bytes(child.pid))
            if peak > memory_gb * 2 ** 30:
                why = f"over the memory limit ({memory_gb:g} GB resident)"
            elif time.monotonic() - start > timeout:
                why = f"timed out after {timeout:.0f} s"
            if why:
                child.kill()
                break
            time.sleep(0.2)
        out, err = child.communicate()
    finally:
        if child.poll() is None:
            child.kill()
        shutil.rmtree(work_dir(name), ignore_errors=True)
    base = {"model": name, "peak_gb": round(peak / 2 ** 30, 2), "seconds": round(time.monotonic() - start)}
    if why:
        return {**base, "export": why}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        tail = (err.strip().splitlines() or ["?"])[-1][:160]
        return {**base, "export": f"crashed (exit {child.returncode}): {tail}"}
    return {**json.loads(lines[-1]), **base}


# --- the report -----------------------------------------------------------------------------------------------------
COLUMNS = ("model", "size", "params_m", "export", "forward_err", "load", "batch", "layers", "default_layer",
           "gradient", "f64", "peak_gb", "seconds")


def exported(row: dict) -> bool:
    return str(row.get("export", "")).startswith("ok")


def exact(row: dict) -> bool:
    return str(row.get("gradient", "")).startswith("exact")


def export_differs(row: dict) -> bool:
    """The exported file's own forward (plain onnxruntime) differs from torch: no gradient can match torch's."""
    return row.get("forward_err") is not None and row["forward_err"] > EXACT


def counts(rows: list[dict]) -> str:
    done = [r for r in rows if exported(r)]
    ok = [r for r in done if exact(r)]
    theirs = [r for r in done if not exact(r) and (export_differs(r) or conditioned(r))]
    pct = 100 * len(ok) / len(done) if done else 0.0
    pct2 = 100 * (len(ok) + len(theirs)) / len(done) if done else 0.0
    return (f"{len(rows)} measured, {len(done)} exported; **{len(ok)} exact ({pct:.0f}% of the exported)**; "
            f"{len(theirs)} more where the exported file's own forward already differs from torch or torch's own "
            "float32 gradient is as far from float64 as ours "
            f"({pct2:.0f}% counting them); {len(done) - len(ok) - len(theirs)} not exact for a cause of ours.")


def cell_text(row: dict, key: str) -> str:
    value = row.get(key, "")
    if key == "forward_err":
        return "" if value in ("", None) else f"{value:.1e}"
    if key == "default_layer" and value:
        return f"`{value}`"
    return str(value).replace("|", "\\|")


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    return head + "".join("| " + " | ".join(cell_text(r, k) for k in COLUMNS) + " |\n" for r in rows)


def report(results: list[dict], names: list[str]) -> str:
    by_name = {r["model"]: r for r in results}
    sampled = [by_name[n] for n in names if n in by_name]
    issue = [by_name[n] for n in ISSUE_MODELS if n in by_name]
    left = [n for n in names if n not in by_name]
    text = ["# timm: a seeded random sample of classifiers", "",
            "Made by `benchmarks/timm_sample.py` (its docstring says what each column measures): "
            f"`random.Random({SEED}).sample(sorted(timm.list_models()), {SIZE})`, random weights, TorchScript export "
            "at opset 17, one child process per model on one core under a memory watchdog.", "",
            f"## The sample ({len(sampled)} of {len(names)} measured)", "", counts(sampled), ""]
    if left:
        text += [f"Not measured yet ({len(left)}): {', '.join(left)}.", ""]
    text += [table(sampled), "", "## The models issue 24 named", "", counts(issue) if issue else "None measured yet.",
             "", table(issue) if issue else ""]
    return "\n".join(text) + "\n"


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a killed run: that model is measured again
            continue
        rows[row["model"]] = row
    return list(rows.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--only", help="comma-separated model names instead of the sample")
    parser.add_argument("--part", default="1/1", help="I/K: measure every K-th model from the I-th")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--memory-gb", type=float, default=6.0)
    parser.add_argument("--core", type=int, default=1, help="the CPU core the children run on")
    parser.add_argument("--results", type=Path, default=CACHE / "results.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "timm_sample.md")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--no-issue-models", action="store_true")
    args = parser.parse_args(argv)
    if args.cell:
        print(json.dumps(measure(args.cell)))
        return 0
    names = sample()
    todo = args.only.split(",") if args.only else names + ([] if args.no_issue_models else list(ISSUE_MODELS))
    i, k = (int(v) for v in args.part.split("/"))
    todo = todo[i - 1::k]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {r["model"] for r in read_results(args.results)}
    for name in ([] if args.report_only else todo):
        if name in done:
            continue
        row = run_child(name, args.timeout, args.memory_gb, args.core)
        with args.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        args.out.write_text(report(read_results(args.results), names))
    args.out.write_text(report(read_results(args.results), names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
