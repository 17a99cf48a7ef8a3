"""FC -> conv rewrite: exactly the original scores at the original size, a sliding classifier at larger sizes."""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.methods.score_map import score_map

from ..conftest import CACHE, export_onnx


def _alexnet_like():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 32), nn.ReLU(),
        nn.Linear(32, 10)).eval()


@pytest.fixture(scope="module")
def alexnet_like():
    import torch

    path = CACHE / "alexnet_like_32.onnx"
    if not path.exists():
        export_onnx(_alexnet_like(), torch.zeros(1, 3, 32, 32), path)
    return cv.load(path)


def test_flatten_gemm_chain_exact_and_sliding(alexnet_like):
    m = alexnet_like
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    ref = m.scores(x)
    out = score_map(m, x)
    assert out.shape == (3, 10, 1, 1)
    np.testing.assert_allclose(out[:, :, 0, 0], ref, rtol=1e-5, atol=1e-5)
    # a 48x48 image: a 5x5 grid (total stride 4); cell (i, j) = the network on the 32x32 window at (4i, 4j)
    big = rng.standard_normal((1, 3, 48, 48)).astype(np.float32)
    grid = score_map(m, big)
    assert grid.shape == (1, 10, 5, 5)
    windows = np.concatenate([big[:, :, 4 * i:4 * i + 32, 4 * j:4 * j + 32] for i in range(5) for j in range(5)])
    np.testing.assert_allclose(grid[0].reshape(10, 25).T, m.scores(windows), rtol=1e-4, atol=1e-4)
    probs = score_map(m, big, softmax=True)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_gap_gemm_resnet(torchvision_onnx):
    """ResNet-18: GAP -> Flatten -> Gemm becomes a 4x4 average pool (stride 1) -> 1x1 conv."""
    _, path, size = torchvision_onnx("resnet18")
    m = cv.load(path)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    np.testing.assert_allclose(score_map(m, x)[:, :, 0, 0], m.scores(x), rtol=1e-4, atol=1e-4)
    assert score_map(m, rng.standard_normal((1, 3, size + 64, size + 32)).astype(np.float32)).shape == (1, 1000, 3, 2)


def test_squeezenet_451(squeezenet_path, kitten_x):
    """SqueezeNet (conv classifier, GAP, softmax): exact at 224; a 451x451 image gives a grid of class maps in
    one run (the seed slides' tiger-cat example, here with the kitten pasted at the top left of a mean image)."""
    m = cv.load(squeezenet_path)
    np.testing.assert_allclose(score_map(m, kitten_x)[:, :, 0, 0], m.scores(kitten_x), rtol=1e-4, atol=1e-3)
    big = np.zeros((1, 3, 451, 451), np.float32)
    big[:, :, :224, :224] = kitten_x
    grid = score_map(m, big, softmax=True)
    assert grid.shape[2:] == (15, 15)  # 28x28 conv10 map, 13x13 window, stride 1
    cat = grid[0, 281:286].sum(axis=0)  # the five domestic-cat classes
    assert cat[0, 0] > 0.9 and cat[0, 0] > cat[-1, -1]
