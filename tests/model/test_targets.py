"""Target objects (onnx_cnnviz/targets.py): each kind's seed equals torch autograd of the same scalar on a real
architecture; class targets given as objects, names or ints give the same maps; a Region on a torchvision segmenter
equals pytorch-grad-cam's SemanticSegmentationTarget."""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError
from tests.conftest import CACHE
from tests.exporting import export_torchscript
from tests.reference import onnx_kink_pattern, pinned

torch = pytest.importorskip("torch")

LAYER2 = "/layer2/layer2.1/relu_1/Relu_output_0"  # torchvision resnet18's layer2 output, as TorchScript names it


@pytest.fixture(scope="module")
def resnet(loaded_batch):
    model, m, x = loaded_batch("resnet18", 2)
    return model, m, x, onnx_kink_pattern(m, x)


def torch_grad(model, x, pattern, loss) -> np.ndarray:
    """d loss(model, x) / dx by torch autograd, ReLU and max-pool decisions pinned to the ONNX forward's."""
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    with pinned(model, pattern):
        loss(xt).backward()
    return xt.grad.numpy()


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * np.abs(b).max())


def test_each_target_kind_equals_torch_autograd(resnet):
    """ClassScore, OutputElement, OutputWeights on the logits and OutputWeights on an inner layer, one per image in
    one call where they share a tensor."""
    model, m, x, pattern = resnet
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, m.num_classes)).astype(np.float32)
    ours = cv.gradients(m, x, targets=[cv.ClassScore(3), cv.OutputWeights(None, w[1])])
    ref = torch_grad(model, x, pattern, lambda xt: (o := model(xt))[0, 3] + (o[1] * torch.from_numpy(w[1])).sum())
    close(ours, ref)
    ours = cv.gradients(m, x, targets=cv.OutputElement(m.score_name, (7,)))
    close(ours, torch_grad(model, x, pattern, lambda xt: model(xt)[:, 7].sum()))

    assert m.tensor_shape(LAYER2)[1:] == (128, 14, 14)
    seed = rng.standard_normal((2, 128, 14, 14)).astype(np.float32)
    ours = cv.gradients(m, x, targets=[cv.OutputWeights(LAYER2, seed[0]), cv.OutputElement(LAYER2, (5, 3, 4))])
    captured = {}
    handle = model.layer2.register_forward_hook(lambda mod, i, out: captured.update(out=out))
    try:
        def loss(xt):
            model(xt)
            return (captured["out"][0] * torch.from_numpy(seed[0])).sum() + captured["out"][1, 5, 3, 4]
        ref = torch_grad(model, x, pattern, loss)
    finally:
        handle.remove()
    close(ours, ref)


def test_class_targets_as_objects_names_and_ints_agree(resnet):
    """Grad-CAM with ClassScore(c), with the class's name and with c are the same maps, exactly; score_weights and
    OutputWeights with the one-hot row too; occlusion, Score-CAM and a metric read ClassScore as the int."""
    _, m, x, _ = resnet
    plain = cv.grad_cam(m, x, targets=[3, 9])
    np.testing.assert_array_equal(cv.grad_cam(m, x, targets=[cv.ClassScore(3), cv.ClassScore(9)]), plain)
    np.testing.assert_array_equal(cv.grad_cam(m, x, targets=[cv.ClassScore(3), 9]), plain)
    rows = np.zeros((2, m.num_classes), np.float32)
    rows[0, 3] = rows[1, 9] = 1
    np.testing.assert_array_equal(cv.grad_cam(m, x, targets=[cv.OutputWeights(None, r) for r in rows]), plain)
    named = cv.load(m.graph_proto, device="cpu", labels=[f"class {i}" for i in range(m.num_classes)])
    np.testing.assert_array_equal(cv.grad_cam(named, x, targets=["class 3", "class 9"]), plain)
    with pytest.raises(InputError, match="'clas 3' is not a class name of the model. Closest: 'class 3'"):
        cv.grad_cam(named, x, targets="clas 3")
    one = x[:1]
    np.testing.assert_allclose(cv.occlusion(m, one, targets=cv.OutputWeights(None, rows[0]), window=56, stride=56),
                               cv.occlusion(m, one, targets=3, window=56, stride=56), rtol=1e-6, atol=1e-6)
    layer = m.layers[-8].name
    np.testing.assert_allclose(cv.score_cam(m, one, targets=cv.OutputWeights(None, rows[0]), layer=layer),
                               cv.score_cam(m, one, targets=3, layer=layer), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        cv.integrated_gradients(m, x, targets=[cv.OutputWeights(None, r) for r in rows], steps=3, batch_size=4),
        cv.integrated_gradients(m, x, targets=[3, 9], steps=3, batch_size=4))
    maps = cv.grad_cam(m, one, targets=3)
    a = cv.metrics.deletion(m, one, maps, targets=cv.OutputWeights(None, rows[0]), output="score")
    b = cv.metrics.deletion(m, one, maps, targets=3, output="score")
    np.testing.assert_allclose(a.values, b.values, rtol=1e-9)
    assert a.targets.tolist() == [-1] and b.targets.tolist() == [3]


def test_target_errors(resnet):
    _, m, x, _ = resnet
    with pytest.raises(InputError, match="seed different tensors"):
        cv.gradients(m, x, targets=[cv.ClassScore(1), cv.OutputElement(LAYER2, 0)])
    with pytest.raises(InputError, match="is not an element of"):
        cv.gradients(m, x[:1], targets=cv.OutputElement(LAYER2, (128, 0, 0)))
    with pytest.raises(InputError, match="weights must be"):
        cv.gradients(m, x[:1], targets=cv.OutputWeights(None, np.ones(3)))
    with pytest.raises(InputError, match="class names"):
        cv.gradients(m, x[:1], targets="cat")
    with pytest.raises(InputError, match="class targets"):
        cv.cam(m, x[:1], targets=cv.OutputElement(None, 2))
    with pytest.raises(InputError, match="one per image"):
        cv.gradients(m, x, targets=[cv.ClassScore(1)] * 3)
    with pytest.raises(InputError, match="a Region is a class channel of a dense"):
        cv.gradients(m, x[:1], targets=cv.Region(0, np.ones((1, 1))))


@pytest.fixture(scope="module")
def lraspp():
    """torchvision's LR-ASPP MobileNetV3-Large, random weights, exported with its 'out' map as the only output."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).eval()

    class Out(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)["out"]

    module = Out(net).eval()
    path = CACHE / "lraspp_mobilenet_v3_large_160.onnx"
    if not path.exists():
        export_torchscript(module, torch.zeros(1, 3, 160, 160), path, output="out")
    return module, cv.load(path, device="cpu", task="segmenter")


def test_region_target_equals_pytorch_grad_cam_semantic_segmentation_target(lraspp):
    """pytorch-grad-cam's segmentation tutorial: the mask of pixels predicted as class c, SemanticSegmentationTarget(c,
    mask), GradCAM at the backbone's last map; ours: Region(c, mask) at the segmenter's default layer."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    module, m = lraspp
    assert m.task == "segmenter" and m.num_classes == 21
    assert m.default_layer == "/inner/backbone/backbone.16/backbone.16.2/HardSwish_output_0"
    x = np.random.default_rng(5).standard_normal((2, 3, 160, 160)).astype(np.float32)
    out = m.run(x, outputs=[m.score_name]).outputs[m.score_name]
    np.testing.assert_allclose(out, module(torch.from_numpy(x)).detach().numpy(), rtol=1e-3, atol=1e-4)
    classes = [int(np.bincount(o.argmax(0).ravel(), minlength=21).argmax()) for o in out]
    masks = [(o.argmax(0) == c).astype(np.float32) for o, c in zip(out, classes)]
    ours = cv.grad_cam(m, x, targets=[cv.Region(c, mask) for c, mask in zip(classes, masks)])
    with GradCAM(model=module, target_layers=[module.inner.backbone["16"]]) as peer:
        ref = peer(input_tensor=torch.from_numpy(x),
                   targets=[SemanticSegmentationTarget(c, mask) for c, mask in zip(classes, masks)])
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    with pytest.raises(InputError, match="a segmenter has no top-1 class"):
        cv.grad_cam(m, x)
    with pytest.raises(InputError, match="mask must be finite and 160x160"):
        cv.grad_cam(m, x[:1], targets=cv.Region(1, np.ones((20, 20))))
