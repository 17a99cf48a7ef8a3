"""End-to-end gradient parity on real architectures: our ONNX backward graph against torch autograd and captum.

Weights are random with a fixed seed; each model is exported once with torch.onnx.export (dynamic batch). A batch of 4
with a different target per sample goes through one run. The comparison is max |ours - torch| <= 1e-4 * max |torch|
per sample.

The references run with their activation pattern pinned to the ONNX forward's (tests/reference.py explains why: a
float32 ReLU network has a few near-kink units per image whose on/off decision legitimately differs between two
frameworks' kernels). Every test also asserts that such flips are rare (the forwards agree) and that the plain,
unpinned torch gradient is close to ours overall.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.graph.autodiff import grad_name

from tests.conftest import rel_err
from tests.reference import onnx_kink_pattern, pinned, rectifier_rule_hooks

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

MODELS = ["resnet18", "resnet50", "vgg11_bn", "densenet121", "mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1",
          "efficientnet_b0", "googlenet", "shufflenet_v2_x1_0", "regnet_y_400mf", "convnext_tiny"]
TARGETS = [1, 5, 7, 9]
TOL = 1e-4


def batch_for(size: int, seed: int = 1234) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, size, size, generator=gen).numpy()


def torch_input_grad(model, x: np.ndarray, targets, pattern=None) -> np.ndarray:
    """d(sum_n S[n, targets[n]])/dx by torch autograd, with the kink pattern pinned when ``pattern`` is given."""
    xt = torch.from_numpy(x).clone().requires_grad_(True)
    with pinned(model, pattern) if pattern is not None else _nothing() as stats:
        out = model(xt)
    out[torch.arange(len(targets)), torch.as_tensor(targets)].sum().backward()
    if stats:
        assert stats["relu_flips"] <= 1e-4 * max(stats["relu_units"], 1), stats
    return xt.grad.numpy()


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def loaded(torchvision_onnx):
    """name -> (torch model, loaded Model, input size); models are exported once per session but loaded per test,
    so that a dozen architectures' sessions never sit in memory together."""

    def get(name):
        model, path, size = torchvision_onnx(name)
        return model, cv.load(path, device="cpu"), size

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_vanilla_gradient_matches_torch_autograd(loaded, name):
    model, m, size = loaded(name)
    x = batch_for(size)
    ours = cv.gradients(m, x, targets=TARGETS, rule="vanilla")
    ref = torch_input_grad(model, x, TARGETS, onnx_kink_pattern(m, x))
    assert ours.shape == ref.shape == x.shape
    for i in range(len(x)):  # per sample: each has its own target and scale
        assert rel_err(ours[i], ref[i]) <= TOL, f"{name} sample {i}: {rel_err(ours[i], ref[i]):.2e}"
    plain = torch_input_grad(model, x, TARGETS)
    assert cosine(ours, plain) > 0.99
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    assert rel_err(m.scores(x), logits) <= 1e-4


def captum_ready(name: str, model):
    """The same function as ``model`` with every ReLU an nn.ReLU module call (captum misses functional ReLUs)."""
    from torchvision.models.googlenet import BasicConv2d

    if name == "densenet121":  # forward() applies F.relu after `features`
        return torch.nn.Sequential(model.features, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), model.classifier).eval()
    if name == "googlenet":  # BasicConv2d.forward ends with F.relu
        for module in model.modules():
            if isinstance(module, BasicConv2d):
                relu = torch.nn.ReLU()
                module.add_module("relu_module", relu)
                module.forward = (lambda mod: (lambda t: mod.relu_module(mod.bn(mod.conv(t)))))(module)
        return model
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("rule,reference", [("guided", "GuidedBackprop"), ("deconvnet", "Deconvolution")])
def test_guided_and_deconvnet_match_captum(loaded, name, rule, reference):
    model, m, size = loaded(name)
    x = batch_for(size)
    ours = cv.gradients(m, x, targets=TARGETS, rule=rule)
    ready = captum_ready(name, model)
    explainer = getattr(captum_attr, reference)(ready)
    # captum overrides nn.ReLU only; ReLU6 and the other rectifiers get the same rule through the reference's hooks.
    with pinned(ready, onnx_kink_pattern(m, x)), rectifier_rule_hooks(ready, rule, include_relu=False):
        ref = explainer.attribute(torch.from_numpy(x).clone().requires_grad_(True),
                                  target=torch.as_tensor(TARGETS)).detach().numpy()
    for i in range(len(x)):
        assert rel_err(ours[i], ref[i]) <= TOL, f"{name} {rule} sample {i}: {rel_err(ours[i], ref[i]):.2e}"


@pytest.mark.parametrize("name,module_path", [("resnet18", "layer3"), ("resnet50", "layer4.1"),
                                              ("mobilenet_v2", "features.10"), ("convnext_tiny", "features.5")])
def test_gradient_at_intermediate_tensor_matches_module_output_grad(loaded, name, module_path):
    model, m, size = loaded(name)
    x = batch_for(size)
    captured = {}

    def hook(_module, _inputs, output):
        output.retain_grad()
        captured["out"] = output

    handle = model.get_submodule(module_path).register_forward_hook(hook)
    try:
        with pinned(model, onnx_kink_pattern(m, x)):
            out = model(torch.from_numpy(x))
        out[torch.arange(4), torch.as_tensor(TARGETS)].sum().backward()
    finally:
        handle.remove()
    ref_act = captured["out"].detach().numpy()
    ref_grad = captured["out"].grad.numpy()
    # The ONNX tensor equal to the module's output: the last layer whose activation matches it.
    result = m.run(x, outputs=[layer.name for layer in m.layers])
    matches = [layer.name for layer in m.layers if layer.shape[1:] == ref_act.shape[1:]
               and rel_err(result.outputs[layer.name], ref_act) <= 1e-4]
    assert matches, f"no ONNX tensor equals the output of {module_path}"
    tensor = matches[-1]
    grads = m.run(x, wrt=[tensor], targets=TARGETS).grads[tensor]
    assert rel_err(grads, ref_grad) <= TOL


def test_one_run_returns_input_and_layer_gradients_and_top1(loaded):
    model, m, size = loaded("resnet18")
    x = batch_for(size)
    result = m.run(x, outputs=[m.default_layer], wrt=[m.input_name, m.default_layer])
    top1 = m.scores(x).argmax(1)
    assert np.array_equal(result.targets, top1)
    ref = torch_input_grad(model, x, top1, onnx_kink_pattern(m, x))
    assert rel_err(result.grads[m.input_name], ref) <= TOL
    assert result.outputs[m.default_layer].shape == result.grads[m.default_layer].shape


def test_generated_graphs_are_valid_standard_onnx(loaded, tmp_path):
    _, m, size = loaded("mobilenet_v3_small")
    x = batch_for(size)
    for rule in ("vanilla", "guided", "deconvnet"):
        for mode in ("input", "top1"):
            graph = m.build_graph(None, outputs=[m.default_layer], wrt=[m.input_name, m.default_layer],
                                  rule=rule, target_mode=mode)
            onnx.checker.check_model(graph, full_check=True)
            domains = {node.domain for node in graph.graph.node}
            assert domains <= {"", "ai.onnx"}, domains
    # The saved graph runs with plain onnxruntime and gives the library's own gradients.
    import onnxruntime as ort

    graph = m.build_graph(None, wrt=[m.input_name], rule="guided", target_mode="input")
    path = tmp_path / "guided.onnx"
    onnx.save(graph, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    seed = np.zeros((4, m.num_classes), dtype=np.float32)
    seed[np.arange(4), TARGETS] = 1.0
    (plain,) = session.run([grad_name(m.input_name)], {m.input_name: x, "cnnviz/seed": seed})
    assert np.allclose(plain, cv.gradients(m, x, targets=TARGETS, rule="guided"), atol=1e-7)


def test_grad_cam_graph_does_not_backpropagate_to_the_image(loaded):
    _, m, _ = loaded("resnet50")
    graph = m.build_graph(None, outputs=[m.default_layer], wrt=[m.default_layer])
    backward = [n for n in graph.graph.node if n.name.startswith("cnnviz/")]
    # Only the head (GAP + Flatten + Gemm) is differentiated: no transposed convolutions at all.
    assert not [n for n in backward if n.op_type in ("Conv", "ConvTranspose")]
    assert len(backward) < 20


def test_rewritten_graphs_are_cached_per_layer_and_rule(torchvision_onnx):
    _, path, size = torchvision_onnx("squeezenet1_1")
    m = cv.load(path, device="cpu")
    x = batch_for(size)
    cv.gradients(m, x, rule="guided")
    cv.gradients(m, x[:2], targets=3, rule="guided")
    assert len(m._cache) == 2  # the top-1 graph and the fed-seed graph
    cv.gradients(m, x, rule="guided")
    cv.gradients(m, x[:1], targets=3, rule="guided")
    cv.gradients(m, x[:3], targets=[1, 2, 3], rule="guided")
    assert len(m._cache) == 2
    cv.gradients(m, x, rule="deconvnet")
    assert len(m._cache) == 3
