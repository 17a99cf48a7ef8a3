"""The registry of backward rules, one per ONNX ``op_type``, and the rule sets built from it.

A rule is ``rule(ctx, node, dys) -> dxs``: given the gradient names of the node's outputs (``None`` where an output
does not reach the score) it appends nodes through ``ctx.b`` and returns one gradient name per input (``None`` for
inputs that need none: ``ctx.wants(i)`` tells which do). Rules live in one module per family:

====================  ==============================================================================================
``conv.py``           Conv, ConvTranspose
``linear.py``         Gemm, MatMul
``elementwise.py``    Add, Sub, Mul, Div, Sum, Neg, Exp, Log, Sqrt, Pow, Reciprocal, Abs, Max, Min, Where
``activations.py``    Relu, LeakyRelu, PRelu, Clip, Sigmoid, HardSigmoid, HardSwish, Tanh, Erf, Gelu, Softmax,
                      LogSoftmax, Elu, Softplus, Mish; the guided and deconvnet rules of rectifiers
``pooling.py``        MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean, ReduceSum, ReduceMax,
                      ReduceMin, ReduceSumSquare, ReduceL2
``normalization.py``  BatchNormalization, LayerNormalization, InstanceNormalization
``shape.py``          Identity, Dropout, Cast, Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Concat, Split, Slice,
                      Pad (constant, reflect, edge, wrap), Expand, Tile, Gather, GatherElements, GatherND, Resize,
                      Upsample
``einsum.py``         Einsum (any equation onnxruntime runs: broadcasting, ellipsis, diagonals)
``scatter.py``        ScatterND (reductions none and add)
====================  ==============================================================================================

The rule sets ``vanilla``, ``guided`` and ``deconvnet`` differ only at rectifiers (:data:`RECTIFIERS`: Relu, Clip with
lower bound 0 such as ReLU6, LeakyRelu, PRelu); every other op has its one true rule in all three.
"""
from __future__ import annotations

from collections.abc import Callable

import onnx

from ....errors import InputError
from ... import held
from ...structure import downstream, upstream

RULES: dict[str, Callable] = {}


def register(*op_types: str):
    def wrap(fn):
        for op in op_types:
            RULES[op] = fn
        return fn
    return wrap


# Importing the families fills RULES.
from . import activations, conv, einsum, elementwise, linear, normalization, pooling, scatter, shape  # noqa: E402,F401
# TopK, NonMaxSuppression, and Concat of run-time lengths (detector post-processing); after shape: its Concat
# rule extends shape.concat.
from . import selection  # noqa: E402,F401

# --- rule sets -------------------------------------------------------------------------------------------------
# The rectifiers: op_type -> (its true rule, which nodes of that type are rectifiers: (node, value) -> bool, where
# value(name) is a tensor's constant value or None; None: every node). Adding a rectifier is one entry here.
RECTIFIERS: dict[str, tuple[Callable, Callable | None]] = {
    "Relu": (activations.relu_vanilla, None),
    "Clip": (activations.clip, activations.clip_is_rectifier),  # lower bound 0: ReLU6, ReLU-n
    "LeakyRelu": (activations.leaky_relu, None),
    "PRelu": (activations.prelu, None),
}

# The rule sets differ only at rectifiers (Springenberg et al. 2015, Fig. 1; f' is the rectifier's derivative):
#   vanilla:   g * f'(x)                 the true gradient (Simonyan et al. 2014)
#   guided:    g * f'(x) * (g > 0)       guided backpropagation (Springenberg et al. 2015)
#   deconvnet: g * (g > 0)               the deconvnet (Zeiler & Fergus 2014), no forward mask
# activations.guided / activations.deconvnet say why for ReLU6 and LeakyReLU. RECTIFIER_RULES[rule_set][op_type]
# is the override of each set; ReLU's guided and deconvnet rules are written out by hand (the same values).
RECTIFIER_RULES: dict[str, dict[str, Callable]] = {
    "vanilla": {op: rule for op, (rule, _) in RECTIFIERS.items()},
    "guided": {op: activations.guided(rule, test) for op, (rule, test) in RECTIFIERS.items()}
    | {"Relu": activations.relu_guided},
    "deconvnet": {op: activations.deconvnet(rule, test) for op, (rule, test) in RECTIFIERS.items()}
    | {"Relu": activations.relu_deconvnet},
}
# The names of the rule sets, in this order wherever they are listed (the CLI, error messages).
RULE_SETS: tuple[str, ...] = tuple(RECTIFIER_RULES)


def rule_table(rule_set: str) -> dict[str, Callable]:
    """Every registered rule, with the rectifier rules of ``rule_set`` (one of :data:`RULE_SETS`)."""
    if rule_set not in RECTIFIER_RULES:
        raise InputError(f"unknown rule set {rule_set!r}; choose one of {', '.join(RULE_SETS)}.")
    return {**RULES, **RECTIFIER_RULES[rule_set]}


def supported_ops() -> list[str]:
    return sorted(set(RULES) | set(RECTIFIERS))


def is_rectifier(node: onnx.NodeProto, value: Callable = lambda name: None) -> bool:
    """Whether ``node`` is a rectifier, where the guided and deconvnet rules differ from the true gradient.
    ``value(name)``: the constant value of a tensor (an initializer) or None (Clip's bounds are read from it)."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in RECTIFIERS:
        return False
    test = RECTIFIERS[node.op_type][1]
    return test is None or bool(test(node, value))


def rectifiers_on_path(model: onnx.ModelProto, input_name: str, score_name: str,
                       constants: dict | None = None) -> list[onnx.NodeProto]:
    """The rectifier nodes (:func:`is_rectifier`) on a path from ``input_name`` to ``score_name``, in graph order.

    Where there is none (a SiLU / Swish / GELU network, say), the guided and deconvnet rule sets give exactly the
    vanilla gradient of the input. ``constants``: values of run-time computed tensors known to be constant, read
    like initializers (``Model.spec().constants``).
    """
    graph = model.graph
    values = {t.name: t for t in graph.initializer}
    constants = constants or {}

    def value(name):
        if name in constants:
            return constants[name]
        tensor = values.get(name)
        return held.value(tensor) if tensor is not None else None

    on_path = downstream(graph, [input_name]) & upstream(graph, [score_name])
    return [n for n in graph.node if n.input and n.input[0] in on_path
            and any(o in on_path for o in n.output if o) and is_rectifier(n, value)]
