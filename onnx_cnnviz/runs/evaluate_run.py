"""Evaluating explanation methods with metrics, the work: :func:`evaluate_all` reads the planned images a batch at a
time, explains each same-size group with every method still missing for it (:func:`method_maps`, checked to be
finite maps over the image), scores every missing metric on those maps (:func:`score`) and appends each finished
(method, metric) to the journal at once (:func:`record`); it keeps a few example pictures for the page."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, NumericalError
from ..methods import registry
from ..metrics import registry as metric_registry
from ..metrics.inputs import explanation_for
from .evaluate_plan import EXAMPLES, Job, Journal, Plan, needs_boxes
from .images import read_batch, same_size_groups
from .outputs import abspath


@dataclass
class Tally:
    """What this run did: how many rows it added to the journal, the images that could not be read, the example
    pictures for the page, whether Ctrl-C stopped it. ``make_examples`` False: no pictures are kept (a Ray actor's
    tally: the page's examples are made on the driver, :func:`complete_examples`); ``warnings``: key -> message of
    the warnings given once per run, which an actor hands to the driver to give."""
    computed: int = 0
    wrote: bool = False  # the journal was opened for this run's rows (an --overwrite run's old journal is replaced)
    failed: list = field(default_factory=list)
    examples: dict = field(default_factory=dict)  # image index -> Example
    interrupted: bool = False
    make_examples: bool = True
    warnings: dict = field(default_factory=dict)

@dataclass
class Example:
    """One image shown on the page: its model view, the class explained and its probability, and each method's
    picture."""
    path: str
    view: np.ndarray
    cls: int
    probability: float
    pictures: dict = field(default_factory=dict)

def evaluate_all(m, job: Job, paths: list, work: Plan, journal_path: Path, reporter) -> Tally:
    """Read --batch-size images at a time, explain each same-size group with every method still missing for it and
    score every missing metric on those maps, each finished (method, metric) appended to the journal at once
    (:func:`evaluate_batches`). Ctrl-C stops it, keeping what was measured. ``reporter``: warnings and progress."""
    def group(x, items, journal, tally, bar):
        evaluate_group(m, job, x, items, paths, journal, tally, bar, reporter)

    # Counted in rows (image x method x metric), each as it is journaled: counted in images, a batch of 4 same-size
    # pictures stayed at "0/4 images" until every method and metric of all 4 was done.
    return evaluate_batches(job, paths, work, journal_path, reporter, Tally(), group, unit="rows", units=len)

def evaluate_batches(job: Job, paths: list, work: Plan, journal_path: Path, reporter, tally: Tally, group,
                     unit: str, units) -> Tally:
    """The loop of both evaluate runs (a classifier's, :func:`evaluate_all`; a detector's,
    :func:`~onnx_cnnviz.runs.detection_evaluate.evaluate_detections_all`): open the journal (kept under --resume),
    read the planned images --batch-size at a time (a picture that cannot be read is listed in ``tally.failed``) and
    hand each same-size group to ``group(x, items, journal, tally, bar)``, which appends its rows to the journal.
    Ctrl-C stops it, keeping what was journaled (``tally.interrupted``); the journal is closed either way.

    Args:
        job: the run's settings.
        paths: the run's images.
        work: the plan (its ``todo``: (image index, missing (method, metric) keys) per image).
        journal_path: the journal file.
        reporter: warnings and progress.
        tally: the run's tally, filled in and returned.
        group: the work on one same-size group of images.
        unit: what the progress counts ("rows", "images").
        units: the progress units of a plan item, from its missing keys; whatever of a batch's units ``group`` did
            not report itself (with ``bar.update``) is added once the batch is done.

    Returns:
        ``tally``.
    """
    journal = Journal(journal_path, job.resume)
    try:
        with reporter.progress(sum(units(missing) for _, missing in work.todo), "evaluating", unit=unit) as shown:
            bar = CountingProgress(shown)
            for start in range(0, len(work.todo), job.batch_size):
                chunk = work.todo[start:start + job.batch_size]
                before = bar.done
                for x, items in same_size_groups(read_batch(paths, chunk, job.preprocessing, tally.failed, reporter)):
                    group(x, items, journal, tally, bar)
                # The units group did not report: the pictures that could not be read (or all, counted in images).
                bar.update(sum(units(missing) for _, missing in chunk) - (bar.done - before))
    except KeyboardInterrupt:
        tally.interrupted = True
    finally:
        tally.wrote = journal.handle is not None
        journal.close()
    return tally

class CountingProgress:
    """A run's progress display (``update``, ``method_progress``, ...) that also counts the units reported to it
    (``done``), so that :func:`evaluate_batches` can add those its work did not report."""

    def __init__(self, bar):
        self.bar = bar
        self.done = 0

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        self.bar.update(n)

    def __getattr__(self, name: str):
        return getattr(self.bar, name)

def evaluate_group(m, job: Job, x: np.ndarray, items: list, paths: list, journal: Journal, tally: Tally,
                   bar=None, reporter=None) -> None:
    """The missing method x metric rows of the same-size images ``x`` (one per plan item of ``items``), for
    --target or each image's top-1. ``paths``: the run's images, indexed by the items' image indices (a list, or a
    dict of the items' only: a Ray actor's batch); ``journal``: anything with ``append(rows)``; ``reporter``: told
    the once-per-run warnings (also kept in ``tally.warnings``)."""
    scores = m.scores(x, batch_size=job.rows_per_run)
    warn_probability_output(m, scores, tally, reporter)
    targets = m.targets_for(job.target, len(x)) if job.target is not None else scores.argmax(axis=1)
    for method in job.methods:
        rows = [j for j, (_, missing) in enumerate(items) if any(k[0] == method for k in missing)]
        if not rows:
            continue
        images = [items[j][0] for j in rows]
        maps = method_maps(m, method, x[rows], targets[rows], job.layer, job.rows_per_run,
                           [paths[i] for i in images], bar.method_progress(method) if bar is not None else None,
                           params=job.own_params(method))
        keep_examples(m, job, tally, method, x[rows], images, paths, maps, scores[rows], targets[rows])
        for metric in job.metrics:
            sub = [r for r, j in enumerate(rows) if (method, metric) in items[j][1]]
            if sub:
                result = score(m, job, metric, method, x[rows][sub], maps[sub], targets[rows][sub],
                               [images[r] for r in sub], bar)
                record(job, journal, tally, [images[r] for r in sub], paths, method, metric, result, maps[sub])
                if bar is not None:
                    bar.update(len(sub))

def method_maps(m, method: str, x: np.ndarray, targets: np.ndarray, layer, rows_per_run, paths: list,
                progress=None, params: dict | None = None) -> np.ndarray:
    """Method ``method``'s result on ``x`` (the images ``paths``), checked to be a map over the image: (N, H, W), or
    (N, C', H, W) with C' 1 or the images' channels (attributions, reduced per pixel by the metrics), of finite
    numbers. A wrong shape is an :class:`InputError`, NaN or Inf a :class:`NumericalError`, naming the method (and
    the image): a metric of such a map would be no measurement."""
    result = np.asarray(registry.explain(m, method, x, targets, layer=layer, params=params, batch_size=rows_per_run,
                                         progress=progress))
    n, c, h, w = x.shape
    fits = (result.ndim == 3 or (result.ndim == 4 and result.shape[1] in (1, c))) \
        and result.shape[0] == n and tuple(result.shape[-2:]) == (h, w)
    if not fits:
        raise InputError(f"method {method!r} returns an array of shape {tuple(result.shape)}, not a map over the "
                         f"{h}x{w} image ({n}, {h}, {w}) or ({n}, {c}, {h}, {w}); it cannot be evaluated.")
    if not (np.issubdtype(result.dtype, np.number) or result.dtype == bool):
        raise InputError(f"method {method!r} returns an array of {result.dtype}, not numbers; it cannot be "
                         "evaluated.")
    bad = ~np.isfinite(result.reshape(n, -1)).all(axis=1)
    if bad.any():
        raise NumericalError(f"method {method!r} returns NaN or Inf in its map of '{paths[int(np.argmax(bad))]}'; "
                             "a metric of it would mean nothing (check the method, or leave that image out).")
    return result

def score(m, job: Job, metric: str, method: str, x: np.ndarray, maps: np.ndarray, targets: np.ndarray,
          images: list, bar=None):
    """Metric ``metric`` on ``method``'s ``maps`` of the images ``x`` (indices ``images`` of the run)."""
    params = job.params[metric]
    if job.method_params and "method_params" in metric_registry.get(metric).params \
            and params.get("method_params") is None:
        # A metric that re-explains (sensitivity-max, model randomisation) runs the method as the run does.
        params = {**params, "method_params": job.own_params(method)}
    extra = {"boxes": [job.boxes[i] for i in images]} if needs_boxes(metric) else {}
    # The progress names the method whose maps are scored: "deletion of gradcam 3/16", not "deletion 3/16".
    return metric_registry.evaluate(metric, m, x, explanation_for(metric, maps, method, params), targets, params=params,
                                    batch_size=job.rows_per_run,
                                    progress=bar.method_progress(f"{metric} of {method}") if bar is not None else None,
                                    **extra)

def warn_probability_output(m, scores: np.ndarray, tally: Tally | None = None, reporter=None) -> None:
    """Say once when the model's output is already a probability (rows summing to 1, no Softmax for the engine to
    skip): the metrics then read that output as it is, not a softmax of it, and the tables' ``output`` says so.
    The message is also kept in ``tally.warnings``: a Ray actor's warnings are silenced, the driver gives them."""
    from ..metrics.base import looks_like_probabilities

    if m.softmax_skipped is None and looks_like_probabilities(scores):
        message = (f"the model's output '{m.output_name}' is already a probability (its rows sum to 1 and it ends in "
                   "no Softmax to skip): the metrics read it as it is, 'probability (the model's own output, already "
                   "normalised; no softmax applied)', as the tables' output column says.")
        if tally is not None:
            tally.warnings["probability-output"] = message
        if reporter is not None:
            reporter.warn(message, once="probability-output")

def record(job: Job, journal: Journal, tally: Tally, images: list, paths: list, method: str, metric: str,
           result, maps: np.ndarray | None = None) -> None:
    """Append ``result`` (a :class:`~onnx_cnnviz.metrics.MetricResult` on the run's images ``images``) to the
    journal: one line per image, with its settings and its curve. A value the metric could not define (NaN) is
    written as null with its ``reason`` (:func:`undefined_reason`; ``maps``: the method's maps the metric scored),
    never as a number the tables would average."""
    # A curve of random samples (sensitivity-max's perturbations) has no mean curve worth keeping or drawing.
    ordered = result.curve is not None and metric_registry.get(metric).ordered_curve
    axis = None if result.axis is None else np.asarray(result.axis).tolist()
    lines = []
    for r, i in enumerate(images):
        value = float(result.values[r])
        curve = np.asarray(result.curve[r], dtype=np.float64) if ordered else None
        defined = bool(np.isfinite(value))
        lines.append({"image": abspath(paths[i]), "method": method, "metric": metric,
                      "value": value if defined else None, "class": int(result.targets[r]), "output": result.output,
                      "reason": None if defined else undefined_reason(metric, result, r,
                                                                       None if maps is None else maps[r]),
                      "settings": job.row_settings(method, metric, i),
                      "curve": curve.tolist() if ordered else None,
                      "axis": axis if ordered else None, "axis_name": result.axis_name if ordered else None})
    journal.append(lines)
    tally.computed += len(lines)

def undefined_reason(metric: str, result, r: int, trained_map: np.ndarray | None) -> str:
    """Why ``metric``'s value of image ``r`` is undefined (NaN), in one line. The model randomisation test
    (Adebayo et al. 2018) compares maps by Spearman's rank correlation, which is undefined when either map is
    constant (as ``scipy.stats.spearmanr``): say whether the trained model's map is, or from which stage the
    randomised models' maps are (e.g. a Grad-CAM that ReLU makes all zero once the weights are random)."""
    if metric == "model-randomisation":
        measure = (result.details or {}).get("measure", "spearman_abs")
        if trained_map is not None and np.ptp(np.asarray(trained_map, dtype=np.float64)) == 0:
            value = float(np.ravel(trained_map)[0])
            return (f"the method's map on the trained model is constant (every value {value:g}), so its {measure} "
                    "with any randomised model's map is undefined")
        stages = [] if result.curve is None else \
            [k + 1 for k, v in enumerate(np.asarray(result.curve[r], dtype=np.float64)) if not np.isfinite(v)]
        where = f"at stage(s) {', '.join(map(str, stages))} of {len(result.curve[r])}" if stages \
            else "after randomisation"
        return (f"the method's map of the randomised model is constant (e.g. all zero) {where}, so its {measure} with "
                "the trained model's map is undefined (a rank correlation with a constant)")
    return f"{metric} is undefined (NaN) for this image's map"

def keep_examples(m, job: Job, tally: Tally, method: str, x: np.ndarray, images: list, paths: list,
                  maps: np.ndarray, scores: np.ndarray, targets: np.ndarray) -> None:
    """Keep the pictures of ``method``'s maps of the first :data:`EXAMPLES` images of the run, for the page (the
    first readable ones: :func:`complete_examples` adds those this run did not explain)."""
    from .. import report
    from ..image import deprocess

    if not tally.make_examples:
        return
    for r, i in enumerate(images):
        if i >= EXAMPLES + len(tally.failed):
            continue
        view = deprocess(x[r], preset=job.preprocessing)
        if i not in tally.examples:
            c = int(targets[r])
            probs = report.probabilities(scores[r:r + 1], m.softmax_skipped)[0]
            tally.examples[i] = Example(abspath(paths[i]), thumbnail(view), c, float(probs[c]))
        pic = report.picture(method, maps[r], view, job.preprocessing.order)
        tally.examples[i].pictures[method] = thumbnail(pic)

def thumbnail(picture: np.ndarray, side: int = 160) -> np.ndarray:
    """``picture`` shrunk (area interpolation) so that its longer side is at most ``side`` pixels."""
    import cv2

    h, w = picture.shape[:2]
    if max(h, w) <= side:
        return picture
    f = side / max(h, w)
    return cv2.resize(picture, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)

def complete_examples(m, job: Job, paths: list, tally: Tally) -> None:
    """Explain the example images whose pictures this run did not make (rows kept by --resume), so that the page
    shows every method on the first images, whatever was skipped."""
    from ..image import preprocess

    failed = {f["image"] for f in tally.failed}
    wanted = [i for i, p in enumerate(paths) if abspath(p) not in failed][:EXAMPLES]
    for i in wanted:
        example = tally.examples.get(i)
        missing = [name for name in job.methods if example is None or name not in example.pictures]
        if not missing:
            continue
        try:
            x = preprocess([paths[i]], preset=job.preprocessing)
        except InputError:
            continue
        scores = m.scores(x, batch_size=job.rows_per_run)
        targets = m.targets_for(job.target, 1) if job.target is not None else scores.argmax(axis=1)
        for name in missing:
            maps = method_maps(m, name, x, targets, job.layer, job.rows_per_run, [paths[i]],
                               params=job.own_params(name))
            keep_examples(m, job, tally, name, x, [i], paths, maps, scores, targets)
