"""What a run of a :class:`onnx_cnnviz.Model` returns, and the checks and layout fixes applied to it: finite values,
batches joined along their batch axis, layers given back in their (N, C, h, w) view."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import NumericalError
from .graph.autodiff import GRAD_PREFIX


@dataclass
class RunResult:
    """What one :meth:`Model.run` returns (arrays concatenated over batches).

    Attributes:
        scores: (N, K) float32, before any final softmax.
        targets: (N,) int64, the class used for the gradients when gradients were asked for, else None.
        outputs: tensor name -> array.
        grads: tensor name -> ``dS_target / d tensor``, of the tensor's shape.
    """
    scores: np.ndarray  # (N, K) float32, before any final softmax
    targets: np.ndarray | None  # (N,) int64 class used for the gradients, when gradients were asked for
    outputs: dict = field(default_factory=dict)  # tensor name -> array
    grads: dict = field(default_factory=dict)  # tensor name -> dS_target / d tensor


def check_finite(values: np.ndarray, what: str, image: int | None = None) -> None:
    """Refuse a float array the model produced when it holds NaN or Inf.

    Args:
        values: the array, batched (axis 0 = image) unless ``image`` is given.
        what: what it is, for the message.
        image: the one image it belongs to, or None.

    Raises:
        NumericalError: NaN or Inf, naming the first image that has one.
    """
    values = np.asarray(values)
    if values.ndim and len(values) > 1 and values.strides[0] == 0:
        values = values[:1]  # one row broadcast along the batch: the others are the same memory
    if not np.issubdtype(values.dtype, np.floating) or np.isfinite(values).all():
        return
    if image is not None:
        bad = np.array([image])
    else:
        rows = values.reshape(values.shape[0], -1) if values.ndim >= 2 else values.reshape(-1, 1)
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    images = ", ".join(str(i) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
    kinds = " and ".join(k for k, hit in (("NaN", np.isnan(values).any()), ("Inf", np.isinf(values).any())) if hit)
    raise NumericalError(
        f"the model produced {kinds} in its {what} for image(s) {images}, so no valid explanation can be drawn. "
        "Either an op of the model is out of its domain for this input (Log or Sqrt of a negative value, a division "
        "by zero, an overflow) or the input is far outside the range the model was trained for: check the "
        "preprocessing (mean, std, scale) and that the model runs correctly in onnxruntime.")


def checked(result: RunResult) -> RunResult:
    """The result, once every tensor and gradient in it is finite.

    Args:
        result: a run's result.

    Returns:
        ``result``.

    Raises:
        NumericalError: a tensor or gradient holds NaN or Inf.
    """
    for name, value in result.outputs.items():
        check_finite(value, f"tensor '{name}'")
    for name, value in result.grads.items():
        check_finite(value, f"gradient with respect to '{name}'")
    return result


def shape_text(shape) -> str:
    """A static shape in words: ``(N?, 3, 224, 224)``, or "unknown".

    Args:
        shape: dims (None for an unknown one), or None.

    Returns:
        The text.
    """
    return "unknown" if shape is None else "(" + ", ".join("N?" if d is None else str(d) for d in shape) + ")"


def batch_axis(info: dict, name: str) -> int:
    """The axis along which a tensor's batches are joined.

    Its outermost axis that follows the batch (a None entry of its shape; the batch itself, or a merged axis such as
    window partitions' N * windows, whose outer factor is N). A gradient ``grad_name(t)`` has the shape of ``t``;
    anything unknown (scores, targets) has the batch first.

    Args:
        info: tensor name -> its static type and shape.
        name: the tensor.

    Returns:
        The axis.
    """
    tensor = info.get(name)
    if tensor is None and name.startswith(GRAD_PREFIX):
        tensor = info.get(name[len(GRAD_PREFIX):])
    shape = getattr(tensor, "shape", None)
    if not shape or shape[0] is None or None not in shape:
        return 0
    return shape.index(None)


def as_nchw(views: dict, name: str, value: np.ndarray) -> np.ndarray:
    """A layer's tensor as its (N, C, h, w) view (unchanged for NCHW tensors and non-layers).

    Args:
        views: layer name -> :class:`~onnx_cnnviz.graph.layout.LayerView`.
        name: the tensor.
        value: its array.

    Returns:
        The array, NCHW.
    """
    view = views.get(name)
    return view.to_nchw(value) if view is not None else value
