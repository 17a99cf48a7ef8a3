"""Vision transformers: input gradients and gradients at intermediate token tensors equal torch autograd.

Small but real configurations of torchvision's ViT, Swin (v1 and v2: cosine attention with ReduceL2), MaxViT
(Einsum relative attention, window and grid partitions) and timm's ViT, random weights, exported by the TorchScript
exporter with a dynamic batch (tests/exporting.export_torchscript), checked through the whole chain:
``cv.load(path)``, then ``m.run(x, wrt=[...], targets=...)`` at batch 2 with a different target per image, and
``cv.saliency``.

What these models do that CNNs do not: attention moves the batch off axis 0 (nn.MultiheadAttention's (L, N, E)
tensors, Swin's (N * windows, area, C) partitions), so the shape probe must mark every dimension that follows the
batch, and rules must read those at run time. A gradient at such a tensor has no torch hook to compare with: it is
checked against central differences of the scores with that tensor perturbed inside the ONNX graph.

Full-size ViT-B/16, Swin-T, Swin-V2-T and MaxViT-T are checked by ``benchmarks/dynamo_sweep.py --exporters
torchscript --only vit_b_16,swin_t,swin_v2_t,maxvit_t`` (measured in the report), not here: minutes on 2 cores.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_cnnviz as cv
from onnx_cnnviz.graph import held

from tests.conftest import CACHE, rel_err
from tests.exporting import export_torchscript
from tests.reference import module_output_and_grad, onnx_kink_pattern, torch_rule_grad

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

SIZE = 64
TARGETS = [1, 5]
TOL = 1e-4


def vit():
    model = torchvision.models.VisionTransformer(image_size=SIZE, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10)
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts it at zero: every gradient would be 0
    return model, "encoder.layers.encoder_layer_0"


def swin(v2: bool = False):
    from torchvision.models import swin_transformer as st

    extra = {"block": st.SwinTransformerBlockV2, "downsample_layer": st.PatchMergingV2} if v2 else {}
    model = st.SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                               stochastic_depth_prob=0.0, num_classes=10, **extra)
    return model, "features.1"  # the (N, 16, 16, 24) tokens after the first stage


def maxvit():
    from torchvision.models import maxvit as mv

    model = mv.MaxVit(input_size=(SIZE, SIZE), stem_channels=16, partition_size=4, block_channels=[16, 32],
                      block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10)
    return model, "blocks.0"


def timm_vit():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=SIZE, depth=2, num_classes=10)
    return model, "blocks.0"


BUILDERS = {"vit": vit, "swin": swin, "swin_v2": lambda: swin(v2=True), "maxvit": maxvit, "timm_vit": timm_vit}


@pytest.fixture(scope="module")
def transformer():
    """name -> (torch model, loaded Model, token module path); each exported once (cached on disk)."""
    made = {}

    def get(name):
        if name not in made:
            torch.manual_seed(0)
            model, module = BUILDERS[name]()
            model = model.eval()
            path = CACHE / f"transformer_{name}_{SIZE}_v1.onnx"
            if not path.exists():
                export_torchscript(model, torch.zeros(1, 3, SIZE, SIZE), path)
            made[name] = (model, cv.load(path, device="cpu"), module)
        return made[name]

    return get


def batch(seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((len(TARGETS), 3, SIZE, SIZE)).astype(np.float32)


def reference_grad(model, m, x):
    """torch autograd of sum_n S[n, targets[n]] with the ONNX forward's activation pattern pinned; plainly where the
    patterns do not line up (SwinV2 clamps its logit scale with a Clip that is no activation): these networks are
    smooth (GELU), so nothing can flip between the two frameworks' kernels."""
    try:
        return torch_rule_grad(model, x, TARGETS, "vanilla", onnx_kink_pattern(m, x))
    except AssertionError:
        return torch_rule_grad(model, x, TARGETS, "vanilla")


@pytest.mark.parametrize("name", list(BUILDERS))
def test_input_gradient_matches_torch_autograd(transformer, name):
    model, m, _ = transformer(name)
    x = batch()
    assert not m.static_batch
    result = m.run(x, wrt=[m.input_name], targets=TARGETS)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    assert rel_err(result.scores, logits) <= 1e-4
    ref = reference_grad(model, m, x)
    ours = result.grads[m.input_name]
    for i in range(len(x)):
        assert rel_err(ours[i], ref[i]) <= TOL, f"{name} image {i}: {rel_err(ours[i], ref[i]):.2e}"
    sal = cv.saliency(m, x)
    assert sal.shape == (len(x), SIZE, SIZE) and np.isfinite(sal).all() and sal.max() > 0


def raw_run(m, x, outputs=(), wrt=()):
    """The rewritten graph of ``m`` (``Model.build_graph``, seeded with one-hot rows of TARGETS) run by a plain
    onnxruntime session: tensors and gradients in the model's own layout, whatever view the library shows them in."""
    import onnxruntime as ort

    from onnx_cnnviz.graph.autodiff import SEED_INPUT, grad_name

    graph = m.build_graph(None, outputs=list(outputs), wrt=list(wrt), target_mode="input")
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {m.input_name: x}
    names = list(outputs) + [grad_name(w) for w in wrt]
    if wrt:
        seed = np.zeros((len(x), m.num_classes), dtype=np.float32)
        seed[np.arange(len(x)), TARGETS] = 1.0
        feeds[SEED_INPUT] = seed
    return dict(zip(names, session.run(names, feeds)))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_gradient_at_a_token_tensor_matches_torch_hook(transformer, name):
    """The ONNX tensor equal to a block's output ((N, 1 + h*w, C) tokens for ViTs, the class token included;
    (N, h, w, C) for Swin; NCHW for MaxViT): its gradient equals the module output's ``.grad``, both in the model's
    own layout and as ``m.run`` shows it."""
    from onnx_cnnviz.graph.autodiff import grad_name

    model, m, module_path = transformer(name)
    x = batch()
    ref_act, ref_grad = (t.numpy() for t in module_output_and_grad(model, model.get_submodule(module_path), x,
                                                                  TARGETS))
    info = m.spec().info
    candidates = [t for t, ti in info.items() if ti.shape is not None and ti.is_float and len(ti.shape) == ref_act.ndim
                  and ti.shape[0] is None and tuple(ti.shape[1:]) == ref_act.shape[1:]]
    values = raw_run(m, x, outputs=candidates)
    matches = [t for t in candidates if rel_err(values[t], ref_act) <= 1e-5]
    assert matches, f"no ONNX tensor equals the output of {module_path}"
    tensor = matches[-1]  # the last one: what the next block reads
    grad = raw_run(m, x, wrt=[tensor])[grad_name(tensor)]
    assert rel_err(grad, ref_grad) <= TOL, f"{name} '{tensor}': {rel_err(grad, ref_grad):.2e}"
    shown = m.run(x, wrt=[tensor], targets=TARGETS).grads[tensor]  # the library's view of the same gradient
    view = m.spec().views.get(tensor) if hasattr(m.spec(), "views") else None
    expected = view.to_nchw(ref_grad) if view is not None else ref_grad
    assert rel_err(shown, expected) <= TOL


def perturbed_scores(m, tensor: str, x: np.ndarray):
    """``f(V) -> (scores, tensor)`` of the model with ``tensor`` replaced by ``tensor + V`` inside the ONNX graph
    (float64 would not run every kernel; float32 with a step of 1e-2 resolves the smooth transformers well). Outputs
    are declared without shapes: this reference trusts nothing the library wrote."""
    import onnxruntime as ort

    model = copy.deepcopy(m.spec().model)
    graph = model.graph
    shifted = tensor + "__shifted"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == tensor:
                node.input[i] = shifted
    graph.node.append(helper.make_node("Add", [tensor, "__delta"], [shifted], name="__perturb"))
    graph.input.append(helper.make_tensor_value_info("__delta", TensorProto.FLOAT, None))
    del graph.output[:]
    graph.output.extend(helper.make_empty_tensor_value_info(n) for n in (m.score_name, tensor))
    del graph.value_info[:]
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = held.session(model, options, ["CPUExecutionProvider"])

    def run(v):
        scores, value = session.run(None, {m.input_name: x, "__delta": np.asarray(v, dtype=np.float32)})
        return scores.reshape(len(x), -1), value
    return run


def batch_moved(m, x) -> list[str]:
    """Float tensors on the path whose axis 0 is not the batch (its size differs from the number of images), in
    graph order: attention's (L, N, E), Swin's (N * windows, area, C)."""
    import onnxruntime as ort

    info = m.spec().info
    maybe = [t for t, ti in info.items() if ti.shape is not None and ti.is_float and len(ti.shape) >= 3
             and any(d is None for d in ti.shape) and t != m.input_name]
    model = copy.deepcopy(m.spec().model)
    del model.graph.output[:]
    model.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in maybe)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    values = held.session(model, options, ["CPUExecutionProvider"]).run(maybe, {m.input_name: x})
    return [t for t, v in zip(maybe, values) if v.shape[0] != len(x)]


@pytest.mark.parametrize("name", ["vit", "swin", "swin_v2"])
def test_gradient_at_a_tensor_whose_batch_is_not_axis_0(transformer, name):
    """The directional derivative of the target scores along a random V at such a tensor equals <dS/dT, V>
    (central differences with T perturbed inside the ONNX graph)."""
    from onnx_cnnviz.graph.autodiff import grad_name

    _, m, _ = transformer(name)
    x = batch()
    moved = batch_moved(m, x)
    assert moved, "no tensor with the batch off axis 0: the case this test is about is gone"
    tensor = moved[len(moved) // 2]
    grad = raw_run(m, x, wrt=[tensor])[grad_name(tensor)]
    f = perturbed_scores(m, tensor, x)
    value = f(np.zeros(grad.shape))[1]
    assert grad.shape == value.shape
    rng = np.random.default_rng(5)
    h = 1e-2 * float(np.abs(value).max())
    idx = np.arange(len(x))
    for _ in range(2):
        v = rng.standard_normal(value.shape)
        numeric = (f(h * v)[0][idx, TARGETS].sum() - f(-h * v)[0][idx, TARGETS].sum()) / (2 * h)
        analytic = float((grad.astype(np.float64) * v).sum())
        assert abs(analytic - numeric) <= 1e-3 * np.abs(grad).sum() * np.abs(v).max(), \
            f"{name} '{tensor}' {value.shape}: <g, v> = {analytic:.6g}, differences {numeric:.6g}"


@pytest.mark.parametrize("name", ["swin", "swin_v2"])
def test_run_exposes_and_differentiates_a_window_tensor(transformer, name):
    """``m.run(x, outputs=[T], wrt=[T])`` at Swin's (N * windows, area, C) tensors: its declared output shape must not
    name the batch (onnxruntime reuses buffers between outputs that share a dim name, and fails)."""
    _, m, _ = transformer(name)
    x = batch()
    moved = batch_moved(m, x)
    tensor = moved[len(moved) // 2]
    result = m.run(x, outputs=[tensor], wrt=[tensor], targets=TARGETS)
    assert result.outputs[tensor].shape == result.grads[tensor].shape
    assert result.outputs[tensor].shape[0] != len(x)


def test_probe_marks_every_dimension_that_follows_the_batch(transformer):
    """ViT's attention tensors are (17, N, 32): the batch is axis 1, which must not be declared static (onnxruntime's
    optimisers would otherwise plan with size 1 and fail at batch 2)."""
    _, m, _ = transformer("vit")
    info = m.spec().info
    moved = {t: ti for t, ti in info.items() if ti.shape is not None and len(ti.shape) == 3
             and ti.shape[0] == 17 and ti.shape[1] is None}
    assert moved
    declared = {v.name: v for v in m.spec().model.graph.value_info}
    for t in moved:
        if t in declared:
            dims = declared[t].type.tensor_type.shape.dim
            assert not dims[1].HasField("dim_value"), f"'{t}' declared with a static batch axis"


@pytest.mark.parametrize("name", ["vit", "swin"])
def test_tensors_whose_batch_is_not_axis_0_are_joined_along_their_batch_axis(transformer, name):
    """``batch_size=1`` runs one image per onnxruntime call and joins the parts: an attention tensor (L, N, E) must be
    joined on axis 1 (joining on axis 0 gives a tensor of the right size and the wrong values), Swin's
    (N * windows, area, C) on axis 0; its gradient likewise. Equal to the single-call run of the whole batch.
    ``vjp`` seeded at (L, N, E) is refused (its seed rows are (N, rest)), with a typed error, not a numpy TypeError."""
    _, m, _ = transformer(name)
    x = batch()
    moved = batch_moved(m, x)
    tensor = moved[0]
    whole = m.run(x, outputs=[tensor], wrt=[tensor], targets=TARGETS)
    parts = m.run(x, outputs=[tensor], wrt=[tensor], targets=TARGETS, batch_size=1)
    assert rel_err(parts.outputs[tensor], whole.outputs[tensor]) <= 1e-5
    assert rel_err(parts.grads[tensor], whole.grads[tensor]) <= 1e-5
    if whole.outputs[tensor].shape[1] == len(x):
        cot = np.ones((len(x), int(np.prod(whole.outputs[tensor].shape)) // len(x)), np.float32)
        with pytest.raises(cv.errors.InputError, match="batch as axis 0"):
            m.vjp(x, tensor, cot)
