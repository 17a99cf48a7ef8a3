"""SegFormer (Xie et al., NeurIPS 2021) as a dense segmenter: transformers' ``SegformerForSemanticSegmentation`` with
a small random config (nothing downloaded), exported by torch.onnx.export; its (N, C, H/4, W/4) logits load with
task='segmenter', and a Region target's input gradient equals torch autograd of the same region sum."""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from tests.conftest import CACHE
from tests.exporting import export_torchscript

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # importing transformers and exporting: about a minute on the shared machine

SIZE, CLASSES = 64, 4


class Logits(torch.nn.Module):
    """The model's logits alone (transformers returns an output object)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(pixel_values=x).logits


@pytest.fixture(scope="module")
def segformer():
    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                                          hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2],
                                          num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32,
                                          num_labels=CLASSES)
    net = transformers.SegformerForSemanticSegmentation(config).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    module = Logits(net).eval()
    path = CACHE / f"segformer_tiny_{SIZE}.onnx"
    if not path.exists():
        export_torchscript(module, torch.zeros(1, 3, SIZE, SIZE), path, output="logits", input="pixel_values")
    return module, cv.load(path, device="cpu", task="segmenter")


def test_segformer_region_gradient_equals_torch_autograd(segformer):
    """Class c summed over a mask (pytorch-grad-cam's SemanticSegmentationTarget), two images in one run; SegFormer
    has no ReLU or max-pool (GELU, LayerNorm, attention, bilinear upsampling): nothing to pin."""
    module, m = segformer
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    out = module(torch.from_numpy(x)).numpy()
    assert m.num_classes == CLASSES and m.tensor_shape(m.score_name)[1:] == out.shape[1:] == (CLASSES, 16, 16)
    np.testing.assert_allclose(m.scores(x).reshape(out.shape), out, rtol=1e-4, atol=1e-4)
    masks = [out[i].argmax(0) == c for i, c in enumerate((1, 2))]
    assert all(mask.any() for mask in masks)
    ours = cv.gradients(m, x, targets=[cv.Region(c, mask) for c, mask in zip((1, 2), masks)])
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    logits = module(xt)
    loss = sum((logits[i, c] * torch.from_numpy(mask.astype(np.float32))).sum()
               for i, (c, mask) in enumerate(zip((1, 2), masks)))
    loss.backward()
    ref = xt.grad.numpy()
    for a, b in zip(ours, ref):
        assert np.abs(b).max() > 0
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * np.abs(b).max())


def test_segformer_default_layer_is_at_the_last_stage(segformer):
    """The segmenter's default CAM layer is a map of SegFormer's last, coarsest stage (its widest there: the last
    block's Mix-FFN expansion, 2 x 32 channels), and a Region's Grad-CAM there is a finite map of the image's size."""
    _, m = segformer
    layer = m.layer(m.default_layer)
    assert layer.shape[2:] == (SIZE // 8, SIZE // 8) and layer.shape[1] == 64
    x = np.random.default_rng(1).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    cam = cv.grad_cam(m, x, targets=cv.Region(0, np.ones((16, 16), bool)))
    assert cam.shape == (1, SIZE, SIZE) and np.isfinite(cam).all()
