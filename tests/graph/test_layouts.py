"""Deployed layouts (graph/layout.py): channels-last and integer-pixel image inputs, channels-last feature maps and
vision-transformer token maps, each checked against the same network in the usual NCHW float form or against torch.

* An NHWC input (a torch model that permutes its input first, as tf2onnx's NHWC graphs do) is found from the data
  flow; users give NCHW arrays and get the same scores, gradients and maps as from the NCHW export of the same net.
* A uint8 NHWC input with the preprocessing inside the graph (Cast -> Transpose -> Div -> Sub -> Div) takes raw
  pixels; its Grad-CAM equals the float model's on the preprocessed image, and its input gradient is the float
  model's divided by 255 * std (the chain rule through the in-graph normalisation).
* Token layers of a ViT and channels-last layers of a Swin transformer are seen as (N, C, h, w): their activations
  and gradients equal torch's reshaped the way pytorch-grad-cam's ``reshape_transform`` does, and Grad-CAM at them
  equals pytorch-grad-cam's.
"""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.graph.layout import ADAPTED_INPUT
from onnx_cnnviz.methods.registry import explain
from tests.cli import invoke
from tests.conftest import CACHE, rel_err
from tests.exporting import export_torchscript, torchvision_model
from tests.reference import module_output_and_grad
from tests.tiny_models import make_model, save, write_png

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

SIZE = 64
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ChannelsLast(torch.nn.Module):
    """``net`` taking (N, H, W, C) images, as TensorFlow models do."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


class RawPixels(torch.nn.Module):
    """``net`` taking uint8 (N, H, W, 3) pixels and normalising them inside (torchvision's preprocessing)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, pixels):
        x = pixels.float().permute(0, 3, 1, 2) / 255.0
        return self.net((x - self.mean) / self.std)


@pytest.fixture(scope="module")
def resnet():
    """resnet18 (random weights) exported three ways: NCHW float, NHWC float, uint8 NHWC raw pixels."""
    net = torchvision_model("resnet18")
    paths = {}
    for kind, module, dummy in (("nchw", net, torch.zeros(1, 3, SIZE, SIZE)),
                                ("nhwc", ChannelsLast(net), torch.zeros(1, SIZE, SIZE, 3)),
                                ("uint8", RawPixels(net).eval(), torch.zeros(1, SIZE, SIZE, 3, dtype=torch.uint8))):
        path = CACHE / f"layouts_resnet18_{kind}_{SIZE}.onnx"
        if not path.exists():
            export_torchscript(module, dummy, path)
        paths[kind] = cv.load(path, device="cpu")
    return net, paths


def test_channels_last_input_is_found_and_fed_as_nchw(resnet):
    _, models = resnet
    nchw, nhwc = models["nchw"], models["nhwc"]
    assert nhwc.input_layout == "NHWC" and nchw.input_layout == "NCHW"
    assert nhwc.input_shape == nchw.input_shape == (3, SIZE, SIZE)
    assert nhwc.input_name == ADAPTED_INPUT
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    assert rel_err(nhwc.scores(x), nchw.scores(x)) < 1e-5
    for method in ("saliency", "gradcam", "gradcampp", "occlusion"):
        params = {"window": (16, 16), "stride": (16, 16)} if method == "occlusion" else {}
        ours = explain(nhwc, method, x, targets=[1, 2], params=params)
        ref = explain(nchw, method, x, targets=[1, 2], params=params)
        assert ours.shape == ref.shape == (2, SIZE, SIZE), method
        assert np.abs(ours - ref).max() < 1e-4, method
    assert nhwc.default_layer is not None and nhwc.layer(nhwc.default_layer).shape == (None, 512, 2, 2)


def test_receptive_fields_follow_the_image_axes_through_transposes(resnet):
    from onnx_cnnviz.methods.receptive_field import receptive_field

    _, models = resnet
    ours, ref = (receptive_field(m, m.default_layer) for m in (models["nhwc"], models["nchw"]))
    assert (ours.size, ours.jump, ours.start, ours.layer_hw) == (ref.size, ref.jump, ref.start, ref.layer_hw)
    assert ours.size == (435, 435)  # torchvision ResNet-18 layer4 (graph/receptive_field.py)


def test_uint8_pixels_give_the_float_models_maps(resnet):
    net, models = resnet
    raw, nchw = models["uint8"], models["nchw"]
    assert raw.input_dtype == "uint8" and raw.takes_pixels and raw.input_layout == "NHWC"
    pixels = np.random.default_rng(1).integers(0, 256, (2, 3, SIZE, SIZE)).astype(np.uint8)
    x = ((pixels / 255.0 - np.reshape(MEAN, (1, 3, 1, 1))) / np.reshape(STD, (1, 3, 1, 1))).astype(np.float32)
    assert rel_err(raw.scores(pixels), nchw.scores(x)) < 1e-4
    assert rel_err(raw.scores(pixels.astype(np.float32)), nchw.scores(x)) < 1e-4
    assert np.abs(cv.grad_cam(raw, pixels, [3, 4]) - cv.grad_cam(nchw, x, [3, 4])).max() < 1e-4
    # d score / d pixel = d score / d x * dx/dpixel, with dx/dpixel = 1 / (255 std) per channel.
    g_raw = raw.run(pixels, wrt=[raw.input_name], targets=[3, 4]).grads[raw.input_name]
    g = nchw.run(x, wrt=[nchw.input_name], targets=[3, 4]).grads[nchw.input_name]
    assert rel_err(g_raw, g / (255.0 * np.reshape(STD, (1, 3, 1, 1)))) < 1e-4
    # and both are torch's
    xt = torch.tensor(x, requires_grad=True)
    net(xt)[[0, 1], [3, 4]].sum().backward()
    assert rel_err(g, xt.grad.numpy()) < 1e-4


def test_integer_pixels_that_are_computed_on_are_refused(tmp_path):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Add", ["pixels", "one"], ["shifted"]),
             helper.make_node("Cast", ["shifted"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["logits"])]
    model = make_model(nodes, [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 3, 8, 8])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                       [helper.make_tensor("one", TensorProto.UINT8, [], [1])])
    path = save(model, tmp_path / "int.onnx")
    with pytest.raises(cv.ModelStructureError, match=r"computes on them before casting.*'Add'|Add"):
        cv.load(path, device="cpu")


def test_cli_explains_a_raw_pixel_model_without_preprocessing_flags(resnet, tmp_path):
    path = CACHE / f"layouts_resnet18_uint8_{SIZE}.onnx"
    image = write_png(tmp_path / "in.png", SIZE, seed=2)
    out = tmp_path / "out"
    result = invoke("explain", path, image, "--method", "gradcam", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    assert "assuming" not in result.stderr  # no preprocessing warning: the model takes pixels
    assert any(out.iterdir())
    shown = invoke("inspect", path)
    assert "input        input  uint8 [N, 64, 64, 3]  <- image" in shown.stdout
    assert "NHWC uint8 image: give (N, C, H, W) pixel values" in shown.stdout and "raw pixels" in shown.stdout


# --- transformers -----------------------------------------------------------------------------------------------------
def small_vit():
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                               mlp_dim=64, num_classes=10).eval()
    torch.nn.init.normal_(net.heads.head.weight)  # torchvision starts the head at zero: every gradient would be 0
    return net


def small_swin():
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                           num_classes=10).eval()


def small_maxvit():
    from torchvision.models.maxvit import MaxVit

    torch.manual_seed(0)
    return MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32], block_layers=[1, 1],
                  head_dim=8, stochastic_depth_prob=0.0, num_classes=10).eval()


TIMM = {  # small configurations of timm's architectures (random weights, no download)
    "timm_vit": ("vit_tiny_patch16_224", dict(img_size=64, depth=2), 64),
    "timm_deit": ("deit_tiny_distilled_patch16_224", dict(img_size=64, depth=2), 64),  # class + distillation token
    "timm_swin": ("swin_tiny_patch4_window7_224", dict(img_size=112, depths=(1, 1, 1, 1), embed_dim=24,
                                                      num_heads=(1, 1, 1, 1)), 112),
}


def timm_model(name):
    timm = pytest.importorskip("timm")
    arch, kwargs, size = TIMM[name]
    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, num_classes=10, **kwargs).eval(), size


def vit_reshape(tensor, height=4, width=4):
    """pytorch-grad-cam's documented ViT ``reshape_transform`` (tutorials/vision_transformers)."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def swin_reshape(tensor):
    """pytorch-grad-cam's Swin ``reshape_transform`` for (N, h, w, C) stages: channels first."""
    return tensor.permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def transformers():
    made = {}
    nets = [("vit", small_vit(), 32), ("swin", small_swin(), 32), ("maxvit", small_maxvit(), 32)]
    nets += [(name, *timm_model(name)) for name in TIMM]
    for name, net, size in nets:
        path = CACHE / f"layouts_{name}_{size}.onnx"
        if not path.exists():
            export_torchscript(net, torch.zeros(1, 3, size, size), path)
        made[name] = (net, cv.load(path, device="cpu"), size)
    return made


def test_vit_token_layers_are_seen_on_the_patch_grid(transformers):
    net, m, size = transformers["vit"]
    layer = m.default_layer
    assert m.layer(layer).view.kind == "tokens" and m.layer(layer).view.prefix == 1
    assert layer == "/encoder/layers/encoder_layer_1/ln_1/LayerNormalization_output_0"  # blocks[-1].norm1
    assert m.layer(layer).shape == m.tensor_shape(layer) == (None, 32, 4, 4)
    listing = invoke("inspect", CACHE / "layouts_vit_32.onnx", "--all-layers").stdout
    assert "(tokens [N, 17, 32]: 1 + 4x4)  <- default" in listing
    x = np.random.default_rng(3).standard_normal((2, 3, size, size)).astype(np.float32)
    run = m.run(x, outputs=[layer], wrt=[layer, m.input_name], targets=[1, 2])
    a, g = module_output_and_grad(net, net.encoder.layers[-1].ln_1, x, [1, 2])
    assert rel_err(run.outputs[layer], vit_reshape(a).numpy()) < 1e-4
    assert rel_err(run.grads[layer], vit_reshape(g).numpy()) < 1e-4
    # a cotangent given on the (N, C, h, w) view: the class token gets none
    cot = np.random.default_rng(4).standard_normal((2, 32, 4, 4)).astype(np.float32)
    back = m.vjp(x, layer, cot)
    assert back.outputs[layer].shape == (2, 32, 4, 4)
    xt = torch.tensor(x, requires_grad=True)
    store = {}
    handle = net.encoder.layers[-1].ln_1.register_forward_hook(lambda _m, _i, out: store.setdefault("a", out))
    net(xt)
    handle.remove()
    (vit_reshape(store["a"]) * torch.tensor(cot)).sum().backward()
    assert rel_err(back.grads[m.input_name], xt.grad.numpy()) < 1e-4


def _pytorch_grad_cam_setup(name, net, m):
    """(module, reshape_transform, our layer) of pytorch-grad-cam's documented choice for each transformer."""
    if name.startswith("vit"):
        h = m.layer(m.default_layer).shape[2]
        return net.encoder.layers[-1].ln_1, lambda t: vit_reshape(t, h, h), m.default_layer
    if name in ("timm_vit", "timm_deit"):  # pytorch-grad-cam's vit_example.py: blocks[-1].norm1
        view = m.layer(m.default_layer).view
        assert m.default_layer == "/blocks/blocks.1/norm1/LayerNormalization_output_0"
        assert view.prefix == (2 if name == "timm_deit" else 1)
        h = view.grid[0]

        def drop_prefix(t):
            return t[:, view.prefix:].reshape(t.size(0), h, h, t.size(2)).permute(0, 3, 1, 2)
        return net.blocks[-1].norm1, drop_prefix, m.default_layer
    if name == "timm_swin":  # pytorch-grad-cam's swinT_example.py: layers[-1].blocks[-1].norm2, tokens on the grid
        layer = next(la.name for la in m.layers if la.name.startswith("/layers/layers.3/blocks/blocks.0/norm2/"))
        view = m.layer(layer).view
        assert view.kind == "tokens" and view.prefix == 0 and view.grid == (4, 4)
        return (net.layers[-1].blocks[-1].norm2,
                lambda t: t.reshape(t.size(0), 4, 4, t.size(2)).permute(0, 3, 1, 2), layer)
    if name.startswith("swin"):
        block = len(net.features) - 1
        prefix = f"/features/features.{block}/features.{block}.{len(net.features[-1]) - 1}/norm2/"
        layer = next(la.name for la in m.layers if la.name.startswith(prefix))
        assert m.layer(layer).view.kind == "NHWC"
        return net.features[-1][-1].norm2, swin_reshape, layer
    # MaxViT's last layer ends with the grid attention's departition: an NCHW map, no reshape needed
    assert "departition" in m.default_layer
    return net.blocks[-1].layers[-1], None, m.default_layer


@pytest.mark.parametrize("name", ["vit", "swin", "maxvit", *TIMM])
def test_grad_cam_equals_pytorch_grad_cam_with_its_reshape_transform(transformers, name):
    net, m, size = transformers[name]
    _compare_with_pytorch_grad_cam(name, net, m, size)


def _compare_with_pytorch_grad_cam(name, net, m, size):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module, transform, layer = _pytorch_grad_cam_setup(name, net, m)
    x = np.random.default_rng(5).standard_normal((2, 3, size, size)).astype(np.float32)
    targets = [1, 2]
    for ours_fn, theirs_cls in ((cv.grad_cam, pgc.GradCAM), (cv.grad_cam_pp, pgc.GradCAMPlusPlus)):
        with theirs_cls(model=net, target_layers=[module], reshape_transform=transform) as cam:
            ref = cam(torch.tensor(x), [ClassifierOutputTarget(t) for t in targets])
        ours = ours_fn(m, x, targets, layer=layer)
        assert ours.shape == ref.shape == (2, size, size)
        assert np.abs(ours - ref).max() < 1e-3, (name, ours_fn.__name__)


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t"])
def test_full_size_transformers_match_pytorch_grad_cam(name):
    """The real architectures at 224 px (random weights): input gradients equal torch's, Grad-CAM pytorch-grad-cam's."""
    net = torchvision_model(name)
    if name.startswith("vit"):
        torch.nn.init.normal_(net.heads.head.weight, std=0.02)
    path = CACHE / f"layouts_{name}_224.onnx"
    if not path.exists():
        export_torchscript(net, torch.zeros(1, 3, 224, 224), path)
    m = cv.load(path, device="cpu")
    x = np.random.default_rng(6).standard_normal((2, 3, 224, 224)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    net(xt)[[0, 1], [1, 2]].sum().backward()
    assert rel_err(m.run(x, wrt=[m.input_name], targets=[1, 2]).grads[m.input_name], xt.grad.numpy()) < 1e-4
    _compare_with_pytorch_grad_cam(name, net, m, 224)


@pytest.mark.parametrize("name", ["vit", "swin", "maxvit", "timm_swin"])
def test_report_and_occlusion_on_transformers(transformers, name, tmp_path):
    """The HTML report (default methods) and occlusion on token, channels-last and partitioned models: maps of the
    image's size, the same in the report's batch as one image at a time."""
    net, m, size = transformers[name]
    folder = tmp_path / "images"
    for i in range(2):
        write_png(folder / f"{i}.png", size, seed=i)
    out = tmp_path / "report"
    result = invoke("report", CACHE / f"layouts_{name}_{size}.onnx", folder, "--out", out, "--preprocess", "none")
    assert result.exit_code == 0, result.stderr
    assert (out / "report.html").stat().st_size > 0
    x = np.random.default_rng(7).standard_normal((2, 3, size, size)).astype(np.float32)
    params = {"window": (size // 4, size // 4), "stride": (size // 4, size // 4)}
    both = explain(m, "occlusion", x, [1, 2], params=params)
    one = explain(m, "occlusion", x[1:], [2], params=params)
    assert both.shape == (2, size, size) and np.abs(both[1:] - one).max() < 1e-4
    drop = m.scores(x[:1])[0, 1] - m.scores(np.where(np.arange(size)[None, None, :, None] < size // 4,
                                                     np.where(np.arange(size)[None, None, None, :] < size // 4,
                                                              0, x[:1]), x[:1]))[0, 1]
    assert abs(both[0, 0, 0] - drop) < 1e-4  # the top-left pixel is covered by the top-left window only
