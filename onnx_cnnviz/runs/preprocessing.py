"""The one preprocessing policy of every run: the model's metadata, else a preset named by the caller, else raw
pixels for a model that takes integer pixels, else the assumed ImageNet preset (with a warning); then the fields the
caller gives. The presets are the library's (:data:`onnx_cnnviz.image.PRESETS`). :func:`open_run` is what explain and
evaluate runs start from: the output folder, the images, the model and this policy."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError
from ..files import check_regular
from ..image import PRESETS, Preprocessing
from .images import collect_images
from .outputs import out_folder

#: The preset names a caller may give (``cnnviz --preprocess``): the library's presets.
PRESET_NAMES = tuple(PRESETS)
#: What is used when the model's metadata holds none and nothing is given (with a warning).
ASSUMED_PRESET = "imagenet"


def preset(name: str) -> Preprocessing:
    """The :class:`~onnx_cnnviz.image.Preprocessing` of a preset name (:data:`onnx_cnnviz.image.PRESETS`)."""
    return PRESETS[name]


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
    from ..image import get_preprocessing
    from ..report import fit_preprocessing

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
    check_size(m, size, "--size")
    check_size(m, input_size, "--input-size")
    pre = get_preprocessing(base, size=size or input_size, mean=mean, std=std, order=order.upper() if order else None,
                            scale=scale[0] if scale else None)
    return PreprocessingChoice(fit_preprocessing(m, pre), source, name, tuple(given))


def check_size(m, size, option: str) -> None:
    """Refuse a ``size`` (H, W) the pictures would be resized to whose H*W is over the model's ``max_pixels``
    (:class:`InputError` about ``option``), before any picture is read, resized or allocated at that size (a
    30000x30000 --size on a dynamic-size model passed 5 GB before the model's own check, after the resize)."""
    from .labels import option_error

    limit = getattr(m, "max_pixels", None)
    if not size or limit is None:
        return
    h, w = (int(v) for v in size)
    if h * w > limit:
        raise option_error(f"{option} {h}x{w} is {h * w:,} pixels, more than the model's max_pixels={limit:,}; give "
                           "a smaller size: every feature map scales with it (the limit is set when the model is "
                           "loaded: onnx_cnnviz.load(..., max_pixels=N)).", option)


def assumed_warning(model_name: str) -> str:
    """The warning of a model run on the assumed preset: which preset, and the flags to set."""
    p = preset(ASSUMED_PRESET)
    scale = "pixels / 255" if abs(p.scale - 1 / 255) < 1e-12 else f"pixels x {p.scale:g}"
    numbers = f"{p.order}, {scale}, mean {','.join(f'{v:g}' for v in p.mean)}, std " \
              f"{','.join(f'{v:g}' for v in p.std)}"
    return (f"{model_name} holds no preprocessing metadata and no preprocessing flag was given: assuming the "
            f"{ASSUMED_PRESET} preset ({numbers}). A model trained otherwise predicts wrong classes: set "
            "--preprocess caffe|tf|tflite|raw|none (Caffe models such as SqueezeNet need caffe) or "
            "--mean/--std/--order/--scale (`cnnviz convert` records them in the model). `cnnviz inspect MODEL "
            "--check-preprocessing FOLDER` scores the presets on your pictures and says which one the weights fit.")


def resolve_preprocessing(m, preprocess=None, mean=None, std=None, size=None, order=None, scale=None,
                          input_size=None, model_name: str = "the model", reporter=None) -> Preprocessing:
    """:func:`choose_preprocessing`, warning once (through ``reporter``) when the preprocessing is only assumed."""
    choice = choose_preprocessing(m, preprocess, mean, std, size, order, scale, input_size)
    if choice.source == "assumed" and reporter is not None:
        reporter.warn(assumed_warning(model_name), once="assumed-preprocessing")
    return choice.preprocessing


def channel_order(m, order: str | None, model_name: str = "the model", reporter=None) -> str:
    """The channel order ``order``, else the model's metadata, else RGB (with a warning through ``reporter``): for
    what reads no picture (the filters)."""
    if order:
        return order.upper()
    metadata = Preprocessing.from_metadata(m.metadata)
    if metadata is not None:
        return metadata.order
    if reporter is not None:
        reporter.warn(f"{model_name} holds no preprocessing metadata and --order is not given: assuming RGB channel "
                      "order for the filter colours; pass --order BGR for a model that takes BGR input (Caffe models "
                      "such as SqueezeNet).", once="assumed-order")
    return "RGB"


#: Stands for "the library's default" where None means "no limit".
LIBRARY_DEFAULT = object()


def load_model(path, device="auto", input_name=None, output_name=None, input_size=None, batch_size=None,
               max_nodes=LIBRARY_DEFAULT):
    """The model at ``path``; ``max_nodes``: a node limit (None: no limit; not given: the library's default). A path
    that is not a regular file (a FIFO that would block, a device) is refused before it is opened
    (:class:`ModelLoadError`); a folder or a missing file gets the library's message."""
    import onnx_cnnviz as cv

    if not Path(path).is_dir():
        check_regular(path, "model file", ModelLoadError)
    limit = {} if max_nodes is LIBRARY_DEFAULT else {"max_nodes": max_nodes}
    return cv.load(path, device=device, input=input_name, output=output_name, input_size=input_size,
                   batch_size=batch_size, **limit)


def open_run(options: dict, reporter=None) -> tuple:
    """What every run of images into files starts from, in this order: the output folder, the images (collected
    before the model is loaded, so that a typo in a path fails fast, and with the output folder left out), the model,
    and its preprocessing (:func:`resolve_preprocessing`, which warns through ``reporter`` when it is only assumed).

    Args:
        options: the run's options by name: out_dir, images, recursive, model, device, input_name, output_name,
            input_size, rows_per_run, max_nodes, preprocess, mean, std, size, order, scale.
        reporter: the run's :class:`~onnx_cnnviz.runs.reporting.Reporter` (None: warnings).

    Returns:
        ``(out, paths, m, pre)``: the output folder, the image paths, the loaded model and its preprocessing.
    """
    out = out_folder(options["out_dir"])
    paths = collect_images(options["images"], exclude=out, recursive=options["recursive"])
    m = load_model(options["model"], options["device"], options["input_name"], options["output_name"],
                   options["input_size"], options["rows_per_run"], options["max_nodes"])
    pre = resolve_preprocessing(m, options["preprocess"], options["mean"], options["std"], options["size"],
                                options["order"], options["scale"], options["input_size"],
                                model_name=Path(options["model"]).name, reporter=reporter)
    return out, paths, m, pre
