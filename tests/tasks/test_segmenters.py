"""Dense segmenters (N, C, H, W): torchvision DeepLabV3, LR-ASPP and FCN (random weights, nothing downloaded)
exported by torch.onnx.export. A Region target (class c summed over a mask, pytorch-grad-cam's
SemanticSegmentationTarget) has the input gradient of torch autograd, with ReLU, hard-swish and hard-sigmoid
decisions pinned to the ONNX forward's (tests/reference.py, as the classifier parity tests), and its Grad-CAM at the
default layer (the backbone's last map) equals pytorch-grad-cam's."""
from __future__ import annotations


import numpy as np
import pytest

import onnx_cnnviz as cv
from tests.conftest import CACHE
from tests.reference import onnx_kink_pattern, pinned
from tests.exporting import export_torchscript

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

SIZE = 128
#: model -> the torch module whose output pytorch-grad-cam's segmentation tutorial explains at (the backbone's end).
SEGMENTERS = {"deeplabv3_mobilenet_v3_large": lambda net: net.backbone["16"],
              "lraspp_mobilenet_v3_large": lambda net: net.backbone["16"],
              "fcn_resnet50": lambda net: net.backbone.layer4}


class Out(torch.nn.Module):
    """The segmenter's 'out' map alone (torchvision returns a dict)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)["out"]


@pytest.fixture(scope="module", params=list(SEGMENTERS))
def segmenter(request):
    """(name, torch module returning 'out', ONNX model loaded as a segmenter), exported once (test cache)."""
    name = request.param
    torch.manual_seed(0)
    net = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None).eval()
    for module in net.modules():
        if hasattr(module, "inplace"):
            module.inplace = False  # the pinned reference patches the functional forms
    for p in net.parameters():
        p.requires_grad_(False)
    module = Out(net).eval()
    path = CACHE / f"segmenter_{name}_{SIZE}.onnx"
    if not path.exists():
        export_torchscript(module, torch.zeros(1, 3, SIZE, SIZE), path, output="out")
    return name, module, cv.load(path, device="cpu", task="segmenter")


def images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)


def test_region_input_gradient_equals_torch_autograd(segmenter):
    """Two images, two regions (class 3 over a rectangle, class 5 over the pixels the model assigns to its most
    frequent class) in one run: d/dx sum(mask * out[c]) equals torch autograd's, pinned (measured: 1e-6 relative)."""
    name, module, m = segmenter
    x = images(1)
    out = m.scores(x).reshape(2, 21, SIZE, SIZE)
    np.testing.assert_allclose(out, module(torch.from_numpy(x)).numpy(), rtol=1e-3, atol=1e-4 * np.abs(out).max())
    rect = np.zeros((SIZE, SIZE), np.float32)
    rect[32:96, 40:100] = 1.0
    top = int(np.bincount(out[1].argmax(0).ravel(), minlength=21).argmax())
    predicted = (out[1].argmax(0) == top).astype(np.float32)
    targets = [cv.Region(3, rect), cv.Region(top, predicted)]
    ours = cv.gradients(m, x, targets=targets)
    xt = torch.from_numpy(x).clone().requires_grad_(True)
    with pinned(module, onnx_kink_pattern(m, x)):
        o = module(xt)
    ((o[0, 3] * torch.from_numpy(rect)).sum() + (o[1, top] * torch.from_numpy(predicted)).sum()).backward()
    ref = xt.grad.numpy()
    for a, b in zip(ours, ref):
        assert np.abs(b).max() > 0
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * np.abs(b).max())


def test_region_grad_cam_equals_pytorch_grad_cam(segmenter):
    """Grad-CAM of a Region at the default layer (the backbone's last map: MobileNetV3's 960 channels, ResNet's
    layer4) equals pytorch-grad-cam's GradCAM with SemanticSegmentationTarget(c, mask) at that module, as its
    segmentation tutorial (mask: the pixels predicted as c)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    name, module, m = segmenter
    layer = SEGMENTERS[name](module.inner)
    x = images(2)
    out = m.scores(x).reshape(2, 21, SIZE, SIZE)
    classes = [int(np.bincount(o.argmax(0).ravel(), minlength=21).argmax()) for o in out]
    masks = [(o.argmax(0) == c).astype(np.float32) for o, c in zip(out, classes)]
    seen = {}

    def keep(_module, _inputs, output):
        seen["out"] = output.detach().numpy()

    handle = layer.register_forward_hook(keep)
    with torch.no_grad():
        module(torch.from_numpy(x))
    handle.remove()
    mine = m.run(x, outputs=[m.default_layer]).outputs[m.default_layer]
    # The default layer is that module's output itself, not a block before it (FCN's layer4.1, a residual fork).
    np.testing.assert_allclose(mine, seen["out"], rtol=1e-3, atol=1e-4 * np.abs(seen["out"]).max())
    ours = cv.grad_cam(m, x, targets=[cv.Region(c, mask) for c, mask in zip(classes, masks)])
    for p in module.parameters():  # pytorch-grad-cam backpropagates from the output: it needs a graph
        p.requires_grad_(True)
    try:
        with pinned(module, onnx_kink_pattern(m, x)), GradCAM(model=module, target_layers=[layer]) as peer:
            ref = peer(input_tensor=torch.from_numpy(x),
                       targets=[SemanticSegmentationTarget(c, mask) for c, mask in zip(classes, masks)])
    finally:
        for p in module.parameters():
            p.requires_grad_(False)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
