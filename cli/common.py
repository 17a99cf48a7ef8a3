"""What every command shares: the global flags, the shared options, model and preprocessing, class names and
targets, image lists, output, progress and errors as JSON.

Nothing here computes an explanation; it turns command-line text into library arguments and library results into
lines, JSON and files.

One name per idea: every option that more than one command takes is made here, once, by :func:`shared_option`
(tests/cli/test_one_tool.py walks every command's --help and checks it). A command takes only the options it uses:
:func:`model_options` (loading), :func:`preprocessing_options` (making model inputs from pictures: the commands that
read pictures, and dream), :func:`order_option` alone (filters), :func:`labels_option` (the commands that name
classes), :func:`image_options` (--max-pixels: the commands that read pictures).
"""
from __future__ import annotations

import difflib
import glob
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click

from onnx_cnnviz import jsonio
from onnx_cnnviz.errors import InputError, ModelLoadError
from onnx_cnnviz.files import check_regular
from onnx_cnnviz.image import IMAGE_SUFFIXES, MAX_PIXELS, Preprocessing
from onnx_cnnviz.metrics import registry as metric_registry

# Exit codes besides 0 and click's 2 for bad usage (see main.py's docstring).
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130

#: Where results go when --out is not given: the folder of the commands writing several files; the commands writing
#: one picture write ``DEFAULT_OUT/COMMAND.png``.
DEFAULT_OUT = "cnnviz-out"


# ---------------------------------------------------------------------------------------------------------------------
# Shared options: one definition per flag


class SharedOption(click.Option):
    """An option made by :func:`shared_option`: ``shared_help`` is the flag's one meaning (the same on every command
    that takes it; a command may add a note, such as its default); ``aliases`` are older spellings still accepted but
    not shown in --help. ``{methods}`` in the help is replaced by the option's choices when the help is shown (so a
    method registered after import is listed)."""

    def __init__(self, *args, shared_help: str = "", aliases=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.shared_help = shared_help
        self.aliases = tuple(aliases)

    def get_help_record(self, ctx):
        saved_opts, saved_secondary, saved_help = self.opts, self.secondary_opts, self.help
        self.opts = [o for o in self.opts if o not in self.aliases]
        self.secondary_opts = [o for o in self.secondary_opts if o not in self.aliases]
        if self.help and "{methods}" in self.help:
            self.help = self.help.replace("{methods}", ", ".join(getattr(self.type, "choices", ())))
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts, self.secondary_opts, self.help = saved_opts, saved_secondary, saved_help


def shared_option(*decls, help: str, note: str | None = None, aliases=(), **attrs):
    """A click option with one meaning everywhere: ``help`` (the same text on every command), ``note`` (what is
    particular to this command, e.g. its default), ``aliases`` (hidden older spellings, given in ``decls`` too)."""
    text = f"{help} {note}" if note else help
    return click.option(*decls, cls=SharedOption, shared_help=help, aliases=aliases, help=text, **attrs)


def stack(*decorators):
    """One decorator applying ``decorators``, the first one outermost."""
    return lambda f: apply(f, *decorators)


def apply(f, *decorators):
    """``f`` decorated by ``decorators``, the first one outermost (as if written one per line above ``f``)."""
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


# ---------------------------------------------------------------------------------------------------------------------
# Global flags: accepted before the command (cnnviz --json inspect M) and after it (cnnviz inspect M --json).


@dataclass
class Settings:
    quiet: bool = False
    json: bool = False
    debug: bool = False
    warned: set = field(default_factory=set)  # the keys of the warnings given once per command


def settings(ctx: click.Context | None = None) -> Settings:
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = Settings()
    return root.obj


def _set_flag(name):
    def callback(ctx, param, value):
        if value:
            setattr(settings(ctx), name, True)
        return value
    return callback


GLOBAL_FLAGS = [("quiet", "No progress or messages; only errors (and --json output)."),
                ("json", "Print one JSON document on stdout instead of text (errors too: {\"error\": ...})."),
                ("debug", "Show the full traceback of an error.")]


def global_flags(f):
    """--quiet, --json, --debug on a command (they also work before the command name)."""
    return apply(f, *[shared_option(f"--{name}", is_flag=True, expose_value=False, is_eager=True,
                                    callback=_set_flag(name), help=help_text) for name, help_text in GLOBAL_FLAGS])


# ---------------------------------------------------------------------------------------------------------------------
# Messages: stdout for results, stderr for warnings and progress (kept apart from a progress bar on a terminal)


def _print(message: str, err: bool) -> None:
    """``message`` on stdout or stderr; a progress bar shown on the terminal is cleared first and drawn again
    after, so that the bar never runs into a line."""
    bars = [bar for bar in _ACTIVE if bar.shown]
    for bar in bars:
        bar.clear()
    click.echo(message, err=err)
    for bar in bars:
        bar.draw(force=True)


def echo(message: str = "", err: bool = False) -> None:
    """A human message: on stdout (stderr with ``err``), silenced by --quiet and, on stdout, by --json."""
    s = settings()
    if s.quiet or (s.json and not err):
        return
    _print(message, err)


def warn(message: str, once: str | None = None) -> None:
    """A warning on stderr (kept under --json, silenced by --quiet); ``once``: a key, so that the warning is given
    once per command."""
    s = settings()
    if once is not None:
        if once in s.warned:
            return
        s.warned.add(once)
    if not s.quiet:
        _print(f"cnnviz: warning: {message}", err=True)


def emit_json(document) -> None:
    """``document`` as indented JSON on stdout (the --json output of a command)."""
    click.echo(jsonio.dumps(document))


def finish(document, message: str) -> None:
    """A command's result: ``document`` as JSON under --json, else the human ``message`` (lines may follow)."""
    if settings().json:
        emit_json(document)
    else:
        echo(message)


def abspath(path) -> str | None:
    """The one way paths appear in JSON: absolute and resolved (None stays None)."""
    return None if path is None else str(Path(path).resolve())


def error_document(exc: BaseException, message: str, exit_code: int) -> dict:
    """The --json document of a failed command: ``{"error": {"type", "message", "exit_code"}}``."""
    return {"error": {"type": type(exc).__name__, "message": message, "exit_code": int(exit_code)}}


# ---------------------------------------------------------------------------------------------------------------------
# Progress

#: Seconds between two progress lines when stderr is not a terminal (a log file, a pipe, CI).
PROGRESS_INTERVAL = 5.0
#: Seconds between two redraws of the bar on a terminal.
BAR_INTERVAL = 0.1

_ACTIVE: list = []  # the progress displays running now


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Progress of a command in units of work: ``total`` items (``unit``: "images") and, inside the item being
    worked on, the units of the running method (Score-CAM's masked images, occlusion's windows, SmoothGrad's samples,
    as the library reports them through ``progress(done, total)``).

    On a terminal: one bar on stderr, redrawn in place and cleared before any other line is printed (:func:`echo`,
    :func:`warn`) and at the end. Otherwise: one plain line on stderr every :data:`PROGRESS_INTERVAL` seconds (none
    for a run shorter than that). Nothing under --quiet or --json."""

    def __init__(self, total: int, label: str, unit: str = "images"):
        s = settings()
        self.total, self.label, self.unit = int(total), label, unit
        self.done = 0
        self.step = None  # (method, done, total) inside the current item
        self.hidden = s.quiet or s.json
        self.terminal = not self.hidden and _stderr_is_terminal()
        self.shown = False
        self.start = self.last_line = self.last_draw = time.monotonic()

    def __enter__(self) -> Progress:
        self.start = self.last_line = self.last_draw = time.monotonic()
        if not self.hidden:
            _ACTIVE.append(self)
            self.draw(force=True)
        return self

    def __exit__(self, *exc) -> bool:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self.clear()
        return False

    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        self.done = min(self.total, self.done + int(n))
        self.step = None
        self.draw(force=self.done == self.total)

    def method_progress(self, name: str):
        """A ``progress(done, total)`` callable for the library's method ``name`` on the current item(s)."""
        def report(done: int, total: int) -> None:
            self.step = (name, int(done), int(total))
            self.draw()
        return report

    def step_progress(self, name: str, done: int, total: int) -> None:
        self.method_progress(name)(done, total)

    def text(self) -> str:
        parts = [f"{self.done}/{self.total} {self.unit}"]
        if self.step is not None:
            name, done, total = self.step
            parts.append(f"{name} {done}/{total}")
        elapsed = int(time.monotonic() - self.start)
        parts.append(f"{elapsed // 60}m{elapsed % 60:02d}s")
        return ", ".join(parts)

    def draw(self, force: bool = False) -> None:
        if self.hidden:
            return
        now = time.monotonic()
        if self.terminal:
            if not force and now - self.last_draw < BAR_INTERVAL:
                return
            self.last_draw = now
            fraction = self.done / self.total if self.total else 1.0
            if self.step is not None and self.step[2] and self.total:
                fraction = min(1.0, (self.done + self.step[1] / self.step[2]) / self.total)
            width = 24
            filled = int(round(width * fraction))
            line = f"{self.label} [{'#' * filled}{'-' * (width - filled)}] {self.text()}"
            columns = shutil.get_terminal_size((100, 20)).columns
            sys.stderr.write("\r\x1b[K" + line[:max(10, columns - 1)])
            sys.stderr.flush()
            self.shown = True
        elif now - self.last_line >= PROGRESS_INTERVAL:
            self.last_line = now
            click.echo(f"cnnviz: {self.label}: {self.text()}", err=True)

    def clear(self) -> None:
        """Erase the bar from the terminal line (the next output starts on a clean line)."""
        if self.terminal and self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


def progress(length: int, label: str, unit: str = "images") -> Progress:
    """The progress display of a command (see :class:`Progress`); use it as a context manager."""
    return Progress(length, label, unit)


# ---------------------------------------------------------------------------------------------------------------------
# Parameter types


class SizeType(click.ParamType):
    """HxW, HXW, H,W or a single N (square)."""
    name = "HxW"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        text = str(value).lower().replace("×", "x").replace(",", "x")
        parts = [p for p in text.split("x") if p.strip()]
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            nums = []
        if len(nums) == 1:
            nums = nums * 2
        if len(nums) != 2 or min(nums) < 1:
            self.fail(f"{value!r} is not a size; write HxW such as 224x224 (or one number for a square).", param, ctx)
        return tuple(nums)


class FloatsType(click.ParamType):
    """One number or three comma-separated numbers (fractions such as 1/255 allowed)."""
    name = "A[,B,C]"

    def __init__(self, count=(1, 3)):
        self.count = count
        self.name = "A[,B,C]" if 3 in count else "NUMBER"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        nums = []
        for part in str(value).split(","):
            num, slash, den = part.strip().partition("/")
            try:
                nums.append(float(num) / float(den) if slash else float(num))
            except (ValueError, ZeroDivisionError):
                self.fail(f"{value!r} is not a number list; write e.g. 0.485,0.456,0.406.", param, ctx)
        if len(nums) not in self.count:
            self.fail(f"{value!r}: give {' or '.join(map(str, self.count))} number(s).", param, ctx)
        return tuple(nums)


class BaselineType(click.ParamType):
    """A number, or ``mean`` (the image's mean: the occlusion and integrated-gradients baseline)."""
    name = "FLOAT|mean"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value == "mean":
            return value
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number or 'mean'.", param, ctx)


class CsvChoice(click.ParamType):
    """A comma-separated list of names from ``choices`` (the option may also be repeated)."""
    name = "LIST"

    def __init__(self, choices):
        # A callable is read each time: the method registry can grow after this module is imported.
        self._choices = choices

    @property
    def choices(self) -> list:
        return list(self._choices() if callable(self._choices) else self._choices)

    def get_metavar(self, param, ctx=None):
        return "NAME[,NAME...]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        names = [v.strip() for v in str(value).split(",") if v.strip()]
        bad = [n for n in names if n not in self.choices]
        if bad or not names:
            self.fail(f"unknown name(s) {', '.join(bad) or repr(value)}; choose from {', '.join(self.choices)}.",
                      param, ctx)
        return names


class LimitType(click.ParamType):
    """A positive whole number (``_`` and ``,`` allowed as separators, as in 100_000_000), or ``none`` (no limit)."""
    name = "N|none"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "none":
            return None
        try:
            number = int(text.replace(",", "").replace("_", ""))
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is not a limit; give a positive whole number, or 'none' for no limit.", param, ctx)
        return number


class TargetType(click.ParamType):
    """A class: its index, or its name (resolved against the class names by :func:`resolve_target` once the model
    and its labels are loaded)."""
    name = "CLASS"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip()
        if not text:
            self.fail("give a class index or a class name.", param, ctx)
        try:
            return int(text)
        except ValueError:
            return text


def flatten_lists(values) -> list:
    out = []
    for v in values or ():
        for name in (v if isinstance(v, list) else [v]):
            if name not in out:
                out.append(name)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The shared options of several commands (each flag defined once)


def out_folder_option(f):
    """--out DIR, for the commands writing several files."""
    return shared_option("--out", "out_dir", type=click.Path(file_okay=False), default=DEFAULT_OUT,
                         show_default=True, help=OUT_HELP, note="A folder: the command writes several files.")(f)


def out_picture_option(command: str):
    """--out FILE.png, for the commands writing one picture (default: cnnviz-out/COMMAND.png)."""
    return shared_option("--out", "out_path", type=click.Path(dir_okay=False),
                         default=str(Path(DEFAULT_OUT) / f"{command}.png"), show_default=True, help=OUT_HELP,
                         note="The .png file: the command writes one picture.")


def out_model_option(f):
    """--out FILE.onnx, for the commands writing a model (required: a model file is named by its user)."""
    return shared_option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help=OUT_HELP,
                         note="The .onnx file (required).")(f)


OUT_HELP = "Where the results go."


def overwrite_option(f):
    return shared_option("--overwrite", is_flag=True,
                         help="Replace existing output files (never done otherwise; input files are never written).")(f)


def metric_options(note: str):
    """--metric (faithfulness metrics by registry name) and --metric-param METRIC.KEY=VALUE, for evaluate and report
    (:func:`parse_metric_params` reads them)."""
    def decorate(f):
        f = shared_option("--metric-param", "metric_params", metavar="METRIC.KEY=VALUE", multiple=True,
                          help="A metric parameter (VALUE read as JSON, else as text), e.g. "
                               "deletion.pixels_per_step=16; repeatable.")(f)
        return shared_option("--metric", "--metrics", "metrics", type=CsvChoice(metric_registry.names),
                             multiple=True, aliases=("--metrics",),
                             help="Metric(s) by name, comma-separated or repeated: {methods}.", note=note)(f)
    return decorate


def parse_metric_params(items, metrics: list) -> dict:
    """``METRIC.KEY=VALUE`` items as {metric: {key: value}}, each checked against the metric's parameters
    (:func:`onnx_cnnviz.metrics.registry.parameters`): an item not of that form, a metric not evaluated, or a key it
    does not take is a usage error (exit code 2, as an unknown --metric) naming what it takes. The values themselves
    are checked by the metric when it runs."""
    params: dict = {m: {} for m in metrics}
    for item in items:
        name, sep, value = item.partition("=")
        metric, dot, key = name.partition(".")
        if not sep or not dot or not key:
            raise click.BadParameter(f"{item!r} is not METRIC.KEY=VALUE (e.g. deletion.pixels_per_step=16).",
                                     param_hint="--metric-param")
        if metric not in params:
            raise click.BadParameter(f"{item!r} names metric {metric!r}, which is not evaluated; evaluated: "
                                     f"{', '.join(metrics)}.", param_hint="--metric-param")
        try:
            params[metric][key] = json.loads(value)
        except ValueError:
            params[metric][key] = value  # a word such as score or blur
    for metric in metrics:
        try:
            metric_registry.parameters(metric, params[metric])
        except InputError as exc:
            raise click.BadParameter(str(exc), param_hint="--metric-param") from None
    return params


def ray_option(note: str):
    """--ray [ADDRESS]: run on Ray (the optional ``ray`` extra; :mod:`onnx_cnnviz.dataset`), for explain and evaluate.
    A flag with an optional value: ``--ray`` alone is "local" (a new local Ray), ``--ray auto`` a running cluster,
    ``--ray HOST:PORT`` that cluster; not given, None (the single-process run). ``note``: what the command writes."""
    return shared_option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                         callback=_check_ray_address,
                         help="Run on Ray (pip install 'onnx-cnnviz[ray]'): pictures read in Ray tasks, processed by a "
                              "pool of actors each holding the model. 'auto' joins a running cluster, an address that "
                              "cluster, no value starts a local one.", note=note)


#: What --ray's value can be: local (the flag alone), auto, HOST:PORT, or a ray:// / http(s):// address.
_RAY_ADDRESS = re.compile(r"^(local|auto|(ray|https?)://\S+|[A-Za-z0-9.\-\[\]:]+:\d+)$")


def _check_ray_address(ctx, param, value):
    """--ray takes an optional value, so ``--ray model.onnx photos/`` reads the model's path as the address: refuse
    anything that is not an address, saying so, rather than fail later in Ray or on the wrong argument."""
    if value is not None and not _RAY_ADDRESS.match(value):
        raise click.BadParameter(f"{value!r} is not a Ray address (auto, HOST:PORT or ray://HOST:PORT). --ray takes "
                                 "an optional value: put it after the model and images, or give it one "
                                 "(--ray auto).", param_hint="--ray")
    return value


def recursive_option(f):
    """-r / --recursive, for every command that takes folders of images."""
    return shared_option("--recursive", "-r", is_flag=True, help="Also take images from subfolders.")(f)


def batch_size_option(f):
    """--batch-size: images per run, for the commands that read many pictures."""
    return shared_option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                         help="Images read and run together (memory grows with it).")(f)


def rows_per_run_option(aliases=()):
    """--rows-per-run: rows per onnxruntime run (``aliases``: an older spelling of this command)."""
    return shared_option("--rows-per-run", *aliases, "rows_per_run", type=click.IntRange(min=1), default=None,
                         aliases=aliases,
                         help="Rows (images, masked or noisy copies) per onnxruntime run (default: sized by the "
                              "library to the memory available).")


def layer_option(note: str, multiple: bool = False, dest: str = "layer"):
    return shared_option("--layer", dest, metavar="NAME", default=None, multiple=multiple,
                         help="A layer (a tensor name; `cnnviz inspect` lists them).", note=note)


def tile_option(default: int):
    return shared_option("--tile", type=click.IntRange(min=1), default=default, show_default=True,
                         help="Tile size in pixels.")


def target_option(note: str, aliases=()):
    return shared_option("--target", *aliases, "target", type=TargetType(), default=None, aliases=aliases,
                         help="The class, by index or by name (names need the class names: --labels or the model's "
                              "metadata; `cnnviz inspect MODEL --classes` lists them).", note=note)


def top_k_option(note: str, aliases=()):
    return shared_option("--top-k", *aliases, "top_k", type=click.IntRange(min=1), default=None, aliases=aliases,
                         help="The K best classes of each image:", note=note)


def method_option(choices, note: str):
    """--method (-m; --methods is an older spelling): method names, comma-separated or repeated."""
    return shared_option("--method", "--methods", "-m", "methods", type=CsvChoice(choices), multiple=True,
                         aliases=("--methods",),
                         help="Method(s) by name, comma-separated or repeated: {methods}.", note=note)


def seed_option(note: str, default: int = 0):
    return shared_option("--seed", type=int, default=default, show_default=True, help="Random seed", note=note)


def steps_option(note: str, default: int):
    return shared_option("--steps", type=click.IntRange(min=1), default=default, show_default=True,
                         help="Number of steps:", note=note)


def opset_option(note: str):
    return shared_option("--opset", type=click.IntRange(7, 23), default=17, show_default=True,
                         help="ONNX opset of the written model", note=note)


def no_check_option(note: str):
    return shared_option("--no-check", is_flag=True,
                         help="Skip the comparison of the written model (run by onnxruntime) with the source model",
                         note=note)


def method_parameter_options(f):
    """The methods' own parameters (occlusion's --window, --stride, --baseline, --mode; SmoothGrad's --samples,
    --noise; integrated gradients' --steps), for explain and report."""
    return apply(f, occlusion_options, *smoothgrad_ig_options())


def occlusion_options(f):
    """--window, --stride, --baseline, --mode: for explain, occlusion and report."""
    return apply(
        f,
        shared_option("--window", type=SizeType(), default="16x16", show_default=True,
                      help="Occlusion window HxW (or one number)."),
        shared_option("--stride", type=SizeType(), default="8x8", show_default=True,
                      help="Occlusion stride HxW (or one number)."),
        shared_option("--baseline", type=BaselineType(), default=0.0, show_default=True,
                      help="Fill value of the occluded window and the integrated-gradients baseline, or 'mean' (the "
                           "image's channel means; occlusion only)."),
        shared_option("--mode", "occlusion_mode", type=click.Choice(["score", "probability"]), default="score",
                      show_default=True, help="Occlusion map: score drop, or probability with the window occluded."))


def smoothgrad_ig_options():
    return [shared_option("--samples", type=click.IntRange(min=1), default=25, show_default=True,
                          help="SmoothGrad samples."),
            shared_option("--noise", type=click.FloatRange(min=0), default=0.15, show_default=True,
                          help="SmoothGrad noise (fraction of the image's value range)."),
            steps_option("integrated gradients' points on the path from the baseline.", 50)]


# ---------------------------------------------------------------------------------------------------------------------
# Model options and loading


def model_options(f):
    """--device, --input, --output, --input-size, --max-nodes."""
    from onnx_cnnviz.graph.load import MAX_NODES

    return apply(
        f,
        shared_option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                      help="Where onnxruntime runs the model (auto: CUDA when it works, else CPU)."),
        shared_option("--input", "input_name", metavar="NAME", help="The image input, when the model has several."),
        shared_option("--output", "output_name", metavar="NAME",
                      help="The class-score output, when the model has several."),
        input_size_option("for models that accept any size (default: the metadata, else 224x224).", None),
        shared_option("--max-nodes", type=LimitType(), default=MAX_NODES, show_default=True,
                      help="Refuse models with more graph nodes than this, counted before their weights are read "
                           "('none': no limit)."))


def input_size_option(note: str, default):
    return shared_option("--input-size", type=SizeType(), default=default, show_default=default is not None,
                         help="The model's input size HxW (or one number for a square),", note=note)


_LIBRARY_DEFAULT = object()


def load_model(path, device="auto", input_name=None, output_name=None, input_size=None, batch_size=None,
               max_nodes=_LIBRARY_DEFAULT):
    """The model at ``path``; ``max_nodes``: the --max-nodes value (None: no limit; not given: the library's
    default). A path that is not a regular file (a FIFO that would block, a device) is refused before it is opened
    (:class:`ModelLoadError`); a folder or a missing file gets the library's message."""
    import onnx_cnnviz as cv

    if not Path(path).is_dir():
        check_regular(path, "model file", ModelLoadError)
    limit = {} if max_nodes is _LIBRARY_DEFAULT else {"max_nodes": max_nodes}
    return cv.load(path, device=device, input=input_name, output=output_name, input_size=input_size,
                   batch_size=batch_size, **limit)


def model_and_preprocessing(ctx: click.Context, options: dict, batch_size=None):
    """The model and its preprocessing from a command's MODEL argument, :func:`model_options` and
    :func:`preprocessing_options` values (``options``: the command's keyword arguments holding them)."""
    m = load_model(options["model"], options["device"], options["input_name"], options["output_name"],
                   options["input_size"], batch_size, options["max_nodes"])
    pre = resolve_preprocessing(ctx, m, options["preprocess"], options["mean"], options["std"], options["size"],
                                options["order"], options["scale"], options["input_size"],
                                model_name=Path(options["model"]).name)
    return m, pre


def layer_name(m, layer: str | None) -> str | None:
    """The checked name of ``layer`` on ``m`` (the model's default layer when None)."""
    return m.layer(layer).name if layer else m.default_layer


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing

#: The presets of --preprocess: the library's (onnx_cnnviz.image.PRESETS) and Keras's "tf" mode (x / 127.5 - 1).
PRESET_NAMES = ("imagenet", "caffe", "tf", "none")
#: What --preprocess is used when the model's metadata holds none and no flag is given (with a warning).
ASSUMED_PRESET = "imagenet"


def preset(name: str):
    """The :class:`~onnx_cnnviz.image.Preprocessing` of a --preprocess name."""
    from onnx_cnnviz.image import PRESETS, Preprocessing

    if name == "tf":
        return Preprocessing(size=(224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), order="RGB",
                             scale=1.0 / 255.0)
    return PRESETS[name]


PREPROCESS_HELP = ("The model's preprocessing preset: imagenet (torchvision: RGB in [0, 1], ImageNet mean and std), "
                   "caffe (BGR 0..255 minus the mean), tf (RGB scaled to [-1, 1]), none (RGB in [0, 1] at the "
                   "picture's size).")


def preprocess_option(note: str):
    return shared_option("--preprocess", type=click.Choice(list(PRESET_NAMES)), default=None, help=PREPROCESS_HELP,
                         note=note)


def order_option(note: str | None = None):
    return shared_option("--order", type=click.Choice(["RGB", "BGR"], case_sensitive=False), default=None,
                         help="Channel order the model expects.", note=note)


def preprocessing_options(f):
    """--preprocess, --mean, --std, --size, --order, --scale: how pictures become model inputs."""
    return apply(
        f,
        preprocess_option("Default: the model's metadata, else imagenet (with a warning); given, it wins over the "
                          "metadata."),
        shared_option("--mean", type=FloatsType(), help="Per-channel mean, in the model's channel order and scale."),
        shared_option("--std", type=FloatsType(), help="Per-channel std."),
        shared_option("--size", type=SizeType(),
                      help="Resize pictures to HxW (a model with a fixed size uses its own)."),
        order_option(),
        shared_option("--scale", type=FloatsType(count=(1,)), help="Pixel scale before the mean, e.g. 1/255 or 1."))


@dataclass(frozen=True)
class PreprocessingChoice:
    """The preprocessing a command uses and where it comes from: ``source`` is "metadata" (the model's
    ``cnnviz.preprocess.*`` keys, maybe with flags over them), "flags" (--preprocess, or fields given on the assumed
    preset), "model" (the model takes integer pixels: :data:`RAW_PIXELS`) or "assumed" (nothing given: the
    :data:`ASSUMED_PRESET`)."""
    preprocessing: object
    source: str
    preset: str | None
    flags: tuple

    def describe(self) -> str:
        if self.source == "model":
            return ("raw pixels (the model takes integer pixels and preprocesses them inside its graph; RGB order "
                    "assumed, set --order BGR otherwise)")
        if self.source == "metadata":
            extra = f", with {', '.join(self.flags)}" if self.flags else ""
            return f"from the model's metadata{extra}"
        if self.source == "flags":
            return (f"from the flags ({', '.join(self.flags)})" +
                    (f" on the {self.preset} preset" if self.preset and "--preprocess" not in self.flags else ""))
        return (f"assumed: the {self.preset} preset (the model's metadata holds no preprocessing; set --preprocess or "
                "--mean/--std/--order/--scale)")


#: What a model that takes integer pixels (and preprocesses them in its graph) is fed: the pixels, RGB, unscaled.
RAW_PIXELS = Preprocessing(size=None, mean=None, std=None, order="RGB", scale=1.0)


def choose_preprocessing(m, preprocess=None, mean=None, std=None, size=None, order=None, scale=None,
                         input_size=None) -> PreprocessingChoice:
    """The model's metadata preprocessing, unless --preprocess is given; else the :data:`ASSUMED_PRESET`; then the
    field overrides (--input-size stands for --size when that is not given). A model with a fixed input size always
    gets its own size (:func:`~onnx_cnnviz.report.fit_preprocessing`, which also refuses models that do not take
    3-channel pictures)."""
    from onnx_cnnviz.image import Preprocessing, get_preprocessing
    from onnx_cnnviz.report import fit_preprocessing

    fields = {"--mean": mean, "--std": std, "--order": order, "--scale": scale}
    given = [name for name, value in fields.items() if value is not None]
    metadata = None if preprocess else Preprocessing.from_metadata(m.metadata)
    if preprocess:
        source, name, base = "flags", preprocess, preset(preprocess)
        given = ["--preprocess"] + given
    elif metadata is not None:
        source, name, base = "metadata", None, metadata
    elif getattr(m, "takes_pixels", False):
        # Exported taking integer pixels, the model preprocesses inside its graph: feed it the pixels as they are.
        source, name, base = ("flags" if given else "model"), None, RAW_PIXELS
    else:
        source, name, base = ("flags" if given else "assumed"), ASSUMED_PRESET, preset(ASSUMED_PRESET)
    pre = get_preprocessing(base, size=size or input_size, mean=mean, std=std, order=order.upper() if order else None,
                            scale=scale[0] if scale else None)
    return PreprocessingChoice(fit_preprocessing(m, pre), source, name, tuple(given))


def assumed_warning(model_name: str) -> str:
    """The warning of a model run on the assumed preset: which preset, and the flags to set."""
    p = preset(ASSUMED_PRESET)
    scale = "pixels / 255" if abs(p.scale - 1 / 255) < 1e-12 else f"pixels x {p.scale:g}"
    numbers = f"{p.order}, {scale}, mean {','.join(f'{v:g}' for v in p.mean)}, std " \
              f"{','.join(f'{v:g}' for v in p.std)}"
    return (f"{model_name} holds no preprocessing metadata and no preprocessing flag was given: assuming the "
            f"{ASSUMED_PRESET} preset ({numbers}). A model trained otherwise predicts wrong classes: set "
            "--preprocess caffe|tf|none (Caffe models such as SqueezeNet need caffe) or --mean/--std/--order/--scale "
            "(`cnnviz convert` records them in the model).")


def resolve_preprocessing(ctx: click.Context, m, preprocess, mean, std, size, order, scale, input_size=None,
                          model_name: str = "the model"):
    """:func:`choose_preprocessing`, warning once when the preprocessing is only assumed."""
    choice = choose_preprocessing(m, preprocess, mean, std, size, order, scale, input_size)
    if choice.source == "assumed":
        warn(assumed_warning(model_name), once="assumed-preprocessing")
    return choice.preprocessing


def channel_order(m, order: str | None, model_name: str = "the model") -> str:
    """The channel order of --order, else the model's metadata, else RGB (with a warning): for filters, which reads
    no picture."""
    from onnx_cnnviz.image import Preprocessing

    if order:
        return order.upper()
    metadata = Preprocessing.from_metadata(m.metadata)
    if metadata is not None:
        return metadata.order
    warn(f"{model_name} holds no preprocessing metadata and --order is not given: assuming RGB channel order for the "
         "filter colours; pass --order BGR for a model that takes BGR input (Caffe models such as SqueezeNet).",
         once="assumed-order")
    return "RGB"


# ---------------------------------------------------------------------------------------------------------------------
# Class names and targets


def labels_option(note: str = "Default: the model's 'cnnviz.labels' metadata."):
    return shared_option("--labels", type=click.Path(dir_okay=False), default=None,
                         help="Class names: a text file, one name per line (line i names class i - 1).", note=note)


def resolve_labels(m, labels_path):
    from onnx_cnnviz import report

    if labels_path:
        return report.check_labels(report.read_labels(labels_path), m.num_classes, f"labels file '{labels_path}'")
    return report.check_labels(report.labels_from_metadata(m.metadata), m.num_classes, "the model's label metadata")


def resolve_target(value, labels, hint: str = "--target"):
    """The class index of a --target value: an index as given, or a class name matched case-insensitively against
    ``labels`` (a whole name, or one of its comma-separated synonyms). An unknown or ambiguous name, or a name when
    no class names are known, is a usage error (exit code 2) listing the close matches."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    if not labels:
        raise click.BadParameter(f"{text!r} is a class name but the model's class names are not known; give the "
                                 "class index, or the class names with --labels FILE.", param_hint=hint)
    key = text.casefold()
    found = [i for i, name in enumerate(labels) if name.casefold() == key]
    if not found:
        found = [i for i, name in enumerate(labels)
                 if key in (part.strip().casefold() for part in name.split(","))]
    if len(found) == 1:
        return found[0]
    if found:
        listed = "; ".join(f"{i} ({labels[i]})" for i in found)
        raise click.BadParameter(f"{text!r} names {len(found)} classes: {listed}; give the index.", param_hint=hint)
    folded = [name.casefold() for name in labels]
    close = difflib.get_close_matches(key, folded, n=5, cutoff=0.6)
    near = [i for i, name in enumerate(folded) if name in close]
    near += [i for i, name in enumerate(folded) if key in name and i not in near]
    near = near[:8]
    hint_text = ("; close matches: " + "; ".join(f"{i} ({labels[i]})" for i in near)) if near else ""
    raise click.BadParameter(f"no class is named {text!r}{hint_text}. `cnnviz inspect MODEL --classes` lists the "
                             "class names.", param_hint=hint)


# ---------------------------------------------------------------------------------------------------------------------
# Images


def _set_pixel_limit(ctx, param, value):
    from onnx_cnnviz.image.reading import pixel_limit

    # For the whole command: every picture read (by the CLI or inside the library) uses this limit; the previous
    # limit comes back when the command's context closes.
    ctx.with_resource(pixel_limit(value))
    return value


def image_options(f):
    """--max-pixels, for the commands that read pictures."""
    return shared_option("--max-pixels", type=LimitType(), default=MAX_PIXELS, show_default=True,
                         expose_value=False, callback=_set_pixel_limit,
                         help="Refuse pictures with more pixels than this, from their header before decoding ('none': "
                              "no limit).")(f)


# The names of the pictures this tool writes (NAME.METHOD.RANK.png, NAME.activations.png, NAME.boxes.png, evaluate's
# curve.METHOD.METRIC.png): left out of the inputs taken from folders and globs inside the output folder, when the
# file this tool writes beside each of them is there too (see _is_ours).
_OURS = re.compile(r"(\.([a-z-]+\.(top\d+|c\d+)|activations|boxes)\.png|^curve\.[a-z0-9+-]+\.[a-z0-9+-]+\.png)$")


def _is_ours(path: Path) -> bool:
    """``path`` (a name :data:`_OURS` matches) is a picture this tool wrote: the file written with it is beside it
    (NAME.METHOD.RANK.json, the record written last; NAME.activations.npy; NAME.boxes.json; evaluate's journal for a
    curve). A user's picture that only looks like an output has none, so it stays an input (and is never replaced)."""
    name = path.name
    if name.startswith("curve."):
        partner = path.with_name("results.jsonl")
    elif name.endswith(".activations.png"):
        partner = path.with_suffix(".npy")
    else:
        partner = path.with_suffix(".json")
    return partner.is_file()


def collect_images(specs, exclude: Path | None = None, recursive: bool = False) -> list[Path]:
    """Files, folders (their image files, sorted) and globs -> a list of image paths without duplicates.

    Folders (and folders a glob matches) give their regular files whose suffix is one of
    :data:`onnx_cnnviz.image.IMAGE_SUFFIXES` (hidden files left out; subfolders too with ``recursive``). Files named
    explicitly are always taken (reading them says whether they are pictures).

    ``exclude``: the output folder: pictures this tool wrote there (NAME.METHOD.RANK.png, NAME.activations.png,
    NAME.boxes.png, evaluate's curve.METHOD.METRIC.png, each with the file written beside it) are not taken from
    folders and globs, so that a second run over a folder holding its own results does not explain the results. A
    picture only named like one of them is an input like any other.
    """
    found: list[Path] = []
    seen = set()
    excluded = exclude.resolve() if exclude is not None else None

    def add(path: Path, expanded: bool = True):
        key = path.resolve()
        if expanded and excluded is not None and (excluded in key.parents) and _OURS.search(key.name) \
                and _is_ours(key):
            return
        if key not in seen:
            seen.add(key)
            found.append(path)

    def add_folder(folder: Path):
        pattern = "**/*" if recursive else "*"
        for p in sorted(folder.glob(pattern)):
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file():
                add(p)

    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            add_folder(path)
        elif path.exists():
            add(path, expanded=False)
        elif glob.has_magic(str(spec)):
            matches = sorted(glob.glob(str(spec), recursive=True))
            if not matches:
                raise InputError(f"no file matches {spec!r}.")
            for match in matches:
                p = Path(match)
                if p.is_dir():
                    add_folder(p)
                elif p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                    add(p)
        else:
            raise InputError(f"image '{spec}' does not exist.")
    if not found:
        hint = "" if recursive else "; pass -r to look in subfolders too"
        raise InputError(f"no image files found in {', '.join(map(str, specs))} "
                         f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))}{hint}).")
    return found


def image_keys(paths: list[Path]) -> list[str]:
    """One file-name stem per image, different for different input paths (compared ignoring case, for file systems
    that do): the stem when no other image has it; else the path relative to the images' common folder, its folders
    joined by ``__`` (``a/cat.png`` -> ``a__cat``), plus the suffix when only that differs (``cat_png``,
    ``cat_jpg``); when that still collides (``a/cat.png`` and ``a__cat.png``), a short hash of the full path is
    added (``a__cat-3f9c2a1b``). Keys over :data:`MAX_KEY` characters are cut and hashed the same way."""
    stems = [p.stem for p in paths]
    if _unique(stems) and all(len(k) <= MAX_KEY for k in stems):
        return stems
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    counts = Counter(stem.casefold() for stem in stems)
    keys = []
    for r, stem in zip(resolved, stems):
        if counts[stem.casefold()] == 1:
            keys.append(stem)
        else:
            rel = r.relative_to(root)
            keys.append("__".join(rel.parent.parts + (rel.stem,)))
    # Same name but the suffix in one folder (cat.png, cat.jpg): the suffix tells them apart.
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k.casefold(), []).append(i)
    for members in groups.values():
        suffixes = [paths[i].suffix.lstrip(".").casefold() for i in members]
        if len(members) > 1 and all(suffixes) and len(set(suffixes)) == len(members):
            for i in members:
                keys[i] = f"{keys[i]}_{paths[i].suffix.lstrip('.')}"

    def digest(i: int, digits: int) -> str:
        return hashlib.sha1(str(resolved[i]).encode("utf-8", "surrogateescape")).hexdigest()[:digits]

    keys = [f"{k[:MAX_KEY - 9]}-{digest(i, 8)}" if len(k) > MAX_KEY else k for i, k in enumerate(keys)]
    # Anything still shared (a/cat.png and a__cat.png): a hash of the full path, longer until every key is unique.
    for digits in (8, 16, 40):
        counts = Counter(k.casefold() for k in keys)
        if all(n == 1 for n in counts.values()):
            return keys
        keys = [f"{k}-{digest(i, digits)}" if counts[k.casefold()] > 1 else k for i, k in enumerate(keys)]
    return keys if _unique(keys) else [f"{k}-{i}" for i, k in enumerate(keys)]


MAX_KEY = 120  # characters of an image's key in output file names (file names stop at 255 bytes)


def _unique(keys) -> bool:
    return len({k.casefold() for k in keys}) == len(keys)


# ---------------------------------------------------------------------------------------------------------------------
# Output files


def out_folder(path) -> Path:
    """The --out folder of a command: refused (:class:`InputError`) when it exists and is not a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out '{path}' exists and is not a folder; give a folder for the results.")
    return path


def protect_inputs(outputs, inputs) -> None:
    """Refuse (:class:`InputError`) to write any of ``outputs`` over one of ``inputs`` (the model, images, labels,
    any file a command reads), whatever --overwrite says: the same path, or the same file reached through a symbolic
    or hard link (compared by device and inode, like :func:`os.path.samefile`). Call it before any work, with every
    output the command may write. ``None`` entries are ignored."""
    sources = {}
    for path in inputs:
        if path is None:
            continue
        try:
            info = os.stat(path)
        except OSError:
            continue
        sources[(info.st_dev, info.st_ino)] = path
    if not sources:
        return
    for out in outputs:
        try:
            info = os.stat(out)
        except OSError:  # not there (or not reachable): it cannot be an input
            continue
        source = sources.get((info.st_dev, info.st_ino))
        if source is not None:
            same = "" if os.path.abspath(out) == os.path.abspath(source) else f" (the same file as the input {source})"
            raise InputError(f"the output {out} would replace an input file{same}; choose another --out (input "
                             "files are never written).")


def check_outputs(paths, overwrite: bool, inputs=()) -> None:
    """Fail before any work when an output would replace an input (:func:`protect_inputs`, whatever ``overwrite``
    says), is something other than a regular file (a folder, a FIFO: never replaced), or exists while ``overwrite``
    is false."""
    paths = [Path(p) for p in paths]
    protect_inputs(paths, inputs)
    for p in paths:
        check_regular(p, "the output")
    if overwrite:
        return
    for p in paths:
        if p.exists():
            raise InputError(f"{p} already exists; pass --overwrite to replace it.")



def remove_stale_temps(folder, names) -> list:
    """Delete the temporary files a killed run (``kill -9``) left in ``folder`` for the output file ``names``
    (see :func:`onnx_cnnviz.files.remove_stale_temps`) and say how many; returns them."""
    from onnx_cnnviz import files

    removed = files.remove_stale_temps(folder, names)
    if removed:
        echo(f"resume: removed {len(removed)} temporary file(s) left by an interrupted run", err=True)
    return removed


def occlusion_geometry(window, stride, hw) -> None:
    """Check the occlusion --window and --stride against the ``hw`` model input before any work: a window larger
    than the input is a usage error; a stride not smaller than the input along an axis gets a warning (only one
    window is placed along it, at the top or left edge, so most of the map stays empty)."""
    if window[0] > hw[0] or window[1] > hw[1]:
        raise click.BadParameter(f"the occlusion window {window[0]}x{window[1]} is larger than the {hw[0]}x{hw[1]} "
                                 "model input; give a smaller --window.", param_hint="--window")
    warn_occlusion_stride(stride, hw)


def warn_occlusion_stride(stride, hw) -> None:
    """Warn when the occlusion ``stride`` is not smaller than the ``hw`` image along an axis."""
    axes = [axis for axis, s, n in (("height", stride[0], hw[0]), ("width", stride[1], hw[1])) if s >= n]
    if not axes:
        return
    where = " and ".join(axes)
    shown = "a single window" if len(axes) == 2 else ("one row of windows" if axes == ["height"] else
                                                       "one column of windows")
    warn(f"the occlusion stride {stride[0]}x{stride[1]} is not smaller than the {hw[0]}x{hw[1]} image in {where}: "
         f"{shown} is placed (at the top-left), so the map is empty outside it; give a smaller --stride.")


def npy_bytes(array) -> bytes:
    """``array`` in the .npy format (no pickles: a plain numeric array)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


# write_atomic is looked up on onnx_cnnviz.report at each call: the CLI's tests replace it there (a full disk).


def save_npy(path, array, overwrite: bool) -> str:
    """Write ``array`` as a .npy file, atomically; returns the path written."""
    from onnx_cnnviz import report

    return str(report.write_atomic(path, npy_bytes(array), overwrite=overwrite))


def save_json(path, document, overwrite: bool) -> str:
    """Write ``document`` as indented JSON, atomically; returns the path written."""
    from onnx_cnnviz import report

    return str(report.write_atomic(path, jsonio.dumps(document), overwrite=overwrite))
