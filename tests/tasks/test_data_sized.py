"""Lengths the image decides (after NonZero): the probe's zero-image length is given back as unknown, not the batch's,
where a random image gives another; a length inference fixed, or that no image changes, is left alone."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_cnnviz.graph.shapes import TensorInfo, infer
from onnx_cnnviz.tasks.data_sized import data_sized_info


def thresholded() -> onnx.ModelProto:
    """X (1, 3, 4, 4) -> the values above 0.5 (GatherND at NonZero's indices), and a fixed-size sum beside."""
    nodes = [helper.make_node("Reshape", ["X", "flat_shape"], ["flat"]),
             helper.make_node("Greater", ["flat", "half"], ["above"]),
             helper.make_node("NonZero", ["above"], ["where"]),
             helper.make_node("Transpose", ["where"], ["rows"], perm=[1, 0]),
             helper.make_node("GatherND", ["flat", "rows"], ["kept"]),
             helper.make_node("ReduceSum", ["kept"], ["total"], keepdims=1)]
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "flat_shape"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    image = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph(nodes, "thresholded", [image],
                              [helper.make_tensor_value_info("kept", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("total", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_length_after_nonzero_is_left_open():
    model = thresholded()
    inferred = infer(model)
    assert inferred["kept"].shape == (None,)
    probed = {"kept": TensorInfo(TensorProto.FLOAT, (0,), ()),        # the zero image keeps nothing
              "total": TensorInfo(TensorProto.FLOAT, (1,), ()),
              "flat": TensorInfo(TensorProto.FLOAT, (48,), ())}
    fixed = data_sized_info(model, inferred, probed, "X", (3, 4, 4))
    assert fixed == {"kept": TensorInfo(TensorProto.FLOAT, (None,), ())}


def test_graph_without_data_sized_ops_is_untouched():
    model = thresholded()
    for node in model.graph.node:
        if node.op_type == "NonZero":
            node.op_type = "Identity"  # no longer a length set by values (the graph is not run)
    assert data_sized_info(model, infer(model), {"kept": TensorInfo(TensorProto.FLOAT, (0,), ())}, "X",
                           (3, 4, 4)) == {}
