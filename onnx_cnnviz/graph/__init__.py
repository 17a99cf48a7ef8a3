"""Graph passes: load and normalise, find the image input / score / layers, expose tensors, append gradients.

A pass is a function from model to model that returns a new model (copy, edit, return, as onnx-graphsurgeon and
onnx-ir passes do); the few that edit their argument say so in their name (``..._inplace``).
"""
from .expose import expose
from .head import find_score
from .load import MIN_OPSET, normalise, read_model
from .structure import Layer, candidate_layers, default_layer, find_image_input

__all__ = ["read_model", "normalise", "expose", "Layer", "candidate_layers", "default_layer", "find_image_input",
           "find_score", "MIN_OPSET"]
