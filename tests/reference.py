"""A torch reference with its activation pattern pinned to the one onnxruntime computed.

Why: the gradient of a ReLU network is piecewise constant in its activation pattern (which units are on, which
element wins each max-pool window, which segment of a hard activation is active). torch's and onnxruntime's float32
kernels differ by ~1e-6 relative, so on random-weight networks a few pre-activations per image sit close enough to a
kink to flip -- and then both frameworks return the exact gradient of *different* linear regions, differing by up to
a few percent near the flipped unit. To compare gradients at 1e-4 without hand-picking inputs, this reference runs
torch autograd with every kink decision taken from the ONNX forward pass: the same region, so every other rule
(convolutions, pooling, normalisation, the head) is compared exactly, and the decisions themselves are checked
element-wise (``pattern_mismatch``) so a wrong mask cannot hide.

The ONNX graph lists kink ops in the order torch called them (the TorchScript exporter emits nodes in trace order);
shapes are asserted at every call so a misalignment fails loudly instead of silently.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
from onnx import helper

from onnx_cnnviz import runtime
from onnx_cnnviz.graph import held

KINK_OPS = ("Relu", "Clip", "MaxPool", "HardSwish", "HardSigmoid")


def onnx_kink_pattern(m, x: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Run the model's normalised graph and return, per kink op type in node order, what torch needs to pin it:
    Relu/Clip -> the output; MaxPool -> the flat indices; HardSwish/HardSigmoid -> the input."""
    import onnxruntime as ort

    model = copy.deepcopy(m.spec(tuple(x.shape[2:])).model)
    wanted, kinds = [], []
    for node in model.graph.node:
        if node.op_type not in KINK_OPS:
            continue
        if node.op_type == "MaxPool":
            while len(node.output) < 2:
                node.output.append("")
            if not node.output[1]:
                node.output[1] = node.output[0] + "__indices"
            wanted.append(node.output[1])
        elif node.op_type in ("HardSwish", "HardSigmoid"):
            wanted.append(node.input[0])
        else:
            wanted.append(node.output[0])
        kinds.append(node.op_type)
    pattern: dict[str, list[np.ndarray]] = {k: [] for k in KINK_OPS}
    if not wanted:  # a smooth network (SiLU, GELU): nothing to pin
        return pattern
    del model.graph.output[:]
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in wanted)
    # The optimisers the engine's own sessions run with: a model held outside its protobuf runs BatchNorm unfused
    # (runtime.HELD_DISABLED_OPTIMIZERS), and a pattern read from the fused forward would pin other float32 roundings.
    disabled = runtime.HELD_DISABLED_OPTIMIZERS if held.any_held(model) else runtime.DISABLED_OPTIMIZERS
    session = held.session(model, ort.SessionOptions(), ["CPUExecutionProvider"], disabled_optimizers=disabled)
    values = session.run(wanted, {m.input_name: x.astype(np.float32)})
    for kind, value in zip(kinds, values):
        pattern[kind].append(value)
    return pattern


@contextlib.contextmanager
def pinned(model, pattern: dict[str, list[np.ndarray]]):
    """Within the block, ``model``'s forward uses the ONNX kink decisions (one forward per pattern)."""
    import torch
    import torch.nn.functional as F

    calls = {k: 0 for k in KINK_OPS}
    stats = {"relu_flips": 0, "relu_units": 0}
    # Pin only inside the model's forward: captum's backward hooks call F.relu on gradients.
    active = [False]
    originals = {"relu": F.relu, "torch_relu": torch.relu, "hardtanh": F.hardtanh, "max_pool2d": F.max_pool2d,
                 "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid}

    def take(kind, shape):
        i = calls[kind]
        calls[kind] += 1
        value = pattern[kind][i]
        if kind != "MaxPool":
            assert tuple(value.shape) == tuple(shape), f"{kind} #{i}: ONNX {value.shape} vs torch {tuple(shape)}"
        return torch.from_numpy(np.ascontiguousarray(value))

    def relu(x, inplace=False):
        if not active[0]:
            return originals["relu"](x, inplace=inplace)
        mask = take("Relu", x.shape) > 0
        stats["relu_flips"] += int(((x.detach() > 0) != mask).sum())
        stats["relu_units"] += mask.numel()
        return torch.where(mask, x, torch.zeros_like(x))

    def hardtanh(x, min_val=-1.0, max_val=1.0, inplace=False):
        if not active[0]:
            return originals["hardtanh"](x, min_val, max_val, inplace)
        y = take("Clip", x.shape)
        inside = (y > min_val) & (y < max_val)
        return torch.where(inside, x, x.clamp(min_val, max_val).detach())

    def max_pool2d(x, *args, **kwargs):
        if not active[0]:
            return originals["max_pool2d"](x, *args, **kwargs)
        return_indices = kwargs.pop("return_indices", False)
        out = originals["max_pool2d"](x.detach(), *args, **kwargs)
        idx = take("MaxPool", None).reshape(-1)
        assert idx.numel() == out.numel(), "MaxPool: ONNX and torch window counts differ"
        y = x.reshape(-1)[torch.as_tensor(idx, dtype=torch.long)].reshape(out.shape)
        return (y, idx.reshape(out.shape)) if return_indices else y

    def hardswish(x, inplace=False):
        if not active[0]:
            return originals["hardswish"](x, inplace)
        region = take("HardSwish", x.shape)
        lo, hi = region < -3, region > 3
        return torch.where(lo, torch.zeros_like(x), torch.where(hi, x, x * (x + 3) / 6))

    def hardsigmoid(x, inplace=False):
        if not active[0]:
            return originals["hardsigmoid"](x, inplace)
        region = take("HardSigmoid", x.shape)
        inside = (region > -3) & (region < 3)
        return torch.where(inside, x / 6 + 0.5, (x / 6 + 0.5).clamp(0, 1).detach())

    def torch_relu(x):
        return relu(x) if active[0] else originals["torch_relu"](x)

    patches = {(F, "relu"): relu, (torch, "relu"): torch_relu, (F, "hardtanh"): hardtanh, (F, "max_pool2d"): max_pool2d,
               (F, "hardswish"): hardswish, (F, "hardsigmoid"): hardsigmoid}
    saved = {key: getattr(*key) for key in patches}
    # nn.ReLU/ReLU6/MaxPool2d modules call the functional forms, so patching those covers modules and F.* alike;
    # torch.nn.modules.* import F at module level, hence patching the F attributes is enough.
    def start(_module, _inputs):
        active[0] = True

    def stop(_module, _inputs, _output):
        active[0] = False

    hooks = [model.register_forward_pre_hook(start), model.register_forward_hook(stop)]
    try:
        for (owner, name), fn in patches.items():
            setattr(owner, name, fn)
        yield stats
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)
        for hook in hooks:
            hook.remove()
    for kind, count in calls.items():
        assert count == len(pattern[kind]), f"{kind}: torch called {count}, ONNX has {len(pattern[kind])}"


def float64_scores(m, hw=None):
    """``f(x) -> (N, K)`` scores computed by onnx's numpy ReferenceEvaluator on a float64 copy of the normalised graph.

    An implementation independent of onnxruntime, precise enough for finite differences with tiny steps (a float32
    forward cannot resolve them, and larger steps cross ReLU kinks and measure a secant).
    """
    from onnx import TensorProto, numpy_helper
    from onnx.reference import ReferenceEvaluator
    import onnx

    model = copy.deepcopy(m.spec(hw).model)
    graph = model.graph
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            graph.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float64)))
    evaluator = ReferenceEvaluator(model)

    def scores(x: np.ndarray) -> np.ndarray:
        out = evaluator.run([m.score_name], {m.input_name: np.asarray(x, dtype=np.float64)})[0]
        return out.reshape(len(x), -1)

    return scores


def directional_derivative_check(m, x, targets, rng, h: float = 1e-5, rtol: float = 1e-3, patch: int = 16):
    """Our gradient dotted with a random direction d (one patch per image) against the float64 central difference
    of the reference scores; returns our gradients."""
    import onnx_cnnviz as cv

    grads = cv.gradients(m, x, targets=targets)
    d = np.zeros(x.shape, dtype=np.float64)
    top, left = (x.shape[2] - patch) // 2, (x.shape[3] - patch) // 2
    d[:, :, top:top + patch, left:left + patch] = rng.standard_normal((len(x), x.shape[1], patch, patch))
    f = float64_scores(m, tuple(x.shape[2:]))
    x64 = x.astype(np.float64)
    idx = np.arange(len(x))
    numeric = (f(x64 + h * d)[idx, targets] - f(x64 - h * d)[idx, targets]) / (2 * h)
    analytic = (grads.astype(np.float64) * d).reshape(len(x), -1).sum(1)
    scale = np.abs(grads).max() * np.abs(d).sum() / len(x) ** 0  # bound of |<g, d>| per sample
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=rtol * 1e-2 * scale)
    return grads


# --- the guided / deconvnet rule sets at every rectifier --------------------------------------------------------
def is_torch_rectifier(module) -> bool:
    """nn.ReLU, nn.ReLU6 and any nn.Hardtanh with min_val 0 (what ONNX writes as Clip(0, max)), nn.LeakyReLU,
    nn.PReLU: the modules whose ONNX nodes the guided and deconvnet rule sets treat as rectifiers."""
    import torch.nn as nn

    if isinstance(module, nn.Hardtanh):
        return float(module.min_val) == 0.0
    return isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.PReLU))


@contextlib.contextmanager
def rectifier_rule_hooks(model, rule: str, include_relu: bool = True):
    """Within the block, backward through every rectifier module of ``model`` (:func:`is_torch_rectifier`) follows
    the rule set ``rule``, as onnx_cnnviz defines it (onnx_cnnviz.graph.autodiff.rules.activations):

    * ``"guided"``: ``dx = g * f'(x) * (g > 0)``, i.e. the true input gradient (``grad_input``, which under
      :func:`pinned` already carries the ONNX forward's mask) where the output gradient ``g`` is positive, 0 elsewhere;
    * ``"deconvnet"``: ``dx = g * (g > 0)``, no forward mask (ReLU6's upper saturation ignored too);
    * ``"vanilla"``: no hook.

    Unlike captum's GuidedBackprop / Deconvolution (nn.ReLU only), ReLU6, Hardtanh(0, max), LeakyReLU and PReLU
    modules are covered. Functional rectifiers (F.relu in a forward) are not: use models built from modules. Full
    backward hooks run once per call, so a module applied several times (EfficientNet-Lite's shared ``_swish``) is
    handled at each use. Enter it before the forward pass (the hooks attach there) and leave it after backward.
    ``include_relu=False`` leaves nn.ReLU modules alone: with captum's GuidedBackprop / Deconvolution (which hook
    nn.ReLU) the two together are the whole rule set.
    """
    import torch

    if rule not in ("vanilla", "guided", "deconvnet"):
        raise ValueError(f"unknown rule {rule!r}")

    def hook(_module, grad_input, grad_output):
        g = grad_output[0]
        if rule == "guided":
            return (grad_input[0] * (g > 0).to(grad_input[0].dtype),) + tuple(grad_input[1:])
        return (torch.clamp(g, min=0),) + tuple(grad_input[1:])

    handles = []
    if rule != "vanilla":
        import torch.nn as nn

        handles = [mod.register_full_backward_hook(hook) for mod in model.modules()
                   if is_torch_rectifier(mod) and (include_relu or not isinstance(mod, nn.ReLU))]
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


def torch_rule_grad(model, x: np.ndarray, targets, rule: str, pattern=None) -> np.ndarray:
    """d(sum_n S[n, targets[n]])/dx by torch autograd under rule set ``rule`` (:func:`rectifier_rule_hooks`), with
    the kink pattern pinned to the ONNX forward's when ``pattern`` (:func:`onnx_kink_pattern`) is given."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).clone().requires_grad_(True)
    with rectifier_rule_hooks(model, rule):
        with pinned(model, pattern) if pattern is not None else contextlib.nullcontext():
            out = model(xt)
        out[torch.arange(len(targets)), torch.as_tensor(targets)].sum().backward()
    return xt.grad.numpy()


def module_output_and_grad(model, module, x: np.ndarray, targets):
    """torch's output of ``module`` (a submodule of ``model``) on ``x`` and the gradient of
    ``sum_n S[n, targets[n]]`` with respect to it, both as torch tensors (a forward hook keeps the output's grad)."""
    import torch

    captured = {}

    def hook(_module, _inputs, output):
        output.retain_grad()
        captured["out"] = output

    handle = module.register_forward_hook(hook)
    try:
        out = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        out[torch.arange(len(x)), torch.as_tensor(targets)].sum().backward()
    finally:
        handle.remove()
    return captured["out"].detach(), captured["out"].grad
