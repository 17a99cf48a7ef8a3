"""``cnnviz evaluate``: which explanation can you trust? Every method on every image, scored by every metric.

A run explains each batch of images with each --method (:func:`onnx_cnnviz.methods.registry.explain`), scores the
maps with each --metric (:func:`onnx_cnnviz.metrics.registry.evaluate`, on the same preprocessed batch, for the same
classes) and writes into --out:

* ``results.csv`` / ``results.json``: one row per image x method x metric (image, method, metric, value, class, and
  what the metric read from the model);
* ``summary.csv`` / ``summary.json``: per method x metric the mean, the sample standard deviation (ddof=1; 0 for a
  single image), n and the normal-approximation 95% confidence interval ``mean +- 1.96 std / sqrt(n)``;
* ``curve.METHOD.METRIC.png``: the mean curve over the images of each metric that has one (deletion, insertion,
  ROAD), drawn with OpenCV;

and prints, per metric, the methods ranked best first (the direction is the metric registry's
``higher_is_better``). Memory stays bounded: --batch-size images are read, explained and scored at a time; only the
per-image values and the running sums of the curves are kept.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from onnx_cnnviz.errors import InputError
from onnx_cnnviz.metrics import registry as metric_registry
from onnx_cnnviz.methods import registry

from .common import (EXIT_FAILURE, EXIT_INTERRUPTED, abspath, batch_size_option, check_outputs, collect_images,
                     echo, emit_json, flatten_lists, global_flags, image_options, labels_option, layer_option,
                     method_option, model_and_preprocessing, model_options, out_folder, out_folder_option,
                     overwrite_option, preprocessing_options, progress, recursive_option, resolve_labels,
                     resolve_target, rows_per_run_option, save_json, settings, shared_option, target_option, CsvChoice)
from .explain import read_batch, same_size_groups

#: The confidence interval the summary reports, in words (the CSV header and the JSON say it).
CI_FORMULA = "mean +- 1.96 * std / sqrt(n), std the sample standard deviation (ddof=1; 0 when n = 1)"
Z95 = 1.96
RESULT_FIELDS = ["image", "method", "metric", "value", "class", "output"]
SUMMARY_FIELDS = ["method", "metric", "mean", "std", "n", "ci95_low", "ci95_high", "higher_is_better"]
DEFAULT_METRICS = ["deletion", "insertion"]
#: The metrics that multiply the image by the map (Grad-CAM++'s explanation map ``E = M * x``), so the map must lie
#: in [0, 1]: the CLI min-max normalises each image's per-pixel map for them (Chattopadhyay et al. normalise the
#: CAM the same way). The ranking metrics (deletion, insertion, ROAD) get the maps as the methods return them: a
#: per-image positive affine rescaling leaves their pixel order, and so their values, unchanged.
UNIT_RANGE_METRICS = {"average-drop", "increase-in-confidence"}
#: Curves whose points are random samples, not steps of a progression (sensitivity-max's perturbations): their mean
#: is no curve, so no picture is drawn for them.
UNORDERED_AXES = {"perturbation sample"}


@click.command("evaluate")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@method_option(registry.names, "Default: gradcam.")
@shared_option("--metric", "--metrics", "metrics", type=CsvChoice(metric_registry.names), multiple=True,
               aliases=("--metrics",), help="Metric(s) by name, comma-separated or repeated: {methods}.",
               note="Default: deletion,insertion.")
@shared_option("--metric-param", "metric_params", metavar="METRIC.KEY=VALUE", multiple=True,
               help="A metric parameter (VALUE read as JSON, else as text), e.g. deletion.pixels_per_step=16; "
                    "repeatable.")
@target_option("Evaluate it for every image (default: each image's top-1 class).")
@layer_option("Feature map of the CAM family (default: the last spatial map).")
@out_folder_option
@batch_size_option
@rows_per_run_option()
@recursive_option
@overwrite_option
@image_options
@preprocessing_options
@labels_option()
@model_options
@global_flags
@click.pass_context
def evaluate_cmd(ctx, methods, metrics, metric_params, **options):
    """Score explanation METHODS on IMAGES with faithfulness METRICS (deletion, insertion, average drop, ROAD, ...),
    and rank the methods per metric.

    Writes into --out: results.csv/.json (one row per image x method x metric), summary.csv/.json (per method x
    metric: mean, std, n and the 95% confidence interval mean +- 1.96 std/sqrt(n)) and curve.METHOD.METRIC.png (the
    mean curve of each curve metric). Existing files are never replaced without --overwrite; input files never.
    """
    methods = flatten_lists(methods) or ["gradcam"]
    metrics = flatten_lists(metrics) or list(DEFAULT_METRICS)
    params = parse_metric_params(metric_params, metrics)
    run(ctx, methods, metrics, params, options)


# ---------------------------------------------------------------------------------------------------------------------
# Options


def parse_metric_params(items, metrics: list) -> dict:
    """``METRIC.KEY=VALUE`` items as {metric: {key: value}}, each checked against the metric's parameters
    (:func:`metric_registry.parameters`): a metric not evaluated, or a key it does not take, is an
    :class:`InputError` naming what it takes."""
    params: dict = {m: {} for m in metrics}
    for item in items:
        name, sep, value = item.partition("=")
        metric, dot, key = name.partition(".")
        if not sep or not dot or not key:
            raise InputError(f"--metric-param {item!r} is not METRIC.KEY=VALUE (e.g. deletion.pixels_per_step=16).")
        if metric not in params:
            raise InputError(f"--metric-param {item!r} names metric {metric!r}, which is not evaluated; evaluated: "
                             f"{', '.join(metrics)}.")
        try:
            params[metric][key] = json.loads(value)
        except ValueError:
            params[metric][key] = value  # a word such as score or blur
    for metric in metrics:
        metric_registry.parameters(metric, params[metric])
    return params


# ---------------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Tally:
    """What a run has measured so far: the result rows, per (method, metric) the values and the running sum of the
    curves (with their abscissae), the images that could not be read, whether Ctrl-C stopped it."""
    rows: list = field(default_factory=list)
    values: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)  # (method, metric) -> [sum of curves, count, axis, axis_name]
    mixed: set = field(default_factory=set)  # (method, metric) whose curves differ in length: no mean curve
    failed: list = field(default_factory=list)
    interrupted: bool = False


def run(ctx: click.Context, methods: list, metrics: list, params: dict, options: dict) -> None:
    """Evaluate ``methods`` x ``metrics`` on the images of ``options`` and write the tables and curves."""
    out = out_folder(options["out_dir"])
    paths = collect_images(options["images"], exclude=out, recursive=options["recursive"])
    m, pre = model_and_preprocessing(ctx, options, options["rows_per_run"])
    labels = resolve_labels(m, options["labels"])
    target = resolve_target(options["target"], labels)
    if target is not None:
        m.targets_for(target, 1)  # a class out of range fails now, not after the first batch
    for name in methods:
        registry.resolved_layer(m, name, options["layer"])
    outputs = output_files(out, methods, metrics)
    check_outputs(list(outputs.values()), options["overwrite"],
                  [p for p in (options["model"], options["labels"]) if p] + list(paths))
    tally = evaluate_all(m, pre, paths, methods, metrics, params, target, options)
    finish_run(ctx, m, out, outputs, paths, methods, metrics, params, tally, options)


def output_files(out: Path, methods: list, metrics: list) -> dict:
    """Every file a run may write, by role: the four tables and one curve picture per method x metric (written only
    for the metrics that have a curve, but all checked before any work so that a run never stops on a conflict)."""
    files = {name: out / name for name in ("results.csv", "results.json", "summary.csv", "summary.json")}
    for method in methods:
        for metric in metrics:
            files[("curve", method, metric)] = out / f"curve.{method}.{metric}.png"
    return files


def evaluate_all(m, pre, paths: list, methods: list, metrics: list, params: dict, target, options: dict) -> Tally:
    """Read --batch-size images at a time, explain each same-size group with every method and score every metric on
    those maps. Ctrl-C stops it, keeping what was measured."""
    tally = Tally()
    batch = options["batch_size"]
    items = [(i, None) for i in range(len(paths))]
    try:
        with progress(len(paths), "evaluating") as bar:
            for start in range(0, len(items), batch):
                chunk = items[start:start + batch]
                for x, group in same_size_groups(read_batch(paths, chunk, pre, tally.failed)):
                    rows = [paths[i] for i, _ in group]
                    evaluate_group(m, x, rows, methods, metrics, params, target, options, tally, bar)
                bar.update(len(chunk))
    except KeyboardInterrupt:
        tally.interrupted = True
    return tally


def evaluate_group(m, x: np.ndarray, paths: list, methods: list, metrics: list, params: dict, target,
                   options: dict, tally: Tally, bar=None) -> None:
    """Every method x metric on the same-size images ``x`` (files ``paths``), for --target or each image's top-1."""
    rows_per_run = options["rows_per_run"]
    targets = m.targets_for(target, len(x)) if target is not None else \
        m.scores(x, batch_size=rows_per_run).argmax(axis=1)
    for method in methods:
        maps = method_maps(m, method, x, targets, options["layer"], rows_per_run,
                           bar.method_progress(method) if bar is not None else None)
        for metric in metrics:
            explanation = metric_input(metric, maps, method, params[metric])
            result = metric_registry.evaluate(metric, m, x, explanation, targets, params=params[metric],
                                              batch_size=rows_per_run,
                                              progress=bar.method_progress(metric) if bar is not None else None)
            record(tally, paths, method, metric, result)


def method_maps(m, method: str, x: np.ndarray, targets: np.ndarray, layer, rows_per_run, progress=None):
    """Method ``method``'s result on ``x``, checked to be a map over the image: (N, H, W), or (N, C', H, W) with C'
    1 or the images' channels (attributions, reduced per pixel by the metrics). Anything else is an
    :class:`InputError` naming the method."""
    result = np.asarray(registry.explain(m, method, x, targets, layer=layer, batch_size=rows_per_run,
                                         progress=progress))
    n, c, h, w = x.shape
    fits = (result.ndim == 3 or (result.ndim == 4 and result.shape[1] in (1, c))) \
        and result.shape[0] == n and tuple(result.shape[-2:]) == (h, w)
    if not fits:
        raise InputError(f"method {method!r} returns an array of shape {tuple(result.shape)}, not a map over the "
                         f"{h}x{w} image ({n}, {h}, {w}) or ({n}, {c}, {h}, {w}); it cannot be evaluated.")
    return result


def metric_input(metric: str, maps: np.ndarray, method: str, params: dict):
    """What metric ``metric`` takes for ``method``'s ``maps``: the method's name (a metric that re-explains), the
    maps as they are, or, for :data:`UNIT_RANGE_METRICS`, one map per pixel (reduced over channels as the metric
    would, its ``channels`` parameter) min-max normalised to [0, 1] per image (a constant map becomes 0)."""
    meta = metric_registry.get(metric)
    if meta.takes == "method":
        return method
    if metric not in UNIT_RANGE_METRICS:
        return maps
    from onnx_cnnviz.metrics.base import pixel_maps

    channels = metric_registry.parameters(metric, params).get("channels", "sum")
    return unit_range(pixel_maps(np.asarray(maps, dtype=np.float32), channels))


def unit_range(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) maps min-max normalised per image to [0, 1], in float32; a constant map becomes all 0."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return ((flat - lo) / span).reshape(maps.shape).astype(np.float32)


def record(tally: Tally, paths: list, method: str, metric: str, result) -> None:
    """Add ``result`` (a :class:`~onnx_cnnviz.metrics.MetricResult` on the images ``paths``) to the tally."""
    key = (method, metric)
    for path, value, cls in zip(paths, result.values, result.targets):
        tally.rows.append({"image": abspath(path), "method": method, "metric": metric, "value": float(value),
                           "class": int(cls), "output": result.output})
    tally.values.setdefault(key, []).extend(float(v) for v in result.values)
    if result.curve is None or result.axis_name in UNORDERED_AXES or key in tally.mixed:
        return
    curve = np.asarray(result.curve, dtype=np.float64)
    if key not in tally.curves:
        tally.curves[key] = [curve.sum(axis=0), len(curve), np.asarray(result.axis), result.axis_name]
    elif tally.curves[key][0].shape != curve.shape[1:]:
        # Images kept at their own sizes give curves of other lengths: no single mean curve.
        tally.mixed.add(key)
        del tally.curves[key]
    else:
        tally.curves[key][0] += curve.sum(axis=0)
        tally.curves[key][1] += len(curve)


# ---------------------------------------------------------------------------------------------------------------------
# Statistics, tables, ranking


def summary_row(method: str, metric: str, values) -> dict:
    """Mean, sample std (ddof=1; 0 for one value), n and the 95% interval mean +- 1.96 std / sqrt(n)."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    half = Z95 * std / math.sqrt(n)
    return {"method": method, "metric": metric, "mean": mean, "std": std, "n": n, "ci95_low": mean - half,
            "ci95_high": mean + half, "higher_is_better": metric_registry.get(metric).higher_is_better}


def summarise(tally: Tally, methods: list, metrics: list) -> list:
    return [summary_row(method, metric, tally.values[(method, metric)])
            for method in methods for metric in metrics if tally.values.get((method, metric))]


def ranking(summary: list, metrics: list) -> dict:
    """Per metric, the methods best first (by mean, in the metric's direction)."""
    out = {}
    for metric in metrics:
        rows = [r for r in summary if r["metric"] == metric]
        if rows:
            better = metric_registry.get(metric).higher_is_better
            out[metric] = [r["method"] for r in sorted(rows, key=lambda r: -r["mean"] if better else r["mean"])]
    return out


def csv_text(fields: list, rows: list, header: list | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header or fields)
    for row in rows:
        writer.writerow([row[f] for f in fields])
    return buffer.getvalue()


def summary_header() -> list:
    """The summary CSV's column names: the interval's columns carry their formula."""
    return [*SUMMARY_FIELDS[:5], "ci95_low (mean - 1.96*std/sqrt(n))", "ci95_high (mean + 1.96*std/sqrt(n))",
            SUMMARY_FIELDS[-1]]


def ranking_text(summary: list, metrics: list) -> str:
    """The ranking table printed at the end: per metric, its direction, then the methods best first."""
    lines = []
    for metric, order in ranking(summary, metrics).items():
        meta = metric_registry.get(metric)
        lines.append(f"{meta.title} ({metric}, {'higher' if meta.higher_is_better else 'lower'} is better)")
        by_method = {r["method"]: r for r in summary if r["metric"] == metric}
        for rank, method in enumerate(order, 1):
            r = by_method[method]
            lines.append(f"  {rank}. {method:<16} {r['mean']:.4f}  "
                         f"[{r['ci95_low']:.4f}, {r['ci95_high']:.4f}]  n={r['n']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Curves


def curve_picture(curve: np.ndarray, axis: np.ndarray, title: str, axis_name: str | None,
                  width: int = 480, height: int = 320) -> np.ndarray:
    """The mean curve as a BGR uint8 picture (OpenCV only: no plotting library): a polyline over the axis range,
    the y range [min(0, lowest), max(1, highest)] so that probability curves share a scale."""
    import cv2

    pic = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 56, width - 16, 34, height - 40
    x = np.asarray(axis, dtype=np.float64) if axis is not None and len(axis) == len(curve) else \
        np.linspace(0.0, 1.0, len(curve))
    y0, y1 = min(0.0, float(curve.min())), max(1.0, float(curve.max()))
    x0, x1 = float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1.0
    px = left + (x - x0) / (x1 - x0) * (right - left)
    py = bottom - (curve - y0) / (y1 - y0) * (bottom - top)
    black, font = (0, 0, 0), cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(pic, (left, top), (right, bottom), (160, 160, 160), 1)
    points = np.stack([px, py], axis=1).round().astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(pic, [points], False, (200, 80, 0), 2, cv2.LINE_AA)
    cv2.putText(pic, title, (left, 22), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.putText(pic, f"{y1:.2f}", (4, top + 5), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(pic, f"{y0:.2f}", (4, bottom + 5), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(pic, f"{x0:g}", (left - 4, bottom + 16), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(pic, f"{x1:g}", (right - 24, bottom + 16), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(pic, axis_name or "step", (left + 60, height - 8), font, 0.4, black, 1, cv2.LINE_AA)
    return pic


def mean_curves(tally: Tally) -> dict:
    """(method, metric) -> (mean curve, axis, axis name, n)."""
    return {key: (total / count, axis, name, count) for key, (total, count, axis, name) in tally.curves.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Writing and the summary


def write_outputs(outputs: dict, document: dict, tally: Tally, summary: list, overwrite: bool) -> dict:
    """Write the tables and the curves; returns what was written, by role (absolute paths)."""
    from onnx_cnnviz import report

    written = {}
    report.write_atomic(outputs["results.csv"], csv_text(RESULT_FIELDS, tally.rows), overwrite=overwrite)
    save_json(outputs["results.json"], {**document, "rows": tally.rows}, overwrite)
    report.write_atomic(outputs["summary.csv"], csv_text(SUMMARY_FIELDS, summary, summary_header()),
                        overwrite=overwrite)
    save_json(outputs["summary.json"], {**document, "summary": summary}, overwrite)
    for name in ("results.csv", "results.json", "summary.csv", "summary.json"):
        written[name] = abspath(outputs[name])
    curves = {}
    for (method, metric), (curve, axis, axis_name, n) in mean_curves(tally).items():
        title = f"{method}: mean {metric_registry.get(metric).title} curve (n={n})"
        path = outputs[("curve", method, metric)]
        report.write_atomic(path, report.png_bytes(curve_picture(curve, axis, title, axis_name)), overwrite=overwrite)
        curves[f"{method}.{metric}"] = abspath(path)
    written["curves"] = curves
    return written


def finish_run(ctx, m, out: Path, outputs: dict, paths: list, methods: list, metrics: list, params: dict,
               tally: Tally, options: dict) -> None:
    """Write what was measured (also after Ctrl-C), print the ranking (or the --json document) and set the exit
    code: 130 interrupted, 1 when an image could not be read, an error when nothing was measured."""
    if not tally.rows:
        if tally.interrupted:
            click.echo("cnnviz: interrupted before any image was evaluated; nothing written", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        raise InputError("no image could be evaluated (all were skipped, listed above).")
    summary = summarise(tally, methods, metrics)
    document = {"model": str(Path(options["model"]).resolve()), "device": m.device, "methods": methods,
                "metrics": {name: {"title": metric_registry.get(name).title,
                                   "higher_is_better": metric_registry.get(name).higher_is_better,
                                   "parameters": metric_registry.parameters(name, params[name])}
                            for name in metrics},
                "confidence_interval": CI_FORMULA}
    files = write_outputs(outputs, document, tally, summary, options["overwrite"])
    if settings().json:
        emit_json({**document, "out": abspath(out), "results": tally.rows, "summary": summary,
                   "ranking": ranking(summary, metrics), "files": files, "failed": tally.failed,
                   "interrupted": tally.interrupted})
    else:
        echo(ranking_text(summary, metrics))
    if tally.interrupted:
        click.echo(f"cnnviz: interrupted; the {len(tally.rows)} row(s) measured are written in {out}", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    if tally.failed:
        click.echo(f"cnnviz: error: {len(tally.failed)} of {len(paths)} image(s) could not be evaluated (listed "
                   f"above); the other results are in {out}", err=True)
        ctx.exit(EXIT_FAILURE)
    echo(f"{len(tally.rows)} row(s) in {out}", err=True)
