"""Graph passes: load and normalise, find the image input / score / layers, expose tensors, append gradients.

Every pass is a function from model to model that edits a copy (as onnx-graphsurgeon and onnx-ir passes do).
"""
from .expose import expose
from .load import MIN_OPSET, normalise, read_model
from .structure import Layer, candidate_layers, default_layer, find_image_input, find_score

__all__ = ["read_model", "normalise", "expose", "Layer", "candidate_layers", "default_layer", "find_image_input",
           "find_score", "MIN_OPSET"]
