"""CAM family against pytorch-grad-cam 1.5.7 on torchvision models with fixed random weights, and on the real
SqueezeNet.

Parity: our normalised, upsampled maps must be within 1e-3 (max abs) of pytorch-grad-cam's at the same module, same
targets (a batch of 4, one class each). pytorch-grad-cam normalises with ``(m - min) / (max + 1e-7)``: when a raw map's
range is far below 1e-4 (random-weight MobileNetV2: raw maps ~1e-11) the epsilon shrinks its maximum below 1 (to 0.998
there). We normalise with the exact min-max, so the reference is min-max scaled again before comparing; the map itself
(before that affine scaling) is what must agree. The raw differences are reported in the README / commit message.

The reference maps of all methods come from one pytorch-grad-cam forward/backward per model: ``GradCAM`` runs end to end
(hooks, targets, backward, post-processing) and every other class reuses the activations and gradients it captured
through its own ``compute_cam_per_layer`` and ``aggregate_multi_layers``, so the weighting code compared is theirs.
"""
from __future__ import annotations

import copy
import types

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError, ModelStructureError, UnknownLayerError
from onnx_cnnviz.methods.cam import (cam, cam_head, eigen_cam, grad_cam, grad_cam_pp, guided_grad_cam, hires_cam,
                                     layer_cam, score_cam, xgrad_cam)
from onnx_cnnviz.methods.top_k import top_k
from onnx_cnnviz.maps import normalize_maps

from ..conftest import export_onnx, rel_err

torch = pytest.importorskip("torch")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

TARGETS = [3, 281, 507, 999]
TOL = 1e-3

OURS = {"grad_cam": grad_cam, "grad_cam_pp": grad_cam_pp, "hires_cam": hires_cam, "xgrad_cam": xgrad_cam,
        "layer_cam": layer_cam, "eigen_cam": eigen_cam}
THEIRS = {"grad_cam": pgc.GradCAM, "grad_cam_pp": pgc.GradCAMPlusPlus, "hires_cam": pgc.HiResCAM,
          "xgrad_cam": pgc.XGradCAM, "layer_cam": pgc.LayerCAM, "eigen_cam": pgc.EigenCAM}

# model -> (the module pytorch-grad-cam users target, the ONNX tensor the TorchScript exporter gives its output)
LAYERS = {
    "resnet18": (lambda t: t.layer4[-1], "/layer4/layer4.1/relu_1/Relu_output_0"),
    "resnet50": (lambda t: t.layer4[-1], "/layer4/layer4.2/relu_2/Relu_output_0"),
    "vgg16_bn": (lambda t: t.features[-1], "/features/features.43/MaxPool_output_0"),
    "densenet121": (lambda t: t.features[-1], "/features/norm5/BatchNormalization_output_0"),
    "mobilenet_v2": (lambda t: t.features[-1], "/features/features.18/features.18.2/Clip_output_0"),
}
RESNET18_LAYER3 = "/layer3/layer3.1/relu_1/Relu_output_0"
RESNET18_LAYER1 = "/layer1/layer1.1/relu_1/Relu_output_0"


def _densenet_forward(self, x):
    # torchvision's DenseNet.forward applies F.relu(features, inplace=True): that overwrites the norm5 output a forward
    # hook saved (pytorch-grad-cam then pairs relu(norm5) activations with norm5 gradients). The same maths, not in
    # place, so that the reference sees what its hook is meant to see.
    out = torch.nn.functional.relu(self.features(x))
    out = torch.nn.functional.adaptive_avg_pool2d(out, (1, 1))
    return self.classifier(torch.flatten(out, 1))


@pytest.fixture(scope="module")
def loaded(loaded_batch):
    """name -> (torch model (a private copy), cnnviz Model, x (4, 3, S, S))"""
    made = {}

    def get(name):
        if name not in made:
            model, m, x = loaded_batch(name, len(TARGETS), seed=0)
            model = copy.deepcopy(model)
            if name.startswith("densenet"):
                model.forward = types.MethodType(_densenet_forward, model)
            made[name] = (model, m, x)
        return made[name]

    return get


def _targets(targets, n):
    if targets is None:
        return None
    targets = [targets] * n if np.ndim(targets) == 0 else list(targets)
    return [ClassifierOutputTarget(int(c)) for c in targets]


def reference_maps(model, modules, x, targets, methods=tuple(THEIRS)) -> dict:
    """pytorch-grad-cam's maps of ``methods`` from one forward/backward (see the module docstring)."""
    xt = torch.from_numpy(np.ascontiguousarray(x))
    tg = _targets(targets, len(x))
    out = {}
    with pgc.GradCAM(model=model, target_layers=modules) as gc:
        out["grad_cam"] = gc(xt, tg)
        activations = list(gc.activations_and_grads.activations)
        grads = list(gc.activations_and_grads.gradients)
        if tg is None:
            tg = _targets(np.argmax(gc.outputs.detach().numpy(), axis=-1), len(x))
    for name in methods:
        if name == "grad_cam":
            continue
        with THEIRS[name](model=model, target_layers=modules) as other:
            other.activations_and_grads.activations = list(activations)
            other.activations_and_grads.gradients = list(grads)
            out[name] = other.aggregate_multi_layers(other.compute_cam_per_layer(xt, tg, False))
    return out


def _close(ours, ref) -> float:
    assert ours.shape == ref.shape and ours.dtype == np.float32
    return float(np.abs(ours - normalize_maps(ref)).max())


# --- parity ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYERS))
def test_parity_with_pytorch_grad_cam(loaded, name):
    model, m, x = loaded(name)
    module, layer = LAYERS[name]
    if name == "vgg16_bn":  # 224 px, 15 GFLOPs a forward pass: 2 images keep the CI time down
        x = x[:2]
    targets = TARGETS[:len(x)]
    ref = reference_maps(model, [module(model)], x, targets)
    errors = {}
    for method, fn in OURS.items():
        ours = fn(m, x, targets, layer=layer)
        assert ours.shape == (len(x), *x.shape[2:])
        assert ours.min() >= 0 and ours.max() <= 1
        errors[method] = _close(ours, ref[method])
    assert max(errors.values()) <= TOL, errors
    if name == "vgg16_bn":  # Flatten -> Gemm -> Relu -> Gemm -> Relu -> Gemm: no CAM
        with pytest.raises(ModelStructureError, match="grad_cam"):
            cam(m, x)


def test_top1_and_single_int_targets(loaded):
    model, m, x = loaded("resnet18")
    module, layer = LAYERS["resnet18"]
    for targets in (None, 281):
        ref = reference_maps(model, [module(model)], x, targets, methods=("grad_cam", "grad_cam_pp"))
        assert _close(grad_cam(m, x, targets), ref["grad_cam"]) <= TOL  # layer=None is layer4[-1] here
        assert _close(grad_cam_pp(m, x, targets, layer=layer), ref["grad_cam_pp"]) <= TOL


def test_several_layers_are_averaged_as_pytorch_grad_cam_does(loaded):
    model, m, x = loaded("resnet18")
    ref = reference_maps(model, [model.layer3[-1], model.layer4[-1]], x, TARGETS,
                         methods=("grad_cam", "layer_cam", "eigen_cam"))
    layers = [RESNET18_LAYER3, LAYERS["resnet18"][1]]
    assert _close(grad_cam(m, x, TARGETS, layer=layers), ref["grad_cam"]) <= TOL
    assert _close(layer_cam(m, x, TARGETS, layer=layers), ref["layer_cam"]) <= TOL
    assert _close(eigen_cam(m, x, TARGETS, layer=layers), ref["eigen_cam"]) <= TOL
    with pytest.raises(InputError, match="upsample=True"):
        grad_cam(m, x, TARGETS, layer=layers, upsample=False)


def test_score_cam_matches_pytorch_grad_cam(loaded):
    # C extra forward passes per image: layer1 of resnet18 (64 channels) on 2 images keeps this to a few seconds.
    model, m, x = loaded("resnet18")
    x, targets = x[:2], [281, 3]
    ours = score_cam(m, x, targets, layer=RESNET18_LAYER1, batch_size=24)  # 24 does not divide 64: a ragged batch
    with pgc.ScoreCAM(model=model, target_layers=[model.layer1[-1]]) as sc:
        ref = sc(torch.from_numpy(x), _targets(targets, 2))
    assert _close(ours, ref) <= TOL


def test_counterfactual_grad_cam_negates_the_gradients(loaded):
    import cv2

    model, m, x = loaded("resnet18")
    layer = LAYERS["resnet18"][1]
    saved = {}
    hook = model.layer4[-1].register_forward_hook(lambda mod, inp, out: saved.__setitem__("a", out))
    try:
        scores = model(torch.from_numpy(x))
        loss = scores[torch.arange(len(x)), torch.tensor(TARGETS)].sum()
        (grads,) = torch.autograd.grad(loss, saved["a"])
    finally:
        hook.remove()
    acts, grads = saved["a"].detach().numpy(), grads.numpy()
    raw = np.maximum(((-grads).mean(axis=(2, 3))[:, :, None, None] * acts).sum(axis=1), 0)
    ref = normalize_maps(np.stack([cv2.resize(r, x.shape[2:][::-1]) for r in normalize_maps(raw)]))
    ours = grad_cam(m, x, TARGETS, layer=layer, counterfactual=True)
    assert np.abs(ours - ref).max() <= TOL
    assert np.abs(ours - grad_cam(m, x, TARGETS, layer=layer)).max() > 0.1  # it is a different picture


def test_guided_grad_cam_is_guided_backprop_times_grad_cam(loaded):
    from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel

    model, m, x = loaded("resnet18")
    layer = LAYERS["resnet18"][1]
    x1 = x[:1]
    ours = guided_grad_cam(m, x1, 281, layer=layer)
    assert ours.shape == x1.shape and ours.dtype == np.float32
    guided = GuidedBackpropReLUModel(copy.deepcopy(model), device="cpu")(torch.from_numpy(x1), 281)
    ref = guided.transpose(2, 0, 1)[None] * reference_maps(model, [model.layer4[-1]], x1, 281,
                                                           methods=("grad_cam",))["grad_cam"][:, None]
    assert rel_err(ours, ref) <= 1e-3
    # top-1 by default, the same class for both factors
    top = int(m.scores(x1).argmax())
    np.testing.assert_allclose(guided_grad_cam(m, x1, layer=layer), guided_grad_cam(m, x1, top, layer=layer))


# --- CAM -------------------------------------------------------------------------------------------------------------
def test_cam_equals_grad_cam_on_a_gap_linear_network(loaded):
    model, m, x = loaded("resnet18")
    head = cam_head(m)
    assert head.layer == m.default_layer == LAYERS["resnet18"][1]
    np.testing.assert_allclose(cam(m, x, TARGETS), grad_cam(m, x, TARGETS), atol=1e-5)
    # Raw: M_c = sum_k w^c_k f_k, and Grad-CAM's alpha_k = w^c_k / (h w) on GAP + linear.
    raw = cam(m, x, TARGETS, upsample=False, normalize=False, relu=False)
    h, w = raw.shape[1:]
    assert (h, w) == m.layer(head.layer).shape[2:]
    gc_raw = grad_cam(m, x, TARGETS, upsample=False, normalize=False, relu=False)
    assert rel_err(gc_raw * h * w, raw) <= 1e-5
    saved = {}
    hook = model.layer4[-1].register_forward_hook(lambda mod, inp, out: saved.__setitem__("a", out.detach()))
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        hook.remove()
    fc = model.fc.weight.detach().numpy()[TARGETS]
    assert rel_err(raw, np.einsum("nc,nchw->nhw", fc, saved["a"].numpy())) <= 1e-5


def test_gradient_free_methods_ask_for_no_gradient(loaded, monkeypatch):
    _, m, x = loaded("resnet18")
    asked = []
    real_run = m.run

    def spy(*args, **kwargs):
        asked.append(tuple(kwargs.get("wrt", ())))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(m, "run", spy)
    cam(m, x[:2])
    eigen_cam(m, x[:2])
    assert asked == [(), ()]


# The kitten (shared/images/kitten_224.png, 224x224, white background) spans x 35..212, y 15..212 (non-white
# pixels). KITTEN_BOX is that box; HEAD_BOX is the head and chest (x 45..174, y 15..164), the part an ImageNet "tabby"
# detector should fire on. Boxes are (x0, y0, x1, y1), end exclusive.
KITTEN_BOX = (35, 15, 213, 213)
HEAD_BOX = (45, 15, 175, 165)


def _mass_in(mp, box) -> float:
    x0, y0, x1, y1 = box
    return float(mp[y0:y1, x0:x1].sum() / mp.sum())


def _area(box) -> float:
    x0, y0, x1, y1 = box
    return (x1 - x0) * (y1 - y0) / 224 ** 2


def test_squeezenet_maps_find_the_kitten(squeezenet_path, kitten_x):
    m = cv.load(str(squeezenet_path), device="cpu")
    head = cam_head(m)
    # conv10 (1x1, 1000 classes) -> Relu -> GlobalAveragePool: the CAM layer is conv10's input (fire9 + dropout).
    assert head.layer == "fire9/concat_2" and "Relu" in head.form and head.weights.shape == (1000, 512)
    assert int(m.scores(kitten_x).argmax()) == 281
    for mp in (cam(m, kitten_x)[0], grad_cam(m, kitten_x, 281)[0],
               grad_cam(m, kitten_x, 281, layer="fire9/concat_1")[0]):
        y, x = np.unravel_index(mp.argmax(), mp.shape)
        assert HEAD_BOX[0] <= x < HEAD_BOX[2] and HEAD_BOX[1] <= y < HEAD_BOX[3]
        # A map that ignores the image puts area-fraction of its mass in a box: 0.70 in KITTEN_BOX, 0.39 in HEAD_BOX.
        # Measured: 0.90 and 0.66. Require the background (30% of the image) to get under 20% of the mass, and the
        # head box at least 1.4x its area share.
        assert _mass_in(mp, KITTEN_BOX) >= 0.80 > _area(KITTEN_BOX) + 0.09
        assert _mass_in(mp, HEAD_BOX) >= 1.4 * _area(HEAD_BOX)
    # CAM's own layer may be named through the Dropout (an identity at inference) or not.
    np.testing.assert_allclose(cam(m, kitten_x, layer="fire9/concat_1"), cam(m, kitten_x), atol=1e-6)

    maps, classes = top_k(cam, m, kitten_x, k=5)
    assert maps.shape == (1, 5, 224, 224) and classes.shape == (1, 5) and classes[0, 0] == 281
    assert list(classes[0]) == list(np.argsort(-m.scores(kitten_x)[0])[:5])
    np.testing.assert_allclose(maps[0, 0], cam(m, kitten_x, 281)[0], atol=1e-6)
    np.testing.assert_allclose(maps[0, 3], cam(m, kitten_x, int(classes[0, 3]))[0], atol=1e-6)


def test_top_k_with_grad_cam(loaded):
    _, m, x = loaded("resnet18")
    maps, classes = top_k(grad_cam, m, x[:2], k=3, layer=RESNET18_LAYER3)
    assert maps.shape == (2, 3, *x.shape[2:]) and classes.shape == (2, 3)
    scores = m.scores(x[:2])
    assert np.all(np.diff(np.take_along_axis(scores, classes, axis=1), axis=1) <= 0)
    np.testing.assert_allclose(maps[:, 1], grad_cam(m, x[:2], classes[:, 1], layer=RESNET18_LAYER3), atol=1e-6)
    with pytest.raises(InputError):
        top_k(grad_cam, m, x[:2], k=3, targets=1)


# --- post-processing and errors --------------------------------------------------------------------------------------
def test_raw_maps_stay_at_the_layer_resolution(loaded):
    _, m, x = loaded("resnet18")
    raw = hires_cam(m, x, TARGETS, upsample=False, normalize=False, relu=False)
    assert raw.shape == (len(x), *m.layer(m.default_layer).shape[2:]) and raw.min() < 0
    np.testing.assert_allclose(hires_cam(m, x, TARGETS, upsample=False, normalize=True),
                               normalize_maps(np.maximum(raw, 0)), atol=1e-6)


def test_unknown_layer(loaded):
    _, m, x = loaded("resnet18")
    with pytest.raises(UnknownLayerError, match="Did you mean"):
        grad_cam(m, x[:1], layer="/layer4/layer4.1/relu_1/Relu_output")
    with pytest.raises(UnknownLayerError):
        eigen_cam(m, x[:1], layer=["nope"])
    with pytest.raises(InputError, match="grad_cam"):  # CAM lives at the head's input only
        cam(m, x[:1], layer=RESNET18_LAYER3)


def test_cam_without_gap_linear_head_names_what_it_found(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 5)).eval()
    m = cv.load(str(export_onnx(net, torch.zeros(1, 3, 8, 8), tmp_path / "flat.onnx")), device="cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with pytest.raises(ModelStructureError, match="Gemm") as info:
        cam(m, x)
    assert "grad_cam" in str(info.value)
    assert grad_cam(m, x).shape == (2, 8, 8)  # Grad-CAM needs no particular head
