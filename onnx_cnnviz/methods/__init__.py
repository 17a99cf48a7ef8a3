"""Explanation methods, one module per family. Each is a function of (Model, x, targets, ...) -> numpy arrays."""
from .gradients import gradients, saliency

__all__ = ["gradients", "saliency"]
