"""Explanation methods, one module per family. Each map function has the shape
``f(m, x, targets=None, layer=None, *, upsample=..., normalize=..., batch_size=None, **params) -> numpy array``;
:mod:`.registry` is the one table of them (name, function, what each needs and returns, paper).

``features``, ``localise`` and ``optimise`` are imported as modules (``onnx_cnnviz`` re-exports their functions): a
function named ``localise`` here would hide the module of the same name.
"""
from . import features, localise, optimise, registry
from .attribution import input_x_gradient, integrated_gradients, smoothgrad
from .cam import cam, eigen_cam, grad_cam, grad_cam_pp, guided_grad_cam, hires_cam, layer_cam, score_cam, xgrad_cam
from .gradients import gradients, saliency
from .occlusion import occlusion
from .top_k import top_k

__all__ = ["gradients", "saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "occlusion",
           "cam", "grad_cam", "grad_cam_pp", "hires_cam", "xgrad_cam", "layer_cam", "eigen_cam", "score_cam",
           "guided_grad_cam", "top_k", "features", "localise", "optimise", "registry"]
