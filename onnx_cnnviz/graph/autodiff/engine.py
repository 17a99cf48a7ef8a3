"""Reverse-mode automatic differentiation of an ONNX graph, emitted as more ONNX (standard operators only).

Given a classifier graph, its score tensor ``S`` (N, K, ...), a seed ``w`` (N, K) and tensors ``T_1..T_m``, the pass
appends nodes computing the vector-Jacobian products

    dL/dT_j  with  L = sum_n sum_k w[n, k] * S[n, k]

so one onnxruntime run returns the forward outputs and every gradient. With a one-hot seed (the ``top1`` mode builds
it in the graph from ``ArgMax(S)``) ``dL/dT`` is ``dS_c/dT`` per sample, because samples never mix in a CNN.

The walk follows tinygrad's ``gradient.py`` and onnx-ad: visit nodes in reverse topological order, ask the rule of
each node's ``op_type`` for the gradients of its inputs given those of its outputs, and sum contributions where a
tensor fans out. Only nodes between the wanted tensors and the score are visited, so Grad-CAM at the last layer pays
for a backward pass through the head alone. Rule sets (``vanilla``, ``guided``, ``deconvnet``) differ only in the
rules of rectifiers (Relu, Clip(0, max), LeakyRelu, PRelu: ``rules.RECTIFIERS``).

Control flow: a node uses every tensor its subgraphs read from outer scope (:mod:`onnx_cnnviz.graph.subgraphs`), so
an ``If`` whose branch multiplies a feature map is on the path even though the map is not among its listed inputs.
Such a node cannot be differentiated by a rule keyed on ``op_type`` (the branch taken, or the number of iterations,
may change from image to image), so it raises :class:`UnsupportedOpError` naming it; an ``If`` whose condition is
known once the input size is fixed has already been folded to its branch by the loader.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import InputError, ModelStructureError, UnsupportedOpError
from .. import held
from ..builder import GraphBuilder
from ..load import BATCH_DIM, opset_of
from ..ops import node_attr
from ..shapes import TensorInfo, annotated_dims
from ..structure import upstream
from ..subgraphs import CONTROL_FLOW, has_subgraphs, node_inputs
from .rules import rule_table

SEED_INPUT = "cnnviz/seed"
TARGET_OUTPUT = "cnnviz/target"
GRAD_PREFIX = "cnnviz/grad/"


def grad_name(tensor: str) -> str:
    return GRAD_PREFIX + tensor


@dataclass
class RuleContext:
    """What a backward rule may use: the builder, static shapes and values, and which inputs need gradients."""
    b: GraphBuilder
    info: dict[str, TensorInfo]
    values: dict[str, np.ndarray]
    node: onnx.NodeProto = None
    wanted: set = field(default_factory=set)
    held: frozenset = frozenset()  # initializers held outside the protobuf (graph/held.py): constant, value unread

    def is_held(self, name: str) -> bool:
        """Whether ``name`` is a held weight: constant, but any copy derived from it would be folded into each
        session's memory (a rule should read it as it is where it can)."""
        return name in self.held

    def wants(self, index: int) -> bool:
        return index in self.wanted

    def shape(self, name: str) -> tuple:
        ti = self.info.get(name)
        if ti is None or ti.shape is None:
            self.unsupported(f"the shape of '{name}' is unknown")
        return ti.shape

    def static_shape(self, name: str) -> tuple:
        """The shape with every dim but the batch known; the batch stays None."""
        shape = self.shape(name)
        if any(d is None for d in shape[1:]):
            self.unsupported(f"'{name}' has a dynamic non-batch dimension {shape}")
        return shape

    def value(self, name: str):
        """The constant value of an input (an initializer), or None when it is computed at run time."""
        return self.values.get(name) if name else None

    def constant(self, name: str, what: str):
        """The constant value of ``name``, which the rule cannot do without: :class:`UnsupportedOpError` saying that
        ``what`` (e.g. "the repeats") is computed at run time otherwise."""
        value = self.value(name)
        if value is None:
            self.unsupported(f"{what} are computed at run time")
        return value

    def attr(self, name: str, default=None):
        return node_attr(self.node, name, default)

    def forward_output(self, index: int, hint: str) -> str:
        """Make the forward node also produce its optional output ``index`` (e.g. MaxPool's Indices)."""
        while len(self.node.output) <= index:
            self.node.output.append("")
        if not self.node.output[index]:
            self.node.output[index] = self.b.unique(hint)
        return self.node.output[index]

    def unsupported(self, reason: str):
        """Raise :class:`UnsupportedOpError` for the current node: which node and op lack a backward rule (or a
        variant of it) on the gradient path, and what the user can do. It names no source file: the reader is a user
        of the installed library, not someone about to edit it."""
        raise UnsupportedOpError(unsupported_message(self.node, reason), node_name=self.node.name,
                                 op_type=self.node.op_type)


def unsupported_message(node: onnx.NodeProto, reason: str) -> str:
    label = node.name or (node.output[0] if node.output else "?")
    return (f"cannot differentiate node '{label}' (op_type {node.op_type}) on the gradient path from the score to "
            f"the requested tensor: {reason}. Methods that need no gradient (CAM, EigenCAM, Score-CAM, occlusion) "
            f"still work, and so do gradients at a layer after this node. Support for {node.op_type} here can be "
            "requested by reporting it as an issue (include the op_type and how the model was exported).")


def control_flow_reason(node: onnx.NodeProto) -> str:
    """Why a node holding subgraphs (If, Loop, Scan, or a custom op with a graph attribute) cannot be differentiated."""
    if node.op_type == "If":
        cond = node.input[0] if node.input else "?"
        return (f"its condition '{cond}' depends on the image's values, so the branch taken can change from image to "
                "image, and a backward graph cannot follow both (an If whose condition is fixed once the input size "
                "is known is folded to its branch automatically). Re-export the model with the branch resolved "
                "(torch.onnx.export traces one branch; avoid torch.jit.script for the exported module)")
    if node.op_type in CONTROL_FLOW:
        return (f"control flow ({node.op_type}, a loop whose body reads tensors of the gradient path) has no backward "
                "rule. Re-export the model with the loop unrolled (torch.onnx.export traces loops unrolled)")
    return "the node holds a subgraph that reads tensors of the gradient path, and no backward rule covers it"


@dataclass(frozen=True)
class GradientGraph:
    model: onnx.ModelProto
    score: str
    gradients: dict  # wanted tensor -> output name of its gradient
    seed_input: str | None  # None in top1 mode
    target_output: str | None  # ArgMax of the score, top1 mode only


def differentiable_path(graph: onnx.GraphProto, score: str, wrt, info: dict[str, TensorInfo]):
    """Nodes on a float path from any of ``wrt`` to ``score``, and the set of tensors downstream of ``wrt``."""
    reached = set(wrt)
    for node in graph.node:
        if any(name in reached for name in node_inputs(node)):
            reached.update(o for o in node.output if o and _is_float(info, o))
    needed = upstream(graph, [score])
    nodes = [n for n in graph.node
             if any(i in reached for i in node_inputs(n)) and any(o in reached and o in needed for o in n.output if o)]
    return nodes, reached


def _is_float(info: dict[str, TensorInfo], name: str) -> bool:
    ti = info.get(name)
    return ti is None or ti.is_float  # unknown type: assume differentiable and let the rule decide


def append_gradients(model: onnx.ModelProto, score: str, wrt, info: dict[str, TensorInfo],
                     rule_set: str = "vanilla", seed: str = "input", constants: dict | None = None,
                     dead: frozenset = frozenset()) -> GradientGraph:
    """Return a copy of ``model`` with gradient outputs ``cnnviz/grad/<T>`` for every ``T`` in ``wrt``.

    ``seed="input"`` adds a graph input ``cnnviz/seed`` (N, K) of per-sample class weights; ``seed="top1"`` builds
    a one-hot seed on each sample's top-scoring class inside the graph and outputs that class as ``cnnviz/target``.
    ``constants`` gives values of run-time computed tensors known to be constant (shape arithmetic), which rules
    read like initializers. ``dead``: tensors whose gradient is known to be zero for every seed the graph will be fed
    (:meth:`~onnx_cnnviz.graph.seed_narrowing.SeedPaths.dead`): no gradient is computed for them or through them,
    and one of ``wrt`` among them gets zeros.
    """
    if seed not in ("input", "top1"):
        raise InputError(f"seed must be 'input' or 'top1', not {seed!r}.")
    table = rule_table(rule_set)
    model = copy.deepcopy(model)
    graph = model.graph
    wrt = list(dict.fromkeys(wrt))
    score_info = info.get(score)
    if score_info is None or score_info.shape is None or len(score_info.shape) < 2:
        raise ModelStructureError(f"the score tensor '{score}' has no known (N, K) shape; cannot seed the gradient.")
    if any(d is None for d in score_info.shape[1:]):
        raise ModelStructureError(f"the score tensor '{score}' has shape {score_info.shape}: a dimension other than "
                                  "the first follows the batch, so it cannot be read as one row of class scores per "
                                  "sample.")
    num_classes = int(np.prod([d for d in score_info.shape[1:]]))

    existing = {t.name for t in graph.initializer} | {v.name for v in graph.input}
    existing |= {o for n in graph.node for o in n.output} | {n.name for n in graph.node}
    b = GraphBuilder(existing, opset_of(model))
    nodes, reached = differentiable_path(graph, score, wrt, info)
    if dead:  # a zero gradient: the nodes that would only carry it are left out, and no rule asks for it
        reached -= dead
        nodes = [n for n in nodes if any(o in reached for o in n.output if o)]
    needed = upstream(graph, [score])
    for name in wrt:
        if name not in needed:
            raise ModelStructureError(f"tensor '{name}' does not influence the score '{score}'; it has no gradient.")

    # Seed dL/dS.
    target_output = seed_input = None
    if seed == "input":
        seed_input = SEED_INPUT
        graph.input.append(helper.make_tensor_value_info(SEED_INPUT, TensorProto.FLOAT, [BATCH_DIM, num_classes]))
        seed_2d = SEED_INPUT
    else:
        flat = b.op("Reshape", [score, b.ints([0, -1])], hint="score_2d")
        target = b.op("ArgMax", [flat], hint="argmax", axis=1, keepdims=0)
        b.nodes.append(helper.make_node("Identity", [target], [TARGET_OUTPUT], name=b.unique("target_node")))
        target_output = TARGET_OUTPUT
        seed_2d = b.op("OneHot", [TARGET_OUTPUT, b.ints([num_classes]), b.const([0.0, 1.0])], hint="seed", axis=-1)
    grads: dict[str, list[str]] = {score: [b.op("Reshape", [seed_2d, b.shape(score)], hint="seed_like_score")]}

    # A held weight (graph/held.py) gets no value: the rules then read it through graph nodes, as they do a weight
    # computed at run time, instead of folding a derived copy of it (a flipped kernel, a transposed matrix) into the
    # graph, which would grow past protobuf's limit again.
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer if not held.is_held(t)}
    values.update(constants or {})
    ctx = RuleContext(b, info, values, held=frozenset(t.name for t in graph.initializer if held.is_held(t)))
    shaped: dict[str, list | None] = {}
    for node in reversed(nodes):
        dys = [_total(b, grads, o) if o else None for o in node.output]
        for o, dy in zip(node.output, dys):
            _note_shape(shaped, info, dy, o)
        if all(d is None for d in dys):
            continue
        ctx.node = node
        if has_subgraphs(node):  # reads the path through its subgraphs: no per-op rule can stand for it
            ctx.unsupported(control_flow_reason(node))
        ctx.wanted = {i for i, name in enumerate(node.input) if name and name in reached and _is_float(info, name)}
        if not ctx.wanted:
            continue
        rule = table.get(node.op_type)
        if rule is None or (node.domain not in ("", "ai.onnx")):
            ctx.unsupported(f"no backward rule is registered for op_type '{node.op_type}'"
                            + (f" in domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""))
        dxs = rule(ctx, node, dys)
        for i in ctx.wanted:
            if i >= len(dxs) or dxs[i] is None:
                ctx.unsupported(f"its rule gives no gradient for input {i} ('{node.input[i]}')")
            grads.setdefault(node.input[i], []).append(dxs[i])

    outputs = {}
    for name in wrt:
        total = _total(b, grads, name)
        if total is None and name in dead:
            total = b.zeros_like(name, hint="dead_grad")
        if total is None:
            raise ModelStructureError(f"no gradient reached '{name}' from the score '{score}'.")
        out = grad_name(name)
        b.nodes.append(helper.make_node("Identity", [total], [out], name=b.unique("grad_out")))
        ti = info.get(name)
        dims = annotated_dims(ti) if ti and ti.shape is not None else None
        graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, dims))
        outputs[name] = out
    if target_output:
        graph.output.append(helper.make_tensor_value_info(TARGET_OUTPUT, TensorProto.INT64, [BATCH_DIM]))

    graph.node.extend(b.nodes)
    graph.initializer.extend(b.initializers)
    declared = {v.name for v in graph.value_info} | {v.name for v in graph.output} | existing
    graph.value_info.extend(helper.make_tensor_value_info(name, info_type, dims)
                            for name, (info_type, dims) in shaped.items() if dims is not None and name not in declared)
    return GradientGraph(model, score, outputs, seed_input, target_output)


def _note_shape(shaped: dict, info: dict[str, TensorInfo], grad: str | None, tensor: str) -> None:
    """Record that gradient tensor ``grad`` has the shape of forward tensor ``tensor`` (with its batch named).

    onnxruntime's own shape inference gives each backward chain a fresh symbolic batch (a Reshape to a run-time
    shape, an Expand), so it cannot tell that the gradient reaching a ReLU and the ReLU's mask have the same shape;
    its blocked-layout (NCHWc) transformer then leaves every element-wise op of the backward pass in plain NCHW, with
    two layout conversions around each backward convolution. Declaring the shape lets the whole backward pass stay
    blocked. A tensor recorded twice with different shapes (a rule passing one tensor on as the gradient of two)
    gets no declaration.
    """
    ti = info.get(tensor)
    if grad is None or ti is None or ti.shape is None:
        return
    entry = (ti.elem_type, annotated_dims(ti))
    if shaped.setdefault(grad, entry) != entry:
        shaped[grad] = (ti.elem_type, None)


def _total(b: GraphBuilder, grads: dict[str, list[str]], name: str) -> str | None:
    parts = grads.get(name)
    if not parts:
        return None
    if len(parts) > 1:
        grads[name] = [b.op("Sum", parts, hint="grad_sum")]
    return grads[name][0]
