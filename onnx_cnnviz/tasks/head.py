"""Which task a model's head serves, and the checks of it at load time.

A classifier's head is its (N, K) class scores (:func:`onnx_cnnviz.graph.head.find_score`). A detector's or a
segmenter's head output is taken as it is (:func:`head_output`): its targets (:mod:`onnx_cnnviz.targets`) read its
elements. A model loaded as a classifier whose output is a detector head or a dense map is refused by
:func:`check_head` with a :class:`NotAClassifierError` that says what it is and how to load it.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..errors import ModelStructureError
from .decoders import recognise

#: The tasks a model can be loaded for (``load(..., task=...)``).
TASKS = ("classifier", "detector", "segmenter")


class NotAClassifierError(ModelStructureError):
    """A model loaded as a classifier whose output is not (N, K) class scores: a detector head or a dense map."""


@dataclass(frozen=True)
class JoinedHead:
    """A known detector head spread over several outputs, which a function of :mod:`onnx_cnnviz.tasks` joins into
    the one output a decoder reads, in the words of the refusals (:func:`head_output`, :func:`check_outputs`).

    ``outputs``: what the outputs are; ``verb`` / ``verbing``: what the join does to them; ``function``: the join's
    name in :mod:`onnx_cnnviz.tasks`; ``explain``: what to explain once it is joined."""
    outputs: str
    verb: str
    verbing: str
    function: str
    explain: str


def joined_head(model: onnx.ModelProto) -> JoinedHead | None:
    """The known multi-output detector head ``model`` ends in (PicoDet's per-level scores and DFL box logits:
    :func:`~onnx_cnnviz.tasks.picodet.is_picodet`; an ultralytics segmentation head and its prototypes:
    :func:`~onnx_cnnviz.tasks.yolo_seg.is_yolo_seg`), or None."""
    from .picodet import PICODET_STRIDES, is_picodet

    if is_picodet(model, PICODET_STRIDES):
        return JoinedHead("a PicoDet head's, per-level class scores and DFL box logits", "decode", "decoding",
                          "picodet_head", "its detections (onnx_cnnviz.tasks.detect)")
    from .yolo_seg import is_yolo_seg

    if is_yolo_seg(model):
        return JoinedHead("an ultralytics segmentation head's (boxes, class scores and mask coefficients) and its "
                          "mask prototypes", "join", "joining", "yolo_seg_head",
                          "its detections (onnx_cnnviz.tasks.detect) or their masks (onnx_cnnviz.tasks.mask_target)")
    return None


def head_output(model: onnx.ModelProto, task: str, wanted: str | None = None) -> str:
    """The output a detector's or segmenter's targets are read from: ``wanted``, or the model's only output.

    Args:
        model: the normalised model.
        task: "detector" or "segmenter" (for the messages).
        wanted: a graph output's name, or None.

    Returns:
        The output's name.

    Raises:
        ModelStructureError: ``wanted`` is not an output, or the model has several outputs and none was chosen.
    """
    names = [o.name for o in model.graph.output]
    if wanted is not None:
        if wanted not in names:
            raise ModelStructureError(f"'{wanted}' is not an output of the model; its outputs: {', '.join(names)}.")
        return wanted
    if len(names) == 1:
        return names[0]
    if task == "detector":
        joined = joined_head(model)
        if joined is not None:
            raise ModelStructureError(
                f"this detector's outputs ({', '.join(names)}) are {joined.outputs}: {joined.verb} them in the graph "
                f"first, onnx_cnnviz.load(onnx_cnnviz.tasks.{joined.function}(path), task='detector') (the cnnviz "
                "commands do it by themselves).")
        raise ModelStructureError(
            f"this detector has several outputs ({', '.join(names)}); choose the head output its targets read with "
            "output=NAME, or, for a head spread over several outputs, join them into one in the graph (as "
            "onnx_cnnviz.tasks.picodet_head does) and describe it with a decoder: subclass onnx_cnnviz.tasks.Decoder "
            "(matches, __init__, candidates) and onnx_cnnviz.tasks.register_decoder it.")
    raise ModelStructureError(f"this {task} has several outputs ({', '.join(names)}); choose the head output its "
                              "targets read with output=NAME.")


def not_a_classifier(name: str, shape) -> None:
    """Raise :class:`NotAClassifierError` for a classifier whose score tensor ``name`` has ``shape`` (not (N, K))."""
    decoder = recognise(name, shape)
    if decoder is not None:
        raise NotAClassifierError(
            f"this is a detector: its output '{name}' has shape {tuple(shape)}, {decoder.description}. Load it with "
            "task='detector' (onnx_cnnviz.load(path, task='detector')) and explain its detections "
            "(onnx_cnnviz.tasks.detect, then targets=the detections).")
    raise NotAClassifierError(
        f"the output '{name}' has shape {tuple(shape)}, not (N, K): this looks like a dense prediction "
        "(segmentation, detection) rather than an image classifier. A segmenter with an (N, C, H, W) output loads "
        "with task='segmenter' (targets: onnx_cnnviz.targets.Region); a detector with task='detector'.")


def check_outputs(model: onnx.ModelProto) -> None:
    """Refuse, before the class scores are looked for, a model loaded as a classifier whose outputs are a known
    multi-output detector head (PicoDet's per-level scores and DFL box logits, an ultralytics segmentation head and
    its prototypes), which no ``output=`` makes a classifier.

    Raises:
        NotAClassifierError: the outputs are such a head's; the message says how to load it as a detector.
    """
    joined = joined_head(model) if len(model.graph.output) >= 2 else None
    if joined is None:
        return
    names = ", ".join(o.name for o in model.graph.output)
    raise NotAClassifierError(
        f"this is a detector: its outputs ({names}) are {joined.outputs}. Load it with task='detector' after "
        f"{joined.verbing} them in the graph: onnx_cnnviz.load(onnx_cnnviz.tasks.{joined.function}(path), "
        f"task='detector'), then explain {joined.explain}.")


def check_head(task: str, name: str, score) -> None:
    """Check the head output ``name`` (its :class:`TensorInfo` ``score``, at one input size) fits ``task``.

    Raises:
        NotAClassifierError: a classifier whose output is a detector head or a dense map.
        ModelStructureError: no usable shape.
    """
    shape = None if score is None else score.shape
    if task != "classifier":
        if shape is None or len(shape) < 2 or any(d is None for d in shape[1:]):
            raise ModelStructureError(f"the head output '{name}' of this {task} has no known shape at this input "
                                      "size; give the size: load(..., input_size=(H, W)).")
        return
    if shape is None or len(shape) < 2:
        raise ModelStructureError(f"the score tensor '{name}' has no (N, K) shape; is this a classifier? Choose the "
                                  "class-score output with output=NAME.")
    if any(d not in (1, None) for d in shape[2:]):
        not_a_classifier(name, shape)
