"""Hand-built ONNX classifiers for the OpenVINO tests (numpy weights; this venv has no torch).

``small_cnn``: Conv -> BatchNormalization -> Relu -> MaxPool -> Conv -> Relu 'features' -> GlobalAveragePool ->
Flatten -> Gemm, every op the methods' backward graphs start from on a real CNN.

``resnet18``: the torchvision ResNet-18 topology (7x7/2 stem, 3x3/2 max pool, four stages of two basic blocks with
1x1/2 projections, global average pool, linear head; batch norms folded into the convolutions, as onnxruntime and
OpenVINO fold them anyway), He-initialised random weights.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inits, size: int, classes: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def small_cnn(size: int = 16, classes: int = 5, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=1.0):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w1", 8, 3, 3, 3, scale=0.4), init("b1", 8, scale=0.1),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn_scale"),
             init("bn_bias", 8, scale=0.1), init("bn_mean", 8, scale=0.1),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn_var"),
             init("w2", 16, 8, 3, 3, scale=0.2), init("b2", 16, scale=0.1),
             init("fc_w", classes, 16, scale=0.5), init("fc_b", classes, scale=0.1)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn1"]),
             helper.make_node("Relu", ["bn1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["features"]),
             helper.make_node("GlobalAveragePool", ["features"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    return _model(nodes, inits, size, classes)


def resnet18(size: int = 112, classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x, cin, cout, k, stride, relu=True):
        name = f"conv{len(nodes)}"
        w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        inits.append(numpy_helper.from_array(w.astype(np.float32), name + "_w"))
        inits.append(numpy_helper.from_array((rng.standard_normal(cout) * 0.05).astype(np.float32), name + "_b"))
        nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], strides=[stride, stride],
                                      pads=[k // 2] * 4))
        if not relu:
            return name
        nodes.append(helper.make_node("Relu", [name], [name + "_relu"]))
        return name + "_relu"

    x = conv("x", 3, 64, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["stem_pool"], kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[1, 1, 1, 1]))
    x, cin = "stem_pool", 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            y = conv(x, cin, cout, 3, stride)
            y = conv(y, cout, cout, 3, 1, relu=False)
            skip = conv(x, cin, cout, 1, stride, relu=False) if (stride != 1 or cin != cout) else x
            out = f"stage{stage}_block{block}"
            nodes.append(helper.make_node("Add", [y, skip], [out + "_sum"]))
            nodes.append(helper.make_node("Relu", [out + "_sum"], [out]))
            x, cin = out, cout
    inits.append(numpy_helper.from_array((rng.standard_normal((classes, 512)) * 0.05).astype(np.float32), "fc_w"))
    inits.append(numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"]),
              helper.make_node("Flatten", ["pool"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    return _model(nodes, inits, size, classes)
