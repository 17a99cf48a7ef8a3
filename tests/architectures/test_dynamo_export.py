"""torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, the default since torch 2.9): its files load
without printing, run a batch in one call, and give input gradients equal to torch autograd.

Each model is exported twice, as users do: with ``dynamic_shapes`` for the batch, and without (the example batch of
1 is then baked into the graph: ``Reshape(x, [1, 512])`` with ``allowzero=1``, ConvNeXt's ``as_strided`` as a Gather
of constant indices). The set covers the op patterns the exporter writes
differently from TorchScript: ResNet (plain head), MobileNetV3 (HardSwish/HardSigmoid, squeeze-excitation),
ConvNeXt (``as_strided`` Gather with run-time indices, LayerNorm, Erf-GELU), SqueezeNet (ceil-mode
pools, Concat). VGG (its ``Reshape(x, [1, 25088])`` is ResNet's ``[1, 512]``; below 224 px its adaptive pooling is a
GatherND, checked on one node here) is left to benchmarks/dynamo_sweep.py: its 500 MB of weights cost half a minute.
References are torch autograd with the
activation pattern pinned to the ONNX forward (tests/reference.py), two images with different targets, 1e-4 of the
gradient's maximum per image. Exports are cached under .cache/tests.

The rules the exporter's gathers need (Gather with run-time indices, GatherND, GatherElements) are checked on one-node
models against finite differences here too, with the harness of tests/graph/test_rules.py.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_cnnviz as cv
from onnx_cnnviz.errors import UnsupportedOpError
from onnx_cnnviz.graph import load as graph_load

from tests.conftest import CACHE, rel_err
from tests.exporting import export_dynamo, torchvision_model
from tests.graph.test_rules import Case, check, gradient_graph, node, rand
from tests.reference import onnx_kink_pattern, torch_rule_grad

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

SIZE = 64
TARGETS = [1, 5]
TOL = 1e-4
CASES = [("resnet18", "dynamic"), ("resnet18", "static"), ("mobilenet_v3_small", "dynamic"),
         ("mobilenet_v3_small", "static"), ("convnext_tiny", "dynamic"), ("convnext_tiny", "static"),
         ("squeezenet1_1", "static")]
# torch.export refuses ConvNeXt's batch range from an example batch of 1 ("Invalid ranges [2:1]") after a long
# trace: go straight to the example batch of 2 that the converter uses.
EXAMPLE_BATCH = {"convnext_tiny": 2}


def dynamo_export(model, path, batch: str, size: int = SIZE, example_batch: int = 1):
    """``torch.onnx.export(model, ..., dynamo=True)`` as users call it, cached: an example batch of 1, with
    ``dynamic_shapes`` for the batch (``batch="dynamic"``) or without (``"static"``). Where torch.export refuses a
    batch range that includes 1, the example batch is 2, as the converter does (``example_batch=2``: directly)."""
    if path.exists():
        return path
    examples = [torch.zeros(b, 3, size, size) for b in (1, 2) if b >= example_batch]
    if batch != "dynamic":
        examples = examples[:1]
    for i, x in enumerate(examples):
        try:
            return export_dynamo(model, x, path, batch="dim" if batch == "dynamic" else "static")
        except Exception:  # noqa: BLE001 - torch.export refused the range at this example batch: try the next
            if i == len(examples) - 1:
                raise


@pytest.fixture(scope="module")
def dynamo_model():
    """(name, batch) -> (torch model, onnx path); exported once (cached on disk)."""
    made = {}

    def get(name: str, batch: str):
        if (name, batch) not in made:
            model = torchvision_model(name)
            example = EXAMPLE_BATCH.get(name, 1) if batch == "dynamic" else 1
            path = CACHE / f"{name}_s0_{SIZE}_dynamo_{batch}.onnx"
            made[(name, batch)] = (model, dynamo_export(model, path, batch, example_batch=example))
        return made[(name, batch)]

    return get


def x_batch(seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((len(TARGETS), 3, SIZE, SIZE)).astype(np.float32)


@pytest.mark.parametrize("name,batch", CASES)
def test_dynamo_export_loads_silently_batches_and_matches_torch(dynamo_model, capfd, name, batch):
    model, path = dynamo_model(name, batch)
    capfd.readouterr()
    m = cv.load(path, device="cpu")
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == "", f"loading printed: {printed.out!r} {printed.err!r}"
    assert not m.static_batch, "the baked-in batch of 1 should have been rewritten"
    x = x_batch()
    result = m.run(x, wrt=[m.input_name], targets=TARGETS)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    assert rel_err(result.scores, logits) <= 1e-4
    ref = torch_rule_grad(model, x, TARGETS, "vanilla", onnx_kink_pattern(m, x))
    ours = result.grads[m.input_name]
    for i in range(len(x)):
        assert rel_err(ours[i], ref[i]) <= TOL, f"{name} {batch} image {i}: {rel_err(ours[i], ref[i]):.2e}"


def test_static_export_runs_a_batch_in_one_call(dynamo_model):
    """The rewritten [1, 512] Reshape really batches: one session run of 3 images gives the three single runs."""
    _, path = dynamo_model("resnet18", "static")
    m = cv.load(path, device="cpu")
    x = np.random.default_rng(3).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    together = m.scores(x)
    assert together.shape == (3, 1000)
    np.testing.assert_allclose(together, np.concatenate([m.scores(x[i:i + 1]) for i in range(3)]), rtol=1e-5,
                               atol=1e-5)


def test_static_convnext_as_strided_gather_becomes_a_reshape(dynamo_model):
    """ConvNeXt's head gathers every element of a flattened (1, 768, 1, 1) in order: at load it becomes a Reshape,
    so that its batch can be rewritten like any other."""
    _, path = dynamo_model("convnext_tiny", "static")
    model = onnx.load(str(path))
    before = [n for n in model.graph.node if n.op_type == "Gather" and "as_strided" in n.name]
    assert before, "the export no longer writes as_strided as a Gather: this test has nothing to check"
    graph_load.make_batch_dynamic_inplace(model, "input")
    after = {n.name: n.op_type for n in model.graph.node}
    assert all(after[n.name] == "Reshape" for n in before)


# --- a model that declares any batch but hard-codes 1 inside -------------------------------------------------------
def tiny_vit():
    """torchvision's VisionTransformer, small; its head starts at zero (every gradient would be 0): random here."""
    torch.manual_seed(0)
    model = __import__("torchvision").models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                                                               hidden_dim=16, mlp_dim=32, num_classes=10).eval()
    torch.nn.init.normal_(model.heads.head.weight)
    return model


def test_dynamic_export_that_bakes_batch_one_is_rewritten_to_batch(tmp_path, capfd):
    """torch.export with ``Dim.DYNAMIC`` traces torchvision's attention at batch 1 into reshapes to [L, 1, 3, d] while
    the input is declared dynamic: the file fails at batch 2 in onnxruntime itself. Loading it rewrites those
    reshapes (graph/loading/unbake.py) and the class token's concatenation, silently: the model then batches, with exact
    gradients."""
    from onnx_cnnviz.graph.shapes import batch_one_only

    model = tiny_vit()
    path = tmp_path / "vit_dynamic.onnx"
    export_dynamo(model, torch.zeros(1, 3, 32, 32), path, batch="dynamic")
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "the export's batch is no longer symbolic"
    assert batch_one_only(graph_load.normalise(proto), "input", (3, 32, 32)), "torch now exports this correctly"
    capfd.readouterr()
    m = cv.load(path, device="cpu")
    assert capfd.readouterr().err == ""
    assert not m.static_batch
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    targets = TARGETS + [2]
    ours = cv.gradients(m, x, targets=targets)
    ref = torch_rule_grad(model, x, targets, "vanilla")
    assert rel_err(ours, ref) <= TOL


# --- transformers exported at batch 1: attention and window reshapes that bake the batch are rewritten ------------
@pytest.mark.parametrize("name", ["vit", "swin", "swin_v2", "maxvit", "timm_vit"])
def test_transformers_exported_at_batch_one_batch_and_match_torch(name):
    """Static dynamo exports (no ``dynamic_shapes``) of small ViT, Swin (shifted windows, attention masks), Swin-V2,
    MaxViT and timm ViT: torch writes batch 1 into attention reshapes ([L, 1 * heads, d], [L * 1, E]), window
    partitions ([1 * windows, area, C]) and the class token's concatenation. Loading rewrites them
    (graph/loading/unbake.py: the likeliest placement of the batch first, the next one where shape inference then
    fails downstream): the model batches, and a batch of 3 gives torch autograd's input gradients."""
    from tests.architectures.test_transformers_gradients import BUILDERS, SIZE as T_SIZE

    torch.manual_seed(0)
    model, _ = BUILDERS[name]()
    model = model.eval()
    path = dynamo_export(model, CACHE / f"dynamo_{name}_{T_SIZE}_static_v1.onnx", "static", size=T_SIZE)
    m = cv.load(path, device="cpu")
    assert not m.static_batch, "the baked batch of 1 should have been rewritten"
    x = np.random.default_rng(4).standard_normal((3, 3, T_SIZE, T_SIZE)).astype(np.float32)
    targets = [1, 5, 2]
    with torch.no_grad():
        assert rel_err(m.scores(x), model(torch.from_numpy(x)).numpy()) <= 1e-4
    ours = m.run(x, wrt=[m.input_name], targets=targets).grads[m.input_name]
    ref = torch_rule_grad(model, x, targets, "vanilla")  # smooth (GELU) networks: nothing to pin
    for i in range(len(x)):
        assert rel_err(ours[i], ref[i]) <= TOL, f"{name} image {i}: {rel_err(ours[i], ref[i]):.2e}"


# --- the rules of the exporter's gathers, against finite differences ----------------------------------------------
def _i64(values):
    return np.asarray(values, dtype=np.int64)


def test_gather_with_run_time_indices_as_dynamo_writes_as_strided():
    """y = Gather(Reshape(x, [-1]), n * 4 + c): indices computed from Shape and Range, as torch writes as_strided."""
    nodes = [helper.make_node("Shape", ["X"], ["shp"], name="shape", start=0, end=1),
             helper.make_node("Squeeze", ["shp"], ["n"], name="n"),
             helper.make_node("Range", ["zero", "n", "one"], ["rows"], name="range"),
             helper.make_node("Mul", ["rows", "four"], ["base"], name="base"),
             helper.make_node("Unsqueeze", ["base", "ax1"], ["base_col"], name="col"),
             helper.make_node("Add", ["base_col", "cols"], ["idx"], name="idx"),
             helper.make_node("Reshape", ["X", "flat"], ["v"], name="flatten"),
             node("Gather", ["v", "idx"], ["G"], axis=0),
             helper.make_node("Mul", ["G", "G"], ["Y"], name="square")]  # nonlinear: a wrong placement shows
    inits = {"zero": _i64(0), "one": _i64(1), "four": _i64(4), "ax1": _i64([1]), "cols": _i64([3, 0, 2, 2]),
             "flat": _i64([-1])}
    check(Case(nodes, {"X": rand((2, 4))}, inits))


@pytest.mark.parametrize("axis,indices", [(1, [[0, 2], [-1, 1]]), (2, 1), (1, [2, 2, 0])])
def test_gather_over_an_axis_of_unknown_length(axis, indices):
    """Data whose shape inference cannot tell (a Reshape to [2, -1, 3]) take the run-time path for the unknown axis
    and the selection matrix elsewhere; the square makes a misplaced gradient show."""
    nodes = [helper.make_node("Reshape", ["X", "shape"], ["R"], name="view"),
             node("Gather", ["R", "i"], ["G"], axis=axis),
             helper.make_node("Mul", ["G", "G"], ["S"], name="square"),
             helper.make_node("ReduceSum", ["S", "last"], ["Y"], name="rows", keepdims=1)]
    inits = {"shape": _i64([2, -1, 3]), "i": _i64(indices), "last": _i64([-1])}
    check(Case(nodes, {"X": rand((2, 3, 3))}, inits))


@pytest.mark.parametrize("indices", [[[0, 1], [2, 0], [1, 1]], [[[0], [2]], [[1], [1]]]])
def test_gather_nd(indices):
    """GatherND (batch_dims 0) of the dynamo exporter's adaptive pooling; repeated index tuples add up."""
    nodes = [helper.make_node("Transpose", ["X"], ["T"], name="hw_first", perm=[2, 3, 0, 1]),
             node("GatherND", ["T", "i"], ["G"]),
             helper.make_node("Reshape", ["G", "flat"], ["Y"], name="flat")]
    check(Case(nodes, {"X": rand((2, 2, 3, 3))}, {"i": _i64(indices), "flat": _i64([1, -1])},
               dims={"X": [2, 2, 3, 3]}))


@pytest.mark.parametrize("axis", [1, -1])
def test_gather_elements(axis):
    idx = _i64([[[0, 2], [1, 1]], [[2, 0], [-1, 0]]]) if axis == 1 else _i64([[[1, 0], [1, 1]], [[0, 0], [-2, 1]]])
    check(Case([node("GatherElements", ["X", "i"], ["Y"], axis=axis)], {"X": rand((2, 3, 2))}, {"i": idx}))


def test_gather_nd_with_batch_dims_is_refused():
    case = Case([node("GatherND", ["X", "i"], ["Y"], batch_dims=1)], {"X": rand((2, 3))},
                {"i": _i64([[[0]], [[2]]])})
    with pytest.raises(UnsupportedOpError) as err:
        gradient_graph(case)
    assert "'GatherND_node'" in str(err.value) and "batch_dims" in str(err.value)


# --- the loader's rewrites ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,allowzero,expected", [
    ([1, 25088], 1, ([-1, 25088], True)),   # dynamo: 0 would mean an empty axis, -1 is free
    ([1, 25088], 0, ([0, 25088], False)),
    ([1, -1], 0, ([0, -1], False)),          # TorchScript
    ([1, -1], 1, ([0, -1], False)),          # -1 taken: copy the batch, allowzero off (no other 0)
    ([1, 0, -1], 1, None),                   # a real empty axis and the -1 taken: left alone
    ([2, 512], 0, None),
    ([512], 0, None),
])
def test_batch_free_shape(shape, allowzero, expected):
    got = graph_load.batch_free_shape(np.asarray(shape, dtype=np.int64), bool(allowzero))
    if expected is None:
        assert got is None
    else:
        assert got[0].tolist() == expected[0] and got[1] == expected[1]
