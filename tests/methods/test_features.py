"""Filters, activations, top patches and feature space: real properties on hand-made and real models."""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz import image as im
from onnx_cnnviz.methods import feature_space as FS
from onnx_cnnviz.methods import features as F

from ..conftest import KITTEN, SHARED
from .planted import SIZE, noise_images, plant, planted_model


@pytest.fixture(scope="module")
def planted():
    return cv.load(planted_model())


def test_top_patch_finds_planted_pattern(planted):
    """A cross planted in image 37 of 60 noise images: channel 0's best image is 37, its crop holds the cross."""
    images = noise_images(60)
    y0, x0 = 30, 13
    images[37] = plant(images[37], y0, x0)
    stream = (img for img in images)  # a generator: streamed, never a list in the function
    res = F.top_patches(planted, stream, layer="relu2", channels=[0, 1], k=4, batch_size=8, guided=True)
    assert res.count == 60
    best = res.patches[0][0]
    assert best.index == 37 and best.value > 5 * res.patches[0][1].value
    assert [p.value for p in res.patches[0]] == sorted((p.value for p in res.patches[0]), reverse=True)
    bx0, by0, bx1, by1 = best.box
    assert bx1 - bx0 == 10 and by1 - by0 == 10  # the 10-px field of relu2, inside the image here
    assert bx0 <= x0 and by0 <= y0 and x0 + 5 <= bx1 and y0 + 5 <= by1  # the whole cross is in the patch
    assert best.crop.shape == (10, 10, 3) and best.guided.shape == (10, 10, 3)
    # the crop shows the cross: the planted pixels are the brightest of the crop
    gray = best.crop.astype(np.float32).mean(axis=2)
    cross_mask = np.zeros_like(gray, bool)
    cross_mask[y0 - by0 + 2, x0 - bx0:x0 - bx0 + 5] = cross_mask[y0 - by0:y0 - by0 + 5, x0 - bx0 + 2] = True
    assert gray[cross_mask].mean() > gray[~cross_mask].mean() + 60
    # guided backprop of the unit lights up the cross too
    gb = np.abs(best.guided.astype(np.float32) - 128).mean(axis=2)
    assert gb[cross_mask].mean() > gb[~cross_mask].mean()
    # batching does not change the answer
    again = F.top_patches(planted, images, layer="relu2", channels=[0, 1], k=4, batch_size=60, crops=False)
    assert [(p.index, p.unit) for p in again.patches[0]] == [(p.index, p.unit) for p in res.patches[0]]
    picture = res.grid(tile=32)
    assert picture.shape[0] > 2 * 32 and picture.dtype == np.uint8


def test_top_patches_on_squeezenet_folder(squeezenet_path, tmp_path):
    m = cv.load(squeezenet_path)
    kitten = im.read_image(KITTEN)
    for n, img in enumerate([kitten, kitten[:, ::-1], im.read_image(SHARED / "images" / "fish.png")]):
        im.save_image(tmp_path / f"{n}.png", img)
    res = F.top_patches(m, tmp_path, layer="fire9/concat_1", channels=[0, 5, 9], k=2, preprocess="caffe")
    assert res.count == 3 and res.receptive_field.size == (207, 207)
    for plist in res.patches.values():
        assert len(plist) == 2 and all(p.crop.shape[:2] == (p.box[3] - p.box[1], p.box[2] - p.box[0]) for p in plist)
        assert isinstance(plist[0].source, type(tmp_path))


def test_activations_order_and_scale(planted):
    x = plant(noise_images(1)[0], 10, 10)
    grid = F.activations(planted, x, layer="relu1", top=3)
    means = grid.maps.mean(axis=(1, 2))
    assert grid.channels == list(np.argsort(-means)[:3]) and grid.channels[0] == int(np.argmax(means))
    assert grid.maps.shape == (4, SIZE, SIZE) and grid.image.dtype == np.uint8
    full = F.activations(planted, x[None], layer="relu1", scale="channel")
    assert full.channels == [0, 1, 2, 3]


def test_filters_first_layer_colour(squeezenet_path):
    """SqueezeNet conv1: 64 colour tiles, min-max per filter, BGR weights flipped to RGB for display."""
    m = cv.load(squeezenet_path)
    name, w = F.conv_weights(m)
    assert w.shape == (64, 3, 3, 3)
    rgb = F.filters(m, order="BGR", tile=3, ncols=8)  # 3x3 kernels, no enlargement: tiles of 3 px, pad 1
    assert rgb.shape == (8 * 4 + 1, 8 * 4 + 1, 3)
    tile0 = rgb[1:4, 1:4]
    lo, hi = w[0].min(), w[0].max()
    expect = np.floor((w[0] - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)[..., ::-1]
    np.testing.assert_array_equal(tile0, expect)
    deep = F.filters(m, layer="fire2/expand3x3_2", max_filters=4, max_channels=5, tile=3)
    assert deep.shape == (4 * 4 + 1, 5 * 4 + 1, 3)  # rows = filters, columns = input channels


def test_embeddings_neighbours_and_maps(squeezenet_path, tmp_path):
    """SqueezeNet features: the mirrored kitten is the kitten's nearest neighbour, not the fish."""
    m = cv.load(squeezenet_path)
    assert FS.penultimate_layer(m) == "fire9/concat_2"  # input of the 1x1 classifier conv
    kitten = im.read_image(KITTEN)
    fish = im.read_image(SHARED / "images" / "fish.png")
    pictures = [kitten, fish, kitten[:, ::-1].copy(), np.ascontiguousarray(fish[::-1])]
    feats = FS.embeddings(m, pictures, preprocess="caffe", batch_size=3)
    assert feats.shape == (4, 512)
    idx, dist = FS.nearest_neighbours(feats, [0, 1], k=2)
    assert idx[0, 0] == 2 and dist[0, 0] < dist[0, 1]
    idx_c, _ = FS.nearest_neighbours(feats, [0], k=1, metric="cosine")
    assert idx_c[0, 0] == 2
    pooled = FS.embeddings(m, pictures[:2], layer="pool5_1", preprocess="caffe")
    assert pooled.shape == (2, 256)
    row = FS.neighbours_grid(pictures, [0], idx[:1], tile=32)
    assert row.shape[1] == 3 * 32 + 4 * 2


def test_project_pca_matches_sklearn_and_tsne_runs():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, 1, (20, 8)), rng.normal(6, 1, (20, 8))])
    xy = FS.project_2d(feats, "pca")
    from sklearn.decomposition import PCA

    ref = PCA(2).fit_transform(feats)
    for a in range(2):
        assert abs(abs(np.corrcoef(xy[:, a], ref[:, a])[0, 1]) - 1) < 1e-6
    assert abs(xy[:20, 0].mean() - xy[20:, 0].mean()) > 10  # the two clusters split along PC1
    t1, t2 = (FS.project_2d(feats, "tsne", seed=3, iterations=500) for _ in range(2))
    np.testing.assert_allclose(t1, t2)
    # t-SNE keeps the clusters apart: every point's nearest neighbour is in its own cluster
    nn, _ = FS.nearest_neighbours(t1, k=1)
    assert ((nn[:, 0] < 20) == (np.arange(40) < 20)).all()


def test_mosaic_and_scatter():
    pictures = [np.full((20, 30, 3), v, np.uint8) for v in (0, 60, 120, 180)]
    coords = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], float)
    canvas = FS.mosaic(pictures, coords, size=128, thumb=32)
    assert canvas.shape == (128, 128, 3)
    # corners get their thumbnail: top-left dark (0), bottom-right 180
    assert canvas[16, 16, 0] == 0 and canvas[128 - 16, 128 - 16, 0] == 180 and canvas[16, 128 - 16, 0] == 60
    same = FS.mosaic(pictures, np.zeros((4, 2)), size=128, thumb=32)  # snapping keeps all four visible
    assert len({int(v) for v in np.unique(same[..., 0])} & {0, 60, 120, 180}) == 4
    plot = FS.scatter_plot(coords, labels=[0, 0, 1, 1], names=["a", "b"], size=(2, 2), dpi=50)
    assert plot.shape == (100, 100, 3) and plot.dtype == np.uint8
