"""The registry of backward rules, one per ONNX ``op_type``, and the rule sets built from it.

A rule is ``rule(ctx, node, dys) -> dxs``: given the gradient names of the node's outputs (``None`` where an output
does not reach the score) it appends nodes through ``ctx.b`` and returns one gradient name per input (``None`` for
inputs that need none: ``ctx.wants(i)`` tells which do). Rules live in one module per family:

====================  ==============================================================================================
``conv.py``           Conv, ConvTranspose
``linear.py``         Gemm, MatMul
``elementwise.py``    Add, Sub, Mul, Div, Sum, Neg, Exp, Log, Sqrt, Pow, Reciprocal, Abs, Max, Min, Where
``activations.py``    Relu (vanilla / guided / deconvnet), LeakyRelu, PRelu, Clip, Sigmoid, HardSigmoid, HardSwish,
                      Tanh, Erf, Gelu, Softmax, LogSoftmax, Elu, Softplus, Mish
``pooling.py``        MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean, ReduceSum, ReduceMax,
                      ReduceMin
``normalization.py``  BatchNormalization, LayerNormalization, InstanceNormalization
``shape.py``          Identity, Dropout, Cast, Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Concat, Split, Slice,
                      Pad, Expand, Tile, Gather, Resize, Upsample
====================  ==============================================================================================
"""
from __future__ import annotations

from typing import Callable

from ....errors import InputError

RULES: dict[str, Callable] = {}


def register(*op_types: str):
    def wrap(fn):
        for op in op_types:
            RULES[op] = fn
        return fn
    return wrap


# Importing the families fills RULES.
from . import activations, conv, elementwise, linear, normalization, pooling, shape  # noqa: E402,F401

# The three rule sets differ only in how a ReLU passes the gradient back (Springenberg et al. 2015, Fig. 1):
#   vanilla:   g * (x > 0)
#   guided:    g * (x > 0) * (g > 0)
#   deconvnet: g * (g > 0)
RELU_RULES: dict[str, Callable] = {
    "vanilla": activations.relu_vanilla,
    "guided": activations.relu_guided,
    "deconvnet": activations.relu_deconvnet,
}
# The names of the rule sets, in this order wherever they are listed (the CLI, error messages).
RULE_SETS: tuple[str, ...] = tuple(RELU_RULES)


def rule_table(rule_set: str) -> dict[str, Callable]:
    """Every registered rule, with the ``Relu`` rule of ``rule_set`` (one of :data:`RULE_SETS`)."""
    if rule_set not in RELU_RULES:
        raise InputError(f"unknown rule set {rule_set!r}; choose one of {', '.join(RULE_SETS)}.")
    return {**RULES, "Relu": RELU_RULES[rule_set]}


def supported_ops() -> list[str]:
    return sorted(set(RULES) | {"Relu"})
