"""The Ray Data pipeline: planned pictures -> read and preprocess (Ray tasks) -> explain and write (an actor pool) ->
the small record rows, streamed to the driver one batch at a time.

:func:`run_work` is the pipeline for any work on pictures with one model per actor (a picklable
``work(m, read, failed) -> rows``): ``cnnviz explain`` and ``cnnviz evaluate`` alike. Two entry points run
explanations through it: :func:`explain` (the library: a dataset of paths or URIs, a summary back, nothing held per
result on the driver) and :func:`explain_on_ray` (``cnnviz explain --ray``: the CLI's plan in, the CLI's outcome
out, so that its summary, JSON document and exit codes are those of the single-process run). :func:`evaluate_on_ray`
(``cnnviz evaluate --ray``) runs metrics through it the same way, a classifier's rows or a detector's (per detection):
evaluate's plan in, its tally out; there the actors write nothing and the driver appends their rows to evaluate's
journal, which it alone writes.

What runs where, and why:

* the driver lists the pictures and plans with the library's :func:`~onnx_cnnviz.runs.explain_plan.plan` (its JSON
  records say what ``resume`` skips and which settings changed; the same checks refuse to overwrite anything), then
  only iterates over record rows;
* ``decode_batch`` tasks (:data:`DECODE_CPUS` each) read pictures where they lie (local disk, S3, GCS, ...) and
  preprocess them, so decoding scales with the cluster, not with the driver;
* a fixed pool of :class:`~onnx_cnnviz.dataset.actor.ModelActor` (``ActorPoolStrategy(size=actors)``), each with
  ``cpus_per_actor`` CPUs (its onnxruntime intra-op threads) and ``gpus_per_actor`` GPUs when the cluster has GPUs,
  explains. Ray Data creates pool actors with ``max_restarts=-1`` and ``max_task_retries=-1``: an actor that dies is
  restarted and its batch retried, and the batch's part of the table keeps its name, so each record is written once.

The output folder must be one that every node sees (a local folder on one machine, a shared filesystem on a cluster):
the actors write the maps and the table there.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CnnvizError, InputError, RuntimeFailure
from . import records, require_ray, sources
from .actor import (ERROR, STATUS_NOTHING, STATUS_WARNING, ActorSpec, EvaluateWork, ExplainWork, ModelActor,
                    decode_batch, registry_entries)
from .planning import reconcile, task_items

#: CPUs reserved by each read-and-preprocess task (the actors get the rest of a machine).
DECODE_CPUS = 0.25


@dataclass
class Summary:
    """What a library run did: ``written`` results (records on disk), ``skipped`` pictures (finished before,
    resume), ``failed`` pictures (unreadable: a ``failed`` row each), ``interrupted`` (Ctrl-C, or a callback that
    raised KeyboardInterrupt), ``table`` (the records table's folder), ``actors`` and ``cpus_per_actor`` used."""
    written: int
    skipped: int
    failed: int
    interrupted: bool
    table: str
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float


@dataclass(frozen=True)
class Resources:
    """How the pool is sized: ``actors`` of ``cpus`` CPUs (onnxruntime threads: ``threads``) and ``gpus`` GPUs."""
    actors: int
    cpus: float
    gpus: float

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus + 0.5))


# ---------------------------------------------------------------------------------------------------------------------
# Cluster


#: Seconds to wait for a cluster's address to answer before ``ray.init`` (which retries for minutes, printing its
#: C++ client's warnings, when nothing listens there).
REACH_TIMEOUT = 5.0

#: The port of a ``ray://`` address without one (Ray Client's default).
RAY_CLIENT_PORT = 10001


def host_and_port(address: str) -> tuple | None:
    """(host, port) of a ``HOST:PORT``, ``[IPV6]:PORT`` or ``ray://HOST[:PORT]`` address; None for the addresses
    Ray resolves itself (auto, local, http(s)://: the job server). An address of no such form, a port outside
    1..65535 or a dotted IPv4 address with a part above 255 is an :class:`InputError`."""
    import ipaddress

    text = address.strip()
    client = text.startswith("ray://")
    if client:
        text = text[len("ray://"):].split("/", 1)[0]
    elif "://" in text or text in ("", "auto", "local"):
        return None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
    if not port_text and client:
        port_text = str(RAY_CLIENT_PORT)
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise InputError(f"{address!r} is not a Ray address: give HOST:PORT with a port in 1..65535 (e.g. "
                         "10.0.0.5:6379), ray://HOST:10001, or auto.")
    if all(part.isdigit() for part in host.split(".")):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise InputError(f"{address!r} is not a Ray address: {host} is no IPv4 address (each of its four parts "
                             "is 0..255).") from None
    return host, int(port_text)


def check_reachable(address: str, timeout: float = REACH_TIMEOUT) -> None:
    """Fail in seconds, with an :class:`InputError`, when nothing answers at ``address``'s host and port (a TCP
    connection within ``timeout`` seconds), instead of leaving ``ray.init`` to retry for minutes. The host name is
    resolved in a helper thread so that a slow resolver is bounded by the same timeout."""
    import concurrent.futures
    import socket

    target = host_and_port(address)
    if target is None:
        return
    host, port = target
    advice = ("start the cluster (`ray start --head` on that machine), check the address and the firewall, or pass "
              "--ray without an address for a local Ray.")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        found = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise InputError(f"cannot reach the Ray cluster at {address!r}: the name {host!r} did not resolve within "
                         f"{timeout:g} s; {advice}") from None
    except OSError as exc:
        raise InputError(f"cannot reach the Ray cluster at {address!r}: {host!r} does not resolve "
                         f"({exc.strerror or exc}); {advice}") from None
    finally:
        pool.shutdown(wait=False)
    errors = []
    for family, kind, proto, _, sockaddr in found:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                return
        except OSError as exc:
            timed_out = isinstance(exc, TimeoutError)
            errors.append(f"no answer within {timeout:g} s" if timed_out else (exc.strerror or str(exc)).lower())
    raise InputError(f"cannot reach the Ray cluster at {address!r}: nothing answers at {host} port {port} "
                     f"({errors[0] if errors else 'no address'}); {advice}")


def connect(address: str | None):
    """Join Ray: an already initialised Ray as it is, ``address`` "auto" a running cluster (``ray start``), another
    address that cluster (``ray://host:10001`` or ``host:6379``), None or "local" a new local one. Returns whether
    this call started Ray (and should shut it down). An address where nothing answers fails within seconds
    (:func:`check_reachable`), before Ray starts retrying and logging."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    if address not in (None, "", "local"):
        check_reachable(address)
    kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, "configure_logging": True}
    try:
        if address in (None, "", "local"):
            ray.init(**kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot connect to the Ray cluster at {address!r} ({str(exc).splitlines()[0]}); start one "
                         "with `ray start --head`, or pass --ray without an address for a local one.") from None
    return True


def plan_resources(actors: int | None, cpus_per_actor: float | None, gpus_per_actor: float | None) -> Resources:
    """The pool for this cluster. With GPUs: one actor per GPU by default (``gpus_per_actor`` 1). Without: one actor
    per machine by default, each with the machine's CPUs but what the read tasks need. ``cpus_per_actor`` defaults
    to an even share of the smallest machine's CPUs left after :data:`DECODE_CPUS` x 2."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = [n["Resources"].get("CPU", 0.0) for n in nodes] or [1.0]
    total_gpus = sum(n["Resources"].get("GPU", 0.0) for n in nodes)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if total_gpus >= 1 else 0.0
    if actors is None:
        actors = int(total_gpus // gpus_per_actor) if gpus_per_actor else len(nodes)
    actors = max(1, int(actors))
    if cpus_per_actor is None:
        per_node = max(1, math.ceil(actors / max(1, len(nodes))))
        share = (min(node_cpus) - 2 * DECODE_CPUS) / per_node
        cpus_per_actor = max(0.25, math.floor(share * 4) / 4)
    if cpus_per_actor <= 0:
        raise InputError(f"cpus_per_actor must be positive, not {cpus_per_actor}.")
    return Resources(actors, float(cpus_per_actor), float(gpus_per_actor))


# ---------------------------------------------------------------------------------------------------------------------
# The run


def run_work(model, load_kwargs: dict, items: list, preprocessing, work, *, batch_size: int = 8,
             address: str | None = None, actors: int | None = None, cpus_per_actor: float | None = None,
             gpus_per_actor: float | None = None, max_pixels="default",
             on_rows: Callable[[list], None] | None = None, progress: bool = True) -> bool:
    """The generic pipeline, for any work on pictures with one model per actor (``cnnviz explain`` and ``cnnviz
    evaluate`` alike): ``items`` (one dict per picture, small JSON-able values, with at least ``path``: a local path
    or a URI) are read and preprocessed with ``preprocessing`` in Ray tasks, ``batch_size`` at a time; a pool of
    actors, each loading ``model`` once (``load_kwargs``: :func:`onnx_cnnviz.load`'s), calls
    ``work(m, read, failed)`` on each batch (see :class:`~onnx_cnnviz.dataset.actor.ModelActor`); the rows it
    returns reach ``on_rows(rows)`` on the driver, one batch at a time. Returns whether the run was interrupted
    (Ctrl-C, or ``on_rows`` raising KeyboardInterrupt). Ray is joined or started as :func:`connect` says, and shut
    down after when this call started it."""
    from ..image import MAX_PIXELS

    limit = MAX_PIXELS if max_pixels == "default" else max_pixels
    started = connect(address)
    try:
        pool = plan_resources(actors, cpus_per_actor, gpus_per_actor)
        spec = ActorSpec(str(Path(model).resolve()), dict(load_kwargs), pool.threads, work, registry_entries())
        return execute(items, spec, pool, preprocessing, int(batch_size), limit, on_rows, progress)
    finally:
        if started:
            require_ray().shutdown()


def execute(items: list, spec: ActorSpec, pool: Resources, preprocessing, batch_size: int, max_pixels,
            on_rows, progress: bool) -> bool:
    """Build and iterate the Ray Data pipeline (see :func:`run_work`). One block per ``batch_size`` items, so that
    a batch holds the pictures the single-process run would read together."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.enable_operator_progress_bars = progress
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)
    if not items:
        return False
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch_size)))
    ds = ds.map_batches(decode_batch, fn_kwargs={"preprocessing": preprocessing, "max_pixels": max_pixels},
                        batch_size=batch_size, num_cpus=DECODE_CPUS, batch_format="numpy")
    ds = ds.map_batches(ModelActor, fn_constructor_args=(spec,), batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=pool.actors), num_cpus=pool.cpus,
                        num_gpus=pool.gpus or None)
    iterator = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for batch in iterator:
            rows = [json.loads(text) for text in batch["row"]]
            for row in rows:
                if ERROR in row:
                    raise library_error(*row[ERROR])
            if on_rows is not None:
                on_rows(rows)
    except KeyboardInterrupt:
        return True
    except CnnvizError:
        raise
    except Exception as exc:  # Ray's wrappers of what failed in a task or an actor
        raise typed(exc) from exc
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    return False


def library_error(name: str, message: str) -> CnnvizError:
    """The typed error an actor reported (:func:`~onnx_cnnviz.dataset.actor.error_row`), raised on the driver."""
    from .. import errors

    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, CnnvizError)):
        cls = CnnvizError
    return cls(message)


def typed(exc: BaseException) -> Exception:
    """The error to raise for a failed Ray run: the library's own typed error when one is behind it (a model an
    actor cannot load, a bad parameter; Ray wraps it), else :class:`RuntimeFailure` with Ray's first line."""
    from ray.exceptions import RayError

    seen, todo = set(), [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, CnnvizError) and not isinstance(err, RayError):  # Ray's wrapper is both
            return err
        todo += [getattr(err, "cause", None), err.__cause__, err.__context__]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    cause = lines[-1] if lines else type(exc).__name__  # Ray's text ends with the failing line of the task
    return RuntimeFailure(f"the Ray pipeline failed ({type(exc).__name__}: {cause}); run with --debug for Ray's "
                          "traceback, and check the actors' logs (ray logs).")


def remove_leftovers(job, items: list, table: Path) -> list:
    """Delete the temporary files that actors killed mid-write left (their batches were retried and written whole):
    those of this run's outputs in the output folder, and of the table's parts. Called once a run has finished, when
    no actor writes any more (an interrupted run leaves them to ``resume``, which removes them as ``cnnviz explain
    --resume`` does)."""
    from ..files import remove_stale_temps, temp_target

    names = {f.name for item in items for name in json.loads(item["methods"]) for rank in getattr(job, "ranks", ())
             for f in job.files(item["key"], name, rank)}
    removed = remove_stale_temps(job.out, names)
    if table.is_dir():
        parts = {temp_target(p.name) for p in table.iterdir() if (temp_target(p.name) or "").startswith("part-")}
        removed += remove_stale_temps(table, parts)
    return removed


def explain_work(job, metrics: dict, settings: dict, table: Path) -> ExplainWork:
    """The actors' work for ``cnnviz explain``: the job with an absolute output folder (actors may run in another
    working directory) and ``resume`` set, so that a retried batch replaces the files its killed attempt left (the
    driver's plan has already refused every file this run may not replace)."""
    from ..runs.detection_run import TaskRun

    if isinstance(job, TaskRun):
        job = dataclasses.replace(job, job=dataclasses.replace(job.job, out=Path(job.out).resolve(), resume=True))
    else:
        job = dataclasses.replace(job, out=Path(job.out).resolve(), resume=True)
    return ExplainWork(job=job, metrics=metrics, settings=settings, table=str(table.resolve()))


def digests(job, metrics: dict) -> dict:
    settings = {name: records.settings_digest(job, name, metrics) for name in job.methods}
    settings["__metrics__"] = bool(metrics)
    return settings


def metric_settings(metrics, metric_params: dict | None) -> dict:
    """name -> the parameters each metric runs with (checked by the metrics registry)."""
    from ..metrics import registry as metric_registry

    params = metric_params or {}
    unknown = sorted(set(params) - set(metrics or ()))
    if unknown:
        raise InputError(f"metric_params names {unknown[0]!r}, which is not among the metrics {list(metrics or ())}.")
    return {name: metric_registry.parameters(name, params.get(name)) for name in (metrics or ())}


# ---------------------------------------------------------------------------------------------------------------------
# ``cnnviz explain --ray``


def explain_on_ray(m, job, paths: list, keys: list, work, options: dict, reporter, progress: bool = True):
    """``cnnviz explain``'s run on Ray: the library's plan ``work`` in, its
    :class:`~onnx_cnnviz.runs.explain_run.Outcome` out (records listed as they arrive, unreadable pictures warned
    about and listed, each result's line given to ``reporter``), so that the summary, JSON document and exit codes
    are those of the single-process run. ``options``: the command's options (model loading, --ray ADDRESS; the pixel
    limit is the one in force); ``progress``: show Ray Data's progress bars."""
    from ..image.reading import current_pixel_limit
    from ..runs.detection_run import TaskRun, nothing_line
    from ..runs.explain_run import Outcome, result_line

    outcome = Outcome()
    table = Path(job.out) / records.TABLE
    settings = digests(job, {})
    task = isinstance(job, TaskRun)
    items = task_items(job, paths, keys, work, table, settings) if task else \
        reconcile(job, paths, keys, work, table, settings)
    load_kwargs = {"device": options["device"], "input": options["input_name"], "output": options["output_name"],
                   "input_size": options["input_size"], "batch_size": options["rows_per_run"],
                   "max_nodes": options["max_nodes"], "task": m.task}
    shown = {str(p.resolve()): p for p in paths}

    def on_rows(rows):
        for row in rows:
            if row["status"] == records.STATUS_FAILED:
                outcome.failed.append({"image": row["image"], "error": row["error"]})
                reporter.warn(f"skipped: {row['error']}")
                continue
            if row["status"] == STATUS_NOTHING:
                outcome.nothing_found.append(row["image"])
                reporter.info(f"{shown.get(row['image'], row['image'])}: {nothing_line(job)}")
                continue
            record = row["record"]
            outcome.results.append(record)
            c, names = record["class"], job.labels
            label = f" {names[c]}" if names else ""
            image = shown.get(record["image"], record["image"])
            if task:
                reporter.result(f"{image}  {record['method']:<14} #{record['number']} {c}{label}  "
                                f"score={record['score']:.3f}  -> {Path(record['outputs']['picture'])}")
                continue
            reporter.result(result_line(image, record["method"], c, label, record["probability"],
                                        Path(record["outputs"]["picture"])))

    try:
        outcome.interrupted = run_work(options["model"], load_kwargs, items, job.preprocessing,
                                       explain_work(job, {}, settings, table), batch_size=job.batch_size,
                                       address=options.get("ray_address"), max_pixels=current_pixel_limit(),
                                       on_rows=on_rows, progress=progress)
    except KeyboardInterrupt:
        outcome.interrupted = True
    if not outcome.interrupted:
        remove_leftovers(job, items, table)
    return outcome


# ---------------------------------------------------------------------------------------------------------------------
# ``cnnviz evaluate --ray``


def evaluate_on_ray(job, paths: list, work, journal_path: Path, options: dict, reporter, progress: bool = True):
    """``cnnviz evaluate``'s run on Ray: the CLI's plan ``work`` in (its ``todo``: (image index, the (method, metric)
    rows missing)), its :class:`~onnx_cnnviz.runs.evaluate_run.Tally` out, so that
    :func:`~onnx_cnnviz.runs.evaluate.finish` writes the tables, the page and the exit code as for the
    single-process run.

    The actors (:class:`~onnx_cnnviz.dataset.actor.EvaluateWork`) only compute; this process appends their rows to
    the journal ``journal_path`` as each batch arrives (:class:`~onnx_cnnviz.runs.evaluate_plan.Journal`: whole lines,
    flushed and synced), so it is the journal's only writer and --resume reads exactly what a run without Ray leaves
    (a Ctrl-C or a kill loses only the batches not yet received). Unreadable pictures are warned about and listed as
    the single-process run lists them; the page's example maps are made here later, by ``finish_run``.

    A detector's job (:class:`~onnx_cnnviz.runs.detection_evaluate.DetectionJob`) runs the same way, per detection:
    the actors load the model as a detector and run
    :func:`~onnx_cnnviz.runs.detection_evaluate.evaluate_detection_group`, the tally is a
    :class:`~onnx_cnnviz.runs.detection_evaluate.DetectionTally` whose ``nothing_found`` lists, in the pictures'
    order, the images where nothing scored --conf (each said through ``reporter`` as it arrives), so that
    :func:`~onnx_cnnviz.runs.detection_evaluate.finish` writes what the single-process run writes.
    ``options``: the command's options (model loading, --max-pixels through the pixel limit in force, --ray
    ADDRESS)."""
    from ..image.reading import current_pixel_limit
    from ..runs.detection_evaluate import DetectionJob, DetectionTally
    from ..runs.evaluate_plan import Journal
    from ..runs.evaluate_run import Tally

    detector = isinstance(job, DetectionJob)
    tally = DetectionTally() if detector else Tally()
    items = evaluate_items(paths, work.todo)
    if not items:  # --resume found every row done: no need to start Ray
        return tally
    load_kwargs = {"device": options["device"], "input": options["input_name"], "output": options["output_name"],
                   "input_size": options["input_size"], "batch_size": options["rows_per_run"],
                   "max_nodes": options["max_nodes"]}
    if detector:  # the actors load it as the driver did (runs.evaluate.open_evaluated): through its detector head
        load_kwargs["task"] = "detector"
    journal = Journal(journal_path, job.resume)
    try:
        tally.interrupted = run_work(options["model"], load_kwargs, items, job.preprocessing, EvaluateWork(job),
                                     batch_size=job.batch_size, address=options.get("ray_address"),
                                     max_pixels=current_pixel_limit(),
                                     on_rows=evaluation_rows(journal, tally, paths, items, reporter),
                                     progress=progress)
    except KeyboardInterrupt:
        tally.interrupted = True
    finally:
        tally.wrote = journal.handle is not None
        journal.close()
        # Batches arrive in any order: the failures (and the images without a detection) are listed in the
        # pictures' order, as without Ray.
        order = {item["path"]: item["index"] for item in items}
        tally.failed.sort(key=lambda f: order.get(f["image"], -1))
        if detector:
            tally.nothing_found.sort(key=lambda f: order.get(f["image"], -1))
    return tally


def evaluate_items(paths: list, todo: list) -> list:
    """The planned pictures for Ray, one per plan item: ``index``, ``path`` (absolute and resolved: the actors may
    run elsewhere, and it is the journal's name of the image) and ``missing`` (JSON list of [method, metric], in a
    fixed order)."""
    from ..runs.outputs import abspath

    return [{"index": i, "path": abspath(paths[i]), "missing": json.dumps(sorted(missing))} for i, missing in todo]


def evaluation_rows(journal, tally, paths: list, items: list, reporter) -> Callable[[list], None]:
    """The driver's handler of one batch of :class:`EvaluateWork` rows: the ``ok`` rows appended to ``journal`` at
    once (and counted), each unreadable picture warned about and added to ``tally.failed`` as
    :func:`~onnx_cnnviz.runs.images.read_batch` adds it, each picture where a detector found nothing said and added
    to ``tally.nothing_found`` as :func:`~onnx_cnnviz.runs.detection_evaluate.evaluate_detection_group` adds it,
    each actor's warning given once (through ``reporter``)."""

    given = {item["path"]: str(paths[item["index"]]) for item in items}

    def on_rows(rows: list) -> None:
        done = [row["row"] for row in rows if row["status"] == records.STATUS_OK]
        if done:
            journal.append(done)
            tally.computed += len(done)
        for row in rows:
            if row["status"] == records.STATUS_FAILED:
                # The actor read the absolute path; the message names the picture as it was given, as without Ray.
                error = row["error"].replace(row["image"], given.get(row["image"], row["image"]))
                tally.failed.append({"image": row["image"], "error": error})
                reporter.warn(f"skipped: {error}")
            elif row["status"] == STATUS_NOTHING:
                tally.nothing_found.append({"image": row["image"], "reason": row["reason"]})
                reporter.info(f"{given.get(row['image'], row['image'])}: {row['reason']}")
            elif row["status"] == STATUS_WARNING:
                reporter.warn(row["message"], once=row["key"])

    return on_rows


# ---------------------------------------------------------------------------------------------------------------------
# The library entry point


def explain(model, images, out, *, methods=("gradcam",), target=None, top_k=None, layer=None, params=None,
            metrics=(), metric_params=None, preprocess=None, labels=None, batch_size: int = 8,
            rows_per_run: int | None = None, resume: bool = False, overwrite: bool = False, recursive: bool = False,
            device: str = "auto", actors: int | None = None, cpus_per_actor: float | None = None,
            gpus_per_actor: float | None = None, address: str | None = None, alpha: float = 0.5,
            colormap: str = "jet", max_pixels="default", progress: bool = False,
            on_batch: Callable[[list], None] | None = None, task: str = "auto", conf: float = 0.25,
            iou: float = 0.45, max_det: int = 300, region_class=None) -> Summary:
    """Explain every picture of ``images`` (local files, folders, globs, or URIs such as ``s3://bucket/photos/``)
    with ``methods`` on Ray, writing into the folder ``out`` what ``cnnviz explain`` writes (``KEY.METHOD.RANK.png``,
    ``.npy``, ``.json``) and the records table ``out/records.parquet`` (one row per result: image, method, rank,
    class, score, probability, the image's ``top_k`` classes, ``target``, layer, parameters, ``metrics`` values,
    output files; a ``failed`` row per unreadable picture).

    The arguments are ``cnnviz explain``'s options (``params``: the methods' own, ``KEY`` or ``METHOD.KEY`` as
    its --window, --samples, --param, ..., over the registry's defaults;
    ``preprocess``: a preset name, or None for the model's metadata else imagenet); ``metrics``:
    metric registry names scored on each map (``metric_params``: name -> parameters). ``resume``: skip the results
    finished with the same settings (changed settings or metrics are recomputed); ``overwrite``: replace results.
    ``address``: None starts a local Ray (or uses the one this process joined), "auto" a running cluster.
    ``actors`` / ``cpus_per_actor`` / ``gpus_per_actor``: the pool (default: one actor per machine, or per GPU).
    ``on_batch(rows)``: called on the driver with each batch's rows; raising KeyboardInterrupt there stops the run
    like Ctrl-C (what is finished stays, ``resume`` completes it). ``task``, ``conf``, ``iou``, ``max_det``,
    ``region_class``: ``cnnviz explain``'s --task, --conf, --iou, --max-det, --region-class (a detector's results are
    per detection, a segmenter's per region: :mod:`onnx_cnnviz.runs.detection_run`). Returns a :class:`Summary`;
    nothing per result is kept on the driver.
    """
    from ..image import MAX_PIXELS
    from ..image.reading import pixel_limit
    from ..runs.explain_plan import RunSettings, plan
    from ..runs.images import image_keys
    from ..runs.outputs import out_folder
    from ..runs.detection_run import TaskRun, task_plan
    from ..runs.detections import load_for_task, task_options
    from ..runs.preprocessing import choose_preprocessing
    from ..runs.reporting import SilentReporter

    limit = MAX_PIXELS if max_pixels == "default" else max_pixels
    options = {"target": target, "top_k": top_k, "layer": layer, "labels": labels, "out_dir": str(out),
               "overwrite": overwrite, "resume": resume, "batch_size": int(batch_size), "rows_per_run": rows_per_run,
               "alpha": alpha, "colormap": colormap, "model": str(model)}
    methods = list(methods)
    quiet = SilentReporter()
    with pixel_limit(limit):
        folder = out_folder(out)
        paths = sources.collect([str(s) for s in ([images] if isinstance(images, (str, Path)) else images)],
                                exclude=folder, recursive=recursive)
        targets = task_options({"task": task, "conf": conf, "iou": iou, "max_det": max_det,
                                "region_class": region_class})
        m = load_for_task(model, targets.task, device=device, batch_size=rows_per_run)
        load_kwargs = {"device": device, "batch_size": rows_per_run, "task": m.task}
        pre = choose_preprocessing(m, preprocess).preprocessing
        job = RunSettings.build(m, pre, methods, dict(params or {}), options, quiet)
        keys = image_keys(paths)
        if m.task != "classifier" and (metrics or target is not None or top_k is not None):
            raise InputError(f"this model is a {m.task}: it is explained per "
                             f"{'detection' if m.task == 'detector' else 'region'}; target, top_k and metrics are "
                             "for classifiers.")
        if m.task == "classifier":
            work = plan(job, paths, keys, quiet)
        else:
            job = TaskRun(job, m.task, targets)
            work = task_plan(job, paths, keys, quiet)
        metric_spec = metric_settings(metrics, metric_params)
        settings = digests(job, metric_spec)
        table = folder / records.TABLE
        items = task_items(job, paths, keys, work, table, settings) if m.task != "classifier" else \
            reconcile(job, paths, keys, work, table, settings)
    counts = {"written": 0, "failed": 0}

    def count(rows):
        counts["written"] += sum(r["status"] == records.STATUS_OK for r in rows)
        counts["failed"] += sum(r["status"] == records.STATUS_FAILED for r in rows)
        if on_batch is not None:
            on_batch(rows)

    started = connect(address)  # joined here (not in run_work) to size the pool for the summary
    try:
        pool = plan_resources(actors, cpus_per_actor, gpus_per_actor)
        interrupted = run_work(model, load_kwargs, items, pre, explain_work(job, metric_spec, settings, table),
                               batch_size=batch_size, actors=pool.actors, cpus_per_actor=pool.cpus,
                               gpus_per_actor=pool.gpus, max_pixels=limit, on_rows=count, progress=progress)
    finally:
        if started:
            require_ray().shutdown()
    if not interrupted:
        remove_leftovers(job, items, table)
    skipped = len(paths) - len(items)
    return Summary(written=counts["written"], skipped=skipped, failed=counts["failed"], interrupted=interrupted,
                   table=str(table.resolve()), actors=pool.actors, cpus_per_actor=pool.cpus,
                   gpus_per_actor=pool.gpus)
