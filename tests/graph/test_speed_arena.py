"""Sessions that share their model's weights draw their buffers from the process's one CPU arena (issue 25).

Without any arena every run's buffers were fresh pages from the system (ConvNeXt-tiny's saliency ~1.4x the unshared
time at batch 1); one arena per session would keep each session's peak. The process's arena is registered once in
onnxruntime's environment and reused by every lean session: these tests check the options that select it and that
results do not change when sessions of different graphs and batch sizes take turns over the same buffers (no timing:
the speed is measured by ``benchmarks/compare_peers.py`` and noted in ``onnx_cnnviz/runtime.py``).
"""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz import runtime

from tests.tiny_models import gap_classifier


@pytest.fixture
def share_everything(monkeypatch):
    """The tiny model's weights are far below the sharing threshold: share every weight here."""
    monkeypatch.setattr(runtime, "SHARED_MIN_BYTES", 0)
    monkeypatch.setattr(runtime, "SHARE_WEIGHTS", True)


def test_lean_sessions_use_the_process_arena(monkeypatch):
    monkeypatch.setattr(runtime, "SHARED_ARENA", True)
    lean = runtime.Session._options(2, lean=True)
    assert lean.get_session_config_entry("session.use_env_allocators") == "1"
    monkeypatch.setattr(runtime, "SHARED_ARENA", False)
    bare = runtime.Session._options(2, lean=True)
    assert not bare.enable_cpu_mem_arena
    with pytest.raises(RuntimeError, match="does not have configuration"):  # the entry is not set at all
        bare.get_session_config_entry("session.use_env_allocators")
    private = runtime.Session._options(2, lean=False)  # unshared sessions keep onnxruntime's own arena
    assert private.enable_cpu_mem_arena


def explain_in_turns(m, xs):
    """Gradient and forward graphs of one model, run in turns over batches of different sizes."""
    out = []
    for x in xs:
        out += [cv.saliency(m, x), cv.grad_cam(m, x, 1, layer="relu1"), m.scores(x), cv.gradients(m, x, rule="guided")]
    return out


def test_results_equal_with_and_without_the_process_arena(share_everything, monkeypatch):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 3, 8, 8)).astype(np.float32) for n in (3, 1, 5, 3)]
    monkeypatch.setattr(runtime, "SHARED_ARENA", True)
    m = cv.load(gap_classifier(size=8), device="cpu")
    with_arena = explain_in_turns(m, xs)
    assert m.new_session(m.build_graph()).lean  # the sessions above took the lean path
    monkeypatch.setattr(runtime, "SHARED_ARENA", False)
    without = explain_in_turns(cv.load(gap_classifier(size=8), device="cpu"), xs)
    for a, b in zip(with_arena, without):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
