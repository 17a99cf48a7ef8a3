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
  (targets 1 and 5) against torch autograd with every kink decision pinned to the ONNX forward's
  (:func:`pinned_grad`: each torch ReLU, LeakyReLU, ReLU6/Hardtanh, max-pool, Hardswish and Hardsigmoid call takes
  the decision of the ONNX node whose input it equals, so calls the export dropped or reordered cost nothing;
  ``K of N kinks unpinned`` where some ONNX node met no torch call). Exact means <= 1e-4, the criterion of every
  gradient test of the project. Where it is not exact, **f64**: ours and torch's float32 gradients against torch's
  float64 autograd pinned to the same decisions (the gradient both approximate). Ours within 1e-4 of float64 is
  **exact against float64** (counted exact: the float32 reference was the inexact one); otherwise the row is not
  exact, and the f64 column tells a network whose float32 gradient is ill-conditioned at random weights (torch's own
  float32 as far from float64 as ours: counted apart) from a wrong rule (ours alone far).

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
        decisions = [onnx_decisions(m, xs) for xs, _ in parts]
        refs, unmatched, nodes = [], 0, 0
        for (xs, ts), found in zip(parts, decisions):
            grad, stats = pinned_grad(net, xs, ts, found)
            refs.append(grad)
            unmatched, nodes = unmatched + stats["unmatched"], nodes + stats["nodes"]
        ref = np.concatenate(refs)
        if not np.abs(ref).max() > 0:
            return {**row, "gradient": "runs (zero reference gradient)"}
        note = f", {unmatched} of {nodes} kinks unpinned" if unmatched else ""
        row["unpinned"] = unmatched
        err = max(rel_err(ours[i], ref[i]) for i in range(len(x)))
        row["rel_err"] = err
        row["gradient"] = f"{'exact' if err <= EXACT else 'DIFFERS'} ({err:.1e}{note})"
        if err > EXACT:
            row.update(float64_check(net, parts, decisions, ours, ref))
            if row.get("ours_vs_f64", 1.0) <= EXACT:
                row["gradient"] = f"exact against float64 ({row['ours_vs_f64']:.1e}; float32 torch {err:.1e}{note})"
        return row
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


# --- the reference: torch autograd with every kink decision taken from the ONNX forward ------------------------------
#: The ONNX ops whose decision (which side of a kink, which element wins a window) is read from the ONNX forward and
#: imposed on torch's, and the torch functionals that make them.
PIN_OPS = ("Relu", "LeakyRelu", "Clip", "MaxPool", "HardSwish", "HardSigmoid", "ReduceMax")
#: A torch call is the ONNX node whose input it equals to this relative error (float32 forwards agree to ~1e-6;
#: two different tensors of one shape differ by O(1)).
MATCH = 1e-3


def onnx_decisions(m, x) -> dict[str, list[tuple]]:
    """Per kink op type, in node order: ``(input, indices)`` of every such node of the model's normalised graph on
    ``x`` (``indices``: MaxPool's flat argmax indices, else None), from a session built as the engine builds its own
    (tests/reference.py's optimiser settings)."""
    import copy

    import numpy as np
    import onnxruntime as ort
    from onnx import helper

    from onnx_cnnviz import runtime
    from onnx_cnnviz.graph import held

    model = copy.deepcopy(m.spec(tuple(x.shape[2:])).model)
    plan, wanted = [], []
    for node in model.graph.node:
        if node.op_type not in PIN_OPS:
            continue
        names = [node.input[0]]
        if node.op_type == "MaxPool":
            while len(node.output) < 2:
                node.output.append("")
            if not node.output[1]:
                node.output[1] = node.output[0] + "__indices"
            names.append(node.output[1])
        plan.append((node.op_type, names))
        wanted += [n for n in names if n != m.input_name and n not in wanted]
    found: dict[str, list[tuple]] = {k: [] for k in PIN_OPS}
    if not plan:  # a smooth network (SiLU, GELU): nothing to pin
        return found
    del model.graph.output[:]
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in wanted)
    disabled = runtime.HELD_DISABLED_OPTIMIZERS if held.any_held(model) else runtime.DISABLED_OPTIMIZERS
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = held.session(model, options, ["CPUExecutionProvider"], disabled_optimizers=disabled)
    values = dict(zip(wanted, session.run(wanted, {m.input_name: x.astype(np.float32)})))
    values[m.input_name] = x.astype(np.float32)
    for kind, names in plan:
        value = values[names[0]]
        if not np.issubdtype(value.dtype, np.floating) or value.ndim < 2:
            continue  # a shape computation (same-padding's max(0, pad), integer or float): off the gradient path
        found[kind].append((values[names[0]], values[names[1]] if len(names) > 1 else None))
    return found


def pinned_grad(net, x, targets, decisions, dtype="float32"):
    """``d(sum_n S[n, targets[n]])/dx`` by torch autograd (in ``dtype``) with every ReLU, LeakyReLU, ReLU6/Hardtanh,
    max-pool, Hardswish, Hardsigmoid and ``amax`` (Hiera's max over mask units, ONNX ReduceMax: the winner of each
    reduction is the ONNX input's argmax) decision taken from ``decisions`` (:func:`onnx_decisions`).

    Unlike tests/reference.py's ``pinned`` (the n-th torch call takes the n-th ONNX node), each torch call takes the
    ONNX node whose *input* it equals (relative error below :data:`MATCH`), looked for from the last match on: a
    torch call whose result the export dropped (DLA's unused ``downsample``), a ReLU6 torch runs as ``relu6`` but
    ONNX writes as Clip, or calls in another order cost nothing. Returns (gradient, stats): ``unmatched`` counts the
    ONNX nodes no torch call matched (0: every decision of the export pinned)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    used = {k: set() for k in PIN_OPS}
    start = dict.fromkeys(PIN_OPS, 0)
    stats = {"calls": 0, "pinned": 0}
    active = [False]
    originals = {name: getattr(F, name) for name in
                 ("relu", "leaky_relu", "relu6", "hardtanh", "max_pool2d", "hardswish", "hardsigmoid")}
    torch_relu = torch.relu
    tensor_amax = torch.Tensor.amax

    def match(kind, t):
        """The ONNX input (a float32 torch tensor) and indices of the node ``t`` is, or None."""
        stats["calls"] += 1
        records = decisions[kind]
        shape = tuple(t.shape)
        td = t.detach().float()
        for i in [*range(start[kind], len(records)), *range(start[kind])]:
            if i in used[kind] or records[i][0].shape != shape:
                continue
            a = torch.from_numpy(records[i][0])
            finite = torch.isfinite(a)  # same-padding max-pools pad with -inf
            scale = float(a[finite].abs().max()) if bool(finite.any()) else 0.0
            diff = torch.where(finite, td - a, torch.zeros_like(a)).abs().max()
            if float(diff) <= MATCH * max(scale, 1e-30):
                used[kind].add(i)
                start[kind] = i + 1
                stats["pinned"] += 1
                return a, records[i][1]
        return None

    def relu(t, inplace=False):
        hit = match("Relu", t) if active[0] else None
        if hit is None:
            return originals["relu"](t)
        return torch.where(hit[0] > 0, t, torch.zeros_like(t))

    def leaky_relu(t, negative_slope=0.01, inplace=False):
        hit = match("LeakyRelu", t) if active[0] else None
        if hit is None:
            return originals["leaky_relu"](t, negative_slope)
        return torch.where(hit[0] > 0, t, t * negative_slope)

    def clip(t, lo, hi, plain):
        hit = match("Clip", t) if active[0] else None
        if hit is None:
            return plain()
        inside = (hit[0] > lo) & (hit[0] < hi)
        return torch.where(inside, t, t.clamp(lo, hi).detach())

    def relu6(t, inplace=False):
        return clip(t, 0.0, 6.0, lambda: originals["relu6"](t))

    def hardtanh(t, min_val=-1.0, max_val=1.0, inplace=False):
        return clip(t, min_val, max_val, lambda: originals["hardtanh"](t, min_val, max_val))

    def max_pool2d(t, *args, **kwargs):
        return_indices = kwargs.pop("return_indices", False)
        hit = match("MaxPool", t) if active[0] else None
        if hit is None:
            return originals["max_pool2d"](t, *args, return_indices=return_indices, **kwargs)
        out = originals["max_pool2d"](t.detach(), *args, **kwargs)
        idx = torch.from_numpy(np.ascontiguousarray(hit[1])).long()
        if idx.numel() != out.numel():
            raise AssertionError("MaxPool: ONNX and torch window counts differ")
        y = t.reshape(-1)[idx.reshape(-1)].reshape(out.shape)
        return (y, idx.reshape(out.shape)) if return_indices else y

    def hardswish(t, inplace=False):
        hit = match("HardSwish", t) if active[0] else None
        if hit is None:
            return originals["hardswish"](t)
        lo, hi = hit[0] < -3, hit[0] > 3
        return torch.where(lo, torch.zeros_like(t), torch.where(hi, t, t * (t + 3) / 6))

    def hardsigmoid(t, inplace=False):
        hit = match("HardSigmoid", t) if active[0] else None
        if hit is None:
            return originals["hardsigmoid"](t)
        inside = (hit[0] > -3) & (hit[0] < 3)
        return torch.where(inside, t / 6 + 0.5, (t / 6 + 0.5).clamp(0, 1).detach())

    def amax(t, dim=(), keepdim=False):
        hit = match("ReduceMax", t) if active[0] else None
        dims = [dim] if isinstance(dim, int) else list(dim)
        if hit is None or len(dims) != 1:
            return tensor_amax(t, dim, keepdim)
        # the elements ONNX found maximal, shared evenly between exact ties as torch's own amax backward shares
        # them (tests/architectures/test_hiera.py)
        mask = (hit[0] == tensor_amax(hit[0], dims[0], True)).to(t.dtype)
        return (t * mask).sum(dim=dims[0], keepdim=keepdim) / mask.sum(dim=dims[0], keepdim=keepdim)

    def relu_fn(t):
        return relu(t) if active[0] else torch_relu(t)

    patches = {(F, "relu"): relu, (F, "leaky_relu"): leaky_relu, (F, "relu6"): relu6, (F, "hardtanh"): hardtanh,
               (F, "max_pool2d"): max_pool2d, (F, "hardswish"): hardswish, (F, "hardsigmoid"): hardsigmoid,
               (torch, "relu"): relu_fn, (torch.Tensor, "amax"): amax}
    saved = {key: getattr(*key) for key in patches}

    def begin(_module, _inputs):
        active[0] = True

    def end(_module, _inputs, _output):
        active[0] = False

    xt = torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype)).clone().requires_grad_(True)
    hooks = [net.register_forward_pre_hook(begin), net.register_forward_hook(end)]
    try:
        for (owner, name), fn in patches.items():
            setattr(owner, name, fn)
        out = net(xt)
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)
        for hook in hooks:
            hook.remove()
    out[torch.arange(len(targets)), torch.as_tensor(targets)].sum().backward()
    stats["unmatched"] = sum(len(decisions[k]) - len(used[k]) for k in PIN_OPS)
    stats["nodes"] = sum(len(decisions[k]) for k in PIN_OPS)
    return xt.grad.double().numpy() if dtype == "float64" else xt.grad.numpy(), stats


def float64_check(net, parts, decisions, ours, ref) -> dict:
    """Where ours and torch's float32 gradients differ: both against torch's float64 autograd pinned to the same ONNX
    decisions (the same linear region, computed in float64: the gradient the float32 ones approximate), to tell a
    network whose float32 gradient is ill-conditioned at these random weights (torch's own float32 gradient is as
    far from float64 as ours) from a wrong rule (ours alone is far)."""
    import numpy as np

    from tests.conftest import rel_err

    try:
        net64 = net.double()
        r64 = np.concatenate([pinned_grad(net64, xs, ts, found, "float64")[0]
                              for (xs, ts), found in zip(parts, decisions)])
    except Exception as exc:  # noqa: BLE001 - a model that does not run in float64
        return {"f64": f"no float64 run: {type(exc).__name__}"}
    ours64 = max(rel_err(ours[i], r64[i]) for i in range(len(ours)))
    torch64 = max(rel_err(ref[i], r64[i]) for i in range(len(ours)))
    return {"ours_vs_f64": ours64, "torch_vs_f64": torch64,
            "f64": f"float64: ours {ours64:.1e}, torch float32 {torch64:.1e}"}


def conditioned(row: dict) -> bool:
    """Not exact, not even against float64, but ours is no further from float64 than torch's own float32 gradient:
    float32 conditioning of the random-weight network, not a rule of ours."""
    return "ours_vs_f64" in row and row["torch_vs_f64"] > EXACT and row["ours_vs_f64"] <= row["torch_vs_f64"]


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
    if key == "gradient" and "rel_err" in row and "unpinned" not in row:
        value = f"{value} [a]"  # measured before the decisions were pinned by value (see the page)
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
            "**Exact** means our input gradient is within 1e-4 (of its largest entry, per image) of torch autograd's "
            "with every ReLU, LeakyReLU, ReLU6, max-pool, Hardswish and Hardsigmoid decision pinned to the ONNX "
            "forward's: the criterion of every gradient test of the project. Where torch's float32 gradient is not "
            "within 1e-4 of ours, both are compared with torch's float64 gradient pinned the same way (the f64 "
            "column), and ours within 1e-4 of float64 is **exact against float64**: counted exact, the float32 "
            "reference was the inexact one. A row exact neither way where ours is no further from float64 than "
            "torch's own float32 is a network whose float32 gradient is ill-conditioned at random weights: not "
            "counted exact, listed apart. Models over the memory limit or the time limit are not exported.", "",
            "[a]: measured by an earlier version of the script, whose reference pinned the n-th torch ReLU, ReLU6, "
            "max-pool, Hardswish or Hardsigmoid call to the n-th ONNX node (tests/reference.py) and fell back to no "
            "pinning where they did not line up (`unpinned`); every such row was exact all the same. The rows "
            "without [a] pin each call to the ONNX node whose input it equals (LeakyReLU and Hiera's ReduceMax "
            "too), so nodes the export dropped or reordered no longer unpin a model.", "",
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
    parser.add_argument("--redo", action="store_true", help="measure the models again even if --results has them")
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
        if name in done and not args.redo:
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
