"""The backward pass of a gradient graph as a model of its own, fed the forward tensors it reads.

:func:`~onnx_cnnviz.graph.autodiff.append_gradients` appends the backward nodes after the forward ones, and they
read forward tensors (a ReLU's output for its mask, a convolution's input for nothing but its shape, the score for
the seed's shape). Cut after the forward nodes, the backward nodes form a graph whose inputs are those tensors and
the seed. Run the forward part once per image and the backward part once per target row, each row fed its image's
forward tensors: explaining D targets of one image (the D detections of a detector, the top k classes of a
classifier) costs one forward pass and D backward passes instead of D of each. Every row's numbers are those of the
whole graph run on that row: the backward pass reads the same forward values either way.

A forward tensor can be fed this way when each row of it belongs to one image (the batch on axis 0, sample for
sample: :func:`~onnx_cnnviz.graph.layout.batch_leading`) or when its value does not depend on the image at all
(shape arithmetic on the weights). A backward pass that reads anything else (an integer tensor computed from the
batch size, the indices a TopK chose) is not split: :func:`split_backward` returns None and the caller runs the
whole graph on repeated images, which is always right.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import held
from .layout import batch_leading
from .loading.batch import BATCH_DIM
from .shapes import annotated_dims
from .structure import downstream
from .subgraphs import has_subgraphs, node_inputs

__all__ = ["BackwardPart", "split_backward", "ROWS_INPUT", "IMAGES_PREFIX"]

#: The backward part's input saying, for each target row, which image of the forward run it explains.
ROWS_INPUT = "cnnviz/rows"
#: A fed forward tensor ``T`` enters the backward part as ``IMAGES_PREFIX + T``, one row per image of the forward run.
IMAGES_PREFIX = "cnnviz/images/"

#: Ops the backward part never computes again from fed tensors: the cost of a forward pass is what it saves.
_RECOMPUTE_NEVER = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MatMul", "MatMulInteger",
                              "QLinearMatMul", "Gemm", "Einsum", "Attention", "LSTM", "GRU", "RNN"})


@dataclass(frozen=True)
class BackwardPart:
    """A gradient graph cut in two. ``backward``: the backward nodes as a model whose inputs are ``fed`` (forward
    tensors with the batch first, sample for sample, named ``IMAGES_PREFIX + T``: one row per image of the forward
    run, gathered inside by :data:`ROWS_INPUT`, each target row's image), ``static`` (forward tensors
    the image does not change: feed any run's value) and the seed. ``forward``: the forward nodes (as the gradient
    graph left them: a MaxPool there also outputs its indices), outputs unchanged; expose ``fed`` and ``static``."""
    backward: onnx.ModelProto
    forward: onnx.ModelProto
    fed: tuple
    static: tuple


def split_backward(model: onnx.ModelProto, forward_nodes: int, image: str, info: dict, gradients: list[str],
                   constants: dict | None = None) -> BackwardPart | None:
    """The gradient graph ``model`` cut after its first ``forward_nodes`` nodes, the backward nodes that compute
    ``gradients`` as a model of their own.

    Args:
        model: a gradient graph (``append_gradients(...).model``), its forward nodes first; a private copy, consumed:
            it becomes the result's ``forward`` (its gradient outputs and seed input removed).
        forward_nodes: how many nodes the forward graph had.
        image: the image input.
        info: tensor name -> :class:`~onnx_cnnviz.graph.shapes.TensorInfo` of the forward graph.
        gradients: the gradient outputs to compute (``cnnviz/grad/<T>``).
        constants: forward tensors whose value does not depend on the batch (shape arithmetic): initializers here.

    Returns:
        The two parts, or None where the backward nodes read a forward tensor that is neither batch-first per sample
        nor the same for every image (the caller then runs the whole graph; ``model`` is left as it was).
    """
    graph = model.graph
    backward = list(graph.node[forward_nodes:])
    producer = {o: node for node in backward for o in node.output if o}
    keep, todo, seen = [], list(gradients), set()
    while todo:  # the backward nodes the gradients need, no others (the gradient graph may hold more outputs)
        name = todo.pop()
        node = producer.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        keep.append(node)
        todo.extend(node_inputs(node))
    order = {id(node): i for i, node in enumerate(backward)}
    keep.sort(key=lambda node: order[id(node)])
    made = {o for node in keep for o in node.output if o}
    initializers = {t.name: t for t in graph.initializer}
    inputs = {v.name: v for v in graph.input}
    constants = constants or {}
    read = [n for n in dict.fromkeys(name for node in keep for name in node_inputs(node)) if n not in made]
    from_image = downstream(graph, {image})
    producer = {o: node for node in graph.node[:forward_nodes] for o in node.output if o}
    leading = None
    fed, static, folded, cone = [], [], [], []
    done: set[str] = set()
    todo = list(reversed(read))
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        if name in initializers or (name in inputs and name != image):
            continue  # weights, and the seed: declared below as they are
        if name in constants:
            folded.append(numpy_helper.from_array(np.asarray(constants[name]), name))
            continue
        if name not in from_image:
            static.append(name)
            continue
        if leading is None:
            leading = batch_leading(model, image, info)
        if name in leading:
            fed.append(name)
            continue
        # Computed from the image but not per sample (shape arithmetic on the batch, a MaxPool's flat indices):
        # computed again here from the tensors it comes from, at the rows' batch, where that is cheap.
        node = producer.get(name)
        if node is None or node.op_type in _RECOMPUTE_NEVER or has_subgraphs(node):
            return None
        cone.append(node)
        done.update(o for o in node.output if o)
        todo.extend(node_inputs(node))
    position = {id(node): i for i, node in enumerate(graph.node)}
    cone.sort(key=lambda node: position[id(node)])
    keep = cone + keep
    recomputed = {o for node in cone for o in node.output if o}
    fed = [t for t in fed if t not in recomputed]  # a MaxPool computed again for its indices gives its values too
    made |= recomputed
    read = [n for n in dict.fromkeys(name for node in keep for name in node_inputs(node)) if n not in made]

    def declared(name: str) -> onnx.ValueInfoProto | None:
        ti = info.get(name)
        if ti is None:
            return None
        return helper.make_tensor_value_info(name, ti.elem_type, annotated_dims(ti) if ti.shape is not None else None)

    new_inputs = [helper.make_tensor_value_info(ROWS_INPUT, TensorProto.INT64, [BATCH_DIM])]
    gathers = []
    for name in fed + static:
        value = declared(name)
        if value is None:
            return None
        if name in fed:  # fed per image, gathered per row inside the graph (onnxruntime's arena, not fresh pages)
            ti = info[name]
            dims = ["images"] + [None if d == BATCH_DIM else d for d in annotated_dims(ti)[1:]]
            value = helper.make_tensor_value_info(IMAGES_PREFIX + name, ti.elem_type, dims)
            gathers.append(helper.make_node("Gather", [IMAGES_PREFIX + name, ROWS_INPUT], [name], axis=0,
                                            name=f"cnnviz/gather_rows/{name}"))
        new_inputs.append(value)
    keep = gathers + keep
    new_inputs += [inputs[name] for name in read if name in inputs and name != image]
    used = set(read)
    outputs = {o.name: o for o in graph.output}
    part = helper.make_graph(keep, "cnnviz-backward", new_inputs, [outputs[g] for g in gradients],
                             [t for name, t in initializers.items() if name in used] + folded,
                             value_info=[v for v in graph.value_info if v.name in made])
    result = onnx.ModelProto()
    held.copy_fields(model, result, "graph")
    result.graph.CopyFrom(part)
    del graph.node[forward_nodes:]
    produced = {o for node in graph.node for o in node.output if o}
    forward_reads = {name for node in graph.node for name in node_inputs(node)}
    for field, wanted in ((graph.input, lambda v: v.name == image or v.name in forward_reads),
                        (graph.output, lambda v: v.name in produced),
                        (graph.value_info, lambda v: v.name in produced)):
        kept = [v for v in field if wanted(v)]
        del field[:]
        field.extend(kept)
    return BackwardPart(result, model, tuple(fed), tuple(static))
