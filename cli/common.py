"""What every command shares: the global flags, model and preprocessing options, image lists, output and progress.

Nothing here computes an explanation; it turns command-line text into library arguments and library results into
lines, JSON and files.
"""
from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click

from onnx_cnnviz import jsonio
from onnx_cnnviz.errors import InputError, ModelLoadError
from onnx_cnnviz.files import check_regular
from onnx_cnnviz.image import IMAGE_SUFFIXES, MAX_PIXELS

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
    """--device, --input, --output, --input-size, --max-nodes."""
    from onnx_cnnviz.graph.load import MAX_NODES

    options = [
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="Where onnxruntime runs the model (auto: CUDA when it works, else CPU)."),
        click.option("--input", "input_name", metavar="NAME", help="The image input, when the model has several."),
        click.option("--output", "output_name", metavar="NAME",
                     help="The class-score output, when the model has several."),
        click.option("--input-size", type=SizeType(), default=None,
                     help="Image size for models that accept any size (default: metadata, else 224x224)."),
        click.option("--max-nodes", type=LimitType(), default=MAX_NODES, show_default=True,
                     help="Refuse models with more graph nodes than this, counted before their weights are read "
                          "('none': no limit)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


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


def _set_pixel_limit(ctx, param, value):
    from onnx_cnnviz.image.reading import pixel_limit

    # For the whole command: every picture read (by the CLI or inside the library) uses this limit; the previous
    # limit comes back when the command's context closes.
    ctx.with_resource(pixel_limit(value))
    return value


def image_options(f):
    """--max-pixels, for the commands that read pictures."""
    return click.option("--max-pixels", type=LimitType(), default=MAX_PIXELS, show_default=True, expose_value=False,
                        callback=_set_pixel_limit,
                        help="Refuse pictures with more pixels than this, from their header before decoding ('none': "
                             "no limit).")(f)


def recursive_option(f):
    """-r / --recursive, for every command that takes folders of images."""
    return click.option("--recursive", "-r", is_flag=True, help="Also take images from subfolders.")(f)


# The pictures this tool writes (NAME.METHOD.RANK.png, NAME.activations.png, NAME.boxes.png): never taken as inputs
# from folders and globs inside the output folder.
_OURS = re.compile(r"\.([a-z-]+\.(top\d+|c\d+)|activations|boxes)\.png$")


def collect_images(specs, exclude: Path | None = None, recursive: bool = False) -> list[Path]:
    """Files, folders (their image files, sorted) and globs -> a list of image paths without duplicates.

    Folders (and folders a glob matches) give their regular files whose suffix is one of
    :data:`onnx_cnnviz.image.IMAGE_SUFFIXES` (hidden files left out; subfolders too with ``recursive``). Files named
    explicitly are always taken (reading them says whether they are pictures).

    ``exclude``: the output folder: pictures this tool wrote there (NAME.METHOD.RANK.png, NAME.activations.png,
    NAME.boxes.png) are not taken from folders and globs, so that a second run over a folder holding its own results
    does not explain the results.
    """
    found: list[Path] = []
    seen = set()
    excluded = exclude.resolve() if exclude is not None else None

    def add(path: Path, expanded: bool = True):
        key = path.resolve()
        if expanded and excluded is not None and (excluded in key.parents) and _OURS.search(key.name):
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
