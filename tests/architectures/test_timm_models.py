"""The timm classifiers the random-sample sweep broke (issue 24, point 7), end to end against torch.

Each model is built by timm with random weights (``pretrained=False``, fixed seed), exported with the TorchScript
exporter at opset 17 (tests/exporting.py's ``export_torchscript``) and loaded by the library:

* ``resnetblur50``: BlurPool pads its maps in reflect mode before the blur filter (the rule of Pad's copying modes);
* ``mvitv2_tiny``: the relative-position bias is assigned into the attention map through ``ScatterND`` (mvitv2's
  smallest variant; ``mvitv2_base_cls``, the one the sweep met, has the same block and is run by the sweep script);
* ``levit_128s``: tokens flattened with the batch around every BatchNorm1d (``bn(x.flatten(0, 1)).reshape_as(x)``)
  and attention without a residual at each downsampling: its token layers are followed to the last stage;
* ``hiera_tiny_224``: tokens kept "unrolled" (each mask unit's offsets outermost) and max-pooled by ``ReduceMax``
  over mask units: token layers of every stage, seen on the image grid as timm's own ``Reroll`` sees them.

Input gradients are compared with torch autograd under the kink pattern of the ONNX forward (tests/reference.py),
relative error below 1e-4 of the largest entry per image.
"""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from tests.conftest import CACHE, rel_err
from tests.exporting import export_torchscript
from tests.reference import module_output_and_grad, onnx_kink_pattern, pinned

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

TARGETS = [1, 2]


def timm_net(name: str, **kwargs):
    """timm's ``name`` with random weights (seed 0), in eval mode, activations not in place. A classifier that timm
    initialises to zero (Hiera's ``head_init_scale``) gets random weights too: with a zero head every gradient is 0
    and no comparison could fail."""
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, **kwargs).eval()
    for module in net.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    head = net.get_classifier()
    if isinstance(head, torch.nn.Linear) and not head.weight.detach().abs().max() > 0:
        torch.nn.init.normal_(head.weight, std=0.02)
    return net


def exported(name: str, size: int, **kwargs):
    """(torch net, loaded Model, x (2, 3, size, size)); the export cached under .cache/tests."""
    net = timm_net(name, **kwargs)
    path = CACHE / f"timm_models_{name}_{size}.onnx"
    if not path.exists():
        export_torchscript(net, torch.zeros(1, 3, size, size), path)
    x = np.random.default_rng(3).standard_normal((2, 3, size, size)).astype(np.float32)
    return net, cv.load(path, device="cpu"), x


def uncached(net):
    """``net`` with LeViT's cached attention biases dropped: in eval mode it keeps the bias tensor of its first
    forward, graph included, and a second backward through it fails."""
    for module in net.modules():
        if getattr(module, "attention_bias_cache", None):
            module.attention_bias_cache = {}
    return net


def torch_input_grad(net, m, x) -> np.ndarray:
    uncached(net)
    xt = torch.from_numpy(x).clone().requires_grad_(True)
    with pinned(net, onnx_kink_pattern(m, x)) as stats:
        out = net(xt)
    out[torch.arange(len(TARGETS)), torch.as_tensor(TARGETS)].sum().backward()
    assert stats["relu_flips"] <= 1e-4 * max(stats["relu_units"], 1), stats
    return xt.grad.numpy()


def assert_input_gradient_matches(net, m, x):
    ours = cv.gradients(m, x, targets=TARGETS)
    ref = torch_input_grad(net, m, x)
    assert np.abs(ref).max() > 0  # not a vacuous comparison
    for i in range(len(x)):
        assert rel_err(ours[i], ref[i]) < 1e-4, f"image {i}: {rel_err(ours[i], ref[i]):.2e}"


def test_resnetblur50_reflect_padding_input_gradient_equals_torch():
    net, m, x = exported("resnetblur50", 96)
    graph = m.spec().model.graph
    assert sum(n.op_type == "Pad" and any(a.s == b"reflect" for a in n.attribute) for n in graph.node) == 4
    assert_input_gradient_matches(net, m, x)


def test_mvitv2_scatter_nd_input_gradient_equals_torch():
    net, m, x = exported("mvitv2_tiny", 224)
    assert sum(n.op_type == "ScatterND" for n in m.spec().model.graph.node) == 10  # one per attention block
    assert_input_gradient_matches(net, m, x)


def _grid_view(t, h):
    return t.reshape(t.size(0), h, h, t.size(2)).permute(0, 3, 1, 2)


def _compare_grad_cam(net, m, x, module, transform, layer):
    """Grad-CAM and Grad-CAM++ at ``layer`` against pytorch-grad-cam's at ``module`` with ``reshape_transform``."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    for ours_fn, theirs_cls in ((cv.grad_cam, pgc.GradCAM), (cv.grad_cam_pp, pgc.GradCAMPlusPlus)):
        uncached(net)
        with theirs_cls(model=net, target_layers=[module], reshape_transform=transform) as cam:
            ref = cam(torch.tensor(x), [ClassifierOutputTarget(t) for t in TARGETS])
        ours = ours_fn(m, x, TARGETS, layer=layer)
        assert np.abs(ref).max() > 0
        assert ours.shape == ref.shape == x.shape[:1] + x.shape[2:]
        assert np.abs(ours - ref).max() < 1e-3, ours_fn.__name__


def _compare_layer(net, m, x, module, transform, layer):
    """The activation and gradient at ``layer`` (as the library's (N, C, h, w) view) against torch's at ``module``."""
    run = m.run(x, outputs=[layer], wrt=[layer], targets=TARGETS)
    a, g = module_output_and_grad(uncached(net), module, x, TARGETS)
    assert g.abs().max() > 0
    assert rel_err(run.outputs[layer], transform(a).numpy()) < 1e-4
    assert rel_err(run.grads[layer], transform(g).numpy()) < 1e-4


@pytest.fixture(scope="module")
def levit():
    return exported("levit_128s", 224)


def test_levit_tokens_are_followed_to_the_last_stage(levit):
    net, m, x = levit
    layer = m.default_layer
    assert layer == "/stages/stages.2/blocks/blocks.3/Add_1_output_0"  # stages[-1].blocks[-1]: 4x4 tokens
    view = m.layer(layer).view
    assert view.kind == "tokens" and view.grid == (4, 4) and view.prefix == 0
    stages = {la.name.split("/")[2] for la in m.layers if la.name.startswith("/stages/")}
    assert stages == {"stages.0", "stages.1", "stages.2"}
    assert len(m.layers) > 100  # the sweep saw 10 (the stem and one downsampling query)
    grids = {m.layer(la.name).shape[2:] for la in m.layers if la.view is not None and la.view.kind == "tokens"}
    assert grids == {(14, 14), (7, 7), (4, 4)}
    _compare_layer(net, m, x, net.stages[-1].blocks[-1], lambda t: _grid_view(t, 4), layer)
    # the middle stage, after the attention downsampling (which has no residual connection)
    middle = "/stages/stages.1/blocks/blocks.1/Add_1_output_0"
    _compare_layer(net, m, x, net.stages[1].blocks[1], lambda t: _grid_view(t, 7), middle)


def test_levit_grad_cam_and_input_gradient_equal_torch(levit):
    """Grad-CAM runs at the default layer; it is not compared with pytorch-grad-cam's map because with random weights
    LeViT's is ill-conditioned: at the last stage it is negative everywhere (0 after the ReLU, in both), a stage
    earlier it is nearly uniform (max - min is 1e-4 of its value), so the min-max normalisation of both tools makes a
    map of float32 rounding. Its ingredients, the layer's activation and gradient, are compared with torch's in
    the test above, and the input gradient here."""
    net, m, x = levit
    for method in (cv.grad_cam, cv.grad_cam_pp):
        cam = method(m, x, TARGETS)
        assert cam.shape == (2, 224, 224) and np.isfinite(cam).all()
    assert_input_gradient_matches(net, m, x)


@pytest.fixture(scope="module")
def hiera():
    return exported("hiera_tiny_224", 224)


def test_hiera_unrolled_tokens_are_seen_on_the_grid(hiera):
    net, m, x = hiera
    layer = m.default_layer
    assert layer == "/blocks.11/Add_1_output_0"  # blocks[-1]: the last stage, 7x7
    assert m.layer(layer).view.grid == (7, 7)
    sizes = {m.layer(la.name).shape[2:] for la in m.layers if la.view is not None and la.view.kind == "tokens"}
    assert sizes == {(56, 56), (28, 28), (14, 14), (7, 7)}
    # block 1 (stage 2): 28x28 tokens still unrolled by the later stages' 2x2 strides; timm's Reroll puts them back
    middle = "/blocks.1/Add_1_output_0"
    assert m.layer(middle).view.order is not None and m.layer(middle).view.grid == (28, 28)
    _compare_layer(net, m, x, net.blocks[1], lambda t: net.reroll(t, 1).permute(0, 3, 1, 2), middle)
    _compare_layer(net, m, x, net.blocks[-1], lambda t: net.reroll(t, 11).permute(0, 3, 1, 2), layer)
    # a cotangent given on the grid reaches the model's unrolled tokens in their places
    cot = np.random.default_rng(4).standard_normal((2, 192, 28, 28)).astype(np.float32)
    view = m.layer(middle).view
    native = view.from_nchw(cot)
    np.testing.assert_array_equal(view.to_nchw(native), cot)
    rerolled = net.reroll(torch.from_numpy(native), 1).permute(0, 3, 1, 2).numpy()
    np.testing.assert_array_equal(rerolled, cot)


def test_hiera_grad_cam_and_input_gradient_equal_torch(hiera):
    net, m, x = hiera
    _compare_grad_cam(net, m, x, net.blocks[-1], lambda t: net.reroll(t, 11).permute(0, 3, 1, 2), m.default_layer)
    _compare_grad_cam(net, m, x, net.blocks[1], lambda t: net.reroll(t, 1).permute(0, 3, 1, 2),
                      "/blocks.1/Add_1_output_0")
    assert_input_gradient_matches(net, m, x)


class _Kinks(torch.nn.Module):
    """Every decision benchmarks/timm_sample.py pins, in an order and with a dead branch that call-order pinning
    (tests/reference.py) cannot line up: a max-pool whose result is unused (dropped by the export, as DLA's
    ``downsample``), ReLU6 (``F.relu6``, exported as Clip), LeakyReLU, Hardswish, and an ``amax`` over groups of
    channels (Hiera's max over mask units, exported as ReduceMax)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        f = torch.nn.functional
        x = self.conv(x)
        f.max_pool2d(x, 2)  # dead: not in the ONNX graph
        x = f.leaky_relu(f.relu6(x) - 1.0, 0.1)
        x = f.hardswish(self.conv2(x))
        x = f.max_pool2d(x, 2)
        x = x.reshape(x.size(0), 2, 4, -1).amax(dim=1)  # (N, 4, HW/4 * ...)
        return self.fc(x.mean(dim=2))


def test_the_sample_pins_every_decision_by_value(tmp_path):
    """The timm sample's reference (benchmarks/timm_sample.py ``pinned_grad``) finds the ONNX node of every live
    kink call, whatever the order, and then equals our input gradient; pinned in float64 too."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("timm_sample", REPO / "benchmarks" / "timm_sample.py")
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    torch.manual_seed(0)
    net = _Kinks().eval()
    path = export_torchscript(net, torch.zeros(1, 3, 16, 16), tmp_path / "kinks.onnx")
    m = cv.load(path, device="cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    decisions = sample.onnx_decisions(m, x)
    counts = {k: len(v) for k, v in decisions.items() if v}
    assert counts == {"LeakyRelu": 1, "Clip": 1, "HardSwish": 1, "MaxPool": 1, "ReduceMax": 1}
    ref, stats = sample.pinned_grad(net, x, TARGETS, decisions)
    assert stats["unmatched"] == 0 and stats["pinned"] == 5, stats
    ours = cv.gradients(m, x, targets=TARGETS)
    assert np.abs(ref).max() > 0
    for i in range(len(x)):
        assert rel_err(ours[i], ref[i]) < 1e-4
    ref64, stats64 = sample.pinned_grad(net.double(), x, TARGETS, decisions, "float64")
    assert stats64["unmatched"] == 0
    for i in range(len(x)):
        assert rel_err(ours[i], ref64[i]) < 1e-4
