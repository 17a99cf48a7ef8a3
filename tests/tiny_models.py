"""Hand-built ONNX models for the error, property, fuzz and memory tests (no torch, built in milliseconds).

``gap_classifier``: x (1, 3, S, S) -> Conv(3->4, 3x3, pad 1) 'conv1' -> Relu 'relu1' [-> mid nodes] ->
GlobalAveragePool 'pool' -> Flatten 'flat' -> Gemm(->5) 'logits'.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 5


def make_model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def gap_classifier(size: int = 8, mid=None, channels: int = 3, seed: int = 0) -> onnx.ModelProto:
    """``mid``: a function ``name -> (nodes, inits, output name)`` inserted after the Relu."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((4, channels, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((CLASSES, 4)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.standard_normal(CLASSES).astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1")]
    last = "relu1"
    if mid is not None:
        extra_nodes, extra_inits, last = mid(last)
        nodes += extra_nodes
        inits += extra_inits
    nodes += [helper.make_node("GlobalAveragePool", [last], ["pool"], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)


def log_of_negative(last: str):
    """Mid nodes computing Log(-relu - 1): NaN everywhere (a model that produces NaN)."""
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    return ([helper.make_node("Neg", [last], ["neg"], name="neg"),
             helper.make_node("Sub", ["neg", "one"], ["shifted"], name="shift"),
             helper.make_node("Log", ["shifted"], ["log"], name="log")], [one], "log")


def divide_by_zero(last: str):
    """Mid nodes computing relu / 0: Inf (or NaN where relu is 0)."""
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    return [helper.make_node("Div", [last, "zero"], ["div"], name="div")], [zero], "div"


def save(model: onnx.ModelProto, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_png(path, size: int = 32, seed: int = 0) -> Path:
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def checksums(*paths) -> dict:
    """sha256 of every file under ``paths`` (files or folders), by path."""
    out = {}
    for base in paths:
        base = Path(base)
        if not base.exists():
            continue
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@contextlib.contextmanager
def unchanged(*paths):
    """Assert that no file under ``paths`` is changed, added or removed inside the block (exceptions included)."""
    before = checksums(*paths)
    try:
        yield
    finally:
        after = checksums(*paths)
        assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                                 if before.get(k) != after.get(k)}
