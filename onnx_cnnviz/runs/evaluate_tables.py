"""Evaluating explanation methods with metrics, the results: the journal read back (:func:`read_results`), the
summary per method x metric (mean, sample std, n and the Student-t 95% interval
``mean +- t(0.975, n - 1) std / sqrt(n)``), the ranking, the tables, the mean curves drawn with OpenCV and the HTML
page (:mod:`onnx_cnnviz.evaluation_page`), written atomically."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..metrics import registry as metric_registry
from ..metrics.intervals import mean_interval, value_range
from .evaluate_plan import (
    CI_FORMULA,
    EXAMPLES,
    JOURNAL,
    PAGE,
    RESULT_FIELDS,
    SUMMARY_FIELDS,
    TABLES,
    Job,
    journal_lines,
)
from .evaluate_run import Tally
from .outputs import abspath, save_json


@dataclass
class Results:
    """The rows of this run's request (image x method x metric) read back from the journal, in image, method, metric
    order; per (method, metric) the values and the running sum of the curves (with their abscissae)."""
    rows: list = field(default_factory=list)
    values: dict = field(default_factory=dict)
    #: (method, metric) -> the rows whose value is null (the metric undefined there): left out of the mean, said.
    undefined: dict = field(default_factory=dict)
    #: (method, metric) -> [sum of the curves' finite points, count per point, axis, axis_name]
    curves: dict = field(default_factory=dict)
    mixed: set = field(default_factory=set)  # (method, metric) whose curves differ in length: no mean curve

def read_results(job: Job, journal: Path, paths: list, fields: list = RESULT_FIELDS, within: tuple = ()) -> Results:
    """The journal's rows for this run: per (image, method, metric) its last line made with this run's settings, in
    image, method, metric order. Two passes over the file, so that only the chosen lines' curves are ever summed and
    none is kept.

    Args:
        job: the run's settings (its methods, metrics and each row's settings).
        journal: the journal file.
        paths: the run's images.
        fields: the columns of a row kept (a detector's: ``DETECTION_RESULT_FIELDS``).
        within: the names of the fields that tell an image's rows apart besides the method and metric (a
            detector's: ``("detection",)``: one row per (image, detection, method, metric), in that order); a line
            without them is not one of this run's.

    Returns:
        The :class:`Results`.
    """
    index = {abspath(p): i for i, p in enumerate(paths)}

    def key_of(row):
        i = index.get(row["image"])
        if i is None or any(name not in row for name in within) or row["method"] not in job.layers \
                or row["metric"] not in job.params or row["settings"] != job.row_settings(row["method"],
                                                                                          row["metric"], i):
            return None
        return (i, *(row[name] for name in within), row["method"], row["metric"])

    chosen: dict = {}
    for n, row in enumerate(journal_lines(journal)):
        key = key_of(row)
        if key is not None:
            chosen[key] = n
    lines = set(chosen.values())
    picked: dict = {}
    results = Results()
    for n, row in enumerate(journal_lines(journal)):
        if n in lines:
            key = key_of(row)
            picked[key] = {f: row.get(f) for f in fields}
            add_curve(results, key[-2:], row)
    methods = {name: k for k, name in enumerate(job.methods)}
    metrics = {name: k for k, name in enumerate(job.metrics)}
    for key in sorted(picked, key=lambda k: (*k[:-2], methods[k[-2]], metrics[k[-1]])):
        row = picked[key]
        results.rows.append(row)
        results.values.setdefault(key[-2:], [])
        if row["value"] is None:
            results.undefined.setdefault(key[-2:], []).append(row)
        else:
            results.values[key[-2:]].append(float(row["value"]))
    return results

def add_curve(results: Results, key: tuple, row: dict) -> None:
    """Add a journal row's curve to the running sum of its (method, metric); an undefined point (null, NaN) is left
    out of that point's mean, as an undefined value is left out of the summary's."""
    if row.get("curve") is None or key in results.mixed:
        return
    curve = np.asarray([np.nan if v is None else v for v in row["curve"]], dtype=np.float64)
    finite = np.isfinite(curve)
    curve = np.where(finite, curve, 0.0)
    if key not in results.curves:
        results.curves[key] = [curve, finite.astype(np.int64), np.asarray(row["axis"]) if row.get("axis") else None,
                               row.get("axis_name")]
    elif results.curves[key][0].shape != curve.shape:
        # Images kept at their own sizes give curves of other lengths: no single mean curve.
        results.mixed.add(key)
        del results.curves[key]
    else:
        results.curves[key][0] += curve
        results.curves[key][1] += finite

def mean_curves(results: Results) -> dict:
    """(method, metric) -> (mean curve, axis, axis name, n): per point the mean of the curves defined there (NaN
    where none is; n the most curves any point is averaged over). A curve undefined everywhere is left out."""
    out = {}
    for key, (total, count, axis, name) in results.curves.items():
        if count.max() > 0:
            out[key] = (np.where(count > 0, total / np.maximum(count, 1), np.nan), axis, name, int(count.max()))
    return out

def summary_row(method: str, metric: str, values, output: str | None = None, undefined: int = 0) -> dict:
    """Mean, sample std (ddof=1; 0 for one value), n and the Student-t 95% interval
    (:func:`onnx_cnnviz.metrics.intervals.mean_interval`) of the defined ``values``; ``undefined``: the rows left
    out because the metric is undefined there; ``output``: what the metric read from the model."""
    stats = mean_interval(values, bounds=value_range(metric, output))  # clipped to what the metric can take
    return {"method": method, "metric": metric, "mean": stats["mean"], "std": stats["std"], "n": stats["n"],
            "undefined": undefined,
            "ci95_low": stats["low"], "ci95_high": stats["high"], "ci95_clipped": stats["clipped"],
            "higher_is_better": metric_registry.get(metric).higher_is_better, "output": output}

def outputs_read(rows: list) -> dict:
    """(method, metric) -> what the metric read from the model, in words (several, joined, if the rows differ)."""
    seen: dict = {}
    for row in rows:
        texts = seen.setdefault((row["method"], row["metric"]), [])
        if row["output"] not in texts:
            texts.append(row["output"])
    return {key: "; ".join(t for t in texts if t) or None for key, texts in seen.items()}

def summarise(results: Results, methods: list, metrics: list) -> list:
    """One summary row per (method, metric) with at least one defined value."""
    outputs = outputs_read(results.rows)
    return [summary_row(method, metric, results.values[(method, metric)], outputs.get((method, metric)),
                        len(results.undefined.get((method, metric), ())))
            for method in methods for metric in metrics if results.values.get((method, metric))]


def undefined_lines(results: Results, unit: str = "image") -> list:
    """One line per (method, metric) with rows whose value is undefined: how many of how many, which images (the
    first few) and why, and what the mean is over; the tables keep each row's reason. ``unit``: what a row is
    ("image"; a detector's run: "detection", named ``NAME #N``)."""
    lines = []
    for (method, metric), rows in results.undefined.items():
        defined = len(results.values.get((method, metric), ()))
        names = ", ".join(Path(r["image"]).name + (f" #{r['detection']}" if r.get("detection") else "")
                          for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        mean = f"the mean is over the other {defined}" if defined else "no mean"
        lines.append(f"{metric} of {method} is undefined for {len(rows)} of {len(rows) + defined} {unit}(s) "
                     f"({names}); {Path(rows[0]['image']).name}: {rows[0].get('reason') or 'undefined'}; {mean} "
                     "(results.csv gives each row's reason).")
    return lines

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
    ci = {"ci95_low": "ci95_low (mean - t*std/sqrt(n))", "ci95_high": "ci95_high (mean + t*std/sqrt(n))",
          "ci95_clipped": "ci95_clipped (interval clipped to the metric's range)"}
    return [ci.get(name, name) for name in SUMMARY_FIELDS]

def ranking_text(summary: list, metrics: list) -> str:
    """The ranking table printed at the end: per metric, its direction and what it read, then the methods best
    first."""
    lines = []
    for metric, order in ranking(summary, metrics).items():
        meta = metric_registry.get(metric)
        by_method = {r["method"]: r for r in summary if r["metric"] == metric}
        reads = by_method[order[0]]["output"]
        lines.append(f"{meta.title} ({metric}, {'higher' if meta.higher_is_better else 'lower'} is better"
                     + (f"; reads {reads}" if reads else "") + ")")
        for rank, method in enumerate(order, 1):
            r = by_method[method]
            lines.append(f"  {rank}. {method:<16} {r['mean']:.4f}  "
                         f"[{r['ci95_low']:.4f}, {r['ci95_high']:.4f}]"
                         + (" (clipped to the metric's range)" if r.get("ci95_clipped") else "") + f"  n={r['n']}"
                         + (f" ({r['undefined']} undefined, left out)" if r.get("undefined") else ""))
    return "\n".join(lines)

#: RGB colours of the overlaid curves, in ranking order (then repeated): distinct under the common colour blindnesses
#: (Okabe & Ito's palette, without its yellow, too pale on white).
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (230, 159, 0), (0, 0, 0))


def curve_picture(curve: np.ndarray, axis: np.ndarray, title: str, axis_name: str | None,
                  width: int = 480, height: int = 320) -> np.ndarray:
    """The mean curve as an RGB uint8 picture (OpenCV only: no plotting library): a polyline over the axis range,
    the y range [min(0, lowest), max(1, highest)] so that probability curves share a scale."""
    return plot([(None, curve, axis)], title, axis_name, width, height)


def overlay_picture(lines: list, title: str, axis_name: str | None, width: int = 640,
                    height: int = 340) -> np.ndarray:
    """Several mean curves in one RGB uint8 picture, each in its colour of :data:`PALETTE`, with a legend on the
    right: ``lines`` is ``[(label, curve, axis), ...]`` (the methods of one metric, best first)."""
    return plot(lines, title, axis_name, width, height, legend=True)


def plot(lines: list, title: str, axis_name: str | None, width: int, height: int,
         legend: bool = False) -> np.ndarray:
    """Draw ``lines`` (``(label, curve, axis)``, axis None: evenly spaced over [0, 1]) on one pair of axes: x over
    the union of their abscissae, y over [min(0, lowest), max(1, highest)]; a point no curve defines (NaN) breaks
    its line instead of being drawn at a made-up height."""
    import cv2

    pic = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 56, width - (200 if legend else 16), 34, height - 40
    xs = [np.asarray(axis, dtype=np.float64) if axis is not None and len(axis) == len(curve) else
          np.linspace(0.0, 1.0, len(curve)) for _, curve, axis in lines]
    curves = [np.asarray(curve, dtype=np.float64) for _, curve, _ in lines]
    defined = np.concatenate([c[np.isfinite(c)] for c in curves] + [np.zeros(0)])
    y0 = min(0.0, float(defined.min())) if defined.size else 0.0
    y1 = max(1.0, float(defined.max())) if defined.size else 1.0
    x0 = min(float(x.min()) for x in xs)
    x1 = max(float(x.max()) for x in xs)
    x1 = x1 if x1 > x0 else x0 + 1.0
    black, font = (0, 0, 0), cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(pic, (left, top), (right, bottom), (160, 160, 160), 1)
    for k, ((label, _, _), x, curve) in enumerate(zip(lines, xs, curves)):
        colour = PALETTE[k % len(PALETTE)]
        px = left + (x - x0) / (x1 - x0) * (right - left)
        py = bottom - (np.where(np.isfinite(curve), curve, 0.0) - y0) / (y1 - y0) * (bottom - top)
        cv2.polylines(pic, segments(np.stack([px, py], axis=1), np.isfinite(curve)), False, colour, 2, cv2.LINE_AA)
        if legend:
            y = top + 8 + 18 * k
            cv2.line(pic, (right + 12, y), (right + 36, y), colour, 3, cv2.LINE_AA)
            cv2.putText(pic, str(label)[:22], (right + 42, y + 5), font, 0.42, black, 1, cv2.LINE_AA)
    cv2.putText(pic, title, (left, 22), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.putText(pic, f"{y1:.2f}", (4, top + 5), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(pic, f"{y0:.2f}", (4, bottom + 5), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(pic, f"{x0:g}", (left - 4, bottom + 16), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(pic, f"{x1:g}", (right - 24, bottom + 16), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(pic, axis_name or "step", (left + 60, height - 8), font, 0.4, black, 1, cv2.LINE_AA)
    return pic

def segments(points: np.ndarray, finite: np.ndarray) -> list:
    """The runs of consecutive defined points of ``points`` (P, 2) as OpenCV polylines (int32, (n, 1, 2))."""
    out, start = [], None
    for k, ok in enumerate([*finite.tolist(), False]):
        if ok and start is None:
            start = k
        elif not ok and start is not None:
            out.append(points[start:k].round().astype(np.int32).reshape(-1, 1, 2))
            start = None
    return out


def curve_pictures(results: Results) -> dict:
    """(method, metric) -> the picture of its mean curve."""
    pictures = {}
    for (method, metric), (curve, axis, axis_name, n) in mean_curves(results).items():
        title = f"{method}: mean {metric_registry.get(metric).title} curve (n={n})"
        pictures[(method, metric)] = curve_picture(curve, axis, title, axis_name)
    return pictures

def overlay_pictures(results: Results, order: dict) -> dict:
    """metric -> one picture of every method's mean curve of that metric, overlaid, methods in ``order[metric]``
    (the ranking, best first; methods outside it after them), labelled with their n."""
    means = mean_curves(results)
    pictures = {}
    for metric in dict.fromkeys(metric for _, metric in means):
        ranked = list(order.get(metric, []))
        methods = ranked + sorted(method for method, name in means if name == metric and method not in ranked)
        lines, axis_name = [], None
        for method in methods:
            if (method, metric) in means:
                curve, axis, axis_name, n = means[(method, metric)]
                lines.append((f"{method} (n={n})", curve, axis))
        pictures[metric] = overlay_picture(lines, f"mean {metric_registry.get(metric).title} curves", axis_name)
    return pictures

def write_outputs(outputs: dict, document: dict, results: Results, summary: list, pictures: dict, page: str,
                  replace: bool, fields: list = RESULT_FIELDS) -> dict:
    """Write the tables, the curves and the page, each atomically; returns what was written, by role (absolute
    paths). ``fields``: the columns of results.csv (a detector's rows have more)."""
    from .. import report

    written = {}
    report.write_atomic(outputs["results.csv"], csv_text(fields, results.rows), overwrite=replace)
    save_json(outputs["results.json"], {**document, "rows": results.rows}, replace)
    report.write_atomic(outputs["summary.csv"], csv_text(SUMMARY_FIELDS, summary, summary_header()),
                        overwrite=replace)
    save_json(outputs["summary.json"], {**document, "summary": summary}, replace)
    for name in (JOURNAL, *TABLES):
        written[name] = abspath(outputs[name])
    curves = {}
    for (method, metric), pic in pictures.items():
        path = outputs[("curve", method, metric)]
        report.write_atomic(path, report.png_bytes(pic), overwrite=replace)
        curves[f"{method}.{metric}"] = abspath(path)
    written["curves"] = curves
    report.write_atomic(outputs[PAGE], page, overwrite=replace)
    written["page"] = abspath(outputs[PAGE])
    return written

def write_run(m, job: Job, outputs: dict, paths: list, work, tally: Tally, model_name: str, results: Results,
              summary: list, document: dict, reporter, kept: int, unit: str = "image", fields: list = RESULT_FIELDS,
              detections: int | None = None) -> dict:
    """The end both evaluate runs share (:func:`onnx_cnnviz.runs.evaluate.finish`, a detector's
    :func:`onnx_cnnviz.runs.detection_evaluate.finish`), once the rows are read back and summarised: the undefined
    values said, the curves drawn, the page and the tables written.

    Args:
        m: the model.
        job: the run's settings.
        outputs: the output files by role.
        paths: the run's images.
        work: the plan (what --resume kept, removed, found stale).
        tally: what this run did (a detector's also lists ``nothing_found``, the images without a detection).
        model_name: the model's file name, for the page's title.
        results: the rows read back (:func:`read_results`).
        summary: the summary rows.
        document: what every table's JSON repeats (:func:`run_document`, or a detector's).
        reporter: gets the warnings.
        kept: how many rows --resume kept.
        unit: what a row is, for the warnings ("image"; a detector's: "detection").
        fields: the columns of results.csv.
        detections: a detector's run, how many detections were scored.

    Returns:
        The run's document, as ``cnnviz evaluate --json`` prints it.
    """
    for line in undefined_lines(results, unit=unit):
        reporter.warn(line)
    pictures = curve_pictures(results)
    # The page overlays every method's curve of a metric in one plot (one file per method and metric on disk).
    overlays = overlay_pictures(results, ranking(summary, job.metrics))
    page = page_text(m, job, model_name, document, summary, pictures, tally, paths, overlays, detections=detections)
    files = write_outputs(outputs, document, results, summary, pictures, page, job.overwrite or job.resume,
                          fields=fields)
    nothing_found = getattr(tally, "nothing_found", None)
    return {**document, "out": abspath(job.out), "results": results.rows, "summary": summary,
            "ranking": ranking(summary, job.metrics), "files": files, "failed": tally.failed,
            **({} if nothing_found is None else {"nothing_found": nothing_found}),
            "computed": tally.computed, "kept": kept, "stale": work.stale,
            "removed_temporary": [abspath(p) for p in work.removed], "interrupted": tally.interrupted,
            "unavailable": job.unavailable}

def run_document(m, job: Job) -> dict:
    """What every table's JSON repeats: the model, device, methods, metrics with their parameters, the interval."""
    return {"model": job.model_path, "device": m.device, "methods": job.methods,
            "preprocessing": job.preprocessing_info, "target": job.target,
            "layers": {name: layer for name, layer in job.layers.items() if layer},
            "metrics": {name: {"title": metric_registry.get(name).title,
                               "higher_is_better": metric_registry.get(name).higher_is_better,
                               "parameters": metric_registry.parameters(name, job.params[name])}
                        for name in job.metrics},
            "confidence_interval": CI_FORMULA}

def page_text(m, job: Job, model_name: str, document: dict, summary: list, pictures: dict, tally: Tally,
              paths: list, overlays: dict | None = None, detections: int | None = None) -> str:
    """The HTML page of the run (:func:`onnx_cnnviz.evaluation_page.render`). ``pictures``: (method, metric) -> its
    mean curve; ``overlays``: metric -> every method's curve in one plot (:func:`overlay_pictures`);
    ``detections``: a detector's run, how many detections were scored (its examples are detections)."""
    from .. import evaluation_page, report

    examples = [tally.examples[i] for i in sorted(tally.examples)][:EXAMPLES]
    metrics = {}
    for name in job.metrics:
        meta = metric_registry.get(name)
        # A detector's metric names its own paper (deletion per detection: D-RISE's, not RISE's).
        metrics[name] = {**document["metrics"][name], "paper": document["metrics"][name].get("paper", meta.paper)}
    return evaluation_page.render(
        model=report.describe(m, job.model_path), preprocessing=job.preprocessing_info, summary=summary,
        ranking=ranking(summary, job.metrics), metrics=metrics, curves=pictures,
        examples=[evaluation_page.ExampleRow(e.path, e.view, e.cls, job.labels[e.cls] if job.labels else None,
                                             e.probability, [(name, e.pictures[name]) for name in job.methods
                                                             if name in e.pictures],
                                             getattr(e, "detection", None)) for e in examples],
        images=len(paths), failed=tally.failed, interrupted=tally.interrupted, ci_formula=CI_FORMULA,
        title=f"cnnviz evaluate — {model_name}", overlays=overlays, detections=detections,
        skipped=getattr(tally, "nothing_found", ()))
