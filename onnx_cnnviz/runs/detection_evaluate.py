"""``cnnviz evaluate`` on a detector: every detection of every image explained and scored, one journal row per
(image, detection, method, metric).

Per group of same-size images the run finds the detections (:func:`onnx_cnnviz.tasks.detect`: score at least
--conf, class-aware NMS at --iou, at most --max-det per image, best first, numbered 1, 2, ... as ``cnnviz explain``
numbers them), explains all of them with each method in batched runs (one row per detection, as
:func:`onnx_cnnviz.tasks.explain`; --batch-size detections at a time) and scores each with the per-detection metrics of
:mod:`onnx_cnnviz.metrics.detections`, under the classifier's names where the meaning is the same:

* ``deletion`` / ``insertion``: :func:`~onnx_cnnviz.metrics.detection_deletion` /
  :func:`~onnx_cnnviz.metrics.detection_insertion` (Petsiuk et al., "Black-box Explanation of Object Detectors via
  Saliency Maps", CVPR 2021, Sec. 5): the AUC of the detection's D-RISE similarity
  ``f = max_{d'} IoU(L, L') O O' cos(P, P')`` to the detections of the image as its map's pixels are removed
  (inserted), the perturbed images decoded with the run's --conf/--iou/--max-det; ``score=element`` follows the
  detection's own head element instead;
* ``pointing-game`` (with --boxes): :func:`~onnx_cnnviz.metrics.detection_pointing_game` (Zhang et al., ECCV 2016,
  per detection): 1 when the map's first maximum lies within ``tolerance`` pixels of the ground-truth box *matched*
  to the detection (same class, IoU >= ``iou_threshold``, the VOC rule of
  :func:`~onnx_cnnviz.metrics.match_detections`), else 0. A detection matched to no box (a false positive) has
  nothing to point at: its row is written with an undefined value and that reason, never dropped;
* ``model-randomisation``: the sanity check of Adebayo et al. (NeurIPS 2018) per detection
  (:func:`~onnx_cnnviz.metrics.detection_randomisation`'s way): each detection's map on the trained detector and on
  each randomised copy explains the same head element; the value is the ``measure`` (Spearman's rank correlation of
  the absolute maps by default) after the last stage, lower is better.

The other metrics measure a classifier's class probability and are refused on a detector, naming these. An image
where nothing scores --conf is listed as skipped with the reason; a run where no image has a detection is an
:class:`InputError`. The journal's rows carry ``detection`` (the number) and ``detections`` (how many the image has):
--resume keeps an (image, method, metric) when the journal holds the rows of all its detections made with this run's
settings (which include --conf/--iou/--max-det), so a finished run is recomputed by nothing but one forward pass per
image that still has work.
"""
from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import jsonio
from ..errors import CnnvizError, InputError
from ..metrics import detections as det_metrics
from ..metrics import registry as metric_registry
from ..metrics import sanity
from .detections import TaskOptions, find_targets
from .evaluate_plan import (CI_FORMULA, EXAMPLES, RESULT_FIELDS, Job, Plan, boxes_setting, differences,
                            journal_lines)
from .evaluate_run import Example, Tally, evaluate_batches, method_maps, thumbnail, undefined_reason
from .labels import option_error
from .outputs import abspath

__all__ = ["DETECTION_METRICS", "DETECTION_RESULT_FIELDS", "DetectionMetric", "DetectionJob", "DetectionTally",
           "check_metric_names", "detection_parameters", "split_params", "build_detection_job", "journal_state",
           "evaluate_detections_all", "evaluate_detection_group", "read_detection_results", "detections_line"]

#: A detector's results.csv columns: the classifier's, with the detection's number, box and score after the image.
DETECTION_RESULT_FIELDS = ["image", "detection", "box", "score", *RESULT_FIELDS[1:], "ground_truth"]


@dataclass(frozen=True)
class DetectionMetric:
    """One metric measured per detection under a classifier metric's name (same meaning, same direction).

    ``func``: the library function (:mod:`onnx_cnnviz.metrics.detections`); ``params``: the keys a user may set
    (``--metric-param NAME.KEY=VALUE``), their defaults read from ``func``'s signature; ``paper``: the reference."""
    name: str
    func: Callable
    params: tuple
    paper: str
    needs_boxes: bool = False

    def defaults(self) -> dict:
        signature = inspect.signature(self.func).parameters
        return {key: signature[key].default for key in self.params}


_DRISE = "Petsiuk et al. 2021 (D-RISE, Sec. 5)"

#: The metrics ``cnnviz evaluate`` measures per detection, by their command-line names.
DETECTION_METRICS = {
    "deletion": DetectionMetric("deletion", det_metrics.detection_deletion,
                                ("score", "baseline", "pixels_per_step", "channels"), _DRISE),
    "insertion": DetectionMetric("insertion", det_metrics.detection_insertion,
                                 ("score", "baseline", "pixels_per_step", "channels"), _DRISE),
    "pointing-game": DetectionMetric("pointing-game", det_metrics.detection_pointing_game,
                                     ("iou_threshold", "tolerance", "channels"), "Zhang et al. 2016, per detection",
                                     needs_boxes=True),
    # As detection_randomisation (Adebayo et al. 2018): each map explains its detection's element on the trained and
    # on every randomised copy of the detector; one method at a time, as the classifier's metric.
    "model-randomisation": DetectionMetric("model-randomisation", sanity.model_randomisation,
                                           ("stages", "measure", "mode", "seed", "init"),
                                           "Adebayo et al. 2018, per detection"),
}


def check_metric_names(metrics: list) -> None:
    """Refuse (an :class:`InputError` about --metric) a metric that has no per-detection meaning, naming those that
    have one."""
    other = [name for name in metrics if name not in DETECTION_METRICS]
    if other:
        raise option_error(
            f"{', '.join(other)} measure(s) a classifier's class; on a detector cnnviz evaluate measures each "
            f"detection with {', '.join(DETECTION_METRICS)} (pointing-game with --boxes).", "--metric")


def split_params(metric: str, given: dict | None) -> tuple:
    """``(classifier part, detector-only part)`` of metric ``metric``'s parameters: the keys only the
    per-detection metric takes (``score``, ``iou_threshold``) apart, so that the classifier's checks, which run
    before the model says which task it is, see only their own keys."""
    given = dict(given or {})
    own = DETECTION_METRICS.get(metric)
    only = set(own.params) - set(metric_registry.get(metric).params) if own is not None else set()
    return ({k: v for k, v in given.items() if k not in only}, {k: v for k, v in given.items() if k in only})


def detection_parameters(metric: str, given: dict | None) -> dict:
    """The parameters per-detection metric ``metric`` runs with: its defaults overridden by ``given`` (a None
    value keeps the default).

    Raises:
        InputError: a key the metric does not take on a detector (the classifier's ``output``: a detection's
            curve reads its similarity or its element), naming the ones it does.
    """
    own = DETECTION_METRICS[metric]
    given = dict(given or {})
    unknown = sorted(set(given) - set(own.params))
    if unknown:
        raise option_error(f"metric {metric!r} on a detector takes {', '.join(own.params)}, not {unknown[0]!r}.",
                           "--metric-param")
    values = own.defaults()
    values.update({k: v for k, v in given.items() if v is not None})
    if metric in ("deletion", "insertion") and values["score"] not in det_metrics.SCORES:
        raise option_error(f"{metric}.score is one of {', '.join(det_metrics.SCORES)}, not {values['score']!r}.",
                           "--metric-param")
    if metric == "pointing-game":  # checked now, not after the first images are explained
        iou, tolerance = values["iou_threshold"], values["tolerance"]
        if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0 < iou <= 1:
            raise option_error(f"pointing-game.iou_threshold is a number in (0, 1], not {iou!r}.", "--metric-param")
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
            raise option_error(f"pointing-game.tolerance is a number of pixels >= 0, not {tolerance!r}.",
                               "--metric-param")
    return values


@dataclass
class DetectionJob(Job):
    """A detector's :class:`~onnx_cnnviz.runs.evaluate_plan.Job`: ``task`` holds --conf/--iou/--max-det; a row's
    settings hold them, the per-detection metric's parameters and, for the pointing game, the image's boxes."""
    task: TaskOptions = field(default_factory=TaskOptions)

    def row_settings(self, method: str, metric: str, image: int) -> dict:
        key = (method, metric)
        if key not in self._settings:
            out = {"model": self.model_path, "preprocessing": self.preprocessing_info,
                   "detections": self.task.settings("detector"),
                   "method": {"layer": self.layers[method], "parameters": self.own_params(method)},
                   "parameters": detection_parameters(metric, self.params[metric])}
            self._settings[key] = json.loads(jsonio.dumps(out, indent=None))  # as read back (tuples as lists)
        if DETECTION_METRICS[metric].needs_boxes:
            return {**self._settings[key], "boxes": boxes_setting(self.boxes[image])}
        return self._settings[key]


def build_detection_job(m, pre, paths: list, methods: list, metrics: list, params: dict, boxes_file,
                        options: dict, task: TaskOptions, reporter=None) -> DetectionJob:
    """Check the options against the detector ``m`` before any image is explained: the metrics (per detection
    only), their parameters, --target and --region-class (refused: a detector's targets are its detections), the
    labels, each method's layer (a method that cannot run is left out, told to ``reporter``) and the boxes."""
    from .. import report
    from ..methods import registry
    from ..tasks.decoders import gives_vectors
    from .detection_run import check_task_methods
    from .evaluate_plan import ground_truth_boxes
    from .labels import resolve_labels
    from .method_layers import method_layers

    check_metric_names(metrics)
    for name in metrics:
        detection_parameters(name, params.get(name))
    if options.get("target") is not None:
        raise option_error("--target chooses a classifier's class; this model is a detector (--conf, --iou and "
                           "--max-det choose its detections, each evaluated).", "--target")
    if task.region_class is not None:
        raise option_error("--region-class chooses a segmenter's region; this model is a detector.",
                           "--region-class")
    similarity = [name for name in metrics if name in ("deletion", "insertion")
                  and detection_parameters(name, params.get(name))["score"] == "similarity"]
    if similarity and not gives_vectors(m.decoder):
        raise option_error(f"{', '.join(similarity)} follow a detection's D-RISE similarity by default, which "
                           f"compares class vectors, and this detector's head ({m.decoder.description}) gives none: "
                           f"score them by the detection's own element (--metric-param {similarity[0]}.score="
                           "element).", "--metric-param")
    labels = resolve_labels(m, options["labels"])
    method_params = dict(options.get("method_params") or {})
    registry.check_parameters(methods, method_params)
    # CAM's head rule (a linear layer after global pooling) fits no detector: refused now, naming what applies.
    check_task_methods(m, methods, options["layer"], "detector")
    layers, unavailable = method_layers(m, methods, options["layer"], reporter)
    wanting = [name for name in metrics if DETECTION_METRICS[name].needs_boxes]
    boxes = ground_truth_boxes(boxes_file, paths, pre, wanting, m.num_classes) if wanting else None
    return DetectionJob(out=Path(options["out_dir"]), methods=list(layers), metrics=metrics, params=params,
                        target=None, layer=options["layer"], layers=layers, preprocessing=pre,
                        preprocessing_info=report.preprocessing_info(pre), labels=labels,
                        model_path=str(Path(options["model"]).resolve()), overwrite=options["overwrite"],
                        resume=options["resume"], batch_size=options["batch_size"],
                        rows_per_run=options["rows_per_run"], boxes=boxes,
                        inputs=tuple(p for p in (options["model"], options["labels"], boxes_file) if p),
                        unavailable=unavailable, method_params=method_params, task=task)


# ---------------------------------------------------------------------------------------------------------------------
# The journal, per detection


def _rows(journal: Path, bad: list | None = None):
    """The journal's detector rows, in order (:func:`~onnx_cnnviz.runs.evaluate_plan.journal_lines`, which checks
    their numbers); a classifier's row (no ``detection``) is not one of this run's and is passed over."""
    for row in journal_lines(journal, bad):
        if "detection" in row:
            yield row


def journal_state(job: DetectionJob, journal: Path, paths: list, bad: list | None = None) -> tuple:
    """(done, count of stale (image, method, metric), names of the settings that differ), as
    :func:`onnx_cnnviz.runs.evaluate_plan.journal_state` but per detection: an (image, method, metric) is done when
    the journal holds, with this run's settings, the rows of every detection of the image (1 to the ``detections``
    its rows record)."""
    index = {abspath(p): i for i, p in enumerate(paths)}
    seen: dict = {}
    other: dict = {}
    for row in _rows(journal, bad):
        i = index.get(row["image"])
        if i is None or row["method"] not in job.layers or row["metric"] not in job.params:
            continue
        key = (i, row["method"], row["metric"])
        wanted = job.row_settings(row["method"], row["metric"], i)
        if row["settings"] == wanted:
            count, numbers = seen.setdefault(key, (row["detections"], set()))
            if count == row["detections"]:
                numbers.add(row["detection"])
        else:
            other[key] = differences(wanted, row["settings"])
    done = {key for key, (count, numbers) in seen.items() if numbers == set(range(1, count + 1))}
    stale = [key for key in other if key not in done]
    return done, len(stale), sorted({name for key in stale for name in other[key]})


# ---------------------------------------------------------------------------------------------------------------------
# The work


@dataclass
class DetectionTally(Tally):
    """A detector run's :class:`~onnx_cnnviz.runs.evaluate_run.Tally`, with the images where nothing scored --conf
    (``{"image", "reason"}`` each)."""
    nothing_found: list = field(default_factory=list)


@dataclass
class DetectionExample(Example):
    """An example of the page for a detector: the image's best detection (``cls``, ``probability``: its class and
    score; ``view``: the picture with its box), ``detection`` its number."""
    detection: int = 1


def detections_line(task: TaskOptions) -> str:
    """What an image without a detection gets said."""
    return (f"no detection scores at least --conf {task.conf:g}; skipped (lower --conf to evaluate weaker "
            "detections)")


def evaluate_detections_all(m, job: DetectionJob, paths: list, work: Plan, journal_path: Path,
                            reporter) -> DetectionTally:
    """Read --batch-size images at a time and evaluate each same-size group (:func:`evaluate_detection_group`),
    each finished (method, metric) appended to the journal at once
    (:func:`~onnx_cnnviz.runs.evaluate_run.evaluate_batches`). Ctrl-C stops it, keeping what was measured."""
    def group(x, items, journal, tally, bar):
        evaluate_detection_group(m, job, x, items, paths, journal, tally, bar, reporter)

    # Counted in images: how many rows an image has is known only once its detections are.
    return evaluate_batches(job, paths, work, journal_path, reporter, DetectionTally(), group, unit="images",
                            units=lambda missing: 1)


def evaluate_detection_group(m, job: DetectionJob, x: np.ndarray, items: list, paths: list, journal, tally,
                             bar=None, reporter=None) -> None:
    """The missing (method, metric) rows of the same-size images ``x`` (one per plan item of ``items``): their
    detections found, explained with each method (--batch-size detections per batched run) and scored with each
    metric, one journal line per detection. The maps held at once are those of whole images totalling at most
    --batch-size detections (or one image's, when it has more): an image's detections stay together, since the
    pointing game matches them to its boxes jointly."""
    per_image = find_targets(m, x, job.task, job.rows_per_run, job.labels, task="detector")
    for j, (i, _) in enumerate(items):
        if not per_image[j]:
            reason = detections_line(job.task)
            tally.nothing_found.append({"image": abspath(paths[i]), "reason": reason})
            if reporter is not None:
                reporter.info(f"{paths[i]}: {reason}")
    boxes = [job.boxes[i] for i, _ in items] if job.boxes is not None else None
    for method in job.methods:
        wanted = [j for j, (_, missing) in enumerate(items) if per_image[j] and any(k[0] == method for k in missing)]
        progress = bar.method_progress(method) if bar is not None else None
        for part in parts(wanted, per_image, max(1, job.batch_size)):
            evaluate_method(m, job, method, x, items, paths, per_image, part, boxes, journal, tally, bar, progress)


def parts(wanted: list, per_image: list, limit: int) -> list:
    """``wanted`` (indices of images) cut into consecutive runs totalling at most ``limit`` detections each (an image
    with more alone)."""
    out: list = []
    total = 0
    for j in wanted:
        if out and total + len(per_image[j]) <= limit:
            out[-1].append(j)
            total += len(per_image[j])
        else:
            out.append([j])
            total = len(per_image[j])
    return out


def evaluate_method(m, job: DetectionJob, method: str, x: np.ndarray, items: list, paths: list, per_image: list,
                    wanted: list, boxes, journal, tally, bar=None, progress=None) -> None:
    """Method ``method``'s maps of every detection of the images ``wanted`` (indices into ``x``), in batched runs of
    --batch-size detections, and each missing metric of them journaled."""
    flat = [d for j in wanted for d in per_image[j]]
    step = max(1, job.batch_size)
    maps = np.concatenate([
        method_maps(m, method, x[[d.image for d in flat[s:s + step]]], flat[s:s + step], job.layer,
                    job.rows_per_run, [paths[items[d.image][0]] for d in flat[s:s + step]], progress,
                    params=job.own_params(method))
        for s in range(0, len(flat), step)])
    keep_examples(m, job, tally, method, x, items, paths, per_image, wanted, maps)
    for metric in job.metrics:
        sub = [j for j in wanted if (method, metric) in items[j][1]]
        if not sub:
            continue
        rows = np.asarray([k for k, d in enumerate(flat) if d.image in sub], np.int64)
        dets = [flat[k] for k in rows]
        values, result, extra = score(m, job, metric, method, x, maps[rows], dets, boxes, bar)
        record(job, journal, tally, items, paths, per_image, method, metric, dets, values, result, extra,
               maps[rows])


def score(m, job: DetectionJob, metric: str, method: str, x: np.ndarray, maps: np.ndarray, dets: list, boxes,
          bar=None) -> tuple:
    """Metric ``metric`` of each of ``dets`` (their maps ``maps``): ``(values (D,), the MetricResult or None,
    per-detection extras)``. The pointing game scores the matched detections; an unmatched one gets NaN and the
    reason (and the result is None when none matches: there is nothing the library could score)."""
    own = DETECTION_METRICS[metric]
    params = detection_parameters(metric, job.params[metric])
    progress = bar.method_progress(f"{metric} of {method}") if bar is not None else None
    extra: list = [{} for _ in dets]
    if metric == "pointing-game":
        iou = params["iou_threshold"]
        matched, ious = det_metrics.match_detections(dets, boxes, iou)
        values = np.full(len(dets), np.nan)
        for k, d in enumerate(dets):
            if matched[k] < 0:
                extra[k] = {"ground_truth": None, "reason": (
                    f"no ground-truth box of class {d.cls} overlaps this detection at IoU >= {iou:g} (a false "
                    "positive, or its object is not in --boxes): it has no object to point at")}
            else:
                extra[k] = {"ground_truth": int(matched[k]), "iou": float(ious[k])}
        if not (matched >= 0).any():
            return values, None, extra
        result = own.func(m, x, maps, dets, boxes, progress=progress, **params)
        values[result.details["detection"]] = result.values
        return values, result, extra
    if metric == "model-randomisation":
        # The detections' rows of x, each seeded by its own Detection (as metrics.detection_randomisation does).
        result = own.func(m, x[[d.image for d in dets]], method, dets, layer=job.layer,
                          method_params=job.own_params(method) or None, batch_size=job.rows_per_run,
                          progress=progress, **params)
        return np.asarray(result.values, np.float64), result, extra
    result = own.func(m, x, maps, dets, conf=float(job.task.conf), iou=float(job.task.iou),
                      max_det=int(job.task.max_det), batch_size=job.rows_per_run, progress=progress, **params)
    return np.asarray(result.values, np.float64), result, extra


def record(job: DetectionJob, journal, tally, items: list, paths: list, per_image: list, method: str, metric: str,
           dets: list, values: np.ndarray, result, extra: list, maps: np.ndarray | None = None) -> None:
    """Append one journal line per detection of ``dets``: its image, number, box, class and score, the value (null
    with its reason where undefined: the pointing game's unmatched detection, or
    :func:`~onnx_cnnviz.runs.evaluate_run.undefined_reason` given ``maps``, the detections' maps), the settings and
    the curve."""
    ordered = result is not None and result.curve is not None and metric_registry.get(metric).ordered_curve
    axis = None if not ordered or result.axis is None else np.asarray(result.axis).tolist()
    output = None if result is None else result.output
    lines = []
    for k, d in enumerate(dets):
        i = items[d.image][0]
        found = per_image[d.image]
        value = float(values[k])
        defined = bool(np.isfinite(value))
        reason = None if defined else extra[k].get("reason") or undefined_reason(
            metric, result, k, None if maps is None else maps[k]).replace("image's", "detection's")
        lines.append({"image": abspath(paths[i]), "detection": found.index(d) + 1, "detections": len(found),
                      "box": [float(v) for v in d.box], "score": float(d.score), "method": method, "metric": metric,
                      "value": value if defined else None, "class": int(d.cls), "output": output, "reason": reason,
                      "ground_truth": extra[k].get("ground_truth"), "settings": job.row_settings(method, metric, i),
                      "curve": np.asarray(result.curve[k], np.float64).tolist() if ordered else None,
                      "axis": axis, "axis_name": result.axis_name if ordered else None})
    journal.append(lines)
    tally.computed += len(lines)


def keep_examples(m, job: DetectionJob, tally, method: str, x: np.ndarray, items: list, paths: list,
                  per_image: list, wanted: list, maps: np.ndarray) -> None:
    """Keep, for the page, the picture of ``method``'s map of the best detection of the first :data:`EXAMPLES`
    images with a detection (the view shows that detection's box)."""
    from .. import report
    from ..image import deprocess
    from . import task_report

    if not tally.make_examples:
        return
    offset = 0
    for j in wanted:
        i = items[j][0]
        if i in tally.examples or len(tally.examples) < EXAMPLES:
            best = per_image[j][0]
            view = deprocess(x[j], preset=job.preprocessing)
            if i not in tally.examples:
                boxed = task_report.targets_picture(view, [best], job.labels)
                tally.examples[i] = DetectionExample(abspath(paths[i]), thumbnail(boxed), int(best.cls),
                                                     float(best.score))
            pic = report.picture(method, maps[offset], view, job.preprocessing.order)
            tally.examples[i].pictures[method] = thumbnail(pic)
        offset += len(per_image[j])


def complete_examples(m, job: DetectionJob, paths: list, results, tally: DetectionTally) -> None:
    """Explain the best detection of the example images whose pictures this run did not make (rows kept by
    --resume), so that the page shows every method on the first images with a detection."""
    from ..image import preprocess

    scored = sorted({row["image"] for row in results.rows})
    index = {abspath(p): i for i, p in enumerate(paths)}
    for i in sorted(index[image] for image in scored)[:EXAMPLES]:
        example = tally.examples.get(i)
        missing = [name for name in job.methods if example is None or name not in example.pictures]
        if not missing:
            continue
        x = preprocess([paths[i]], preset=job.preprocessing)
        found = find_targets(m, x, job.task, job.rows_per_run, job.labels, task="detector")
        if not found[0]:
            continue
        for name in missing:
            maps = method_maps(m, name, x, found[0][:1], job.layer, job.rows_per_run, [paths[i]],
                               params=job.own_params(name))
            keep_examples(m, job, tally, name, x, [(i, set())], paths, [found[0][:1]], [0], maps)


# ---------------------------------------------------------------------------------------------------------------------
# The results


def read_detection_results(job: DetectionJob, journal: Path, paths: list):
    """The journal's rows for this run: per (image, detection, method, metric) its last line made with this run's
    settings, in image, detection, method, metric order
    (:func:`~onnx_cnnviz.runs.evaluate_tables.read_results` keyed by the detection too, with a detector's columns;
    the summary then averages over detections)."""
    from .evaluate_tables import read_results

    return read_results(job, journal, paths, DETECTION_RESULT_FIELDS, within=("detection",))


def counts(results) -> dict:
    """How many detections (and of how many images) the results score."""
    found = {(row["image"], row["detection"]) for row in results.rows}
    return {"scored": len(found), "images": len({image for image, _ in found})}


def similarity_bounds(job: DetectionJob, row: dict, results) -> dict:
    """A summary row whose interval is clipped to [0, 1] where its values are AUCs of a D-RISE similarity (each
    factor, IoU, objectness and the cosine of non-negative class vectors, lies in [0, 1]; the classifier's table
    knows only probabilities and scores, so it would leave such an interval unclipped); other rows as they are."""
    from ..metrics.intervals import mean_interval

    metric = row["metric"]
    if metric not in ("deletion", "insertion") or detection_parameters(metric, job.params[metric])["score"] != \
            "similarity":
        return row
    stats = mean_interval(results.values[(row["method"], metric)], bounds=(0.0, 1.0))
    return {**row, "ci95_low": stats["low"], "ci95_high": stats["high"], "ci95_clipped": stats["clipped"]}


def kept_rows(results, work: Plan, paths: list) -> int:
    """How many of the results' rows --resume kept (``work.done`` holds image x method x metric groups; a row is
    one detection of one)."""
    index = {abspath(p): i for i, p in enumerate(paths)}
    return sum((index[row["image"]], row["method"], row["metric"]) in work.done for row in results.rows)


def run_document(m, job: DetectionJob) -> dict:
    """What every table's JSON repeats, for a detector: as the classifier's, with the task, its options and each
    metric's per-detection parameters and paper."""
    return {"model": job.model_path, "device": m.device, "task": "detector",
            "task_options": job.task.settings("detector"), "methods": job.methods,
            "preprocessing": job.preprocessing_info, "target": None,
            "layers": {name: layer for name, layer in job.layers.items() if layer},
            "metrics": {name: {"title": f"{metric_registry.get(name).title} per detection",
                               "higher_is_better": metric_registry.get(name).higher_is_better,
                               "parameters": detection_parameters(name, job.params[name]),
                               "paper": DETECTION_METRICS[name].paper}
                        for name in job.metrics},
            "confidence_interval": CI_FORMULA}


def finish(m, job: DetectionJob, outputs: dict, paths: list, work: Plan, tally: DetectionTally, model_name: str,
           reporter) -> tuple:
    """:func:`onnx_cnnviz.runs.evaluate.finish` for a detector: the tables (one row per detection), curves and page
    from the journal. Returns (the document, the rows read back); (None, empty) when Ctrl-C came before any row.

    Raises:
        InputError: no image had a detection, or no image could be evaluated.
    """
    from .evaluate_plan import JOURNAL
    from .evaluate_tables import Results, summarise, write_run

    ours = job.resume or tally.wrote
    results = read_detection_results(job, outputs[JOURNAL], paths) if ours else Results()
    if not results.rows:
        if tally.interrupted:
            return None, results
        if tally.nothing_found and len(tally.nothing_found) + len(tally.failed) == len(paths):
            raise InputError(f"nothing to evaluate: {detections_line(job.task).split(';')[0]} in any of the "
                             f"{len(tally.nothing_found)} image(s) read; lower --conf, or check the preprocessing.")
        raise InputError("no image could be evaluated (all were skipped, listed above).")
    if not tally.interrupted:
        try:
            complete_examples(m, job, paths, results, tally)
        except CnnvizError as exc:  # the page's pictures are not worth the tables: they are written all the same
            reporter.warn(f"the page shows fewer example maps: {exc}")
    summary = [similarity_bounds(job, row, results) for row in summarise(results, job.methods, job.metrics)]
    scored = counts(results)
    document = {**run_document(m, job), "detections": {**scored, "nothing_found": len(tally.nothing_found)}}
    return write_run(m, job, outputs, paths, work, tally, model_name, results, summary, document, reporter,
                     kept=kept_rows(results, work, paths), unit="detection", fields=DETECTION_RESULT_FIELDS,
                     detections=scored["scored"]), results
