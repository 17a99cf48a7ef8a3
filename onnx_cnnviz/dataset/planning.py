"""Planning a Ray run against its records table (``OUT/records.parquet``): :func:`reconcile` makes the table agree
with the library's plan of a classifier's run, :func:`task_items` with a detector's or segmenter's, and both return
the planned items the pipeline (:mod:`.pipeline`) hands to Ray."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from . import records

__all__ = ["reconcile", "task_items", "job_metrics"]




def reconcile(job, paths: list, keys: list, work, table: Path, settings: dict) -> list:
    """Make the records table agree with the plan, and return the planned items for Ray.

    A result the plan keeps (its JSON record is finished with this run's settings) must have its row with this
    run's settings digest: when it has not, the row is rebuilt from the JSON record if no metrics are asked for,
    and the result is computed again otherwise (its metric values are missing or were made with other parameters).
    Rows of every result about to be written, and ``failed`` rows of pictures read again, are dropped first, so that
    each result has one row."""
    if table.exists() and not table.is_dir():
        raise InputError(f"{table} exists and is not the records table's folder; move it away or choose another "
                         "--out.")
    have = records.finished(table)
    todo = {i: list(missing) for i, missing in work.todo}
    backfill = []
    for i, key in enumerate(keys):
        for name in job.methods:
            for rank in job.ranks:
                json_path = job.files(key, name, rank).json
                if json_path not in work.done or have.get(str(json_path.resolve())) == settings[name]:
                    continue
                record = None if job_metrics(settings) else records.record_of(json_path)
                if record is not None and record.get("method") == name:
                    backfill.append(record)
                    continue
                work.done.discard(json_path)
                missing = todo.setdefault(i, [])
                if name not in missing:
                    missing.append(name)
    redo = {str(f.json.resolve()) for i, missing in todo.items() for name in missing for rank in job.ranks
            for f in [job.files(keys[i], name, rank)] if f.json not in work.done}
    records.drop_rows(table, redo | {r["json"] for r in backfill}, {str(paths[i].resolve()) for i in todo})
    records.write_part(table, records.rows_from_records(backfill, job, settings, worker="driver (from JSON)"))
    items = []
    for i in sorted(todo):
        kept = [job.files(keys[i], name, rank).json.name for name in todo[i] for rank in job.ranks
                if job.files(keys[i], name, rank).json in work.done]
        items.append({"index": i, "path": str(paths[i].resolve()), "key": keys[i],
                      "methods": json.dumps([m for m in job.methods if m in todo[i]]), "skip": json.dumps(kept)})
    return items


def task_items(run, paths: list, keys: list, work, table: Path, settings: dict) -> list:
    """:func:`reconcile` for a detector's or segmenter's run (:class:`~onnx_cnnviz.runs.detection_run.TaskRun`):
    the table's rows of the images to do are dropped (their targets are found again), the rows of kept results
    missing from the table are rebuilt from their JSON records, and the planned items returned."""
    if table.exists() and not table.is_dir():
        raise InputError(f"{table} exists and is not the records table's folder; move it away or choose another "
                         "--out.")
    have = records.finished(table)
    backfill = []
    for kept in work.kept.values():
        for json_path in kept:
            record = records.record_of(json_path)
            if record is not None and have.get(record["json"]) != settings.get(record.get("method")):
                backfill.append(record)
    todo = dict(work.todo)
    doing = {str(paths[i].resolve()) for i in todo}
    redo = {j for j in have if any(Path(j).name.startswith(f"{keys[i]}.") for i in todo)}
    records.drop_rows(table, redo | {r["json"] for r in backfill}, doing)
    records.write_part(table, records.rows_from_records(backfill, run, settings, worker="driver (from JSON)"))
    items = []
    for i in sorted(todo):
        kept = [Path(f).name for f in work.kept.get(str(paths[i].resolve()), [])]
        items.append({"index": i, "path": str(paths[i].resolve()), "key": keys[i],
                      "methods": json.dumps([m for m in run.methods if m in todo[i]]), "skip": json.dumps(kept)})
    return items


def job_metrics(settings: dict) -> bool:
    return bool(settings.get("__metrics__"))
