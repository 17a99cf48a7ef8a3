"""onnx_cnnviz: explain CNN image classifiers from any framework through ONNX.

    import onnx_cnnviz as cv
    m = cv.load("model.onnx")
    maps = cv.grad_cam(m, x)

Gradients come from a backward graph of standard ONNX operators appended to the model, run by onnxruntime.
"""
from .errors import (CnnvizError, InputError, MissingDependencyError, ModelLoadError, ModelStructureError,
                     NumericalError, RuntimeFailure, UnknownLayerError, UnsupportedOpError)
from .graph.load import MAX_NODES, MAX_PIXELS
from .graph.structure import Layer
from .methods import registry
from .methods import (cam, eigen_cam, grad_cam, grad_cam_pp, gradients, guided_grad_cam, hires_cam, input_x_gradient,
                      integrated_gradients, layer_cam, occlusion, saliency, score_cam, smoothgrad, top_k, xgrad_cam)
from .methods.feature_space import embeddings, mosaic, nearest_neighbours, project_2d, scatter_plot
from .methods.features import activations, filters, mid_layer, top_patches
from .methods.localise import iou, localise
from .methods.optimise import class_model, invert, neuron_model
from .methods.receptive_field import ReceptiveField, receptive_field
from .methods.score_map import score_map
from . import metrics, tasks
from .targets import ClassScore, OutputElement, OutputWeights, Region, Target
from .tasks import Detection
from .model import DEFAULT_MAX_SESSIONS, Model, RunResult
from .preprocessing_check import check_preprocessing

__version__ = "0.1.0"


def load(source, device: str = "auto", input: str | None = None, output: str | None = None,
         batch_size: int | None = None, threads: int | None = None, input_size: tuple | None = None,
         max_nodes: int | None = MAX_NODES, max_sessions: int = DEFAULT_MAX_SESSIONS,
         max_pixels: int | None = MAX_PIXELS, task: str = "classifier", labels=None) -> Model:
    """Load an ONNX classifier, detector or segmenter (a path or an ``onnx.ModelProto``) for explanation.

    ``device``: "auto" | "cpu" | "cuda". ``input``/``output``: the image input and class-score output when the model
    has several. ``input_size``: (H, W) for models that accept any size (the layer list is computed at that size).
    ``max_nodes``: refuse graphs with more nodes than this (subgraphs included; ``None``: no limit).
    ``max_sessions``: onnxruntime sessions (and other cached graphs) the model keeps, least recently used dropped.
    ``max_pixels``: refuse an image larger than this many pixels (H*W) — the model's declared input, ``input_size``
    or an array given to a method — before any memory is spent on it (default 4096*4096; ``None``: no limit).
    Tensors declaring more than 4 GiB, an opset newer than the installed onnx/onnxruntime, a graph out of
    topological order with a cycle: :class:`ModelLoadError`.
    ``task``: "classifier" (the (N, K) class scores, found and checked), "detector" (the head output read by a
    decoder of :mod:`onnx_cnnviz.tasks`; explain :func:`onnx_cnnviz.tasks.detect`'s detections) or "segmenter" (a
    dense (N, C, H, W) output; explain :class:`Region` targets). ``labels``: the class names, so that targets can
    name classes.
    """
    return Model(source, device=device, input=input, output=output, batch_size=batch_size, threads=threads,
                 input_size=input_size, max_nodes=max_nodes, max_sessions=max_sessions, max_pixels=max_pixels,
                 task=task, labels=labels)


def __getattr__(name: str):
    """``cv.<method>``: the function of a registered method that has no name of its own here, by its registry name
    (a dash written as an underscore), so that a method registered after import (``registry.register``) is
    ``cv.<its name>`` too. The built-in ones keep their documented names above (``cv.grad_cam`` for ``gradcam``)."""
    for meth in registry.METHODS.values():
        if meth.name.replace("-", "_") == name:
            return meth.func
    raise AttributeError(f"module 'onnx_cnnviz' has no attribute {name!r}")


def __dir__() -> list:
    return sorted({*globals(), *(meth.name.replace("-", "_") for meth in registry.METHODS.values())})


__all__ = [
    # loading and the engine
    "load", "Model", "RunResult", "Layer", "receptive_field", "ReceptiveField", "score_map",
    # which preprocessing the weights fit (scored on pictures)
    "check_preprocessing",
    # attribution maps
    "gradients", "saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "occlusion",
    "cam", "grad_cam", "grad_cam_pp", "hires_cam", "xgrad_cam", "layer_cam", "eigen_cam", "score_cam",
    "guided_grad_cam", "top_k", "registry",
    # which map to trust: faithfulness metrics (onnx_cnnviz.metrics)
    "metrics",
    # what to explain: targets, and tasks beyond classification (onnx_cnnviz.tasks)
    "Target", "ClassScore", "OutputElement", "OutputWeights", "Region", "Detection", "tasks",
    # looking inside the network
    "filters", "activations", "top_patches", "mid_layer", "embeddings", "nearest_neighbours", "project_2d", "mosaic",
    "scatter_plot", "localise", "iou", "class_model", "neuron_model", "invert",
    # errors
    "CnnvizError", "InputError", "MissingDependencyError", "ModelLoadError", "ModelStructureError", "NumericalError",
    "RuntimeFailure", "UnknownLayerError", "UnsupportedOpError",
]
