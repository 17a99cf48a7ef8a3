"""Make a classifier fully convolutional: its head as convolutions, so a larger image gives a grid of class scores.

This is the "net surgery" of the Caffe example quoted in the seed slides (an AlexNet made fully convolutional turns a
451x451 image into an 8x8 map of class scores, Long et al. 2015, Sec. 3.1; Sermanet et al. 2014 OverFeat):

* ``A (N, C, h, w) -> Flatten | Reshape -> Gemm(W: (O, C*h*w))`` becomes ``Conv(A, W.reshape(O, C, h, w))``: the
  flattening order of NCHW is (c, i, j), exactly the layout of a conv kernel;
* each further ``Gemm(W: (O2, O))`` / ``MatMul`` (+ bias ``Add``) becomes a 1x1 ``Conv``;
* ``GlobalAveragePool`` / ``GlobalMaxPool`` / ``ReduceMean`` over H, W become ``AveragePool`` / ``MaxPool`` with the
  window of the map at the original size and stride 1 (``pool_stride`` to change it);
* activations, Dropout and Identity between them work unchanged on 4-D tensors; a final Softmax is moved to the
  class axis (axis 1) when ``softmax=True``.

At the original input size the rewritten graph computes exactly the original scores, as an (N, K, 1, 1) map; at a
larger size cell (i, j) is the original network applied to the window at ``(i * stride, j * stride)`` with
``stride`` the network's total stride at the collapse point times ``pool_stride``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelStructureError
from .head import constant_value, reduce_axes, spatial_head
from .loading.batch import BATCH_DIM
from .ops import ACTIVATIONS, DENSE, FLATTENINGS, INFERENCE_IDENTITIES, WINDOWED_EQUIVALENT, node_attr
from .structure import producers
from .subgraphs import node_inputs

# Elementwise ops copied as they are: they act on the (N, C, 1, 1) maps that replace (N, C) vectors as on the vectors.
_KEEP = ACTIVATIONS | INFERENCE_IDENTITIES


@dataclass
class FullyConvolutional:
    model: onnx.ModelProto  # input (N, C, H, W) with H, W free; output "cnnviz/score_map" (N, K, h', w')
    output: str
    stride: tuple  # input pixels between neighbouring cells of the score map
    window: tuple  # (H0, W0): the original input size, the window each cell classifies


def fully_convolutional(model: onnx.ModelProto, input_name: str, score_name: str, info: dict,
                        softmax: bool = False, pool_stride: int = 1, stride: tuple | None = None) -> FullyConvolutional:
    """Rewrite the head between the last spatial map and ``score_name`` as convolutions (see the module docstring).

    ``model`` is a normalised graph with static shapes ``info`` at its original input size (``Model.spec().model``).
    ``stride``: the total stride of the last spatial map (for the result's metadata; the receptive-field jump).
    """
    model = copy.deepcopy(model)
    graph = model.graph
    made_by = producers(graph)
    inits = {t.name: t for t in graph.initializer}
    spatial, head = spatial_head(model, score_name, info)
    h0, w0 = info[spatial].shape[2:]
    in_hw = tuple(info[input_name].shape[2:])
    remove = {id(n) for n in head}
    new_nodes, new_inits = [], []
    current, cur_hw = spatial, (h0, w0)

    def fresh(hint):
        return f"cnnviz/fc/{hint}_{len(new_nodes)}"

    for k, node in enumerate(head):
        op = node.op_type
        out = node.output[0]
        if op in WINDOWED_EQUIVALENT:
            if op.startswith("Reduce"):
                axes = reduce_axes(node, inits, made_by, 4)
                if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
                    raise ModelStructureError(f"{op} node '{node.name}' reduces axes "
                                              f"{'computed at run time' if axes is None else axes}, not H and W.")
            new_nodes.append(helper.make_node(WINDOWED_EQUIVALENT[op], [current], [out], kernel_shape=list(cur_hw),
                                              strides=[pool_stride, pool_stride], name=fresh("pool")))
            cur_hw, current = (1, 1), out
            # a ReduceMean with keepdims=0 gives (N, C); the pool keeps (N, C, 1, 1), which the next conv takes
        elif op in FLATTENINGS:
            # the collapse: what was (N, C, h, w) -> (N, C*h*w) stays 4-D; the next linear layer becomes a conv
            new_nodes.append(helper.make_node("Identity", [current], [out], name=fresh("view")))
            current = out
        elif op in DENSE:
            w = _weight(node, inits, made_by)
            if op == "Gemm" and node_attr(node, "transA", 0):
                raise ModelStructureError(f"Gemm '{node.name}' with transA=1 cannot be rewritten.")
            if op == "Gemm":
                w = w if node_attr(node, "transB", 0) else w.T
                w = w * node_attr(node, "alpha", 1.0)
            else:
                w = w.T  # MatMul: x (N, C) @ B (C, O)
            kernel = w.reshape(w.shape[0], -1, *cur_hw) if cur_hw != (1, 1) else w.reshape(w.shape[0], -1, 1, 1)
            wname = fresh("weight")
            new_inits.append(numpy_helper.from_array(kernel.astype(np.float32), wname))
            inputs = [current, wname]
            if op == "Gemm" and len(node.input) > 2 and node.input[2]:
                bias = _weight(node, inits, made_by, 2).reshape(-1) * node_attr(node, "beta", 1.0)
                bname = fresh("bias")
                new_inits.append(numpy_helper.from_array(np.broadcast_to(bias, (w.shape[0],)).copy(), bname))
                inputs.append(bname)
            new_nodes.append(helper.make_node("Conv", inputs, [out], kernel_shape=list(kernel.shape[2:]),
                                              name=fresh("conv")))
            cur_hw, current = (1, 1), out
        elif op == "Add" and any(i in inits for i in node.input):
            const = next(i for i in node.input if i in inits)
            other = next(i for i in node.input if i != const)
            bias = constant_value(const, inits, made_by)
            bname = fresh("bias")
            new_inits.append(numpy_helper.from_array(bias.reshape(1, -1, 1, 1), bname))
            new_nodes.append(helper.make_node("Add", [other, bname], [out], name=fresh("add")))
            current = out
        elif op in _KEEP:
            node_copy = copy.deepcopy(node)
            new_nodes.append(node_copy)
            current = out
        elif op in ("Softmax", "LogSoftmax") and k == len(head) - 1:
            new_nodes.append(helper.make_node(op, [current], [out], axis=1, name=fresh("softmax")))
            current = out
        else:
            raise ModelStructureError(f"head node '{node.name or out}' ({op}) has no fully convolutional form.")
    output = "cnnviz/score_map"
    if softmax:
        new_nodes.append(helper.make_node("Softmax", [current], [output], axis=1, name=fresh("softmax")))
    else:
        new_nodes.append(helper.make_node("Identity", [current], [output], name=fresh("out")))
    kept = [n for n in graph.node if id(n) not in remove]
    # nodes downstream of the score (a final Softmax / Reshape) are dropped with the old outputs
    del graph.node[:]
    graph.node.extend(kept + new_nodes)
    graph.initializer.extend(new_inits)
    del graph.value_info[:]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, [BATCH_DIM, None, None, None]))
    for value in graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            dims[2].Clear()
            dims[2].dim_param = "H"
            dims[3].Clear()
            dims[3].dim_param = "W"
    _prune_inplace(graph)
    jump = tuple(stride) if stride is not None else (1, 1)
    return FullyConvolutional(model, output, (jump[0] * pool_stride, jump[1] * pool_stride), in_hw)


def _weight(node, inits, made_by, index: int = 1) -> np.ndarray:
    value = constant_value(node.input[index], inits, made_by)
    if value is None:
        raise ModelStructureError(f"the weights of '{node.name}' ({node.op_type}) are computed at run time.")
    return value


def _prune_inplace(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers no output depends on any more."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(node_inputs(node))  # what its subgraphs read from outer scope too
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)

