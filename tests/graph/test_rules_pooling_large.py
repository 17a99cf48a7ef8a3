"""AveragePool windows larger than their input (issue 26): Hugging Face's EfficientNet pools its 7x7 map with a
1280x1280 ``ceil_mode`` AveragePool. The backward rule clips the window to the taps that read the input, so its
constant is sized by the input, not by ``kernel_shape``; each variant is checked against finite differences with
the harness of tests/graph/test_rules.py."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from onnx_cnnviz.graph.autodiff.rules.pooling import avg_pool_counts, live_taps

from .test_rules import build, check, gradient_graph, one, rand

LARGE = {
    # HF EfficientNet's pooler in small: kernel = stride > input, ceil_mode, one output.
    "hf_pooler": ((2, 3, 4, 4), dict(kernel_shape=[9, 9], strides=[9, 9], ceil_mode=1)),
    "hf_pooler_include_pad": ((1, 2, 4, 4), dict(kernel_shape=[9, 9], strides=[9, 9], ceil_mode=1,
                                                 count_include_pad=1)),
    "non_square": ((1, 2, 3, 5), dict(kernel_shape=[7, 11], strides=[7, 11], ceil_mode=1)),
    # Several outputs whose windows overhang the input: stride 1, ceil_mode, pads, both count conventions.
    "overhang_pads_exclude": ((1, 2, 4, 4), dict(kernel_shape=[6, 6], strides=[1, 1], pads=[2, 2, 2, 2],
                                                 ceil_mode=1, count_include_pad=0)),
    "overhang_pads_include": ((1, 2, 4, 4), dict(kernel_shape=[6, 6], strides=[1, 1], pads=[2, 2, 2, 2],
                                                 ceil_mode=1, count_include_pad=1)),
    "overhang_stride2_asym": ((1, 2, 5, 4), dict(kernel_shape=[7, 6], strides=[2, 3], pads=[3, 1, 2, 2],
                                                 ceil_mode=1, count_include_pad=0)),
    "overhang_stride2_asym_include": ((1, 2, 5, 4), dict(kernel_shape=[7, 6], strides=[2, 3], pads=[3, 1, 2, 2],
                                                         ceil_mode=1, count_include_pad=1)),
    # A kernel as large as the padded input, no ceil_mode: one window, partly padding.
    "whole_padded": ((1, 2, 3, 3), dict(kernel_shape=[5, 5], pads=[1, 1, 1, 1], count_include_pad=1)),
    "whole_padded_exclude": ((1, 2, 3, 3), dict(kernel_shape=[5, 5], pads=[1, 1, 1, 1])),
    # Dilated: the live taps start past the padding, leaving rows at the start no window reads.
    "dilated_pads": ((1, 2, 3, 5), dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[1, 1, 1, 1],
                                        count_include_pad=1)),
    "dilated_ceil": ((1, 2, 4, 4), dict(kernel_shape=[4, 4], dilations=[2, 2], strides=[3, 3], pads=[2, 2, 2, 2],
                                        ceil_mode=1)),
    "1d": ((2, 3, 5), dict(kernel_shape=[8], strides=[8], ceil_mode=1)),
}


@pytest.mark.parametrize("name", list(LARGE))
def test_average_pool_kernel_larger_than_input(name):
    shape, attrs = LARGE[name]
    opset = 19 if "dilations" in attrs else 17
    check(one("AveragePool", rand(shape, seed=3), opset=opset, **attrs))


def _constant_bytes(model) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def test_nominal_kernel_costs_nothing():
    """The HF EfficientNet pooler's 1280x1280 kernel over 7x7 (8 channels here; the model has 1280, where the old rule
    built an 8.4 GB kernel of ones; a global window is differentiated as a global pool, with no kernel at all."""
    case = one("AveragePool", rand((1, 8, 7, 7)), kernel_shape=[1280, 1280], strides=[1280, 1280], ceil_mode=1)
    gg = gradient_graph(case)
    added = _constant_bytes(gg.model) - _constant_bytes(build(case))
    assert added < 1024, added
    assert "ConvTranspose" not in {n.op_type for n in gg.model.graph.node}


def test_overhanging_kernel_is_clipped_to_the_input():
    """Two windows of a 64x64 kernel over 5x5 (stride 1, pads 30): the kernel of ones the rule builds spans the
    taps that read the input, at most ``size + (out - 1) stride`` = 6 per axis, not 64."""
    case = one("AveragePool", rand((1, 4, 5, 5)), kernel_shape=[64, 64], pads=[30, 30, 30, 30], ceil_mode=1)
    gg = gradient_graph(case)
    kernels = [numpy_helper.to_array(t) for t in gg.model.graph.initializer if "avgpool_ones" in t.name]
    assert kernels and all(k.shape[2:] == (6, 6) for k in kernels), [k.shape for k in kernels]


def test_live_taps_brute_force():
    """live_taps and the closed-form counts equal a tap-by-tap enumeration over many geometries."""
    rng = np.random.default_rng(0)
    for _ in range(3000):
        size, k, s, d = (int(v) for v in rng.integers(1, 9, 4))
        pb, pe = (int(v) for v in rng.integers(0, k * d, 2))
        span = (k - 1) * d + 1
        out = (size + pb + pe - span) // s + 1 + int(rng.integers(0, 2))  # floor or ceil-like extra window
        if out < 1:
            continue
        used = [j for j in range(k) if any(0 <= o * s - pb + j * d < size for o in range(out))]
        first, last = live_taps(size, out, k, s, d, pb)
        if used:
            assert (first, last) == (used[0], used[-1]), (size, out, k, s, d, pb)
        else:
            assert first > last
        for include in (0, 1):
            lo, hi = (-pb, size + pe) if include else (0, size)
            expected = [sum(lo <= o * s - pb + j * d < hi for j in range(k)) for o in range(out)]
            got = avg_pool_counts([size], [out], [k], [s], [d], [pb], [pe], include)
            assert list(got) == expected
