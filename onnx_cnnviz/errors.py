"""Typed errors of onnx_cnnviz.

Every error says what was wrong and what to do about it. The CLI maps each class to a one-line message and an exit
code; library code raises them and never prints or exits.
"""
from __future__ import annotations


class CnnvizError(Exception):
    """Base class of every error this library raises on purpose.

    Catch it to handle any of them; the CLI turns each subclass into a one-line message and an exit code.

    Example:
        ```python
        try:
            model = cv.load("model.onnx")
        except CnnvizError as error:
            print(f"cannot explain this model: {error}")
        ```
    """


class ModelLoadError(CnnvizError):
    """The file or ModelProto is not a usable ONNX model (not ONNX, truncated, external data missing, ...)."""


class ModelStructureError(CnnvizError):
    """The model loads but is not an image classifier this tool can explain (no 4-D image input, no score, ...)."""


class UnknownLayerError(CnnvizError, KeyError):
    """A layer name that is not among ``Model.layers``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnsupportedOpError(CnnvizError):
    """A node on the gradient path has no backward rule (or uses an attribute variant the rule does not cover)."""

    def __init__(self, message: str, node_name: str = "", op_type: str = ""):
        """Keep the node and its op type beside the message.

        Args:
            message: the cause and what to do (the text ``str(error)`` gives).
            node_name: the ONNX node without a rule, or empty when not known.
            op_type: its operator type (``Conv``, ``Loop``, ...), or empty.
        """
        super().__init__(message)
        self.node_name = node_name
        self.op_type = op_type


class InputError(CnnvizError, ValueError):
    """An input array, target or parameter has the wrong type, shape or value."""


class RuntimeFailure(CnnvizError):
    """onnxruntime could not create a session or run the graph."""


class NumericalError(CnnvizError, ArithmeticError):
    """The model produced NaN or Inf (in its scores, a feature map or a gradient): the picture would be wrong."""


class MissingDependencyError(CnnvizError, ImportError):
    """An optional dependency (an extra such as scikit-learn, matplotlib, torch, TensorFlow) is not installed; the
    message names the package and the pip command."""
