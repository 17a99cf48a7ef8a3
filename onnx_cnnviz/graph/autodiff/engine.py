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
rule used for ``Relu``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import InputError, ModelStructureError, UnsupportedOpError
from ..builder import GraphBuilder
from ..load import BATCH_DIM, opset_of
from ..ops import node_attr
from ..shapes import TensorInfo
from ..structure import upstream
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
        from . import rules as rules_pkg

        raise UnsupportedOpError(
            f"cannot differentiate node '{self.node.name or self.node.output[0]}' (op_type {self.node.op_type}): "
            f"{reason}. Backward rules live in {rules_pkg.__path__[0]}/; extend the {self.node.op_type} rule there.",
            node_name=self.node.name, op_type=self.node.op_type)


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
        if any(name in reached for name in node.input if name):
            reached.update(o for o in node.output if o and _is_float(info, o))
    needed = upstream(graph, [score])
    nodes = [n for n in graph.node
             if any(i in reached for i in n.input if i) and any(o in reached and o in needed for o in n.output if o)]
    return nodes, reached


def _is_float(info: dict[str, TensorInfo], name: str) -> bool:
    ti = info.get(name)
    return ti is None or ti.is_float  # unknown type: assume differentiable and let the rule decide


def append_gradients(model: onnx.ModelProto, score: str, wrt, info: dict[str, TensorInfo],
                     rule_set: str = "vanilla", seed: str = "input", constants: dict | None = None) -> GradientGraph:
    """Return a copy of ``model`` with gradient outputs ``cnnviz/grad/<T>`` for every ``T`` in ``wrt``.

    ``seed="input"`` adds a graph input ``cnnviz/seed`` (N, K) of per-sample class weights; ``seed="top1"`` builds
    a one-hot seed on each sample's top-scoring class inside the graph and outputs that class as ``cnnviz/target``.
    ``constants`` gives values of run-time computed tensors known to be constant (shape arithmetic), which rules
    read like initializers.
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
    num_classes = int(np.prod([d for d in score_info.shape[1:]]))

    existing = {t.name for t in graph.initializer} | {v.name for v in graph.input}
    existing |= {o for n in graph.node for o in n.output} | {n.name for n in graph.node}
    b = GraphBuilder(existing, opset_of(model))
    nodes, reached = differentiable_path(graph, score, wrt, info)
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

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    values.update(constants or {})
    ctx = RuleContext(b, info, values)
    for node in reversed(nodes):
        dys = [_total(b, grads, o) if o else None for o in node.output]
        if all(d is None for d in dys):
            continue
        ctx.node = node
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
        if total is None:
            raise ModelStructureError(f"no gradient reached '{name}' from the score '{score}'.")
        out = grad_name(name)
        b.nodes.append(helper.make_node("Identity", [total], [out], name=b.unique("grad_out")))
        ti = info.get(name)
        dims = [d if d is not None else BATCH_DIM for d in ti.shape] if ti and ti.shape is not None else None
        graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, dims))
        outputs[name] = out
    if target_output:
        graph.output.append(helper.make_tensor_value_info(TARGET_OUTPUT, TensorProto.INT64, [BATCH_DIM]))

    graph.node.extend(b.nodes)
    graph.initializer.extend(b.initializers)
    return GradientGraph(model, score, outputs, seed_input, target_output)


def _total(b: GraphBuilder, grads: dict[str, list[str]], name: str) -> str | None:
    parts = grads.get(name)
    if not parts:
        return None
    if len(parts) > 1:
        grads[name] = [b.op("Sum", parts, hint="grad_sum")]
    return grads[name][0]
