"""Explanation methods, one module per family. Each is a function of (Model, x, targets, ...) -> numpy arrays."""
from .attribution import input_x_gradient, integrated_gradients, smoothgrad
from .cam import (cam, eigen_cam, grad_cam, grad_cam_pp, guided_grad_cam, hires_cam, layer_cam, score_cam, top_k,
                  xgrad_cam)
from .gradients import gradients, saliency
from .occlusion import occlusion
from . import features, localise, optimise  # noqa: E402 - modules; their functions are re-exported by onnx_cnnviz

__all__ = ["gradients", "saliency", "occlusion", "input_x_gradient", "smoothgrad", "integrated_gradients"]
__all__ += ["cam", "grad_cam", "grad_cam_pp", "hires_cam", "xgrad_cam", "layer_cam", "eigen_cam", "score_cam",
            "guided_grad_cam", "top_k"]
