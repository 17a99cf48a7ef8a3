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

import json
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click

from onnx_cnnviz import jsonio
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.image import MAX_PIXELS
from onnx_cnnviz.methods import registry as method_registry
from onnx_cnnviz.metrics import registry as metric_registry
from onnx_cnnviz.runs import labels, preprocessing
from onnx_cnnviz.runs.images import collect_images, image_keys  # noqa: F401  (the commands' one collector)
from onnx_cnnviz.runs.labels import resolve_labels  # noqa: F401
from onnx_cnnviz.runs.method_layers import unavailable_line
from onnx_cnnviz.runs.outputs import (  # noqa: F401
    abspath,
    check_outputs,
    npy_bytes,
    out_folder,
    protect_inputs,
    save_json,
    save_npy,
)
from onnx_cnnviz.runs.preprocessing import (  # noqa: F401
    ASSUMED_PRESET,
    PRESET_NAMES,
    PreprocessingChoice,
    assumed_warning,
    choose_preprocessing,
    load_model,
    preset,
)
from onnx_cnnviz.runs.reporting import Reporter

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
    not shown in --help. ``{methods}`` in the help is replaced by the option's choices, ``{params}`` by ``fill()``,
    when the help is shown (so a method or metric registered after import is listed, with its parameters)."""

    def __init__(self, *args, shared_help: str = "", aliases=(), fill=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.shared_help = shared_help
        self.aliases = tuple(aliases)
        self.fill = fill

    def get_help_record(self, ctx):
        saved_opts, saved_secondary, saved_help = self.opts, self.secondary_opts, self.help
        self.opts = [o for o in self.opts if o not in self.aliases]
        self.secondary_opts = [o for o in self.secondary_opts if o not in self.aliases]
        if self.help and "{methods}" in self.help:
            self.help = self.help.replace("{methods}", ", ".join(getattr(self.type, "choices", ())))
        if self.help and "{params}" in self.help and self.fill is not None:
            self.help = self.help.replace("{params}", self.fill())
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts, self.secondary_opts, self.help = saved_opts, saved_secondary, saved_help


def shared_option(*decls, help: str, note: str | None = None, aliases=(), fill=None, **attrs):
    """A click option with one meaning everywhere: ``help`` (the same text on every command), ``note`` (what is
    particular to this command, e.g. its default), ``aliases`` (hidden older spellings, given in ``decls`` too),
    ``fill`` (what ``{params}`` in the help becomes, computed when the help is shown)."""
    text = f"{help} {note}" if note else help
    return click.option(*decls, cls=SharedOption, shared_help=help, aliases=aliases, fill=fill, help=text, **attrs)


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


#: The largest count any option takes: int32's, what numpy's and onnxruntime's index types hold. A larger number
#: (99999999999999999999) would overflow deep inside the run; it is refused as a usage error instead.
MAX_COUNT = 2**31 - 1

#: SmoothGrad's --samples and integrated gradients' --steps: each is one more backward pass per image, and beyond
#: this many the answer no longer changes (both converge within a few hundred) while the run would take days.
MAX_PASSES = 100_000

#: A random seed is what numpy's generators take: 0 .. 2**32 - 1 (negative seeds are refused by numpy).
MAX_SEED = 2**32 - 1


def count(min: int = 1, max: int = MAX_COUNT) -> click.IntRange:
    """An integer option in [min, max] (``max``: :data:`MAX_COUNT` unless smaller): out of range is click's usage
    error naming the range, never an OverflowError inside the library."""
    return click.IntRange(min=min, max=max)


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
        if max(nums) > MAX_COUNT:
            self.fail(f"{value!r} is too large: a side is at most {MAX_COUNT} pixels.", param, ctx)
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
                               "deletion.pixels_per_step=16; repeatable. The parameters, with their defaults: "
                               "{params}.", fill=metric_registry.all_parameters)(f)
        return shared_option("--metric", "--metrics", "metrics", type=CsvChoice(metric_registry.names),
                             multiple=True, aliases=("--metrics",),
                             help="Metric(s) by name, comma-separated or repeated: {methods}.", note=note)(f)
    return decorate


def huge_number(value) -> bool:
    """Whether ``value`` (a parsed --metric-param value, lists included) holds a number of magnitude beyond
    :data:`MAX_COUNT`, which no metric parameter takes and numpy cannot index with (OverflowError)."""
    if isinstance(value, list):
        return any(huge_number(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_COUNT


def parse_metric_params(items, metrics: list) -> dict:
    """``METRIC.KEY=VALUE`` items as {metric: {key: value}}, each checked against the metric's parameters
    (:func:`onnx_cnnviz.metrics.registry.parameters`): an item not of that form, a metric not evaluated, or a key it
    does not take is a usage error (exit code 2, as an unknown --metric) naming what it takes. The values themselves
    are checked by the metric when it runs."""
    params = _parse_dotted(items, metrics, "--metric-param", "METRIC", "deletion.pixels_per_step=16", "metric",
                           "evaluated")
    for metric in metrics:
        try:
            metric_registry.parameters(metric, params[metric])
        except InputError as exc:
            raise click.BadParameter(str(exc), param_hint="--metric-param") from None
    return params


def parse_method_params(items, methods: list) -> dict:
    """``METHOD.KEY=VALUE`` items (--param) as the run's ``{"METHOD.KEY": value}`` parameters (see
    :func:`onnx_cnnviz.methods.registry.parameters`), each checked against the method's parameters: an item not of
    that form, a method not run, or a key it does not take is a usage error (exit code 2) naming what it takes."""
    params = _parse_dotted(items, methods, "--param", "METHOD", "occlusion.window=[8,8]", "method", "run")
    for method in methods:
        try:
            method_registry.parameters(method, params[method])
        except InputError as exc:
            raise click.BadParameter(str(exc), param_hint="--param") from None
    return {f"{method}.{key}": value for method, given in params.items() for key, value in given.items()}


def _parse_dotted(items, names: list, hint: str, form: str, example: str, what: str, chosen: str) -> dict:
    """``NAME.KEY=VALUE`` items as {name: {key: value}} for ``names`` (VALUE read as JSON, else as text); an item
    not of that form, a name not among ``names``, a number too large are usage errors of ``hint``."""
    params: dict = {n: {} for n in names}
    for item in items:
        name, sep, value = item.partition("=")
        owner, dot, key = name.partition(".")
        if not sep or not dot or not key:
            raise click.BadParameter(f"{item!r} is not {form}.KEY=VALUE (e.g. {example}).", param_hint=hint)
        if owner not in params:
            raise click.BadParameter(f"{item!r} names {what} {owner!r}, which is not {chosen}; {chosen}: "
                                     f"{', '.join(names)}.", param_hint=hint)
        try:
            params[owner][key] = json.loads(value)
        except (ValueError, RecursionError):
            params[owner][key] = value  # a word such as score or blur
        if huge_number(params[owner][key]):
            raise click.BadParameter(f"{item!r}: {value} is too large; a {what}'s number is at most {MAX_COUNT} "
                                     "in size.", param_hint=hint)
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
    return shared_option("--batch-size", type=count(1), default=8, show_default=True,
                         help="Images read and run together (memory grows with it).")(f)


def rows_per_run_option(aliases=()):
    """--rows-per-run: rows per onnxruntime run (``aliases``: an older spelling of this command)."""
    return shared_option("--rows-per-run", *aliases, "rows_per_run", type=count(1), default=None,
                         aliases=aliases,
                         help="Rows (images, masked or noisy copies) per onnxruntime run (default: sized by the "
                              "library to the memory available).")


def layer_option(note: str, multiple: bool = False, dest: str = "layer"):
    return shared_option("--layer", dest, metavar="NAME", default=None, multiple=multiple,
                         help="A layer (a tensor name; `cnnviz inspect` lists them).", note=note)


def tile_option(default: int):
    return shared_option("--tile", type=count(1), default=default, show_default=True,
                         help="Tile size in pixels.")


def target_option(note: str, aliases=()):
    return shared_option("--target", *aliases, "target", type=TargetType(), default=None, aliases=aliases,
                         help="The class, by index or by name (names need the class names: --labels or the model's "
                              "metadata; `cnnviz inspect MODEL --classes` lists them).", note=note)


def top_k_option(note: str, aliases=()):
    return shared_option("--top-k", *aliases, "top_k", type=count(1), default=None, aliases=aliases,
                         help="The K best classes of each image:", note=note)


def method_option(choices, note: str):
    """--method (-m; --methods is an older spelling): method names, comma-separated or repeated."""
    return shared_option("--method", "--methods", "-m", "methods", type=CsvChoice(choices), multiple=True,
                         aliases=("--methods",),
                         help="Method(s) by name, comma-separated or repeated: {methods}.", note=note)


def seed_option(note: str, default: int = 0):
    return shared_option("--seed", type=click.IntRange(0, MAX_SEED), default=default,
                         show_default=True, help="Random seed", note=note)


def steps_option(note: str, default: int):
    return shared_option("--steps", type=count(1, MAX_PASSES), default=default, show_default=True,
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
    --noise; integrated gradients' --steps; any method's --param METHOD.KEY=VALUE), for explain and report."""
    return apply(f, occlusion_options, *smoothgrad_ig_options(), param_option)


def param_option(f):
    """--param METHOD.KEY=VALUE: any registered method's own parameter (:func:`parse_method_params` reads them), so
    that a method's tunable is reachable without an option of its own; the help lists them with their defaults."""
    return shared_option("--param", "method_params", metavar="METHOD.KEY=VALUE", multiple=True,
                         help="A method parameter (VALUE read as JSON, else as text), e.g. occlusion.window=[8,8]; "
                              "repeatable; wins over an option of the same parameter (--window, ...). The "
                              "parameters, with their defaults: {params}.", fill=method_registry.all_parameters)(f)


def _default(method: str, key: str):
    """Method ``method``'s default for parameter ``key``, read from its registry entry (so from its function)."""
    return method_registry.get(method).params[key]


def _size_text(size) -> str:
    return f"{size[0]}x{size[1]}" if isinstance(size, tuple) else str(size)


def occlusion_options(f):
    """--window, --stride, --baseline, --mode: for explain and report (--baseline is also integrated gradients')."""
    return _occlusion_options(f, "Also the integrated-gradients baseline ('mean' is occlusion's only).")


def occlusion_only_options(f):
    """--window, --stride, --baseline, --mode: for ``cnnviz occlusion``, whose --baseline is occlusion's alone."""
    return _occlusion_options(f, None)


def _occlusion_options(f, baseline_note: str | None):
    return apply(
        f,
        shared_option("--window", type=SizeType(), default=_size_text(_default("occlusion", "window")),
                      show_default=True, help="Occlusion window HxW (or one number)."),
        shared_option("--stride", type=SizeType(), default=_size_text(_default("occlusion", "stride")),
                      show_default=True, help="Occlusion stride HxW (or one number)."),
        shared_option("--baseline", type=BaselineType(), default=_default("occlusion", "baseline"), show_default=True,
                      help="Fill value of the occluded window, or 'mean' (the image's channel means).",
                      note=baseline_note),
        shared_option("--mode", "occlusion_mode", type=click.Choice(["score", "probability"]),
                      default=_default("occlusion", "mode"), show_default=True,
                      help="Occlusion map: score drop, or probability with the window occluded."))


def smoothgrad_ig_options():
    return [shared_option("--samples", type=count(1, MAX_PASSES), default=_default("smoothgrad", "samples"),
                          show_default=True, help="SmoothGrad samples."),
            shared_option("--noise", type=click.FloatRange(min=0), default=_default("smoothgrad", "noise"),
                          show_default=True, help="SmoothGrad noise (fraction of the image's value range)."),
            steps_option("integrated gradients' points on the path from the baseline.", _default("ig", "steps"))]


def method_params(options: dict, methods: list) -> dict:
    """The run's method parameters from the command's options: the methods' own options (--window, --samples, ...,
    popped from ``options``) and --param items (checked against ``methods``), as one dict for
    :func:`onnx_cnnviz.methods.registry.parameters` (``METHOD.KEY`` from --param wins over a plain ``KEY``)."""
    params = {key: options.pop(name) for key, name in _OPTION_PARAMS if name in options}
    params.update(parse_method_params(options.pop("method_params", ()) or (), methods))
    return params


#: (method parameter, the click name of the option setting it) for the options above.
_OPTION_PARAMS = (("window", "window"), ("stride", "stride"), ("baseline", "baseline"), ("mode", "occlusion_mode"),
                  ("samples", "samples"), ("noise", "noise"), ("steps", "steps"))


def check_input_size(methods: list, params: dict, hw) -> None:
    """Check the parameters of ``methods`` that must fit the ``hw`` model input (occlusion's --window and --stride)
    before any work (:func:`onnx_cnnviz.methods.registry.check_input_size`; a window too large is a usage error)."""
    with usage_errors():
        method_registry.check_input_size(methods, params, hw, reporter().warn)


# ---------------------------------------------------------------------------------------------------------------------
# Tasks: classifier, detector, segmenter


def task_options(f):
    """--task, --conf, --iou, --max-det, --region-class: what a run explains on a detector or a segmenter (read them
    with :func:`task_options_from`; the library's side is :mod:`onnx_cnnviz.runs.detections`)."""
    from onnx_cnnviz.runs.detections import TASK_CHOICES

    return apply(
        f,
        shared_option("--task", type=click.Choice(list(TASK_CHOICES)), default="auto", show_default=True,
                      help="What the model does: auto recognises a known detector head (ultralytics v5/v8/v11, "
                           "PicoDet joined by onnx_cnnviz.tasks.picodet_head, heads registered with "
                           "onnx_cnnviz.tasks.register_decoder) and a DBNet text detector (one Sigmoid "
                           "probability map at the input's resolution), else loads a classifier; a segmenter (a dense "
                           "(N, C, H, W) map) is declared; text explains each text line of a one-channel probability "
                           "map (--conf: a line's least mean probability)."),
        shared_option("--conf", type=click.FloatRange(0, 1), default=0.25, show_default=True,
                      help="A detector's score threshold: detections scoring less are not explained."),
        shared_option("--iou", type=click.FloatRange(0, 1), default=0.45, show_default=True,
                      help="A detector's NMS overlap threshold (class-aware)."),
        shared_option("--max-det", "max_det", type=count(1), default=300, show_default=True,
                      help="Detections (or a segmenter's regions) explained per image at most, best first."),
        shared_option("--region-class", "region_class", type=TargetType(), default=None,
                      help="A segmenter's region: the class (index or name) summed over the pixels predicted as it "
                           "(pytorch-grad-cam's SemanticSegmentationTarget); default: every predicted class."))


def task_options_from(options: dict):
    """The :class:`onnx_cnnviz.runs.detections.TaskOptions` of a command's :func:`task_options` values."""
    from onnx_cnnviz.runs.detections import TaskOptions

    with usage_errors():
        return TaskOptions(task=options.get("task") or "auto", conf=options.get("conf", 0.25),
                           iou=options.get("iou", 0.45), max_det=options.get("max_det", 300),
                           region_class=options.get("region_class")).check()


# ---------------------------------------------------------------------------------------------------------------------
# Model options and loading


def model_options(f):
    """--device, --input, --output, --input-size, --max-nodes."""
    from onnx_cnnviz.graph.load import MAX_NODES

    return apply(
        f,
        shared_option("--device", type=click.Choice(["auto", "cpu", "cuda", "openvino"]), default="auto",
                      show_default=True,
                      help="Where onnxruntime runs the model (auto: CUDA when it works, else CPU; openvino: "
                           "onnxruntime's OpenVINO execution provider, from the onnxruntime-openvino package)."),
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


def model_and_preprocessing(ctx: click.Context, options: dict, batch_size=None, task: str = "classifier"):
    """The model and its preprocessing from a command's MODEL argument, :func:`model_options` and
    :func:`preprocessing_options` values (``options``: the command's keyword arguments holding them). ``task``:
    what the model is loaded as (:func:`onnx_cnnviz.runs.detections.load_for_task`; "auto" recognises a detector)."""
    if task == "classifier":
        m = load_model(options["model"], options["device"], options["input_name"], options["output_name"],
                       options["input_size"], batch_size, options["max_nodes"])
    else:
        from onnx_cnnviz.runs.detections import load_for_task

        with usage_errors():
            m = load_for_task(options["model"], task, device=options["device"], input_name=options["input_name"],
                              output_name=options["output_name"], input_size=options["input_size"],
                              batch_size=batch_size, max_nodes=options["max_nodes"])
    pre = resolve_preprocessing(ctx, m, options["preprocess"], options["mean"], options["std"], options["size"],
                                options["order"], options["scale"], options["input_size"],
                                model_name=Path(options["model"]).name)
    return m, pre


def resolve_preprocessing(ctx: click.Context, m, preprocess, mean, std, size, order, scale, input_size=None,
                          model_name: str = "the model"):
    """The run's preprocessing policy (:func:`onnx_cnnviz.runs.preprocessing.resolve_preprocessing`), warning once
    when the preprocessing is only assumed; a --size over the model's pixel limit is a usage error of --size."""
    with usage_errors():
        return preprocessing.resolve_preprocessing(m, preprocess, mean, std, size, order, scale, input_size,
                                                   model_name, reporter())


def channel_order(m, order: str | None, model_name: str = "the model") -> str:
    """The channel order of --order, else the model's metadata, else RGB (with a warning): for filters."""
    return preprocessing.channel_order(m, order, model_name, reporter())


def layer_name(m, layer: str | None) -> str | None:
    """The checked name of ``layer`` on ``m`` (the model's default layer when None)."""
    return m.layer(layer).name if layer else m.default_layer


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing


PREPROCESS_HELP = ("The model's preprocessing preset: imagenet (torchvision: RGB in [0, 1], ImageNet mean and std), "
                   "caffe (BGR 0..255 minus the mean), tf (RGB scaled to [-1, 1]), tflite ((RGB - 127) / 128), raw "
                   "(RGB 0..255), none (RGB in [0, 1] at the picture's size).")


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


# ---------------------------------------------------------------------------------------------------------------------
# Class names and targets


def labels_option(note: str = "Default: the model's 'cnnviz.labels' metadata."):
    return shared_option("--labels", type=click.Path(dir_okay=False), default=None,
                         help="Class names: a text file, one name per line (line i names class i - 1).", note=note)


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


# ---------------------------------------------------------------------------------------------------------------------
# The library's runs, spoken through this command


class CliReporter(Reporter):
    """A :class:`~onnx_cnnviz.runs.reporting.Reporter` that prints: information on stderr, result lines on stdout,
    warnings as ``cnnviz: warning:`` lines (once per key, per command), progress as the command's display; all
    silenced by --quiet (and stdout by --json)."""

    def info(self, message: str) -> None:
        echo(message, err=True)

    def result(self, message: str) -> None:
        echo(message)

    def warn(self, message: str, once: str | None = None) -> None:
        warn(message, once=once)

    def progress(self, total: int, label: str, unit: str = "images"):
        return progress(total, label, unit)


def reporter() -> CliReporter:
    """The reporter of the running command."""
    return CliReporter()


@contextmanager
def usage_errors():
    """Report a library :class:`InputError` about one option (it carries ``option``, the flag) as the usage error of
    that flag (exit code 2), as click reports a bad value."""
    try:
        yield
    except InputError as exc:
        option = getattr(exc, "option", None)
        if option is None:
            raise
        raise click.BadParameter(str(exc), param_hint=option) from None


def resolve_target(value, names, hint: str = "--target"):
    """The class index of a --target value (:func:`onnx_cnnviz.runs.labels.resolve_target`); a bad name is a usage
    error of ``hint``."""
    with usage_errors():
        return labels.resolve_target(value, names, hint)


def check_top_k(top_k, num_classes: int):
    """--top-k checked against the model's class count (:func:`onnx_cnnviz.runs.labels.check_top_k`); more classes
    than the model has is a usage error of --top-k, never a silently shorter answer."""
    with usage_errors():
        return labels.check_top_k(top_k, num_classes)


def remove_stale_temps(folder, names) -> list:
    """Delete the temporary files a killed run left in ``folder`` for the output file ``names`` and say how many."""
    from onnx_cnnviz.runs.outputs import remove_stale_temps as remove

    return remove(folder, names, reporter())


def exit_for_outcome(ctx: click.Context, interrupted: str | None, failed: str | None, unavailable, out) -> None:
    """How a run that wrote files ends, in every command: ``interrupted`` (what follows "cnnviz: interrupted", or
    None) exits 130, then ``failed`` (the error, or None) exits 1, then methods the model could not run
    (``unavailable``, named with the folder ``out`` of the others' results) exit 1; otherwise it returns."""
    if interrupted is not None:
        click.echo(f"cnnviz: interrupted{interrupted}", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    if failed is not None:
        click.echo(f"cnnviz: error: {failed}", err=True)
        ctx.exit(EXIT_FAILURE)
    if unavailable:
        click.echo(f"cnnviz: error: {unavailable_line(unavailable, out)}", err=True)
        ctx.exit(EXIT_FAILURE)
