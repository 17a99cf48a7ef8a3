"""The tiny models of the tests: hand-built ONNX classifiers (no torch, built in milliseconds), and the helpers that
write them and check that the user's files are left alone.

``gap_classifier``: x (B, C, S, S) -> Conv(C->4, 3x3, pad 1) 'conv1' -> activation (Relu 'relu1' by default) [-> mid
nodes] -> GlobalAveragePool 'pool' -> Flatten 'flat' -> Gemm(->5) 'fc' (output 'logits'). ``make_model`` wraps nodes
into a model at an opset. Torch models are exported with tests/exporting.py.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 5


def make_model(nodes, inputs, outputs, inits, opset: int = 17, ir_version: int = 8,
               name: str = "tiny") -> onnx.ModelProto:
    """A model of one graph: ``nodes`` over the value infos ``inputs`` and ``outputs`` and the initializers ``inits``,
    at the default-domain ``opset``."""
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def activation_node(kind: str, x: str, name: str, opset: int = 17, **attrs):
    """(node, its initializers) applying ``kind`` to ``x``, node and output both named ``name``; the initializers are
    named "lo", "hi" (Clip6) and "slope" (PRelu).

    ``kind``: an op type (attributes from ``attrs``), "Clip6" (``Clip(0, 6)``: bounds as inputs at opset 11 and later,
    attributes before) or "PRelu" (a fixed per-channel slope of 4 channels, one of them negative).
    """
    if kind == "Clip6" and opset >= 11:
        inits = [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                 numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
        return helper.make_node("Clip", [x, "lo", "hi"], [name], name=name), inits
    if kind == "Clip6":
        return helper.make_node("Clip", [x], [name], name=name, min=0.0, max=6.0), []
    if kind == "PRelu":
        slope = numpy_helper.from_array(np.array([0.2, -0.3, 0.1, 0.0], np.float32).reshape(4, 1, 1), "slope")
        return helper.make_node("PRelu", [x, "slope"], [name], name=name), [slope]
    return helper.make_node(kind, [x], [name], name=name, **attrs), []


def gap_classifier(size: int = 8, mid=None, channels: int = 3, seed: int = 0, activation: str = "Relu",
                   activation_name: str = "relu1", opset: int = 17, **attrs) -> onnx.ModelProto:
    """The tiny classifier of the module docstring (weights standard normal from ``seed``).

    ``mid``: a function ``name -> (nodes, inits, output name)`` inserted after the activation. ``activation``,
    ``activation_name``, ``attrs``: see :func:`activation_node`. Below opset 11 the model is IR version 5 (what
    exporters of that time wrote)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((4, channels, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((CLASSES, 4)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.standard_normal(CLASSES).astype(np.float32), "fc_b")]
    act, act_inits = activation_node(activation, "conv1", activation_name, opset, **attrs)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1], name="conv1"), act]
    inits += act_inits
    last = activation_name
    if mid is not None:
        extra_nodes, extra_inits, last = mid(last)
        nodes += extra_nodes
        inits += extra_inits
    nodes += [helper.make_node("GlobalAveragePool", [last], ["pool"], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits, opset=opset,
                      ir_version=8 if opset >= 11 else 5)


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
