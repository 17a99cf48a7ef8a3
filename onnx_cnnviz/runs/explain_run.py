"""Explaining images into files, the work: :func:`explain_all` reads the planned images a batch at a time, explains
each group of same-size images (:func:`explain_group`) and writes each result (:func:`write_result`: PNG overlay,
NPY array, then the JSON record), listing each one as soon as its record is on disk; :func:`summary` makes the run's
document (what ``cnnviz explain --json`` prints) from what is on disk."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..methods import registry
from .explain_plan import Plan, RunSettings
from .images import read_batch, same_size_groups
from .outputs import abspath, npy_bytes, save_json


@dataclass
class Outcome:
    """What a run did: the records written (each listed once its file is on disk), the images that could not be
    read, whether Ctrl-C stopped it, and (a detector's or segmenter's run) the images where nothing was found."""
    results: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    interrupted: bool = False
    #: A detector's or segmenter's run: the images where nothing was found (nothing written for them).
    nothing_found: list = field(default_factory=list)


def explain_all(m, job: RunSettings, paths: list, keys: list, work: Plan, reporter) -> Outcome:
    """Do the planned work under a progress display (images done, and inside them the units of work of the running
    method: Score-CAM's channels, occlusion's windows, ...), --batch-size images read and explained at a time, so
    that memory stays bounded. Ctrl-C stops it: what is finished stays written and listed, and the outcome says
    interrupted. ``reporter``: a :class:`~onnx_cnnviz.runs.reporting.Reporter` (lines, warnings, progress)."""
    outcome = Outcome()
    todo = work.todo
    checked: set = set()
    try:
        with reporter.progress(len(todo), "explaining") as bar:
            for start in range(0, len(todo), job.batch_size):
                chunk = todo[start:start + job.batch_size]
                read = read_batch(paths, chunk, job.preprocessing, outcome.failed, reporter)
                for x, items in same_size_groups(read):
                    if x.shape[2:] not in checked and not job.preprocessing.size:
                        checked.add(x.shape[2:])  # images kept at their own size: checked per size
                        for name in job.methods:
                            meth = job.method(name)
                            if meth.check_input is not None:
                                meth.check_input(job.own_params(name), tuple(x.shape[2:]), reporter.warn, False)
                    explain_group(m, job, x, items, paths, keys, work.done, outcome.results, bar, reporter)
                bar.update(len(chunk))
    except KeyboardInterrupt:
        outcome.interrupted = True
    return outcome


class ImageRow(NamedTuple):
    """One image of a group as its results need it: file, file-name key, the model's view of it (under the
    pictures), its class scores and probabilities."""
    path: Path
    key: str
    view: np.ndarray
    scores: np.ndarray
    probs: np.ndarray


def explain_group(m, job: RunSettings, x: np.ndarray, items: list, paths: list, keys: list, done: set,
                  records: list, bar=None, reporter=None) -> None:
    """Explain the same-size images ``x`` (one row per plan item of ``items``) with each method still missing for
    them, for the run's classes (top-1, the top-k or --target), and write every result not in ``done`` (records
    --resume keeps), appending each record to ``records`` once it is on disk. ``bar``: the run's
    progress display, told each method's units of work; ``reporter``: told the line of each result.

    The (image, class) results are computed --batch-size at a time and written before the next ones, so memory is
    set by --batch-size, not by the images times --top-k (8 images x 100 classes held 800 maps and 800 copies of
    the images at once)."""
    from .. import report
    from ..image import deprocess

    # The rows per onnxruntime run are --rows-per-run, else left to the library; --batch-size bounds the images
    # read at once and the (image, class) results held at once.
    scores = m.scores(x, batch_size=job.rows_per_run)
    probs = report.probabilities(scores, m.softmax_skipped)
    classes = explained_classes(job, scores)
    views = deprocess(x, preset=job.preprocessing)
    for name in job.methods:
        rows = [j for j, (_, missing) in enumerate(items) if name in missing]
        pending = [(j, r) for j in rows for r in range(job.k)
                   if job.files(keys[items[j][0]], name, job.ranks[r]).json not in done]
        if not pending:
            continue
        progress = bar.method_progress(name) if bar is not None else None
        for chunk, maps in result_chunks(m, job, name, x, classes, pending, progress):
            for (j, r), result in zip(chunk, maps):
                i = items[j][0]
                image = ImageRow(paths[i], keys[i], views[j], scores[j], probs[j])
                write_result(m, job, name, image, r, int(classes[j, r]), result, records, reporter)


def explained_classes(job: RunSettings, scores: np.ndarray) -> np.ndarray:
    """(N, k) the classes explained per image, best first: the top-k, --target, or the top-1."""
    if job.top_k:
        return np.argsort(-scores, axis=1, kind="stable")[:, :job.k]
    if job.target is not None:
        return np.full((len(scores), 1), int(job.target))
    return scores.argmax(axis=1)[:, None]


def result_chunks(m, job: RunSettings, name: str, x: np.ndarray, classes: np.ndarray, pending: list,
                  progress=None):
    """Method ``name``'s results for the ``pending`` (image row, rank index) pairs of the images ``x`` and their
    ``classes`` (N, k), --batch-size pairs at a time: yields (pairs, their maps). A method that does not depend on
    the class runs once per image (--batch-size images at a time), its result standing for each of its classes.
    ``progress``: told the method's units of work (see :func:`registry.explain`)."""
    step = max(1, job.batch_size)
    meth = job.method(name)
    if meth.class_specific:
        for start in range(0, len(pending), step):
            chunk = pending[start:start + step]
            rows = [j for j, _ in chunk]
            targets = np.array([classes[j, r] for j, r in chunk])
            yield chunk, registry.explain(m, meth, x[rows], targets, layer=job.layer,
                                          params=job.own_params(name), batch_size=job.rows_per_run, progress=progress)
        return
    images = sorted({j for j, _ in pending})
    for start in range(0, len(images), step):
        some = images[start:start + step]
        raw = registry.explain(m, meth, x[some], classes[some, 0], layer=job.layer,
                               params=job.own_params(name), batch_size=job.rows_per_run, progress=progress)
        where = {j: n for n, j in enumerate(some)}
        chunk = [(j, r) for j, r in pending if j in where]
        yield chunk, [raw[where[j]] for j, _ in chunk]


def write_result(m, job: RunSettings, name: str, image: ImageRow, r: int, c: int, result: np.ndarray,
                 records: list, reporter=None) -> None:
    """Write one result, method ``name`` on ``image`` for class ``c`` (rank index ``r``): the picture, the raw array
    and, last, the JSON record, which is appended (with its "json" path) to ``records`` once it is on disk, also when
    Ctrl-C comes during the write; ``reporter`` is told its line."""
    from .. import report

    meth = job.method(name)
    files = job.files(image.key, name, job.ranks[r])
    # Under --resume, files without their record are leftovers of an interrupted run, and stale results were made
    # with other settings: both are replaced.
    replace = job.overwrite or job.resume
    if replace:
        # The old record goes first: a record on disk always describes the picture and array beside it.
        files.json.unlink(missing_ok=True)
    pic = report.picture(meth, result, image.view, job.preprocessing.order, alpha=job.alpha, colormap=job.colormap)
    report.write_atomic(files.png, report.png_bytes(pic), overwrite=replace)
    report.write_atomic(files.npy, npy_bytes(result), overwrite=replace)
    names = job.labels
    record = {
        "model": job.model_path, "image": str(image.path.resolve()), "method": name, "title": meth.title,
        "class": c, "class_name": names[c] if names else None,
        "rank": r + 1 if job.top_k or job.target is None else None,
        "score": float(image.scores[c]), "probability": float(image.probs[c]),
        "class_specific": meth.class_specific, **job.result_settings(name), "device": m.device, "kind": meth.kind,
        "outputs": {"picture": abspath(files.png), "array": abspath(files.npy)},
        "array_shape": list(result.shape), "cnnviz_version": job.version,
    }
    try:
        save_json(files.json, record, replace)
    finally:
        # Listed exactly when the record is on disk: a Ctrl-C inside save_json may come before or after the rename.
        if files.json.exists():
            records.append({**record, "json": abspath(files.json)})
    label = f" {names[c]}" if names else ""
    if reporter is not None:
        reporter.result(result_line(image.path, name, c, label, image.probs[c], files.png))


def result_line(image, method: str, c: int, label: str, probability: float, picture) -> str:
    """The line of one result: image, method, class (and name), probability, picture (the path: names repeat)."""
    return f"{image}  {method:<14} {c}{label}  p={probability:.3f}  -> {picture}"
