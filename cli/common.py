"""What every command shares: the global flags, model and preprocessing options, image lists, output and progress.

Nothing here computes an explanation; it turns command-line text into library arguments and library results into
lines, JSON and files.
"""
from __future__ import annotations

import glob
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from onnx_cnnviz import jsonio
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.image import IMAGE_SUFFIXES

# Exit codes besides 0 and click's 2 for bad usage (see main.py's docstring).
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


# ---------------------------------------------------------------------------------------------------------------------
# Global flags: accepted before the command (cnnviz --json inspect M) and after it (cnnviz inspect M --json).


@dataclass
class Settings:
    quiet: bool = False
    json: bool = False
    debug: bool = False


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


def global_flags(f):
    """--quiet, --json, --debug on a command (they also work before the command name)."""
    for name, help_text in reversed([
            ("quiet", "No progress bars or messages; only errors (and --json output)."),
            ("json", "Print one JSON document on stdout instead of text."),
            ("debug", "Show the full traceback of an error.")]):
        f = click.option(f"--{name}", is_flag=True, expose_value=False, is_eager=True,
                         callback=_set_flag(name), help=help_text)(f)
    return f


def echo(message: str = "", err: bool = False) -> None:
    """A human message: on stdout (stderr with ``err``), silenced by --quiet and, on stdout, by --json."""
    s = settings()
    if s.quiet or (s.json and not err):
        return
    click.echo(message, err=err)


def warn(message: str) -> None:
    """A warning on stderr (kept under --json, silenced by --quiet)."""
    if not settings().quiet:
        click.echo(f"cnnviz: warning: {message}", err=True)


def emit_json(document) -> None:
    """``document`` as indented JSON on stdout (the --json output of a command)."""
    click.echo(jsonio.dumps(document))


def finish(document, message: str) -> None:
    """A command's result: ``document`` as JSON under --json, else the human ``message`` (lines may follow)."""
    if settings().json:
        emit_json(document)
    else:
        echo(message)


def progress(length: int, label: str):
    """A click progress bar on stderr, hidden under --quiet / --json."""
    s = settings()
    return click.progressbar(length=length, label=label, file=sys.stderr, hidden=s.quiet or s.json,
                             show_pos=True)


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


class MethodListOption(click.Option):
    """An option whose help text names the registered methods when the help is shown (``{methods}`` in the help
    string), so a method added to the registry after import is listed too."""

    def get_help_record(self, ctx):
        from onnx_cnnviz.methods import registry

        saved = self.help
        self.help = saved.format(methods=", ".join(registry.names()))
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = saved


def flatten_lists(values) -> list:
    out = []
    for v in values or ():
        for name in (v if isinstance(v, list) else [v]):
            if name not in out:
                out.append(name)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Model options and loading


def model_options(f):
    """--device, --input, --output, --input-size."""
    options = [
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="Where onnxruntime runs the model (auto: CUDA when it works, else CPU)."),
        click.option("--input", "input_name", metavar="NAME", help="The image input, when the model has several."),
        click.option("--output", "output_name", metavar="NAME",
                     help="The class-score output, when the model has several."),
        click.option("--input-size", type=SizeType(), default=None,
                     help="Image size for models that accept any size (default: metadata, else 224x224)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def load_model(path, device="auto", input_name=None, output_name=None, input_size=None, batch_size=None):
    import onnx_cnnviz as cv

    return cv.load(path, device=device, input=input_name, output=output_name, input_size=input_size,
                   batch_size=batch_size)


def model_and_preprocessing(ctx: click.Context, options: dict, batch_size=None):
    """The model and its preprocessing from a command's MODEL argument, :func:`model_options` and
    :func:`preprocessing_options` values (``options``: the command's keyword arguments holding them)."""
    m = load_model(options["model"], options["device"], options["input_name"], options["output_name"],
                   options["input_size"], batch_size)
    pre = resolve_preprocessing(ctx, m, options["preprocess"], options["mean"], options["std"], options["size"],
                                options["order"], options["scale"], options["input_size"])
    return m, pre


def layer_name(m, layer: str | None) -> str | None:
    """The checked name of ``layer`` on ``m`` (the model's default layer when None)."""
    return m.layer(layer).name if layer else m.default_layer


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing and labels


def preprocessing_options(f):
    options = [
        click.option("--preprocess", type=click.Choice(["imagenet", "caffe", "none"]), default="imagenet",
                     show_default=True,
                     help="Preprocessing preset, used when the model's metadata holds none (given explicitly, it "
                          "wins over the metadata)."),
        click.option("--mean", type=FloatsType(), help="Per-channel mean, in the model's channel order and scale."),
        click.option("--std", type=FloatsType(), help="Per-channel std."),
        click.option("--size", type=SizeType(), help="Resize images to HxW (a model with a fixed size uses its own)."),
        click.option("--order", type=click.Choice(["RGB", "BGR"], case_sensitive=False), help="Channel order."),
        click.option("--scale", type=FloatsType(count=(1,)), help="Pixel scale before the mean, e.g. 1/255 or 1."),
        click.option("--labels", type=click.Path(dir_okay=False), default=None,
                     help="Class names, one per line (default: the model's 'cnnviz.labels' metadata)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def resolve_preprocessing(ctx: click.Context, m, preprocess, mean, std, size, order, scale, input_size=None):
    """The model's metadata preprocessing, unless --preprocess was given explicitly; then the field overrides
    (--input-size stands for --size when that is not given); a model with a fixed input size always gets its own
    size."""
    from onnx_cnnviz.image import Preprocessing, get_preprocessing
    from onnx_cnnviz.report import fit_preprocessing

    explicit = ctx.get_parameter_source("preprocess") not in (click.core.ParameterSource.DEFAULT, None)
    base = None if explicit else Preprocessing.from_metadata(m.metadata)
    if base is None:
        base = preprocess
    scale = scale[0] if scale else None
    size = size or input_size
    pre = get_preprocessing(base, size=size, mean=mean, std=std, order=order.upper() if order else None, scale=scale)
    return fit_preprocessing(m, pre)


def resolve_labels(m, labels_path):
    from onnx_cnnviz import report

    if labels_path:
        return report.check_labels(report.read_labels(labels_path), m.num_classes, f"labels file '{labels_path}'")
    return report.check_labels(report.labels_from_metadata(m.metadata), m.num_classes, "the model's label metadata")


# ---------------------------------------------------------------------------------------------------------------------
# Images


def collect_images(specs, exclude: Path | None = None, recursive: bool = False) -> list[Path]:
    """Files, folders (their image files, sorted) and globs -> a list of image paths without duplicates.

    ``exclude``: the output folder: pictures this tool wrote there (NAME.METHOD.RANK.png) are not taken from folders
    and globs, so that a second run over a folder holding its own results does not explain the results. Files named
    explicitly are always taken.
    """
    import re

    found: list[Path] = []
    seen = set()
    excluded = exclude.resolve() if exclude is not None else None
    ours = re.compile(r"\.[a-z-]+\.(top\d+|c\d+)\.png$")

    def add(path: Path, expanded: bool = True):
        key = path.resolve()
        if expanded and excluded is not None and (excluded in key.parents) and ours.search(key.name):
            return
        if key not in seen:
            seen.add(key)
            found.append(path)

    def add_folder(folder: Path):
        pattern = "**/*" if recursive else "*"
        for p in sorted(folder.glob(pattern)):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
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
                elif p.suffix.lower() in IMAGE_SUFFIXES:
                    add(p)
        else:
            raise InputError(f"image '{spec}' does not exist.")
    if not found:
        raise InputError(f"no image files found in {', '.join(map(str, specs))} "
                         f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
    return found


def image_keys(paths: list[Path]) -> list[str]:
    """A short, unique file-name stem per image: the stem, or the path relative to the common folder when stems
    collide (``a__cat`` and ``b__cat``)."""
    import os

    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    keys = []
    for r, stem in zip(resolved, stems):
        if stems.count(stem) == 1:
            keys.append(stem)
            continue
        rel = r.relative_to(root)
        keys.append("__".join(rel.parent.parts + (rel.stem,)))
    # Same stem in the same folder (cat.png, cat.jpg): keep the suffix too.
    counts = {k: keys.count(k) for k in keys}
    return [k + "_" + p.suffix.lstrip(".") if counts[k] > 1 else k for k, p in zip(keys, paths)]


# ---------------------------------------------------------------------------------------------------------------------
# Output files


def check_free(paths, overwrite: bool) -> None:
    """Fail before any work when an output exists (and --overwrite was not given)."""
    if overwrite:
        return
    for p in paths:
        if Path(p).exists():
            raise InputError(f"{p} already exists; pass --overwrite to replace it.")


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
