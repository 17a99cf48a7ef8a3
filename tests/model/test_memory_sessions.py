"""Sessions of one model share its weights (issue 15, point 4): peak memory stays bounded however many methods run.

Every method builds its own rewritten graph and onnxruntime session; each used to load a private copy of the weights
(plus onnxruntime's pre-packed copy and the serialized graph Python keeps), so VGG-16 (528 MB) went from 3.7 GB after
one method to 11 GB after five. Now the model holds the large weights once (``runtime.SharedWeights``) and every
session reads them from there. The VGG-16 measurement runs in a child process (``benchmarks/memory_sessions.py``),
whose ``ru_maxrss`` is its own peak; the small tests check the mechanism in-process: same results, one copy per
tensor (derived constants included), freed with the last session that uses it.
"""
from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz import runtime

from tests.conftest import load_script
from tests.tiny_models import gap_classifier, make_model

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_sessions.py"


def benchmark():
    return load_script(BENCHMARK)


def second_conv(last: str):
    """Mid nodes: Conv(4->4, 3x3, pad 1) 'conv2' -> Relu 'relu2' (a backward pass through it flips its kernel)."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2")]
    return ([helper.make_node("Conv", [last, "w2", "b2"], ["conv2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2")], inits, "relu2")


@pytest.fixture
def share_everything(monkeypatch):
    """The tiny model's weights are far below the sharing threshold: share every weight here."""
    monkeypatch.setattr(runtime, "SHARED_MIN_BYTES", 0)
    monkeypatch.setattr(runtime, "SHARE_WEIGHTS", True)


def test_sessions_share_weights_and_results_do_not_change(share_everything, monkeypatch):
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)

    def explain(m):
        return [cv.grad_cam(m, x, 1, layer="relu2"), cv.saliency(m, x), cv.gradients(m, x, rule="guided"),
                cv.xgrad_cam(m, x, layer="relu1"), cv.occlusion(m, x, window=4, stride=4)]

    shared_model = cv.load(gap_classifier(size=8, mid=second_conv), device="cpu")
    shared = explain(shared_model)
    monkeypatch.setattr(runtime, "SHARE_WEIGHTS", False)
    private = explain(cv.load(gap_classifier(size=8, mid=second_conv), device="cpu"))
    for a, b in zip(shared, private):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(runtime, "SHARE_WEIGHTS", True)

    m = cv.load(gap_classifier(size=8, mid=second_conv), device="cpu")
    vanilla = m.new_session(m.build_graph(wrt=[m.input_name], rule="vanilla", target_mode="top1"))
    guided = m.new_session(m.build_graph(wrt=[m.input_name], rule="guided", target_mode="top1"))
    scores = m.new_session(m.build_graph())
    # Each weight is held once: the two gradient graphs read the same tensors, the flipped kernels of their
    # backward Convs included (derived constants, found by content), and the forward-only graph the originals.
    assert {id(w) for w in vanilla.shared} == {id(w) for w in guided.shared}
    assert {id(w) for w in scores.shared} < {id(w) for w in vanilla.shared}
    weights = sum(t.ByteSize() > 0 for t in m.spec().model.graph.initializer)
    assert len(vanilla.shared) > weights  # the originals plus the flipped kernels
    assert m.shared_weights.nbytes == vanilla.shared_bytes
    np.testing.assert_array_equal(vanilla.run({m.input_name: x[:1]})[vanilla.output_names[1]],
                                  m.run(x[:1], wrt=[m.input_name]).grads[m.input_name])
    # The store keeps a tensor only while a session uses it (the model's cache holds the one m.run built).
    del vanilla, guided
    m._cache.clear()
    gc.collect()
    assert len(m.shared_weights) == len(scores.shared)
    del scores
    gc.collect()
    assert len(m.shared_weights) == 0


def test_only_weights_of_conv_gemm_matmul_are_shared():
    """A constant that also feeds another op (onnxruntime may rewrite such a one in place, under its own name) stays
    in the graph; the session gives what a private-weight session gives."""
    rng = np.random.default_rng(0)
    w, w_too = (rng.standard_normal((8, 64, 3, 3)).astype(np.float32) for _ in range(2))  # 18 KiB each
    offset = rng.standard_normal((1, 8, 1, 1)).astype(np.float32)
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
         helper.make_node("Add", ["y", "offset"], ["z"], name="add"),
         helper.make_node("Conv", ["x", "w_too"], ["y2"], name="conv2"),
         helper.make_node("Mul", ["w_too", "w_too"], ["squared"], name="mul")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 6, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("z", "y2", "squared")],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(offset, "offset"),
         numpy_helper.from_array(w_too, "w_too")])
    before = model.SerializeToString()
    store = runtime.SharedWeights()
    payload, shared = runtime.split_weights(model, store)
    assert set(shared) == {"w"}  # 'w_too' also feeds a Mul; 'offset' is small and feeds an Add
    assert model.SerializeToString() == before  # the graph handed in is left as it was
    by_name = {t.name: t for t in onnx.load_from_string(payload).graph.initializer}
    assert by_name["w"].data_location == TensorProto.EXTERNAL and not by_name["w"].raw_data
    assert numpy_helper.to_array(by_name["w_too"]).tobytes() == w_too.tobytes()
    assert len(payload) < len(before) - w.nbytes + 1024

    x = rng.standard_normal((1, 64, 6, 6)).astype(np.float32)
    got = runtime.Session(model, ["CPUExecutionProvider"], 1, weights=store)
    want = runtime.Session(model, ["CPUExecutionProvider"], 1)
    assert [v.array.tobytes() for v in got.shared] == [w.tobytes()] and not want.shared
    for name, value in want.run({"x": x}).items():
        np.testing.assert_allclose(got.run({"x": x})[name], value, rtol=1e-5, atol=1e-5)


def test_five_methods_on_vgg16_stay_within_twice_one(tmp_path):
    """VGG-16 (528 MB of weights), measured in a child process: the peak after five methods (five graphs, six
    sessions) stays within 2.2x the peak after one, and the four later methods together add less than four copies
    of the weights. Before the weights were shared, each method added about 2 GB: 3.7 GB after one method and
    11 GB after five (``benchmarks/memory_sessions.py`` prints both settings)."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    bench = benchmark()
    path = bench.export("vgg16", tmp_path / "vgg16.onnx", 224)
    weights_kib = path.stat().st_size / 1024
    r = bench.measure(path, share=True, images=1, timeout=600)
    print("peak KiB", {k: r[k] for k in ("load", "one", "five", "resident_now")}, "shared MiB",
          r["shared_weights_mib"])
    # The weights are really read in place: shared between the sessions, or (a model of 256 MiB and more) held
    # beside the graph, which every session reads.
    assert (r["shared_weights_mib"] + r["held_mib"]) * 1024 >= 0.9 * weights_kib, r
    assert r["five"] <= 2.2 * r["one"], r
    assert r["five"] - r["one"] <= 4 * weights_kib, r
