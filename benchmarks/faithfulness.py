"""The flagship faithfulness table: every explanation method on EfficientNet-Lite0 and the sample photographs, scored
by deletion, insertion, average drop, increase in confidence and ROAD, against a random and a centred baseline.

    .venv/bin/python benchmarks/faithfulness.py [--out docs/faithfulness.md] [--methods gradcam,saliency,...]
                                                [--results out/faithfulness/results.json] [--render-only]

Builds the model and the four photographs as ``benchmarks/flagship_pictures.py`` does (its helpers, imported), explains
each photo's top-1 class with every method of :mod:`onnx_cnnviz.methods.registry` at the library's defaults, and
scores each explanation with :func:`onnx_cnnviz.metrics.registry.evaluate` at the metrics' registry defaults. The
explanations reach the metrics as ``cnnviz evaluate`` hands them over
(:func:`onnx_cnnviz.metrics.inputs.explanation_for`): the ranking metrics get the method's result as it is
((N, C, H, W) attributions are reduced per pixel by the metric's own ``channels="sum"``), average drop and increase in
confidence get the per-pixel map in [0, 1] (min-max for a non-negative map, the positive part over the maximum for a
signed one: they multiply the image by it).

Two baselines that the metric papers report (RISE, ROAD, Quantus' random-attribution checks): ``random``, i.i.d.
uniform [0, 1) per pixel (``numpy.random.default_rng(0)``), and ``centre``, a centred Gaussian
``exp(-r^2 / (2 sigma^2))`` with ``sigma = min(H, W) / 4`` (photographers centre their subject: a map that knows
nothing of the model but knows that).

Statistics: per method x metric the mean over the images and the half-width of the two-sided 95% Student-t interval,
``t_{0.975, n-1} * s / sqrt(n)`` (s the sample standard deviation, ddof=1): with four images the normal
approximation's 1.96 would be 1.6 times too narrow. The best mean per column is bold (baselines included: a column
that a baseline wins says something about the metric). ``road-combined`` is ``(LeRF - MoRF) / 2`` of the two runs
above it, which draw the same imputation noise (one stream per seed, image, percentile and order), so it equals what
``evaluate("road-combined", ...)`` returns; the script checks that equality on Grad-CAM through the registry
(unless ``--methods`` leaves Grad-CAM out) instead of imputing every image twice more for every method.

Writes ``--out`` (``docs/faithfulness.md``: the command, the model, the photographs, the parameters, the table, the
agreement between metrics and a reading of it) and ``--results`` (every per-image value and timing, JSON);
``--render-only`` rewrites the Markdown from an existing ``--results`` without running anything. About 15 minutes
on 2 idle CPU cores (estimated from per-method timings at load 1.3); the recorded run took 38 minutes at load 11.
Most of it is Score-CAM's 1280 masked images per photo, occlusion's windows and ROAD's sparse solves.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnx_cnnviz as cv  # noqa: E402
from onnx_cnnviz import image as im  # noqa: E402
from onnx_cnnviz.errors import CnnvizError, InputError  # noqa: E402
from onnx_cnnviz.methods import features, registry  # noqa: E402
from onnx_cnnviz.metrics import registry as metric_registry  # noqa: E402
from onnx_cnnviz.metrics.inputs import explanation_for  # noqa: E402
from onnx_cnnviz.report import labels_from_metadata  # noqa: E402

OUT = ROOT / "docs" / "faithfulness.md"
RESULTS = ROOT / "out" / "faithfulness" / "results.json"
#: The table's columns, in order.
METRICS = ("deletion", "insertion", "average-drop", "increase-in-confidence", "road-morf", "road-lerf",
           "road-combined")
#: Measured through the registry for every method; road-combined is derived from the two ROAD runs (see above).
RUN_METRICS = METRICS[:-1]
SHORT = {"deletion": "deletion", "insertion": "insertion", "average-drop": "avg drop",
         "increase-in-confidence": "incr. conf.", "road-morf": "ROAD MoRF", "road-lerf": "ROAD LeRF",
         "road-combined": "ROAD comb."}
BASELINES = {"random": "Random map (uniform, seed 0)", "centre": "Centred Gaussian (sigma = side / 4)"}
RANDOM_SEED = 0
#: Methods of the registry left out of the table, and why (none at present: every registered method returns a map
#: over the image). RISE is not in the registry.
LEFT_OUT: dict[str, str] = {}
#: ``road-combined`` derived vs. through the registry: the same arithmetic in another order.
COMBINED_TOLERANCE = 1e-9


def flagship():
    """benchmarks/flagship_pictures.py as a module: its model path, photo folder and build helpers."""
    path = ROOT / "benchmarks" / "flagship_pictures.py"
    spec = importlib.util.spec_from_file_location("_cnnviz_benchmarks_flagship_pictures", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------------------
# Baselines


def random_map(n: int, h: int, w: int, seed: int = RANDOM_SEED) -> np.ndarray:
    """(n, h, w) i.i.d. uniform [0, 1): the explanation that knows nothing."""
    return np.random.default_rng(seed).random((n, h, w), dtype=np.float32)


def centre_map(n: int, h: int, w: int) -> np.ndarray:
    """(n, h, w) ``exp(-r^2 / (2 sigma^2))``, r the distance to the image centre, ``sigma = min(h, w) / 4``: the
    photographer's prior, the same for every image (peak 1, so it is already in [0, 1])."""
    sigma = min(h, w) / 4
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r2 = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2
    return np.broadcast_to(np.exp(-r2 / (2 * sigma ** 2)).astype(np.float32), (n, h, w)).copy()


# ---------------------------------------------------------------------------------------------------------------------
# Measuring


def explain(m, name: str, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Method ``name``'s result at its registry defaults, checked to be a finite map over the image ((N, H, W) or
    (N, C, H, W)); anything else would be scored as something it is not."""
    maps = np.asarray(registry.explain(m, name, x, targets))
    n, c, h, w = x.shape
    if maps.shape not in ((n, h, w), (n, c, h, w), (n, 1, h, w)) or not np.isfinite(maps).all():
        raise InputError(f"method {name!r} returned {maps.shape} (finite: {bool(np.isfinite(maps).all())}), not a "
                         f"finite map over the {h}x{w} images; it cannot be scored.")
    return maps


def explanations(m, x: np.ndarray, targets: np.ndarray, methods: list, log):
    """Yield ``(name, maps or None, seconds, error or None)`` per method, then the two baselines."""
    for name in methods:
        start = time.time()
        try:
            maps = explain(m, name, x, targets)
            error = None
        except CnnvizError as exc:  # one method failing must not lose the others' results
            maps, error = None, f"{type(exc).__name__}: {exc}"
        seconds = time.time() - start
        log(f"{name}: explained in {seconds:.1f} s" + (f" -- {error}" if error else ""))
        yield name, maps, seconds, error
    n, _, h, w = x.shape
    yield "random", random_map(n, h, w), 0.0, None
    yield "centre", centre_map(n, h, w), 0.0, None


def score(m, x: np.ndarray, targets: np.ndarray, name: str, maps: np.ndarray) -> tuple[dict, float]:
    """{metric: per-image values} for one explanation, and the seconds the metrics took."""
    start = time.time()
    values = {}
    for metric in RUN_METRICS:
        explanation = explanation_for(metric, maps, name, {})
        values[metric] = metric_registry.evaluate(metric, m, x, explanation, targets).values.tolist()
    values["road-combined"] = combined(values["road-morf"], values["road-lerf"]).tolist()
    return values, time.time() - start


def ties(maps: np.ndarray) -> dict:
    """Per image, how much of the map ties at its minimum (after the metrics' default ``channels="sum"``), and at how
    many of ROAD's default percentiles MoRF removes *every* pixel: its rule removes ``v >= percentile(v, p)``, so a
    map whose minimum covers more than p% of the image (a ReLU'd CAM's zeros) loses the whole photo there, which
    scores as a perfect MoRF step whatever the map says."""
    from onnx_cnnviz.metrics.base import pixel_maps
    from onnx_cnnviz.metrics.imputation import DEFAULT_PERCENTILES, removed_mask

    flat = pixel_maps(np.asarray(maps, dtype=np.float32)).reshape(len(maps), -1)
    tied = (flat == flat.min(axis=1, keepdims=True)).mean(axis=1)
    everything = [sum(bool(removed_mask(f.reshape(maps.shape[-2:]), p, "morf").all()) for p in DEFAULT_PERCENTILES)
                  for f in flat]
    return {"min_tied": tied.tolist(), "morf_all_removed": everything}


def combined(morf, lerf) -> np.ndarray:
    """ROAD combined per image, ``(LeRF - MoRF) / 2`` (pytorch-grad-cam's ``ROADCombined``)."""
    return (np.asarray(lerf, dtype=np.float64) - np.asarray(morf, dtype=np.float64)) / 2


def check_combined(m, x, targets, maps, derived) -> float:
    """Largest difference between the derived road-combined and the registry's own; raises when they differ."""
    through = metric_registry.evaluate("road-combined", m, x, maps, targets).values
    gap = float(np.max(np.abs(through - np.asarray(derived))))
    if gap > COMBINED_TOLERANCE:
        raise RuntimeError(f"road-combined derived from MoRF and LeRF differs from the registry's by {gap:.3g}; "
                           "the imputation noise is no longer shared between the runs: drop the derivation.")
    return gap


def _zero_colour(pre: dict) -> str:
    """What 0 in the model's normalised input is, as a colour: the mean the preprocessing subtracts."""
    scale = pre.get("scale", 1 / 255 if max(pre["mean"]) <= 1 else 1.0)
    level = [m / scale for m in pre["mean"]]
    if max(level) - min(level) < 1e-9:
        return f"the grey level {level[0]:g} of 0..255"
    return "the mean colour " + ", ".join(f"{v:.0f}" for v in level) + " of 0..255"


def _preprocess_text(pre: dict) -> str:
    """The preprocessing of a results document in words (older documents hold only size, mean and std)."""
    if "text" in pre:
        return pre["text"]
    return f"224×224, mean {pre['mean']}, std {pre['std']}"


def measure(args, log) -> dict:
    """Build what is missing, explain and score everything; the results document."""
    fp = flagship()
    start = time.time()
    model = fp._script("build_efficientnet_lite0").build(fp.MODEL, log=log)
    photos = fp._script("sample_images").write_samples(fp.SAMPLES)
    m = cv.load(model, device="cpu")
    prep = features.preprocessing_for(m)
    x = im.preprocess(photos, preset=prep)
    scores = m.scores(x).astype(np.float64)
    targets = scores.argmax(axis=1)
    prob = np.exp(scores - scores.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    labels = labels_from_metadata(m.metadata) or []
    images = [{"file": str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p), "class": int(t),
               "name": labels[t] if t < len(labels) else str(t), "probability": float(prob[i, t])}
              for i, (p, t) in enumerate(zip(photos, targets))]
    rows, gap = [], None
    for name, maps, explain_s, error in explanations(m, x, targets, args.methods, log):
        row = {"method": name, "explain_s": explain_s, "error": error}
        if maps is not None:
            row["values"], row["metrics_s"] = score(m, x, targets, name, maps)
            row["ties"] = ties(maps)
            log(f"{name}: scored in {row['metrics_s']:.1f} s")
            if name == "gradcam":
                gap = check_combined(m, x, targets, maps, row["values"]["road-combined"])
                log(f"road-combined through the registry equals the derived one within {gap:.1g}")
        rows.append(row)
    return {"command": args.command, "model": str(Path(model).relative_to(ROOT)), "model_tag":
            m.metadata.get("cnnviz.model", "?"), "layer": m.default_layer, "images": images,
            "preprocess": {"mean": list(prep.mean), "std": list(prep.std), "size": list(prep.size),
                           "scale": prep.scale, "resize": prep.resize, "text": prep.describe()},
            "methods": {r["method"]: registry.parameters(r["method"]) for r in rows if r["method"] in registry.METHODS},
            "metrics": {k: _jsonable(metric_registry.parameters(k)) for k in METRICS},
            "combined_gap": gap, "rows": rows, "seconds": time.time() - start,
            "cpu_seconds": time.process_time(), "load_average": list(os.getloadavg()),
            "machine": f"{platform.machine()}, {_cores()} CPU cores, onnxruntime CPU", "date": time.strftime(
                "%Y-%m-%d %H:%M UTC", time.gmtime())}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------------------
# Statistics


def t95(n: int) -> float:
    """The two-sided 95% Student-t quantile with n - 1 degrees of freedom (inf for one value: no interval)."""
    if n < 2:
        return math.inf
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def mean_ci(values) -> tuple[float, float]:
    """Mean and the 95% interval's half-width ``t_{0.975, n-1} s / sqrt(n)``."""
    v = np.asarray(values, dtype=np.float64)
    half = t95(len(v)) * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else math.inf
    return float(v.mean()), float(half)


def higher_is_better(metric: str) -> bool:
    return metric_registry.get(metric).higher_is_better


def best_rows(rows: list) -> dict:
    """{metric: the method with the best mean} over the rows that have values."""
    out = {}
    for metric in METRICS:
        scored = [(np.mean(r["values"][metric]), r["method"]) for r in rows if "values" in r]
        if scored:
            out[metric] = (max if higher_is_better(metric) else min)(scored)[1]
    return out


def better(metric: str, a: float, b: float) -> bool:
    """``a`` is strictly better than ``b`` on ``metric``."""
    return a > b if higher_is_better(metric) else a < b


def kendall(rows: list, a: str, b: str) -> float:
    """Kendall's tau-b between the methods' means on metrics ``a`` and ``b``, each oriented so that larger is better:
    +1 when the two metrics rank the rows alike, -1 when they reverse each other."""
    from scipy.stats import kendalltau

    scored = [r for r in rows if "values" in r]
    sa = [np.mean(r["values"][a]) * (1 if higher_is_better(a) else -1) for r in scored]
    sb = [np.mean(r["values"][b]) * (1 if higher_is_better(b) else -1) for r in scored]
    return float(kendalltau(sa, sb).statistic)


# ---------------------------------------------------------------------------------------------------------------------
# The Markdown


def title(name: str) -> str:
    return BASELINES.get(name) or registry.get(name).title


def table(doc: dict) -> str:
    """Rows: methods then baselines; columns: the metrics with their direction; mean +- 95% half-width."""
    rows = doc["rows"]
    best = best_rows(rows)
    arrows = {k: "↑" if higher_is_better(k) else "↓" for k in METRICS}
    lines = ["| method | " + " | ".join(f"{SHORT[k]} {arrows[k]}" for k in METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    for r in rows:
        if "values" not in r:
            lines.append(f"| {title(r['method'])} (`{r['method']}`) | " + " | ".join("failed" for _ in METRICS) + " |")
            continue
        cells = []
        for k in METRICS:
            mean, half = mean_ci(r["values"][k])
            cell = f"{mean:.3f} ± {half:.3f}"
            cells.append(f"**{cell}**" if best.get(k) == r["method"] else cell)
        name = f"*{title(r['method'])}* (baseline)" if r["method"] in BASELINES else \
            f"{title(r['method'])} (`{r['method']}`)"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def agreement_table(rows: list) -> str:
    """Kendall's tau between every pair of columns, over the rows' means (oriented: + = same ranking)."""
    lines = ["| | " + " | ".join(SHORT[k] for k in METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for a in METRICS:
        lines.append(f"| {SHORT[a]} | " + " | ".join("–" if a == b else f"{kendall(rows, a, b):+.2f}"
                                                     for b in METRICS) + " |")
    return "\n".join(lines)


def beats(rows: list, metric: str, baseline: str) -> list[tuple[str, int, int]]:
    """Methods whose mean beats ``baseline``'s on ``metric``, with on how many images they beat it (paired)."""
    base = next((r for r in rows if r["method"] == baseline and "values" in r), None)
    if base is None:
        return []
    out = []
    for r in rows:
        if r["method"] in BASELINES or "values" not in r:
            continue
        mine, theirs = np.asarray(r["values"][metric]), np.asarray(base["values"][metric])
        if better(metric, mine.mean(), theirs.mean()):
            out.append((r["method"], int(sum(better(metric, a, b) for a, b in zip(mine, theirs))), len(mine)))
    return out


def beats_text(rows: list) -> str:
    """One bullet per metric: which methods beat the random map (and on how many photos), and which also beat the
    centred Gaussian."""
    methods = [r["method"] for r in rows if r["method"] not in BASELINES and "values" in r]
    lines = []
    for k in METRICS:
        won = beats(rows, k, "random")
        lost = [mth for mth in methods if mth not in {w[0] for w in won}]
        centre = [w[0] for w in beats(rows, k, "centre")]
        listed = ", ".join(f"`{mth}` ({i}/{n})" for mth, i, n in won) or "none"
        lines.append(f"* **{SHORT[k]}** ({'higher' if higher_is_better(k) else 'lower'} is better): "
                     f"{len(won)} of {len(methods)} beat the random map: {listed}. "
                     + (f"Not: {', '.join(f'`{mth}`' for mth in lost)}. " if lost else "")
                     + f"{len(centre)} of {len(methods)} also beat the centred Gaussian"
                     + (f": {', '.join(f'`{mth}`' for mth in centre)}." if centre else "."))
    return "\n".join(lines)


def families(rows: list) -> dict:
    """The scored methods by family: the CAM family (maps read at a feature layer), the input-gradient family, and
    occlusion, from the method registry's own fields."""
    scored = [r["method"] for r in rows if "values" in r and r["method"] not in BASELINES]
    out = {"CAM family": [mth for mth in scored if registry.get(mth).uses_layer and registry.get(mth).kind == "map"],
           "gradient family": [mth for mth in scored if registry.get(mth).gradients
                               and not (registry.get(mth).uses_layer and registry.get(mth).kind == "map")],
           "occlusion": [mth for mth in scored if not registry.get(mth).gradients and not registry.get(mth).uses_layer]}
    return {k: v for k, v in out.items() if v}


def summary_text(rows: list) -> str:
    """Per family, on which metrics its methods beat the random map and the centred Gaussian (counts), and the best
    row per column."""
    best = best_rows(rows)
    lines = ["* Best mean per column: " + ", ".join(f"{SHORT[k]} `{best[k]}`" for k in METRICS if k in best) + "."]
    for family, members in families(rows).items():
        cells = []
        for k in METRICS:
            rnd = {w[0] for w in beats(rows, k, "random")} & set(members)
            ctr = {w[0] for w in beats(rows, k, "centre")} & set(members)
            cells.append(f"{SHORT[k]} {len(rnd)}/{len(ctr)}")
        lines.append(f"* {family} ({len(members)}: {', '.join(f'`{mth}`' for mth in members)}), how many beat the "
                     f"random map / the centred Gaussian: {'; '.join(cells)}.")
    return "\n".join(lines)


def sanity_text(rows: list) -> str:
    """Checks a working metric library must pass, as sentences with their numbers."""
    by = {r["method"]: r["values"] for r in rows if "values" in r}
    out = []
    for mth in ("gradcam", "random"):
        if mth in by:
            ins, dele = np.asarray(by[mth]["insertion"]), np.asarray(by[mth]["deletion"])
            out.append(f"* {title(mth)}: insertion AUC above deletion AUC on {int((ins > dele).sum())} of "
                       f"{len(ins)} photos (means {ins.mean():.3f} vs {dele.mean():.3f}).")
    for mth in ("gradcam", "random"):
        if mth in by:
            morf, lerf = np.asarray(by[mth]["road-morf"]), np.asarray(by[mth]["road-lerf"])
            out.append(f"* {title(mth)}: ROAD's change is more negative removing the most relevant pixels than the "
                       f"least relevant on {int((morf < lerf).sum())} of {len(morf)} photos (MoRF {morf.mean():+.3f}"
                       f" vs LeRF {lerf.mean():+.3f})" + ("; for the random map both orders are statistically the "
                                                          "same experiment, so their gap is measurement noise."
                                                          if mth == "random" else "."))
    return "\n".join(out)


def ties_text(rows: list) -> str:
    """The methods whose map ties at its minimum over so much of the photo that ROAD MoRF removes every pixel at some
    percentiles (see :func:`ties`)."""
    hit = [(r["method"], np.mean(r["ties"]["min_tied"]), r["ties"]["morf_all_removed"]) for r in rows
           if r.get("ties") and max(r["ties"]["morf_all_removed"]) > 0]
    if not hit:
        return ("No map ties at its minimum over more than 10% of a photo, so ROAD MoRF never removed a whole photo "
                "at any percentile.")
    listed = "; ".join(f"`{mth}`: {tied:.0%} of the pixels on average, the whole photo removed at "
                       f"{'/'.join(map(str, counts))} of the 9 percentiles" for mth, tied, counts in hit)
    return (f"Maps that are flat at their minimum over much of the photo: {listed}. ROAD removes every pixel with "
            "`v >= percentile(v, p)` (pytorch-grad-cam's rule, kept for parity), so at those percentiles MoRF "
            "replaces the whole photo by imputed noise, and the probability falls whatever the map says: these rows' "
            "MoRF and combined values are better than their maps deserve.")


def identical_groups(rows: list, tolerance: float = 1e-6) -> list[list[str]]:
    """Groups of two or more rows whose per-image values agree within ``tolerance`` on every metric."""
    groups: list[list[dict]] = []
    for r in (r for r in rows if "values" in r):
        for g in groups:
            if all(np.allclose(r["values"][k], g[0]["values"][k], rtol=0, atol=tolerance) for k in METRICS):
                g.append(r)
                break
        else:
            groups.append([r])
    return [[r["method"] for r in g] for g in groups if len(g) > 1]


def identical_text(rows: list) -> str:
    groups = identical_groups(rows)
    if not groups:
        return "No two rows are identical."
    listed = "; ".join(", ".join(f"`{mth}`" for mth in g) for g in groups)
    return (f"Identical rows (every value within 1e-6): {listed}. On this model the CAM layer feeds global average "
            "pooling and one linear layer, so the gradient of the score is the same at every position of the map: "
            "Grad-CAM's, HiResCAM's and XGrad-CAM's weightings all reduce to CAM's class weights (up to a positive "
            "factor that the min-max removes), as their papers note for GAP heads.")


def agreement_text(rows: list) -> str:
    """What the tau table says about deletion against ROAD, in numbers."""
    pairs = [("deletion", "road-morf"), ("deletion", "road-lerf"), ("deletion", "insertion"),
             ("insertion", "road-morf"), ("road-morf", "road-lerf")]
    return ", ".join(f"{SHORT[a]} vs {SHORT[b]} τ = {kendall(rows, a, b):+.2f}" for a, b in pairs)


def load_text(doc: dict) -> str:
    """The machine's load during the run, and the process's CPU time, where the results record them."""
    parts = []
    if doc.get("load_note"):
        parts.append(doc["load_note"])
    elif doc.get("load_average"):
        parts.append(f"load average {doc['load_average'][0]:.1f} at the end of the run")
    if doc.get("cpu_seconds"):
        parts.append(f"{doc['cpu_seconds'] / 60:.1f} CPU minutes used by this process")
    return f" ({'; '.join(parts)})" if parts else ""


def params_text(params: dict) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in params.items()) or "none beyond the defaults"


def markdown(doc: dict) -> str:
    rows = doc["rows"]
    n = len(doc["images"])
    failed = "".join(f"\n  Failed: `{r['method']}`: {r['error']}" for r in rows if r.get("error"))
    scored = [r for r in rows if "values" in r]
    explain_s = sum(r["explain_s"] for r in rows)
    metrics_s = sum(r.get("metrics_s", 0.0) for r in rows)
    slow = sorted(rows, key=lambda r: -r["explain_s"])[:3]
    images = "\n".join(f"| `{i['file']}` | {i['class']} {i['name']} | {i['probability']:.3f} |" for i in doc["images"])
    methods = "\n".join(f"| `{r['method']}` | {title(r['method'])} | {params_text(doc['methods'].get(r['method'], {}))}"
                        f" | {r['explain_s']:.1f} |" for r in rows if r["method"] not in BASELINES)
    metrics = "\n".join(f"| `{k}` | {metric_registry.get(k).title} | {'higher' if higher_is_better(k) else 'lower'} | "
                        f"{params_text(v)} |" for k, v in doc["metrics"].items())
    gap = doc.get("combined_gap")
    combined_note = (f"checked on Grad-CAM against `evaluate(\"road-combined\", ...)`: largest difference {gap:.1g}"
                     if gap is not None else "not checked in this run (Grad-CAM was not evaluated)")
    left_out = "; ".join(f"`{k}`: {v}" for k, v in LEFT_OUT.items()) or \
        "none of the registry's methods (every one returns a map over the image)"
    t = t95(n)
    return f"""# Faithfulness of every method on EfficientNet-Lite0

Which explanation of the flagship model can be trusted? Every explanation method of the library, each photo's top-1
class, scored by the faithfulness metrics of `onnx_cnnviz.metrics` at their defaults, against two explanations that
know nothing about the model. Written by `benchmarks/faithfulness.py`; regenerate with (the model and the photos are
built first when missing):

```bash
{doc['command']}
```

Measured {doc['date']} on {doc['machine']}, shared with other jobs{load_text(doc)}:
**{doc['seconds'] / 60:.1f} minutes** in all
({explain_s:.0f} s explaining, {metrics_s:.0f} s scoring; the slowest methods to explain:
{', '.join(f"`{r['method']}` {r['explain_s']:.0f} s" for r in slow)}).

## Setup

* Model: `{doc['model']}`, {doc['model_tag']}: the model of the README's "Two commands", with the
  preprocessing its metadata records ({_preprocess_text(doc['preprocess'])}).
  CAM-family layer:
  `{doc['layer']}` (`Model.default_layer`, the last feature map, 7×7×1280).
* Images: scikit-image's {n} sample photographs (`models/sample_images.py`), each explained for its top-1 class:

| photo | top-1 class | probability |
|---|---|---:|
{images}

* Methods (registry defaults; the CAM family min-max normalised and upsampled, signed methods raw):

| name | method | parameters | explain time (s, {n} photos) |
|---|---|---|---:|
{methods}

  Left out: {left_out}. RISE is not implemented in the library.{failed}
* Baselines: **random**, i.i.d. uniform [0, 1) per pixel (`numpy.random.default_rng({RANDOM_SEED})`); **centre**, the
  Gaussian `exp(-r² / 2σ²)` around the image centre with σ = 56 px (a quarter of the side).
* Metrics (`onnx_cnnviz.metrics.registry`, defaults):

| name | metric | better | parameters |
|---|---|---|---|
{metrics}

  Deletion pastes 0 in the normalised space ({_zero_colour(doc['preprocess'])}) over the map's top
  pixels, 28 steps of 1792 pixels; insertion restores them into RISE's blurred copy; both read the softmax
  probability of the target, AUC over
  the fraction of pixels. Average drop is `max(0, Y − O) / Y` as a fraction (×100 for the Grad-CAM++ paper's
  percent), increase in confidence the fraction of photos with `O > Y`, `O` read on `map × image`; the map is the
  per-pixel map brought to [0, 1] per photo as `cnnviz evaluate` does (min-max for a non-negative map, the positive
  part over its maximum for a signed one). ROAD's values are the change of
  the target's probability, `O − Y`, averaged over keeping 10, 20, …, 90% of the pixels, the others replaced by
  noisy linear imputation (noise 0.01, seed 0); combined is `(LeRF − MoRF) / 2`, derived from the two runs (same
  noise; {combined_note}). Attributions of shape (N, 3, H, W) (guided backprop, deconvnet, Guided Grad-CAM,
  input × gradient, SmoothGrad, integrated gradients) are reduced per pixel by the metrics' default
  `channels="sum"`: the signed sum over colour channels, positive evidence ranked first.

## The table

Mean over the {n} photos ± half-width of the 95% Student-t interval (`t(0.975, {n - 1}) = {t:.2f}` × s / √{n}); ↑
higher is better, ↓ lower is better; **bold**: best mean in the column (baselines included).

{table(doc)}

Agreement between the metrics: Kendall's τ between the columns' rankings of the {len(scored)} rows (each column
oriented so that better is larger: +1 = the same order, −1 = the reverse).

{agreement_table(rows)}

## Reading

In short:

{summary_text(rows)}

Which methods beat the random map (mean over the photos; in parentheses, on how many photos it also beats it photo by
photo):

{beats_text(rows)}

Sanity checks of the metrics:

{sanity_text(rows)}

Caveats:

* {n} photos. The intervals are wide (t = {t:.2f}) and most differences between methods lie inside them: the table
  shows that every metric runs on a real model and roughly where each method lands, not a ranking to rely on; a
  ranking needs hundreds of photos (`cnnviz evaluate` on a folder, which reports the same Student-t interval).
* Deletion and ROAD MoRF both remove the most relevant pixels first, yet they can rank maps in opposite orders; in
  this run {agreement_text(rows)}. Deletion pastes a constant: a map of scattered pixels (the random map, saliency, the
  gradient attributions) sprinkles the photo with grey dots, which destroys it for the network within a few steps
  whatever the dots' places, so such maps get a *low* (good) deletion AUC. ROAD imputes each removed pixel from its
  neighbours: scattered removals are filled in almost perfectly, so the same maps lose little under MoRF (bad) and
  keep the probability under LeRF (good). Blob-shaped maps (the CAM family, occlusion, the centred Gaussian) remove
  whole regions and behave the other way round. Deletion and ROAD LeRF therefore reward the texture of a map as
  much as its content; insertion, ROAD MoRF and ROAD combined (which subtracts the two orders) are the columns to
  read first.
* {ties_text(rows)}
* {identical_text(rows)}
* Average drop and increase in confidence multiply the image by the map. A map that is high everywhere keeps the
  photo and scores well (a constant map of ones has drop 0); a sparse, peaky map (saliency after min-max) darkens
  almost the whole photo and drops a lot, whatever its faithfulness. A signed attribution enters as its positive
  part over its maximum: its negative evidence and everything near zero mask the photo out, so `map × image` keeps
  only the pixels it argues for (min-max scaling would put its zero at 0.5, a half-contrast copy of the photo that
  raises the confidence whatever the map says). These two columns still reward how much of the photo a map keeps as
  much as its localisation. Increase in confidence is 0 or 1 per photo: with {n} photos its mean takes {n + 1} values.
* `channels="sum"` ranks positive evidence first. For deconvnet, whose signs carry little class information, and for
  input × gradient, whose sign follows the pixel's sign in the normalised space, another reduction
  (`channels="abs-sum"`, `"max-abs"`) would change their rows; the table keeps the one default for every method.
  With the signed sum, a signed attribution's *least* relevant pixels are its most negative evidence: LeRF removes
  them first and the probability can *rise* (a positive LeRF value), which carries a signed method to the top of
  ROAD LeRF and combined without saying anything about where the object is.
* EigenCAM does not depend on the class and the centred Gaussian not even on the photo; both can score well here
  because the subject of every sample photo is near its centre. A method that does not beat the centred Gaussian
  has not shown, on these photos, that it knows more than where photographers put things.
"""


# ---------------------------------------------------------------------------------------------------------------------
# Main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="the Markdown file (default: %(default)s)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the per-image values, JSON")
    parser.add_argument("--methods", default=",".join(m for m in registry.names() if m not in LEFT_OUT),
                        help="comma-separated registry names (default: every method)")
    parser.add_argument("--render-only", action="store_true", help="rewrite --out from --results; run nothing")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in args.methods:
        registry.get(name)
    args.command = " ".join([".venv/bin/python", "benchmarks/faithfulness.py", *(argv if argv is not None
                                                                                   else sys.argv[1:])])

    def log(message):
        print(message, file=sys.stderr, flush=True)

    if args.render_only:
        doc = json.loads(args.results.read_text())
    else:
        doc = measure(args, log)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(doc, indent=1))
    text = markdown(doc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(table(doc))
    log(f"wrote {args.out} and {args.results} ({doc['seconds']:.0f} s measured)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
