"""A weightless copy of a model for ONNX shape inference (loading passes and graph/shapes.py use it)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def weightless(model: onnx.ModelProto, keep_elements: int = 64) -> onnx.ModelProto:
    """A copy for shape inference: large float initializers keep their type and dims but drop their data.

    Shape inference serialises the whole model; without the weights it takes milliseconds instead of seconds on a
    500 MB VGG. Small and integer tensors (shapes, axes, pads) keep their values for data propagation.
    """
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    graph = light.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOAT_TYPES and int(np.prod(tensor.dims)) > keep_elements:
            graph.initializer.append(onnx.TensorProto(name=tensor.name, data_type=tensor.data_type,
                                                      dims=tensor.dims))
        else:
            graph.initializer.append(tensor)
    return light
