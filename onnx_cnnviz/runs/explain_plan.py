"""Explaining images into files, the plan: the settings of a run (:class:`RunSettings`, checked against the loaded
model before any image is read) and :func:`plan`, which decides which images and methods are left to do, refusing to
replace an input (whatever the flags) or, without ``overwrite`` or ``resume``, a result; under ``resume`` it keeps the
finished results made with the same settings whose files are whole, recomputes the others and removes the temporary
files a killed run left."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .. import jsonio
from ..errors import InputError
from ..files import check_regular
from ..image import Preprocessing
from ..methods import registry
from .labels import check_top_k, option_error, resolve_labels, resolve_target
from .method_layers import method_layers
from .outputs import abspath, broken_file, protect_inputs, remove_stale_temps


class ResultFiles(NamedTuple):
    """The files of one result (image, method, class rank), in the order they are written: the record last, so that
    a record on disk means a finished result (what --resume looks for)."""
    png: Path
    npy: Path
    json: Path


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs besides the model and the images, fixed once from the command line.

    ``params``: the method parameters as given, one dict for every method of the run (what :func:`registry.explain`
    takes with ``shared=True``: ``KEY`` for each method taking it, ``METHOD.KEY`` for one); ``method_params``: per
    method, the parameters it runs with and its layer, as its JSON records show them. ``ranks``: the file-name rank
    of each class explained per image (``top1`` .. ``topK`` with --top-k, ``cN`` with --target N, else ``top1``).
    ``labels``: the class names, or None. ``inputs``: the files the run reads (model, labels), which no output may
    replace.
    """
    out: Path
    methods: list
    params: dict
    layer: str | None
    method_params: dict
    ranks: list
    target: int | None
    top_k: int | None
    overwrite: bool
    resume: bool
    batch_size: int
    rows_per_run: int | None
    alpha: float
    colormap: str
    preprocessing: Preprocessing
    preprocessing_info: dict
    labels: list | None
    model_path: str
    version: str
    inputs: tuple = ()
    #: {method: why it cannot run on this model}: the asked methods left out (:mod:`.method_layers`).
    unavailable: dict = field(default_factory=dict)
    #: {method: its registry entry}: a run (and a Ray actor, in another process) runs the entries it was planned
    #: with, also a method registered only where the run was planned.
    entries: dict = field(default_factory=dict)

    @classmethod
    def build(cls, m, pre: Preprocessing, methods: list, params: dict, options: dict, reporter) -> RunSettings:
        """Check the options against the loaded model ``m`` (labels, each method's layer, the target class, the
        occlusion window), so that a bad one fails before any image is read, and fix the settings. ``options``: the
        run's options by their command-line names (target, top_k, layer, labels, out_dir, overwrite, resume,
        batch_size, rows_per_run, alpha, colormap, model)."""
        from .. import __version__, report

        check_options(options)

        labels = resolve_labels(m, options["labels"])
        target = resolve_target(options["target"], labels)
        top_k = check_top_k(options["top_k"], m.num_classes)
        layers, unavailable = method_layers(m, methods, options["layer"], reporter)
        methods = list(layers)
        if target is not None:
            m.targets_for(target, 1)  # a class out of range fails now, not after the first batch
        if top_k:
            ranks = [f"top{r}" for r in range(1, top_k + 1)]
        else:
            ranks = [f"c{target}"] if target is not None else ["top1"]
        registry.check_parameters(methods, params)
        if pre.size:  # the methods whose parameters must fit the input (occlusion's window), checked before any work
            registry.check_input_size(methods, params, pre.size, reporter.warn)
        method_params = {}
        for name in methods:
            used = registry.parameters(name, params, shared=True)
            if layers[name]:
                used["layer"] = layers[name]
            method_params[name] = used
        return cls(out=Path(options["out_dir"]), methods=methods, params=params, layer=options["layer"],
                   method_params=method_params, ranks=ranks, target=target, top_k=top_k,
                   overwrite=options["overwrite"], resume=options["resume"], batch_size=options["batch_size"],
                   rows_per_run=options["rows_per_run"],
                   alpha=options["alpha"], colormap=options["colormap"], preprocessing=pre,
                   preprocessing_info=report.preprocessing_info(pre), labels=labels,
                   model_path=str(Path(options["model"]).resolve()), version=__version__,
                   inputs=tuple(p for p in (options["model"], options["labels"]) if p), unavailable=unavailable,
                   entries={name: registry.get(name) for name in methods})

    def method(self, name: str):
        """The registry entry of method ``name``, as planned."""
        return self.entries.get(name) or registry.get(name)

    def own_params(self, name: str) -> dict:
        """The parameters method ``name`` runs with, its layer left out (what :func:`registry.explain` takes)."""
        return {k: v for k, v in self.method_params[name].items() if k != "layer"}

    @property
    def k(self) -> int:
        """Classes explained per image."""
        return len(self.ranks)

    def files(self, key: str, method: str, rank: str) -> ResultFiles:
        """The files of one result: ``KEY.METHOD.RANK.png|npy|json`` in the output folder."""
        stem = f"{key}.{method}.{rank}"
        return ResultFiles(*(self.out / f"{stem}.{suffix}" for suffix in ResultFiles._fields))

    def result_settings(self, method: str) -> dict:
        """The settings a result of ``method`` is made with, as its record holds them: model, parameters,
        preprocessing and overlay (alpha, colormap). --resume keeps a result only if its record repeats them."""
        return {"model": self.model_path, "parameters": self.method_params[method],
                "preprocessing": self.preprocessing_info,
                "overlay": {"alpha": self.alpha, "colormap": self.colormap}}


def check_options(options: dict) -> None:
    """The option errors that need neither the images nor the model: ``target`` with ``top_k``, an unknown
    ``colormap`` (:class:`InputError`; the command line reports them as usage errors)."""
    from ..image import COLORMAPS

    if options["target"] is not None and options["top_k"] is not None:
        raise option_error("--target and --top-k exclude each other; give one.", "--top-k")
    colormap = options["colormap"]
    if colormap.lower() not in COLORMAPS:
        raise option_error(f"unknown colormap {colormap!r}; use one of {', '.join(sorted(COLORMAPS))}.",
                           "--colormap")


@dataclass
class Plan:
    """What is left to do: ``todo`` holds, per image with something to compute, (its index, the methods with at
    least one result to compute); ``skipped`` the images --resume finds finished; ``done`` the records of the results
    --resume keeps; ``stale`` the records made with other settings (recomputed), ``changed`` which settings differ;
    ``removed`` the temporary files of a killed run that --resume deleted; ``broken`` the records whose picture or
    array is missing or damaged (recomputed)."""
    todo: list
    skipped: list
    done: set = field(default_factory=set)
    stale: list = field(default_factory=list)
    changed: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    broken: list = field(default_factory=list)
    #: A detector's or segmenter's run (:mod:`.detection_run`): per image (absolute path), the result records
    #: --resume keeps.
    kept: dict = field(default_factory=dict)


def plan(job: RunSettings, paths: list, keys: list, reporter=None) -> Plan:
    """Which images and methods are left to do.

    Refuses (:class:`InputError`, before any work) an output that would replace an input image, the model or the
    labels, whatever the flags; without --overwrite or --resume, a result file that exists already; under --resume
    without --overwrite, a record of another image. Under --resume a result whose record exists and repeats this
    run's settings (:meth:`RunSettings.result_settings`) is kept; one made with other settings is stale and
    recomputed, and the temporary files a killed run left for this run's outputs are removed.
    """
    outputs = {(i, name): [job.files(key, name, rank) for rank in job.ranks]
               for i, key in enumerate(keys) for name in job.methods}
    every = [f for outs in outputs.values() for files in outs for f in files]
    protect_inputs(every, [*job.inputs, *paths])
    for f in every:
        check_regular(f, "the result file")  # a folder or a FIFO where a result goes: never replaced
    work = Plan([], [])
    conflicts, changed = [], set()
    for i, path in enumerate(paths):
        missing = []
        for name in job.methods:
            outs = outputs[(i, name)]
            if not job.resume:
                if not job.overwrite:
                    conflicts += [f for files in outs for f in files if f.exists()]
                missing.append(name)
                continue
            todo = False
            for files in outs:
                state, detail = record_state(job, name, path, files.json)
                if state == "done" and broken_file(files) is None:
                    work.done.add(files.json)
                    continue
                todo = True
                if state == "done":
                    work.broken.append(abspath(files.json))
                elif state == "stale":
                    work.stale.append(abspath(files.json))
                    changed.update(detail)
                elif state == "other" and not job.overwrite:
                    conflicts.append(f"{files.json} holds the result of another image ({detail})")
            if todo:
                missing.append(name)
        if missing:
            work.todo.append((i, missing))
        else:
            work.skipped.append(abspath(path))
    refuse_conflicts(conflicts, job.resume)
    work.changed = sorted(changed)
    if job.resume:
        work.removed = remove_stale_temps(job.out, {f.name for f in every}, reporter)
    return work


def record_state(job: RunSettings, name: str, image: Path, record_path: Path) -> tuple:
    """What --resume makes of the record ``record_path`` of method ``name`` on ``image``: ("missing", None),
    ("done", None) when it repeats this run's settings, ("stale", the names of the settings that differ) when not
    (or when it cannot be read), ("other", that image) when it is the result of another image."""
    if not record_path.exists():
        return "missing", None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return "stale", [f"unreadable record: {type(exc).__name__}"]
    if not isinstance(record, dict):
        return "stale", ["unreadable record: not a JSON object"]
    if record.get("image") != str(image.resolve()):
        return "other", record.get("image")
    wanted = json.loads(jsonio.dumps(job.result_settings(name)))
    changed = []
    for key, value in wanted.items():
        found = record.get(key)
        if found == value:
            continue
        if isinstance(value, dict) and isinstance(found, dict):
            changed += [k for k in sorted(set(value) | set(found)) if value.get(k) != found.get(k)]
        else:
            changed.append(key)
    return ("stale", changed) if changed else ("done", None)


def refuse_conflicts(conflicts: list, resume: bool) -> None:
    """Refuse a run whose outputs would replace files it did not write (``conflicts``: one sentence each, the first
    named), with what to do under ``--resume`` or without it; nothing to refuse when ``conflicts`` is empty.

    Raises:
        InputError: there is a conflict.
    """
    if not conflicts:
        return
    more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
    if resume:
        raise InputError(f"{conflicts[0]}{more}; choose another --out, or pass --overwrite to replace it.")
    raise InputError(f"{conflicts[0]} already exists{more}; pass --overwrite to replace results or --resume to "
                     "skip finished ones.")
