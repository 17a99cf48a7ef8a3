"""Reverse-mode autodiff emitted as standard ONNX operators: the engine and one backward rule per op_type."""
from .engine import GRAD_PREFIX, SEED_INPUT, TARGET_OUTPUT, GradientGraph, append_gradients, grad_name
from .rules import RULE_SETS, rule_table, supported_ops

__all__ = ["append_gradients", "GradientGraph", "grad_name", "rule_table", "supported_ops", "RULE_SETS",
           "GRAD_PREFIX", "SEED_INPUT", "TARGET_OUTPUT"]
