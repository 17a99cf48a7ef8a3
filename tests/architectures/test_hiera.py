"""timm's Hiera (issue 24, point 7): its max-pool over mask units is ``Tensor.amax``, exported as ``ReduceMax``.

On random weights a few of those maxima are near-ties that onnxruntime's and torch's float32 kernels resolve
differently, so the two frameworks return the exact gradients of two different functions (hiera_base_plus_224:
4e-2 apart on one image of two). As tests/reference.py does for ReLU and MaxPool, the torch reference here takes
each ``amax`` decision from the ONNX forward: ``amax`` becomes a sum of ``x`` over the elements that ONNX found
maximal (shared evenly between exact ties, as torch's own ``amax`` backward does), the same function near those
inputs, so every other rule is compared exactly; the decisions themselves are counted, and must be rare.

Hiera-Tiny (28 M parameters) keeps the test near a minute and 2.7 GB on 2 cores; the structure that matters here
(mask-unit attention with query pooling, three ReduceMax stages) is the same as in hiera_base_plus_224. Measured:
tiny, 1 decision of 1,053,696 flipped, pinned errors 8e-7; base_plus (``CNNVIZ_HIERA=hiera_base_plus_224``, 4.8 GB,
3 minutes), 2 of 1,229,312 flipped, pinned errors 9e-7 and 7e-7 where the plain torch gradient is 4e-2 away.
"""
from __future__ import annotations

import contextlib
import copy
import os

import numpy as np
import pytest
from onnx import helper

import onnx_cnnviz as cv
from onnx_cnnviz import runtime
from onnx_cnnviz.graph import held

from tests.conftest import CACHE, rel_err
from tests.exporting import export_torchscript

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

NAME = os.environ.get("CNNVIZ_HIERA", "hiera_tiny_224")  # hiera_base_plus_224 measured by hand
TARGETS = [1, 5]
TOL = 1e-4


def onnx_reduce_max_inputs(m, x: np.ndarray) -> list[np.ndarray]:
    """The input of every ReduceMax node of the model's normalised graph, in node (= torch call) order."""
    import onnxruntime as ort

    model = copy.deepcopy(m.spec(tuple(x.shape[2:])).model)
    wanted = [n.input[0] for n in model.graph.node if n.op_type == "ReduceMax"]
    del model.graph.output[:]
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in wanted)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # The optimisers the engine's own sessions run with, so the forward computes the same roundings.
    session = held.session(model, options, ["CPUExecutionProvider"], disabled_optimizers=runtime.DISABLED_OPTIMIZERS)
    return session.run(wanted, {m.input_name: x.astype(np.float32)})


@contextlib.contextmanager
def pinned_amax(model, inputs: list[np.ndarray]):
    """Within the block, ``Tensor.amax`` inside ``model``'s forward picks the elements ONNX found maximal."""
    original = torch.Tensor.amax
    calls, stats = [0], {"flips": 0, "groups": 0}
    active = [False]

    def amax(x, dim=(), keepdim=False):
        if not active[0]:
            return original(x, dim, keepdim)
        ref = torch.from_numpy(inputs[calls[0]])
        calls[0] += 1
        assert tuple(ref.shape) == tuple(x.shape), f"amax #{calls[0]}: ONNX {tuple(ref.shape)}, torch {x.shape}"
        mask = (ref == original(ref, dim, True)).to(x.dtype)
        ours = (x.detach() == original(x.detach(), dim, True)).to(x.dtype)
        stats["flips"] += int((mask != ours).any(dim=dim).sum())
        stats["groups"] += int(mask.sum(dim=dim).numel())
        return (x * mask).sum(dim=dim, keepdim=keepdim) / mask.sum(dim=dim, keepdim=keepdim)

    hooks = [model.register_forward_pre_hook(lambda *_: active.__setitem__(0, True)),
             model.register_forward_hook(lambda *_: active.__setitem__(0, False))]
    torch.Tensor.amax = amax
    try:
        yield stats
    finally:
        torch.Tensor.amax = original
        for hook in hooks:
            hook.remove()
    assert calls[0] == len(inputs), f"torch called amax {calls[0]} times, ONNX has {len(inputs)} ReduceMax"


@pytest.fixture(scope="module")
def hiera():
    """(timm model, its TorchScript ONNX export at opset 17). timm starts the classifier at zero (every gradient
    would be 0): it is redrawn."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.head.fc.weight, std=0.02)
    path = CACHE / f"{NAME}_timm{timm.__version__}_headinit.onnx"
    if not path.exists():
        export_torchscript(model, torch.zeros(1, 3, 224, 224), path)
    return model, path


def test_input_gradient_equals_pinned_torch_autograd(hiera):
    model, path = hiera
    m = cv.load(path, device="cpu")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)).numpy()
    ours = cv.gradients(m, x, targets=TARGETS)
    assert rel_err(cv.gradients(m, x, targets=TARGETS), ours) == 0.0, "the gradient changed between two runs"
    inputs = onnx_reduce_max_inputs(m, x)
    assert len(inputs) >= 3
    xt = torch.from_numpy(x).clone().requires_grad_(True)
    with pinned_amax(model, inputs) as stats:
        logits = model(xt)
    logits[torch.arange(len(TARGETS)), torch.as_tensor(TARGETS)].sum().backward()
    ref = xt.grad.numpy()
    print(NAME, "amax decisions", stats, "errors", [rel_err(ours[i], ref[i]) for i in range(len(x))])
    assert stats["flips"] <= 1e-3 * stats["groups"], stats  # the forwards agree but for rare near-ties
    assert rel_err(m.scores(x), logits.detach().numpy()) <= 1e-4
    for i in range(len(x)):
        assert np.abs(ref[i]).max() > 0, "degenerate reference"
        assert rel_err(ours[i], ref[i]) <= TOL, f"sample {i}: {rel_err(ours[i], ref[i]):.2e} ({stats})"
