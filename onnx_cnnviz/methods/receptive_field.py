"""The receptive field of a model's layer: the graph walk of :mod:`onnx_cnnviz.graph.receptive_field`, run once per
model and input size."""
from __future__ import annotations

from ..graph.receptive_field import ReceptiveField, compute_receptive_fields, layer_field
from ..model import Model


def receptive_field(m: Model, layer, hw=None) -> ReceptiveField:
    """The receptive field of a layer: the input pixels one of its positions can see.

    The recursion of Araujo et al., "Computing Receptive Fields of Convolutional Neural Networks", Distill 2019
    (``r_0 = sum_l ((k_l - 1) prod_{i<l} s_i) + 1``), walked over the graph by :mod:`onnx_cnnviz.graph.receptive_field`
    (its docstring gives the convention), once per model and input size.

    Args:
        m: the loaded model.
        layer: a tensor name or :class:`~onnx_cnnviz.graph.structure.Layer` of ``m``.
        hw: the input's (H, W) (default: the model's own).

    Returns:
        The field's size, stride and offset per axis.

    Raises:
        UnknownLayerError: a name that is no tensor of the model.
        ModelStructureError: the layer is not a spatial map computed from the image, or an op on the way
            resamples the grid.
    """
    spec = m.spec(hw)
    input_hw = tuple(spec.info[m.input_name].shape[2:])
    fields = m.cached(("receptive_fields", input_hw),
                      lambda: compute_receptive_fields(spec.model, m.input_name, spec.info,
                                                       spec.constants))
    name = getattr(layer, "name", layer)
    if name not in fields and name not in spec.info:
        m.layer(name)  # raises UnknownLayerError with suggestions
    view = spec.views.get(name)
    return layer_field(fields, spec.info, m.input_name, name, view.nchw_shape()[2:] if view is not None else None)
