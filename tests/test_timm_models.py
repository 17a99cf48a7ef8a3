"""The timm classifiers the random-sample sweep broke (issue 24, point 7), end to end against torch.

Each model is built by timm with random weights (``pretrained=False``, fixed seed), exported with the TorchScript
exporter at opset 17 (tests/conftest.py's ``export_onnx``) and loaded by the library:

* ``resnetblur50``: BlurPool pads its maps in reflect mode before the blur filter (the rule of Pad's copying modes);
* ``mvitv2_tiny``: the relative-position bias is assigned into the attention map through ``ScatterND`` (mvitv2's
  smallest variant; ``mvitv2_base_cls``, the one the sweep met, has the same block and is run by the sweep script);

Input gradients are compared with torch autograd under the kink pattern of the ONNX forward (tests/reference.py),
relative error below 1e-4 of the largest entry per image.
"""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from tests.conftest import CACHE, export_onnx, rel_err
from tests.reference import onnx_kink_pattern, pinned

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

TARGETS = [1, 2]


def timm_net(name: str, **kwargs):
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, **kwargs).eval()
    for module in net.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return net


def exported(name: str, size: int, **kwargs):
    """(torch net, loaded Model, x (2, 3, size, size)); the export cached under .cache/tests."""
    net = timm_net(name, **kwargs)
    path = CACHE / f"timm_sample_{name}_{size}.onnx"
    if not path.exists():
        export_onnx(net, torch.zeros(1, 3, size, size), path)
    x = np.random.default_rng(3).standard_normal((2, 3, size, size)).astype(np.float32)
    return net, cv.load(path, device="cpu"), x


def torch_input_grad(net, m, x) -> np.ndarray:
    xt = torch.from_numpy(x).clone().requires_grad_(True)
    with pinned(net, onnx_kink_pattern(m, x)) as stats:
        out = net(xt)
    out[torch.arange(len(TARGETS)), torch.as_tensor(TARGETS)].sum().backward()
    assert stats["relu_flips"] <= 1e-4 * max(stats["relu_units"], 1), stats
    return xt.grad.numpy()


def assert_input_gradient_matches(net, m, x):
    ours = cv.gradients(m, x, targets=TARGETS)
    ref = torch_input_grad(net, m, x)
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
