"""The one auto_pad resolver (graph/padding.py) against onnxruntime: the pads it gives must make the output shape that
onnxruntime computes, and put the padding on the side onnxruntime does. onnxruntime refuses dilated windows with SAME
padding; those convolutions are checked against the ONNX reference implementation instead."""
from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from onnx_cnnviz.graph.padding import explicit_pads, split_padding, window_geometry

AUTO_PADS = ("SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET")
# (input size, kernel, stride, dilation) per axis: odd and even sizes, kernels, strides and dilations
AXES = [(7, 3, 1, 1), (8, 3, 2, 1), (9, 2, 2, 1), (10, 4, 3, 1), (7, 3, 2, 2), (6, 2, 1, 3), (5, 5, 1, 1), (4, 1, 3, 1)]


def _run(op: str, size: tuple, kernel: tuple, attrs: dict, x: np.ndarray, reference: bool = False) -> np.ndarray:
    inputs, inits = ["x"], []
    if op == "Conv":  # distinct weights: a window shifted by a padding on the wrong side gives other values
        inits.append(helper.make_tensor("w", TensorProto.FLOAT, [1, 1, *kernel],
                                        [float(v) for v in range(int(np.prod(kernel)))]))
        inputs.append("w")
    node = helper.make_node(op, inputs, ["y"], kernel_shape=list(kernel), **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, *size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if reference:
        return ReferenceEvaluator(model).run(None, {"x": x})[0]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]




@pytest.mark.parametrize("op", ["Conv", "MaxPool"])
@pytest.mark.parametrize("auto_pad", AUTO_PADS)
@pytest.mark.parametrize("ax_y,ax_x", list(itertools.combinations(AXES, 2))[::3])
def test_pads_reproduce_onnxruntime(op, auto_pad, ax_y, ax_x):
    """Running the node with our explicit pads gives exactly onnxruntime's output for the auto_pad node (shape and
    values: a padding on the wrong side would shift the windows)."""
    size, kernel, strides, dilations = (tuple(a[i] for a in (ax_y, ax_x)) for i in range(4))
    reference = auto_pad.startswith("SAME") and any(d > 1 for d in dilations)
    if reference and op == "MaxPool":
        dilations, reference = (1, 1), False
    # asymmetric explicit pads, smaller than the kernel as pools require
    given = [min(1, kernel[0] - 1), 0, 0, min(1, kernel[1] - 1)] if auto_pad == "NOTSET" else None
    x = np.random.default_rng(0).standard_normal((1, 1, *size)).astype(np.float32)
    attrs = dict(strides=list(strides), dilations=list(dilations))
    if auto_pad == "NOTSET":
        attrs["pads"] = given
    else:
        attrs["auto_pad"] = auto_pad
    expected = _run(op, size, kernel, attrs, x, reference)
    begins, ends = explicit_pads(auto_pad, given, size, kernel, strides, dilations)
    assert all(p >= 0 for p in begins + ends)
    ours = _run(op, size, kernel, dict(strides=list(strides), dilations=list(dilations), pads=begins + ends), x,
                reference)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    if auto_pad.startswith("SAME"):
        assert expected.shape[2:] == tuple(-(-s // st) for s, st in zip(size, strides))


def test_window_geometry_reads_the_node():
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 2], strides=[2, 1], auto_pad="SAME_LOWER")
    strides, dilations, begins, ends = window_geometry(node, (8, 5), [3, 2])
    assert (strides, dilations) == ([2, 1], [1, 1])
    # axis 0: out 4, total (4-1)*2+3-8 = 1 -> the odd pixel at the start; axis 1: out 5, total 1 -> at the start
    assert (begins, ends) == ([1, 1], [0, 0])
    plain = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2])
    assert window_geometry(plain, (None, None), [2, 2]) == ([1, 1], [1, 1], [0, 0], [0, 0])


def test_split_padding():
    assert split_padding(3, "SAME_UPPER") == (1, 2)
    assert split_padding(3, "SAME_LOWER") == (2, 1)
    assert split_padding(3, "NOTSET") == (2, 1)  # ConvTranspose with output_shape: as SAME_LOWER
    assert split_padding(0, "SAME_UPPER") == (0, 0)
