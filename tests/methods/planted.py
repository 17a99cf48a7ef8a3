"""A hand-made CNN whose channel 0 detects one planted pattern (a bright 5x5 cross), as an ONNX model."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

SIZE = 48
CROSS = np.zeros((5, 5), np.float32)
CROSS[2, :] = CROSS[:, 2] = 1.0


def planted_model(channels: int = 4, seed: int = 0):
    """conv1 5x5 pad 2 (ch 0 = zero-mean cross template) -> ReLU -> MaxPool 2/2 -> conv2 3x3 pad 1 (ch 0 passes ch 0)
    -> ReLU -> GAP -> Gemm (3 classes). conv2's units see 5 + 1 + 2 * 2 = 10 input pixels."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((channels, 3, 5, 5)).astype(np.float32) * 0.05
    template = CROSS - CROSS.mean()
    w1[0] = template[None] / np.abs(template).sum()
    w2 = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.05
    w2[0] = 0.0
    w2[0, 0, 1, 1] = 1.0
    b2 = np.zeros(channels, np.float32)
    wf = rng.standard_normal((3, channels)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2"),
             numpy_helper.from_array(wf, "wf")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["conv1"], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "w2", "b2"], ["conv2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("GlobalAveragePool", ["relu2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf"], ["scores"], transB=1),
    ]
    graph = helper.make_graph(nodes, "planted", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                               ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def noise_images(n: int, seed: int = 1, amplitude: float = 0.3):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-amplitude, amplitude, (3, SIZE, SIZE)).astype(np.float32) for _ in range(n)]


def plant(x: np.ndarray, y0: int, x0: int, amplitude: float = 2.0) -> np.ndarray:
    x = x.copy()
    x[:, y0:y0 + 5, x0:x0 + 5] += amplitude * CROSS
    return x
