"""The records table: ``OUT/records.parquet``, one Parquet table (a folder of part files, as Spark and Ray write a
table; ``pandas.read_parquet``, ``pyarrow.dataset`` and ``ray.data.read_parquet`` read it whole) with one row per
result (image x method x class) and one ``failed`` row per picture that could not be read.

Each actor writes the part of the batch it explained, atomically, named by a digest of the results it holds: a task
that Ray retries after its actor died rewrites the same part instead of adding a second one, so every record is
written once. A resumed run first makes the table agree with the JSON records that decide what it skips
(:func:`reconcile`): rows of the results it recomputes are dropped, rows missing for finished results are rebuilt from
their JSON records.

``settings`` is a digest of what a result was made with (the JSON record's model, parameters, preprocessing and
overlay, plus the metrics asked for): rows only count as finished when it is this run's.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from .. import jsonio

TABLE = "records.parquet"
STATUS_OK = "ok"
STATUS_FAILED = "failed"
#: Result columns, in table order.
COLUMNS = ["image", "key", "method", "rank", "class", "class_name", "score", "probability", "top_k", "target",
           "layer", "parameters", "settings", "metrics", "status", "error", "picture", "array", "json", "device",
           "worker"]


def schema():
    """The table's pyarrow schema (fixed, so that parts of different runs concatenate)."""
    import pyarrow as pa

    return pa.schema([("image", pa.string()), ("key", pa.string()), ("method", pa.string()), ("rank", pa.string()),
                      ("class", pa.int64()), ("class_name", pa.string()), ("score", pa.float64()),
                      ("probability", pa.float64()), ("top_k", pa.list_(pa.int64())), ("target", pa.int64()),
                      ("layer", pa.string()), ("parameters", pa.string()), ("settings", pa.string()),
                      ("metrics", pa.map_(pa.string(), pa.float64())), ("status", pa.string()),
                      ("error", pa.string()), ("picture", pa.string()), ("array", pa.string()), ("json", pa.string()),
                      ("device", pa.string()), ("worker", pa.string())])


def settings_digest(job, method: str, metrics: dict) -> str:
    """What a result of ``method`` is made with, as a short digest: the JSON record's settings
    (``RunSettings.result_settings``) and the metrics with their parameters (``metrics``: name -> parameters)."""
    text = jsonio.dumps({"result": job.result_settings(method), "metrics": metrics})
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def rank_of(json_path: str, method: str) -> str:
    """The rank label (``top1``, ``c5``) in a record's file name ``KEY.METHOD.RANK.json``."""
    name = Path(json_path).name
    return name[:-len(".json")].rsplit(".", 1)[1] if name.endswith(".json") else ""


def key_of(json_path: str, method: str, rank: str) -> str:
    name = Path(json_path).name
    return name[:-len(f".{method}.{rank}.json")]


def rows_from_records(records: list, job, settings: dict, metrics: dict | None = None, worker: str = "") -> list:
    """Table rows of ``records`` (JSON records as ``cnnviz explain`` writes them, each with its "json" path):
    ``settings``: method -> digest; ``metrics``: json path -> {metric: value}. ``top_k`` lists the classes of the
    image's records of that method, best rank first."""
    # A detector's or segmenter's run (runs.detection_run.TaskRun) has no class ranks, target nor probability.
    order = {rank: i for i, rank in enumerate(getattr(job, "ranks", ()))}
    classes: dict = {}
    for rec in records:
        rank = rank_of(rec["json"], rec["method"])
        classes.setdefault((rec["image"], rec["method"]), []).append((order.get(rank, 0), rec["class"]))
    rows = []
    for rec in records:
        method, rank = rec["method"], rank_of(rec["json"], rec["method"])
        params = rec.get("parameters") or {}
        rows.append({
            "image": rec["image"], "key": key_of(rec["json"], method, rank), "method": method, "rank": rank,
            "class": int(rec["class"]), "class_name": rec.get("class_name"), "score": float(rec["score"]),
            "probability": None if rec.get("probability") is None else float(rec["probability"]),
            "top_k": [c for _, c in sorted(classes[(rec["image"], method)])], "target": getattr(job, "target", None),
            "layer": params.get("layer"), "parameters": compact(params), "settings": settings[method],
            "metrics": list((metrics or {}).get(rec["json"], {}).items()), "status": STATUS_OK, "error": None,
            "picture": rec["outputs"]["picture"], "array": rec["outputs"]["array"], "json": rec["json"],
            "device": rec.get("device"), "worker": worker})
    return rows


def compact(document) -> str:
    """``document`` as one line of JSON with sorted keys (numpy values as :mod:`onnx_cnnviz.jsonio` writes them)."""
    return json.dumps(json.loads(jsonio.dumps(document)), sort_keys=True, separators=(",", ":"))


def failed_row(image: str, key: str, error: str, worker: str = "") -> dict:
    """The row of a picture that could not be read (the run goes on; its exit code says 1, as ``cnnviz explain``)."""
    row = dict.fromkeys(COLUMNS)
    row.update(image=image, key=key, status=STATUS_FAILED, error=error, worker=worker, top_k=[], metrics=[])
    return row


def to_table(rows: list):
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema())


def part_name(rows: list) -> str:
    """A part's file name, a digest of the results it holds (its json paths, or images for failed rows) and their
    settings: the same batch retried gives the same name."""
    ids = sorted(f"{r['json'] or r['image']}|{r['settings']}|{r['status']}" for r in rows)
    return f"part-{hashlib.sha1(chr(10).join(ids).encode('utf-8')).hexdigest()[:20]}.parquet"


def write_part(folder: Path, rows: list) -> Path | None:
    """Write ``rows`` as one part of the table in ``folder`` (atomically; replacing a part of the same name, which
    holds the same results). Returns its path (None for no rows)."""
    import pyarrow.parquet as pq

    from ..files import write_atomic

    if not rows:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    pq.write_table(to_table(rows), buffer)
    path = folder / part_name(rows)
    write_atomic(path, buffer.getvalue(), overwrite=True)
    return path


def parts(folder: Path) -> list[Path]:
    """The table's part files (temporary files of a killed write left out)."""
    return sorted(p for p in Path(folder).glob("part-*.parquet") if p.is_file())


def read(folder: Path, columns: list | None = None):
    """The whole table (or some ``columns``) as one pyarrow Table (empty with the schema when there is none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(p, columns=columns, schema=schema()) for p in parts(folder)]
    if not tables:
        sch = schema()
        return sch.empty_table() if columns is None else pa.schema([sch.field(c) for c in columns]).empty_table()
    return pa.concat_tables(tables)


def finished(folder: Path) -> dict:
    """json path -> settings digest of every ``ok`` row of the table."""
    table = read(folder, ["json", "settings", "status"]).to_pydict()
    return {j: s for j, s, st in zip(table["json"], table["settings"], table["status"]) if st == STATUS_OK}


def drop_rows(folder: Path, redo_results: set, redo_images: set) -> int:
    """Remove from the table the rows a run is about to write again: results whose json path is in
    ``redo_results``, and the ``failed`` rows of the images in ``redo_images`` (which are read again). Each part is
    rewritten only when it changes (deleted when emptied); returns the rows removed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..files import write_atomic

    removed = 0
    for path in parts(folder):
        table = pq.read_table(path, schema=schema())
        cols = table.select(["json", "image", "status"]).to_pydict()
        keep = [not ((j is not None and j in redo_results) or (st == STATUS_FAILED and img in redo_images))
                for j, img, st in zip(cols["json"], cols["image"], cols["status"])]
        if all(keep):
            continue
        removed += keep.count(False)
        if not any(keep):
            path.unlink()
            continue
        buffer = io.BytesIO()
        pq.write_table(table.filter(pa.array(keep, type=pa.bool_())), buffer)
        write_atomic(path, buffer.getvalue(), overwrite=True)
    return removed


def record_of(json_path: Path) -> dict | None:
    """The JSON record at ``json_path`` with its "json" path (None when it cannot be read)."""
    try:
        record = json.loads(Path(json_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {**record, "json": str(Path(json_path).resolve())} if isinstance(record, dict) else None
