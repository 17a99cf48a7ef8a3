"""Weight sharing and onnxruntime's pre-packing (issue 25, point 3): ``runtime.PREPACK_SHARED`` and the process arena's
threshold ``runtime.ARENA_MAX_ACTIVATION_BYTES``.

onnxruntime (1.31) packs the constant B of every float MatMul/Gemm once per session; a shared initializer only into a
private copy of that session, since its Python API cannot hand sessions a common pre-packed-weights container. Shared
sessions therefore run with pre-packing off unless ``PREPACK_SHARED`` asks for the private packed copies (faster on
MatMul-heavy models, more memory: ``benchmarks/prepack_sharing.py``, ``benchmarks/memory_sessions.py``). The results
must not depend on either choice. Gradient graphs declare about twice their forward's activations: at the old 512 MiB
threshold ConvNeXt-tiny's input-gradient graph (531 MiB per image) lost the arena and faulted in fresh pages every run.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz import runtime
from tests.tiny_models import gap_classifier

pytestmark = pytest.mark.quick


def pointwise_linear(last: str):
    """Mid nodes as in ConvNeXt's blocks: NCHW -> NHWC, a MatMul over channels (a constant 4x4 weight, which
    onnxruntime pre-packs), a ReLU, back to NCHW."""
    weight = np.random.default_rng(2).standard_normal((4, 4)).astype(np.float32)
    nodes = [helper.make_node("Transpose", [last], ["nhwc"], perm=[0, 2, 3, 1], name="to_nhwc"),
             helper.make_node("MatMul", ["nhwc", "pw"], ["mixed"], name="pw_linear"),
             helper.make_node("Relu", ["mixed"], ["mixed_relu"], name="pw_relu"),
             helper.make_node("Transpose", ["mixed_relu"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw")]
    return nodes, [numpy_helper.from_array(weight, "pw")], "nchw"


def config_entry(options, key: str):
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # not set
        return None


def test_shared_weights_are_read_in_place_with_prepacking_off_unless_asked(monkeypatch):
    value = ort.OrtValue.ortvalue_from_numpy(np.ones((4, 4), np.float32))
    options = ort.SessionOptions()
    runtime.read_in_place(options, ["pw"], [value])
    assert config_entry(options, "session.disable_prepacking") == "1"
    monkeypatch.setattr(runtime, "PREPACK_SHARED", True)
    options = ort.SessionOptions()
    runtime.read_in_place(options, ["pw"], [value])
    assert config_entry(options, "session.disable_prepacking") is None


def test_results_equal_with_and_without_prepacking_of_shared_weights(share_everything, monkeypatch):
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)

    def explain():
        m = cv.load(gap_classifier(size=8, mid=pointwise_linear), device="cpu")
        maps = [m.scores(x), cv.saliency(m, x), cv.grad_cam(m, x, layer="nchw"),
                cv.gradients(m, x, rule="guided")]
        return m, maps

    shared_model, shared = explain()
    assert shared_model.shared_weights is not None and len(shared_model.shared_weights) >= 3  # w1, pw, fc_w
    monkeypatch.setattr(runtime, "PREPACK_SHARED", True)
    packed_model, packed = explain()
    assert len(packed_model.shared_weights) == len(shared_model.shared_weights)
    monkeypatch.setattr(runtime, "SHARE_WEIGHTS", False)
    _, private = explain()
    for a, b, c in zip(shared, packed, private):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, c, rtol=1e-5, atol=1e-6)


def declaring(graph, nbytes: int):
    """``graph`` with one more float tensor declared in its ``value_info``: ``nbytes`` per image (the name is not
    produced by any node: only the declared total changes)."""
    out = graph.__class__()
    out.CopyFrom(graph)
    out.graph.value_info.append(helper.make_tensor_value_info("cnnviz_test/declared", TensorProto.FLOAT,
                                                              ["N", nbytes // 4]))
    return out


def test_gradient_graphs_of_a_convnext_tiny_sized_model_keep_the_process_arena(share_everything):
    m = cv.load(gap_classifier(size=8), device="cpu")
    graph = m.build_graph(wrt=[m.input_name], target_mode="top1")
    base = runtime.activation_bytes_per_image(graph)
    # ConvNeXt-tiny: forward 306 MiB, input-gradient graph 531 MiB of declared float tensors per image
    convnext_tiny_saliency = declaring(graph, 531 * 2 ** 20 - base)
    assert runtime.activation_bytes_per_image(convnext_tiny_saliency) == 531 * 2 ** 20
    assert m.new_session(convnext_tiny_saliency).process_arena
    # mvitv2_base_cls's forward alone declares 1.2 GB per image (issue 26): its graphs stay without the arena
    larger = declaring(graph, 1_200_000_000 - base)
    session = m.new_session(larger)
    assert session.lean and not session.process_arena
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    feeds = {m.input_name: x}
    np.testing.assert_allclose(m.new_session(convnext_tiny_saliency).run(feeds)["cnnviz/grad/x"],
                               session.run(feeds)["cnnviz/grad/x"], rtol=1e-6, atol=1e-7)
