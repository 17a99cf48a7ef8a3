"""Find what an explanation needs in a classifier graph: the image input, the candidate layers (4-D feature maps on
the path from image to score) and the default layer for CAM methods; producers, consumers and reachability.

Every walk counts what a node reads through its subgraphs (an ``If`` branch reading a feature map of the main graph)
as that node's input (:func:`onnx_cnnviz.graph.subgraphs.node_inputs`): otherwise the node would seem not to consume
it, and the gradient along that path would be silently dropped.

The class-score tensor and everything else found by walking back from it are in :mod:`onnx_cnnviz.graph.head`."""
from __future__ import annotations

import copy
import difflib
from typing import NamedTuple

import onnx

from ..errors import ModelStructureError, UnknownLayerError
from .layout import NCHW, LayerView, batch_leading, tensor_layouts, token_grids
from .ops import SHAPE_KEEPING_NO_OPS
from .shapes import FLOAT_TYPES, TensorInfo
from .subgraphs import node_inputs

#: Integer element types a raw-pixel image input may have (cast to float inside the graph).
PIXEL_TYPES = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.UINT16, onnx.TensorProto.INT16,
               onnx.TensorProto.INT32}


class Layer(NamedTuple):
    """A candidate target layer: a float feature map on the path from the image to the score.

    Attributes:
        name: the tensor's name.
        shape: (None, C, h, w), as the methods see it.
        op_type: the producing node's operator.
        view: None for an NCHW tensor; for a channels-last or token tensor, how the engine sees it as (N, C, h, w)
            (:class:`onnx_cnnviz.graph.layout.LayerView`): methods get and give NCHW arrays either way.
    """
    name: str
    shape: tuple
    op_type: str
    view: LayerView | None = None


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that produces it.

    Args:
        graph: the ONNX graph.

    Returns:
        One entry per node output (empty names, for left-out optional outputs, skipped).
    """
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that use it (as a listed input or from inside one of their subgraphs).

    Args:
        graph: the ONNX graph.

    Returns:
        The consumers of every tensor used.
    """
    result: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node_inputs(node):
            result.setdefault(name, []).append(node)
    return result


def downstream(graph: onnx.GraphProto, sources) -> set[str]:
    """Every tensor computed (directly or not) from one of ``sources``, the sources included.

    Args:
        graph: the ONNX graph.
        sources: tensor names.

    Returns:
        The names.
    """
    reached = set(sources)
    for node in graph.node:  # nodes are topologically sorted (ONNX requires it)
        if any(name in reached for name in node_inputs(node)):
            reached.update(o for o in node.output if o)
    return reached


def upstream(graph: onnx.GraphProto, sinks) -> set[str]:
    """Every tensor that one of ``sinks`` depends on, the sinks included.

    Args:
        graph: the ONNX graph.
        sinks: tensor names.

    Returns:
        The names.
    """
    reached = set(sinks)
    for node in reversed(graph.node):
        if any(o in reached for o in node.output if o):
            reached.update(node_inputs(node))
    return reached


def find_image_input(model: onnx.ModelProto, wanted: str | None = None) -> onnx.ValueInfoProto:
    """The model's image input: its one 4-D float or integer-pixel input, or the one named ``wanted``.

    Args:
        model: an ONNX model.
        wanted: an input's name, or None to find the image.

    Returns:
        The input's value info.

    Raises:
        ModelStructureError: no input named ``wanted``, no 4-D image input, or several (name one).
    """
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]
    if wanted is not None:
        for v in inputs:
            if v.name == wanted:
                return v
        raise ModelStructureError(
            f"the model has no input named '{wanted}'; its inputs are: {', '.join(v.name for v in inputs)}.")
    images = [v for v in inputs if len(v.type.tensor_type.shape.dim) == 4
              and v.type.tensor_type.elem_type in FLOAT_TYPES | PIXEL_TYPES]
    if len(images) == 1:
        return images[0]
    if not images:
        described = ", ".join(f"{v.name} {_describe(v)}" for v in inputs) or "none"
        raise ModelStructureError(
            f"the model has no 4-D image input (N, C, H, W) or (N, H, W, C), float or integer pixels; its inputs are: "
            f"{described}. This tool explains image classifiers that take an image tensor.")
    raise ModelStructureError(
        f"the model has several 4-D image inputs ({', '.join(v.name for v in images)}); choose one with input=NAME "
        "(--input NAME on the command line).")


def without_other_inputs(model: onnx.ModelProto, image: str, score: str) -> onnx.ModelProto:
    """A copy of ``model`` whose only graph input is ``image``.

    Only the image gets a value when the model runs, and onnxruntime refuses to run a graph with an input left
    unfed; so an input the score needs (a second image, a mask, a temperature) makes the model unsupported, naming
    it, and an input the score does not need is removed with everything computed from it (outputs included).

    Args:
        model: an ONNX model.
        image: the image input's name.
        score: the score tensor's name.

    Returns:
        The model (``model`` itself when it has no other input).

    Raises:
        ModelStructureError: the score depends on another input.
    """
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    others = [v for v in graph.input if v.name != image and v.name not in inits]
    if not others:
        return model
    needed = upstream(graph, [score])
    used = [v for v in others if v.name in needed]
    if used:
        described = ", ".join(f"'{v.name}' {_describe(v)}" for v in used)
        raise ModelStructureError(
            f"besides the image input '{image}', the score '{score}' depends on the input{'s' if len(used) > 1 else ''}"
            f" {described}, which would need a value too: models whose score depends on more than the image are not "
            "supported. Re-export the model with that input fixed to a constant.")
    model = copy.deepcopy(model)
    graph = model.graph
    drop = downstream(graph, [v.name for v in others])
    keep_nodes = [n for n in graph.node if not any(o in drop for o in n.output if o)]
    keep_inputs = [v for v in graph.input if v.name not in drop]
    keep_outputs = [v for v in graph.output if v.name not in drop]
    for field, kept in ((graph.node, keep_nodes), (graph.input, keep_inputs), (graph.output, keep_outputs)):
        kept = [copy.deepcopy(item) for item in kept]
        del field[:]
        field.extend(kept)
    return model


def _describe(value: onnx.ValueInfoProto) -> str:
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim]
    elem = value.type.tensor_type.elem_type
    try:
        kind = onnx.TensorProto.DataType.Name(elem).lower()
    except ValueError:  # a corrupt or future type number
        kind = f"type#{elem}"
    return f"{kind}{dims}"


def candidate_layers(model: onnx.ModelProto, image: str, score: str, info: dict[str, TensorInfo]) -> list[Layer]:
    """Every float feature map on a path from the image to the score, in graph order.

    4-D tensors laid out in the image's axes (NCHW, or channels-last and other permutations, with a
    :class:`~onnx_cnnviz.graph.layout.LayerView`), and token tensors (N, p + h*w, C) of vision transformers (with a
    token view). Tensors whose axes are not the image's (attention heads and windows) are not layers.

    Args:
        model: an ONNX model.
        image: the image input's name.
        score: the score tensor's name.
        info: tensor name -> its static type and shape.

    Returns:
        The layers.
    """
    graph = model.graph
    data = downstream(graph, [image])
    on_path = data & upstream(graph, [score])
    layout, factors = tensor_layouts(model, image, info, data)
    tokens = token_grids(model, layout, factors, info, data, batch_leading(model, image, info))
    layers = []
    for node in graph.node:
        for out in node.output:
            ti = info.get(out)
            if out not in on_path or ti is None or not ti.is_float:
                continue
            if out in tokens:
                view = tokens[out]
            elif out in layout and layout[out][0] == 0 and ti.shape is not None and len(ti.shape) == 4:
                view = None if layout[out] == NCHW else LayerView(native=tuple(ti.shape), perm=layout[out])
            else:
                continue
            layers.append(Layer(out, view.nchw_shape() if view else tuple(ti.shape), node.op_type, view))
    return layers


def default_layer(layers: list[Layer], model: onnx.ModelProto | None = None, image: str | None = None) -> str | None:
    """The last spatial feature map (h * w > 1) before the network collapses space (global pooling / flatten).

    This is what torchcam and OpenVINO XAI choose, and the layer pytorch-grad-cam's examples use (resnet
    ``layer4[-1]``, vgg ``features[-1]``, densenet ``features[-1]``). A vision transformer that classifies its class
    token is different: after the last attention only the class token reaches the score, so the patch tokens of the
    last layers get no gradient; pytorch-grad-cam's ViT example takes ``blocks[-1].norm1``, the LayerNorm feeding the
    last attention, and so does this (given ``model`` and ``image``).

    Args:
        layers: the candidate layers (:func:`candidate_layers`).
        model: the ONNX model, to recognise a class-token transformer.
        image: the image input's name.

    Returns:
        The layer's name, or None when there is no candidate.
    """
    spatial = [layer for layer in layers if (layer.shape[2] or 0) * (layer.shape[3] or 0) > 1]
    if not spatial:
        return None
    last = spatial[-1].view
    if model is not None and last is not None and last.grid is not None and last.prefix > 0:
        chosen = _before_last_attention(model, image, spatial)
        if chosen is not None:
            return chosen
    i = len(spatial) - 1
    # An adaptive pool to the size it already has (VGG's 7x7 -> 7x7 AveragePool) changes nothing: name the map
    # before it, the module users know (features[-1]).
    while i > 0 and spatial[i].op_type in SHAPE_KEEPING_NO_OPS and spatial[i].shape == spatial[i - 1].shape:
        i -= 1
    return spatial[i].name


def _before_last_attention(model: onnx.ModelProto, image: str, spatial: list[Layer]) -> str | None:
    """The token layer feeding the last token-mixing product (a MatMul or Einsum of two tensors computed from the
    image: attention), preferring a LayerNormalization's output; None when there is no such product."""
    graph = model.graph
    data = downstream(graph, [image])
    mixing = [n for n in graph.node if n.op_type in ("MatMul", "Einsum")
              and sum(i in data for i in n.input[:2]) == 2]
    if not mixing:
        return None
    before = upstream(graph, [i for i in mixing[-1].input if i])
    tokens = [layer for layer in spatial if layer.view is not None and layer.view.grid is not None
              and layer.name in before]
    normed = [layer for layer in tokens if layer.op_type == "LayerNormalization"]
    pool = normed or tokens
    return pool[-1].name if pool else None


def resolve_layer(layers: list[Layer], name: str) -> Layer:
    """The layer named ``name``.

    Args:
        layers: the candidate layers.
        name: a layer's tensor name.

    Returns:
        The layer.

    Raises:
        UnknownLayerError: no such layer (the message suggests close names).
    """
    for layer in layers:
        if layer.name == name:
            return layer
    names = [layer.name for layer in layers]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownLayerError(
        f"'{name}' is not a 4-D feature map on the path from the image to the score.{hint} "
        "List the candidates with `cnnviz inspect MODEL` or Model.layers.")
