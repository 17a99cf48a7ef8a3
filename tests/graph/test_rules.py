"""Every backward rule against central finite differences, one tiny ONNX model per op variant.

The harness (:func:`check`) builds a model from a few nodes, appends the gradient graph with
:func:`append_gradients` (seed ``input``) and compares ``cnnviz/grad/<T>`` with the finite-difference gradient of

    L(T) = sum(w * Y(T).reshape(N, K))

for a random seed ``w``. The gradient graph is always built on a float32 model, because that is the engine's normal
form (the seed input and every constant it emits are float32). The finite-difference reference is computed on a
float64 copy of the same forward model wherever onnxruntime's CPU kernels accept doubles (eps 1e-5, tolerance 1e-5
relative to the largest gradient entry); where they do not (Conv, ConvTranspose, AveragePool, Resize, InstanceNorm,
Erf, Elu, HardSwish, ...) it falls back to the float32 model with eps 3e-3 and tolerance 5e-4. Inputs are drawn
away from every kink by many eps (ReLU at 0, Clip bounds, HardSwish/HardSigmoid breakpoints) and with well separated
values where a max is taken, so the function is smooth over the whole finite-difference stencil. The seed ``w`` comes
from a random stream of its own: a ``w`` proportional to ``X`` makes some gradients vanish (normalisation layers).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_cnnviz.errors import UnsupportedOpError
from onnx_cnnviz.graph import held
from onnx_cnnviz.graph.autodiff.engine import append_gradients, grad_name
from onnx_cnnviz.graph.shapes import TensorInfo, infer

IR_FOR_OPSET = {17: 8, 18: 8, 19: 9, 20: 9}

# Observed worst errors: ~3e-7 (float64 reference) and ~9e-5 (float32 reference); a 1% error in a rule fails.
F64_EPS, F64_TOL = 1e-5, 1e-5
F32_EPS, F32_TOL = 3e-3, 5e-4


# --------------------------------------------------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class Case:
    """A small forward model: ``nodes`` over graph ``inputs`` (name -> value; dims listed in ``dims`` may use "N")."""
    nodes: list
    inputs: dict  # name -> np.ndarray fed at run time (float inputs are cast to the model's float type)
    inits: dict = field(default_factory=dict)  # name -> np.ndarray (float ones are cast like inputs)
    score: str = "Y"
    wrt: tuple = ("X",)
    dims: dict = field(default_factory=dict)  # name -> declared dims; default: first dim "N", rest static
    opset: int = 17
    extra_outputs: tuple = ()
    shape_fixes: dict = field(default_factory=dict)  # name -> shape replacing what ONNX shape inference says


def _is_float(a) -> bool:
    return np.asarray(a).dtype.kind == "f"


def build(case: Case, dtype=np.float32) -> onnx.ModelProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    def cast(a):
        a = np.asarray(a)
        return a.astype(dtype) if _is_float(a) else a

    inputs = []
    for name, value in case.inputs.items():
        value = np.asarray(value)
        dims = case.dims.get(name)
        if dims is None:
            dims = ["N", *value.shape[1:]] if value.ndim >= 1 else []
        ty = elem if _is_float(value) else helper.np_dtype_to_tensor_dtype(value.dtype)
        inputs.append(helper.make_tensor_value_info(name, ty, dims))
    inits = [numpy_helper.from_array(cast(v), name) for name, v in case.inits.items()]
    outputs = [helper.make_tensor_value_info(name, elem, None) for name in (case.score, *case.extra_outputs)]
    graph = helper.make_graph([_copy(n) for n in case.nodes], "rule_test", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = IR_FOR_OPSET[case.opset]
    # Declare the outputs' shapes (the checker wants them): take them from ONNX shape inference.
    inferred = onnx.shape_inference.infer_shapes(model).graph
    known = {v.name: v for v in list(inferred.value_info) + list(inferred.output)}
    for out in model.graph.output:
        v = known.get(out.name)
        if v is not None and v.type.tensor_type.HasField("shape"):
            out.type.CopyFrom(v.type)
    return model


def _copy(node):
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return held.session(model, options, ["CPUExecutionProvider"])  # held weights, if any, handed over in memory


def feeds(case: Case, dtype, override=None) -> dict:
    out = {}
    for name, value in case.inputs.items():
        if override is not None and name in override:
            value = override[name]
        value = np.asarray(value)
        out[name] = value.astype(dtype) if _is_float(value) else value
    return out


def reference_runner(case: Case):
    """(run(override) -> score as float64, eps, tol): a float64 forward model if onnxruntime runs it, else float32."""
    for dtype, eps, tol in ((np.float64, F64_EPS, F64_TOL), (np.float32, F32_EPS, F32_TOL)):
        try:
            sess = session(build(case, dtype))
            sess.run([case.score], feeds(case, dtype))
        except Exception:  # no double kernel for this op (NOT_IMPLEMENTED) or a type mismatch
            if dtype == np.float32:
                raise
            continue

        def run(override=None, sess=sess, dtype=dtype):
            return np.asarray(sess.run([case.score], feeds(case, dtype, override))[0], dtype=np.float64)
        return run, eps, tol


def finite_differences(case: Case, run, eps: float, w: np.ndarray, name: str) -> np.ndarray:
    base = np.asarray(case.inputs[name], dtype=np.float64)
    grad = np.zeros_like(base)
    n = w.shape[0]

    def loss(x):
        return float(np.sum(w * run({name: x}).reshape(n, -1)))

    for idx in np.ndindex(base.shape):
        plus, minus = base.copy(), base.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (loss(plus) - loss(minus)) / (2 * eps)
    return grad


def gradient_graph(case: Case, rule_set: str = "vanilla", hold=()):
    """The case's model with its backward graph; the initializers named in ``hold`` held outside the protobuf
    (graph/held.py), as those of a model of over 1 GiB are."""
    model = build(case, np.float32)
    if hold:
        holding = held.new_holding()
        for tensor in model.graph.initializer:
            if tensor.name in hold:
                held.put(tensor, numpy_helper.to_array(tensor), holding)
    info = infer(model)
    for name, shape in case.shape_fixes.items():
        info[name] = TensorInfo(info[name].elem_type, tuple(shape))
    gg = append_gradients(model, score=case.score, wrt=list(case.wrt), info=info, rule_set=rule_set, seed="input")
    onnx.checker.check_model(held.inlined(gg.model), full_check=True)
    for node in gg.model.graph.node:
        assert node.domain in ("", "ai.onnx"), f"node {node.name} uses domain {node.domain!r}"
    return gg


def run_gradients(case: Case, w: np.ndarray, rule_set: str = "vanilla", hold=()):
    gg = gradient_graph(case, rule_set, hold)
    names = [gg.gradients[t] for t in case.wrt]
    out = session(gg.model).run([case.score] + names, {**feeds(case, np.float32), gg.seed_input: w})
    return out[0], dict(zip(case.wrt, out[1:]))


def check(case: Case, seed: int = 0, hold=()):
    """Assert that every ``cnnviz/grad/T`` equals the finite-difference gradient of L = sum(w * Y); ``hold``: the
    initializers held outside the protobuf while the backward graph is built and run."""
    rng = np.random.default_rng(1000 + seed)  # not the streams rand() draws inputs from: w must not mirror X
    y = session(build(case, np.float32)).run([case.score], feeds(case, np.float32))[0]
    assert y.ndim >= 2, "the score must be (N, K, ...)"
    w = rng.normal(size=(y.shape[0], int(np.prod(y.shape[1:])))).astype(np.float32)
    y_grad_graph, grads = run_gradients(case, w, hold=hold)
    np.testing.assert_allclose(y_grad_graph, y, rtol=1e-6, atol=1e-6)  # the forward is left intact
    run, eps, tol = reference_runner(case)
    for name in case.wrt:
        expected = finite_differences(case, run, eps, w.astype(np.float64), name)
        got = grads[name]
        assert got.shape == expected.shape, (name, got.shape, expected.shape)
        scale = np.abs(expected).max()
        assert scale > 1e-3, f"degenerate test: the gradient of {name} is ~0"
        err = np.abs(got - expected).max() / scale
        assert err < tol, f"d/d{name}: max error {err:.2e} relative to {scale:.3g} (tol {tol:.0e})\n" \
                          f"got\n{got}\nexpected\n{expected}"


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------

def rand(shape, seed=0, scale=1.0, kinks=(), margin=0.1, low=None):
    """Normal samples (or uniform on [low, low+scale]) kept at least ``margin`` away from every kink."""
    rng = np.random.default_rng(seed)

    def draw(size):
        return rng.uniform(low, low + scale, size) if low is not None else rng.normal(0.0, scale, size)

    x = draw(shape)
    for _ in range(100):
        bad = np.zeros(x.shape, dtype=bool)
        for k in kinks:
            bad |= np.abs(x - k) < margin
        if not bad.any():
            return x
        x[bad] = draw(int(bad.sum()))
    raise AssertionError("could not draw values away from the kinks")


def distinct(shape, seed=0, spacing=0.1):
    """Values with pairwise gaps of at least ``spacing`` (no ties for max ops), centred on 0."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * spacing).reshape(shape)


def node(op, inputs, outputs=("Y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name=f"{op}_node", **attrs)


def one(op, x, inits=None, inputs=("X",), opset=17, wrt=("X",), extra=None, dims=None, **attrs):
    """A one-node case: ``op(inputs...) -> Y``; graph inputs are ``X`` (= x) and the entries of ``extra``."""
    graph_inputs = {"X": x, **(extra or {})}
    return Case([node(op, inputs, **attrs)], graph_inputs, dict(inits or {}), opset=opset, wrt=wrt,
                dims=dict(dims or {}))


# --------------------------------------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------------------------------------

def _w(shape, seed=1):
    return np.random.default_rng(seed).normal(0, 0.5, shape)


CONV_CASES = {
    "plain_fast_path": ((2, 3, 5, 5), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    "bias": ((2, 3, 4, 4), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1], bias=True)),
    "no_pad": ((2, 2, 5, 5), (3, 2, 3, 3), {}),
    "groups": ((2, 4, 5, 5), (6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "depthwise": ((2, 4, 5, 5), (4, 1, 3, 3), dict(group=4, pads=[1, 1, 1, 1])),
    "depthwise_multiplier": ((1, 2, 5, 5), (4, 1, 3, 3), dict(group=2, pads=[0, 1, 1, 0])),
    "dilations": ((2, 2, 6, 6), (3, 2, 3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    "dilations_asym": ((1, 2, 7, 6), (3, 2, 3, 2), dict(dilations=[2, 3], pads=[1, 0, 2, 3])),
    "asymmetric_pads": ((2, 3, 5, 5), (4, 3, 3, 3), dict(pads=[0, 1, 2, 0])),
    "stride2": ((2, 3, 6, 6), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "stride2_odd": ((2, 3, 7, 7), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "stride2_unread_rows": ((1, 2, 6, 7), (3, 2, 3, 3), dict(strides=[2, 2])),
    "stride_2x1_groups": ((1, 4, 6, 5), (4, 2, 3, 3), dict(strides=[2, 1], group=2, pads=[1, 1, 1, 1])),
    "stride2_dilation2": ((1, 2, 8, 8), (3, 2, 3, 3), dict(strides=[2, 2], dilations=[2, 2], pads=[1, 2, 2, 1])),
    "same_upper": ((2, 3, 5, 5), (4, 3, 3, 3), dict(auto_pad="SAME_UPPER")),
    "same_upper_s2": ((2, 3, 6, 6), (4, 3, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same_lower_s2": ((2, 3, 6, 6), (4, 3, 3, 3), dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    "same_lower_even_kernel": ((1, 2, 5, 5), (3, 2, 2, 2), dict(auto_pad="SAME_LOWER")),
    "same_upper_even_kernel": ((1, 2, 5, 5), (3, 2, 2, 2), dict(auto_pad="SAME_UPPER")),
    "valid": ((2, 3, 5, 5), (4, 3, 3, 3), dict(auto_pad="VALID")),
    "valid_s2": ((2, 3, 6, 6), (4, 3, 3, 3), dict(auto_pad="VALID", strides=[2, 2])),
    "pointwise_padded": ((1, 2, 3, 3), (3, 2, 1, 1), dict(pads=[1, 1, 1, 1])),  # pads beyond the kernel's reach
    "pad_beyond_reach": ((1, 2, 4, 4), (3, 2, 3, 3), dict(pads=[3, 0, 2, 3])),
    "conv1d": ((2, 3, 7), (4, 3, 3), dict(pads=[1, 2])),
    "conv1d_s2_dil": ((2, 3, 9), (4, 3, 3), dict(strides=[2], dilations=[2], pads=[1, 0])),
    "conv3d": ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), dict(pads=[1, 0, 1, 0, 1, 1], strides=[1, 2, 1])),
    "kernel_shape_attr": ((2, 3, 5, 5), (4, 3, 3, 3), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
}


@pytest.mark.parametrize("weight_input", [False, True], ids=["W_const", "W_input"])
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv(name, weight_input):
    x_shape, w_shape, attrs = CONV_CASES[name]
    attrs = dict(attrs)
    inputs = ["X", "W"]
    inits = {}
    extra = {}
    if attrs.pop("bias", False):
        inputs.append("B")
        inits["B"] = np.arange(w_shape[0], dtype=np.float64)
    # A weight fed at run time cannot be folded into the flipped kernel: the rule takes the ConvTranspose path.
    (extra if weight_input else inits)["W"] = _w(w_shape)
    dims = {"W": list(w_shape)} if weight_input else {}
    check(one("Conv", rand(x_shape), inits, inputs, extra=extra, dims=dims, **attrs))


def _conv_grad_ops(x_shape, w_shape, attrs):
    case = one("Conv", rand(x_shape), {"W": _w(w_shape)}, ["X", "W"], **attrs)
    gg = gradient_graph(case)
    return {n.op_type for n in gg.model.graph.node if n.name.startswith("cnnviz/conv_grad")}


def test_conv_emission_paths():
    """Stride 1 with a constant weight uses the flipped-kernel Conv; strides use ConvTranspose."""
    assert _conv_grad_ops((1, 2, 5, 5), (3, 2, 3, 3), dict(pads=[1, 1, 1, 1])) == {"Conv"}
    assert _conv_grad_ops((1, 2, 6, 6), (3, 2, 3, 3), dict(strides=[2, 2])) == {"ConvTranspose"}


@pytest.mark.parametrize("name", ["plain_fast_path", "bias", "groups", "depthwise", "dilations_asym",
                                  "asymmetric_pads", "stride2", "same_lower_even_kernel", "conv1d"])
def test_conv_with_a_held_weight(name):
    """A weight held outside the protobuf (graph/held.py) is read in place by ConvTranspose at any stride: no flipped
    copy of it is folded into the graph."""
    x_shape, w_shape, attrs = CONV_CASES[name]
    attrs = dict(attrs)
    inputs, inits = ["X", "W"], {"W": _w(w_shape)}
    if attrs.pop("bias", False):
        inputs.append("B")
        inits["B"] = np.arange(w_shape[0], dtype=np.float64)
    case = one("Conv", rand(x_shape), inits, inputs, **attrs)
    check(case, hold=("W",))
    ops = {n.op_type for n in gradient_graph(case, hold=("W",)).model.graph.node if n.name.startswith("cnnviz/")}
    assert "ConvTranspose" in ops and "Conv" not in ops


CONV_T_CASES = {
    "plain": ((2, 3, 3, 3), (3, 2, 3, 3), {}),
    "stride2": ((2, 3, 3, 3), (3, 2, 3, 3), dict(strides=[2, 2])),
    "stride2_pads": ((2, 3, 3, 3), (3, 2, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "stride2_asym_pads_outpad": ((2, 2, 3, 4), (2, 3, 3, 3), dict(strides=[2, 2], pads=[1, 0, 0, 1],
                                                                  output_padding=[1, 1])),
    "stride3_outpad2": ((1, 2, 3, 3), (2, 2, 2, 2), dict(strides=[3, 3], output_padding=[2, 1])),
    "group": ((2, 4, 3, 3), (4, 2, 3, 3), dict(group=2, strides=[2, 2], pads=[1, 1, 1, 1])),
    "depthwise": ((1, 3, 3, 3), (3, 1, 3, 3), dict(group=3, strides=[2, 2])),
    "output_shape_odd": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], output_shape=[5, 6])),
    "output_shape_overrides_pads": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], output_shape=[6, 6],
                                                                     pads=[1, 1, 1, 1])),
    "same_lower_odd_total": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "dilations": ((1, 2, 3, 3), (2, 2, 3, 3), dict(dilations=[2, 2], pads=[1, 1, 1, 1])),
    "output_shape": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], output_shape=[6, 6])),
    "same_upper": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower": ((1, 2, 3, 3), (2, 2, 2, 2), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "conv1d": ((2, 2, 4), (2, 3, 3), dict(strides=[2], pads=[1, 0], output_padding=[1])),
}


@pytest.mark.parametrize("name", list(CONV_T_CASES))
def test_conv_transpose(name):
    x_shape, w_shape, attrs = CONV_T_CASES[name]
    check(one("ConvTranspose", rand(x_shape), {"W": _w(w_shape), "B": np.ones(w_shape[1] * attrs.get("group", 1))},
              ["X", "W", "B"], **attrs))


# --------------------------------------------------------------------------------------------------------------------
# Matrix products
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("c_shape", ["vector", "row", "col", "scalar", "full"])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm(trans_a, trans_b, c_shape):
    m, k, p = 3, 4, 5  # M plays the batch
    a = rand((k, m) if trans_a else (m, k), seed=1)
    bm = rand((p, k) if trans_b else (k, p), seed=2)
    c = {"vector": (p,), "row": (1, p), "col": (m, 1), "scalar": (), "full": (m, p)}[c_shape]
    dims = {"A": [k, "N"] if trans_a else ["N", k], "B": list(bm.shape),
            "C": ["N", 1] if c == (m, 1) else ["N", p] if c == (m, p) else list(c)}
    case = Case([node("Gemm", ["A", "B", "C"], alpha=0.7, beta=1.5, transA=trans_a, transB=trans_b)],
                {"A": a, "B": bm, "C": rand(c, seed=3)}, wrt=("A", "B", "C"), dims=dims)
    check(case)


def test_gemm_defaults_const_weight():
    check(one("Gemm", rand((2, 4)), {"W": _w((5, 4)), "C": np.arange(5.0)}, ["X", "W", "C"], transB=1))


def test_gemm_without_c():
    check(one("Gemm", rand((2, 4)), {"W": _w((4, 5))}, ["X", "W"], alpha=-2.0))


def test_matmul_weight_2d():
    check(one("MatMul", rand((2, 4)), {"W": _w((4, 3))}, ["X", "W"]))


def test_matmul_weight_3d():
    check(one("MatMul", rand((2, 3, 4)), {"W": _w((4, 5))}, ["X", "W"]))


@pytest.mark.parametrize("x_shape", [(2, 4), (2, 3, 4), (2, 2, 3, 4)])
def test_matmul_with_a_held_weight(x_shape):
    """dX = G W^T as a Gemm with transB over the held weight itself (no transposed copy), whatever X's rank."""
    case = one("MatMul", rand(x_shape), {"W": _w((4, 5))}, ["X", "W"])
    check(case, hold=("W",))
    ops = [n.op_type for n in gradient_graph(case, hold=("W",)).model.graph.node if n.name.startswith("cnnviz/")]
    assert "Gemm" in ops and "Transpose" not in ops


def test_matmul_batched_both_activations():
    case = Case([node("MatMul", ["A", "B"])], {"A": rand((2, 2, 3), 1), "B": rand((2, 3, 4), 2)}, wrt=("A", "B"))
    check(case)


def test_matmul_broadcast_second_operand():
    """B (3, 4) is shared by every sample: its gradient sums over the batch."""
    case = Case([node("MatMul", ["A", "B"])], {"A": rand((2, 2, 3), 1), "B": rand((3, 4), 2)}, wrt=("A", "B"),
                dims={"B": [3, 4]})
    check(case)


def test_matmul_1d_second_operand():
    case = Case([node("MatMul", ["A", "v"])], {"A": rand((2, 2, 3), 1), "v": rand((3,), 2)}, wrt=("A", "v"),
                dims={"v": [3]})
    check(case)


# --------------------------------------------------------------------------------------------------------------------
# Element-wise arithmetic
# --------------------------------------------------------------------------------------------------------------------

BROADCASTS = {
    # A (batched) and B shapes; both are graph inputs and both are differentiated.
    "same": ((2, 3, 4), (2, 3, 4), ["N", 3, 4]),
    "b_vector": ((2, 3, 4), (4,), [4]),
    "b_channel": ((2, 3, 2, 2), (3, 1, 1), [3, 1, 1]),
    "both_ways": ((2, 3, 1, 4), (3, 5, 1), [3, 5, 1]),
    "b_over_batch": ((2, 3, 4), (1, 3, 1), [1, 3, 1]),
    "a_broadcast": ((2, 1, 4), (2, 3, 1), ["N", 3, 1]),
}


@pytest.mark.parametrize("swap", [False, True], ids=["A_op_B", "B_op_A"])
@pytest.mark.parametrize("shapes", list(BROADCASTS))
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary(op, shapes, swap):
    a_shape, b_shape, b_dims = BROADCASTS[shapes]
    a = rand(a_shape, 1, kinks=(0.0,), margin=0.5) if op == "Div" and swap else rand(a_shape, 1)
    b = rand(b_shape, 2, kinks=(0.0,), margin=0.5) if op == "Div" and not swap else rand(b_shape, 2)
    order = ["B", "A"] if swap else ["A", "B"]
    check(Case([node(op, order)], {"A": a, "B": b}, wrt=("A", "B"), dims={"B": b_dims}))


@pytest.mark.parametrize("op", ["Add", "Mul"])  # X - X and X / X are constant
def test_binary_same_tensor_both_sides(op):
    """X feeds both operands: the two contributions must add up."""
    x = rand((2, 3, 4), kinks=(0.0,), margin=0.5)
    check(one(op, x, inputs=["X", "X"]))


def test_binary_with_constant():
    check(one("Mul", rand((2, 3, 4)), {"s": np.array([1.5, -2.0, 0.5, 3.0])}, ["X", "s"]))


def test_sum():
    inputs = {"A": rand((2, 3, 4), 1), "B": rand((3, 1), 2), "C": rand((2, 3, 4), 3)}
    case = Case([node("Sum", ["A", "B", "C"])], inputs, wrt=("A", "B", "C"), dims={"B": [3, 1]})
    check(case)


UNARY = {
    "Neg": dict(),
    "Exp": dict(),
    "Log": dict(low=0.3, scale=2.0),
    "Sqrt": dict(low=0.3, scale=2.0),
    "Reciprocal": dict(kinks=(0.0,), margin=0.4),
    "Abs": dict(kinks=(0.0,), margin=0.1),
}


@pytest.mark.parametrize("op", list(UNARY))
def test_unary_arithmetic(op):
    check(one(op, rand((2, 3, 4), **UNARY[op])))


@pytest.mark.parametrize("p", [2.0, 3.0, 0.5, 1.0])
def test_pow(p):
    x = rand((2, 3, 4), low=0.3, scale=2.0) if p == 0.5 else rand((2, 3, 4))
    check(one("Pow", x, {"P": np.array(p)}, ["X", "P"]))


def test_pow_integer_exponent():
    check(one("Pow", rand((2, 3, 4)), {"P": np.array(3, dtype=np.int64)}, ["X", "P"]))


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("b_shape", [(2, 3, 4), (4,)], ids=["same", "broadcast"])
def test_max_min(op, b_shape):
    values = distinct((24 + int(np.prod(b_shape)),), seed=3)  # no ties anywhere, even across broadcasting
    a, b = values[:24].reshape(2, 3, 4), values[24:].reshape(b_shape)
    dims = {"B": ["N", 3, 4] if len(b_shape) == 3 else list(b_shape)}
    check(Case([node(op, ["A", "B"])], {"A": a, "B": b}, wrt=("A", "B"), dims=dims))


def test_max_same_tensor_both_sides():
    """max(x, x) = x: the tie goes to one side only, the gradient is g."""
    check(one("Max", distinct((2, 3, 4)), inputs=["X", "X"]))


def test_where():
    cond = np.random.default_rng(4).random((3, 4)) > 0.5
    case = Case([node("Where", ["C", "A", "B"])], {"A": rand((2, 3, 4), 1), "B": rand((1, 4), 2)},
                inits={"C": cond}, wrt=("A", "B"), dims={"B": [1, 4]})
    check(case)


# --------------------------------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------------------------------

def test_relu():
    check(one("Relu", rand((2, 3, 2, 2), kinks=(0.0,))))


@pytest.mark.parametrize("rule_set", ["vanilla", "guided", "deconvnet"])
def test_relu_rule_sets(rule_set):
    x = rand((2, 3, 2, 2), seed=5, kinks=(0.0,))
    case = one("Relu", x)
    w = np.random.default_rng(6).normal(size=(2, 12)).astype(np.float32)
    _, grads = run_gradients(case, w, rule_set)
    g = w.reshape(x.shape)
    expected = {"vanilla": g * (x > 0), "guided": g * (x > 0) * (g > 0), "deconvnet": g * (g > 0)}[rule_set]
    np.testing.assert_allclose(grads["X"], expected, rtol=0, atol=0)


ACTIVATIONS = {
    "LeakyRelu": (dict(alpha=0.1), dict(kinks=(0.0,))),
    "LeakyRelu_default": (dict(), dict(kinks=(0.0,))),
    "Sigmoid": ({}, dict(scale=2.0)),
    "HardSigmoid": (dict(alpha=0.25, beta=0.4), dict(scale=3.0, kinks=(-1.6, 2.4))),
    "HardSigmoid_default": (dict(), dict(scale=3.0, kinks=(-2.5, 2.5))),
    "HardSwish": ({}, dict(scale=3.5, kinks=(-3.0, 3.0))),
    "Tanh": ({}, dict(scale=1.5)),
    "Erf": ({}, dict()),
    "Elu": (dict(alpha=0.7), dict(kinks=(0.0,))),
    "Softplus": ({}, dict(scale=2.0)),
    "Mish": ({}, dict(scale=2.0)),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(name):
    op = name.split("_")[0]
    attrs, draw = ACTIVATIONS[name]
    opset = 18 if op == "Mish" else 17
    check(one(op, rand((2, 3, 2, 3), **draw), opset=opset, **attrs))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    check(one("Gelu", rand((2, 3, 4), scale=2.0), opset=20, approximate=approximate))


def test_prelu_per_channel():
    slope = np.array([0.1, -0.3, 0.5]).reshape(3, 1, 1)
    check(one("PRelu", rand((2, 3, 2, 2), kinks=(0.0,)), {"slope": slope}, ["X", "slope"]))


def test_prelu_full_slope():
    check(one("PRelu", rand((2, 3, 4), kinks=(0.0,)), {"slope": rand((3, 4), seed=3)}, ["X", "slope"]))


def test_prelu_scalar_slope():
    check(one("PRelu", rand((2, 3, 4), kinks=(0.0,)), {"slope": np.array([0.2])}, ["X", "slope"]))


def test_clip_min_max():
    x = rand((2, 3, 2, 3), scale=1.0, kinks=(-0.5, 0.7))
    check(one("Clip", x, {"lo": np.array(-0.5), "hi": np.array(0.7)}, ["X", "lo", "hi"]))


def test_clip_min_only():
    check(one("Clip", rand((2, 3, 4), kinks=(0.2,)), {"lo": np.array(0.2)}, ["X", "lo"]))


def test_clip_max_only():
    check(one("Clip", rand((2, 3, 4), kinks=(0.2,)), {"hi": np.array(0.2)}, ["X", "", "hi"]))


def test_clip_no_bounds():
    check(one("Clip", rand((2, 3, 4))))


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax(op, axis):
    check(one(op, rand((2, 3, 2, 4)), axis=axis))


# --------------------------------------------------------------------------------------------------------------------
# Pooling and reductions
# --------------------------------------------------------------------------------------------------------------------

MAXPOOL = {
    "2x2s2": ((2, 2, 4, 4), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "3x3s2_pad1_overlap": ((2, 2, 5, 5), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "3x3s1": ((1, 2, 4, 4), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    "ceil_mode": ((1, 2, 5, 5), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "ceil_mode_3x3s2": ((1, 2, 6, 6), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "dilations": ((1, 2, 6, 6), dict(kernel_shape=[2, 2], dilations=[2, 2])),
    "asym_pads": ((1, 2, 5, 4), dict(kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 2, 0])),
    "same_upper": ((1, 2, 5, 5), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "1d": ((2, 2, 7), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    "ceil_mode_pad": ((1, 2, 6, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    "ceil_mode_dilations": ((1, 2, 7, 7), dict(kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2], ceil_mode=1)),
    "3d": ((1, 2, 3, 4, 4), dict(kernel_shape=[2, 2, 2], strides=[1, 2, 2])),
}


@pytest.mark.parametrize("name", list(MAXPOOL))
def test_max_pool(name):
    shape, attrs = MAXPOOL[name]
    check(one("MaxPool", distinct(shape, seed=2), **attrs))


AVGPOOL = {
    "2x2s2": ((2, 2, 4, 4), dict(kernel_shape=[2, 2], strides=[2, 2]), 17),
    "3x3s1_pad_exclude": ((1, 2, 4, 4), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0), 17),
    "3x3s1_pad_include": ((1, 2, 4, 4), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1), 17),
    "3x3s2_asym_pad_exclude": ((1, 2, 5, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 2]), 17),
    "3x3s2_asym_pad_include": ((1, 2, 5, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 2],
                                                  count_include_pad=1), 17),
    "ceil_mode": ((1, 2, 5, 5), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), 17),
    "ceil_mode_pad_exclude": ((1, 2, 6, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                                 ceil_mode=1), 17),
    "ceil_mode_pad_include": ((1, 2, 6, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                                 ceil_mode=1, count_include_pad=1), 17),
    "same_upper": ((1, 2, 5, 5), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), 17),
    "same_upper_include": ((1, 2, 5, 5), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER",
                                              count_include_pad=1), 17),
    "same_lower_include": ((1, 2, 5, 5), dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER",
                                              count_include_pad=1), 17),
    "ceil_mode_k2s2_pad1_include": ((1, 2, 4, 4), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1],
                                                       ceil_mode=1, count_include_pad=1), 17),
    "dilations_pad_include": ((1, 2, 6, 6), dict(kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1],
                                                 count_include_pad=1), 19),
    "dilations_ceil_mode": ((1, 2, 7, 7), dict(kernel_shape=[2, 2], dilations=[2, 2], strides=[2, 2],
                                               ceil_mode=1), 19),
    "dilations": ((1, 2, 6, 6), dict(kernel_shape=[2, 2], dilations=[2, 2]), 19),
    "dilations_pad": ((1, 2, 6, 6), dict(kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1]), 19),
    "1d": ((2, 2, 7), dict(kernel_shape=[3], strides=[2], pads=[1, 1]), 17),
}


@pytest.mark.parametrize("name", list(AVGPOOL))
def test_average_pool(name):
    shape, attrs, opset = AVGPOOL[name]
    check(one("AveragePool", rand(shape), opset=opset, **attrs))


@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_ceil_mode_last_window_in_padding_true_shape(op, include_pad):
    """ONNX shape inference (onnx 1.23) keeps a ceil_mode window that starts in the right padding, which the spec and
    onnxruntime drop; Model probes the real shape in that case (tests/test_engine.py). Given that shape (3x3), both
    rules are right."""
    x = distinct((1, 1, 5, 5)) if op == "MaxPool" else rand((1, 1, 5, 5))
    attrs = dict(count_include_pad=include_pad) if op == "AveragePool" else dict(storage_order=0)
    case = one(op, x, kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, **attrs)
    case.shape_fixes["Y"] = (None, 1, 3, 3)
    check(case)


def test_global_average_pool():
    check(one("GlobalAveragePool", rand((2, 3, 3, 4))))


def test_global_max_pool():
    check(one("GlobalMaxPool", distinct((2, 3, 3, 4), seed=4)))


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", [[2, 3], [1], [-1, 1]], ids=str)
def test_reduce_mean_axes_attr(axes, keepdims):
    check(one("ReduceMean", rand((2, 3, 2, 4)), axes=axes, keepdims=keepdims))


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", [[1], [2, -1]], ids=str)
def test_reduce_sum_axes_input(axes, keepdims):
    check(one("ReduceSum", rand((2, 3, 2, 4)), {"axes": np.array(axes, dtype=np.int64)}, ["X", "axes"],
              keepdims=keepdims))


def test_reduce_sum_noop_with_empty_axes():
    check(one("ReduceSum", rand((2, 3, 4)), noop_with_empty_axes=1))


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", [[1], [2, 3]], ids=str)
def test_reduce_max(axes, keepdims):
    check(one("ReduceMax", distinct((2, 3, 2, 4), seed=5), axes=axes, keepdims=keepdims))


def test_reduce_max_axes_input_opset18():
    check(one("ReduceMax", distinct((2, 3, 4), seed=6), {"axes": np.array([2], dtype=np.int64)}, ["X", "axes"],
              opset=18, keepdims=0))


# --------------------------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------------------------

def test_batch_normalization():
    inits = {"s": np.array([0.5, -1.5, 2.0]), "b": np.array([0.1, 0.2, 0.3]), "m": np.array([0.3, -0.2, 0.0]),
             "v": np.array([0.5, 2.0, 1.2])}
    check(one("BatchNormalization", rand((2, 3, 2, 3)), inits, ["X", "s", "b", "m", "v"], epsilon=1e-3))


def test_batch_normalization_2d():
    inits = {"s": np.array([0.5, -1.5, 2.0, 1.0]), "b": np.zeros(4), "m": np.array([0.3, -0.2, 0.0, 1.0]),
             "v": np.array([0.5, 2.0, 1.2, 0.1])}
    check(one("BatchNormalization", rand((2, 4)), inits, ["X", "s", "b", "m", "v"]))


def test_batch_normalization_runtime_stats():
    """Scale and variance fed at run time: the factor is computed in the graph."""
    extra = {"s": np.array([0.5, -1.5]), "v": np.array([0.5, 2.0])}
    case = one("BatchNormalization", rand((2, 2, 3)), {"b": np.zeros(2), "m": np.array([0.3, -0.2])},
               ["X", "s", "b", "m", "v"], extra=extra, dims={"s": [2], "v": [2]})
    check(case)


@pytest.mark.parametrize("axis", [-1, 1, 2])
def test_layer_normalization(axis):
    shape = (2, 2, 3, 4)
    norm_shape = shape[axis:]
    rng = np.random.default_rng(7)
    inits = {"scale": rng.normal(1.0, 0.5, norm_shape), "bias": rng.normal(0, 0.5, norm_shape)}
    check(one("LayerNormalization", rand(shape, scale=2.0), inits, ["X", "scale", "bias"], axis=axis,
              epsilon=1e-3))


def test_layer_normalization_no_bias():
    check(one("LayerNormalization", rand((2, 3, 5)), {"scale": np.array([1.0, 2.0, -1.0, 0.5, 1.5])},
              ["X", "scale"]))


def test_instance_normalization():
    inits = {"scale": np.array([1.0, -2.0, 0.5]), "B": np.array([0.0, 1.0, -1.0])}
    check(one("InstanceNormalization", rand((2, 3, 2, 3), scale=2.0), inits, ["X", "scale", "B"], epsilon=1e-3))


# --------------------------------------------------------------------------------------------------------------------
# Data movement
# --------------------------------------------------------------------------------------------------------------------

def _i64(values):
    return np.array(values, dtype=np.int64)


SHAPE_CASES = {
    "Identity": lambda: one("Identity", rand((2, 3, 4))),
    "Dropout": lambda: one("Dropout", rand((2, 3, 4)), {"ratio": np.array(0.5)}, ["X", "ratio"]),
    "Dropout_training_false": lambda: one("Dropout", rand((2, 3, 4)), {"ratio": np.array(0.5),
                                                                      "t": np.array(False)}, ["X", "ratio", "t"]),
    "Cast": lambda: one("Cast", rand((2, 3, 4)), to=TensorProto.FLOAT),
    "Flatten": lambda: one("Flatten", rand((2, 2, 3, 2))),
    "Flatten_axis2": lambda: one("Flatten", rand((2, 2, 3, 2)), axis=2),
    "Reshape": lambda: one("Reshape", rand((2, 2, 3, 2)), {"s": _i64([0, 3, -1])}, ["X", "s"]),
    "Reshape_minus1_batch": lambda: one("Reshape", rand((2, 2, 3, 2)), {"s": _i64([-1, 4, 3])}, ["X", "s"]),
    "Squeeze": lambda: one("Squeeze", rand((2, 1, 3, 1, 2)), {"a": _i64([1, 3])}, ["X", "a"]),
    "Squeeze_negative": lambda: one("Squeeze", rand((2, 3, 1)), {"a": _i64([-1])}, ["X", "a"]),
    "Unsqueeze": lambda: one("Unsqueeze", rand((2, 3, 2)), {"a": _i64([1, -1])}, ["X", "a"]),
    "Transpose": lambda: one("Transpose", rand((2, 2, 3, 4)), perm=[0, 2, 3, 1]),
    "Transpose_batch_moves": lambda: Case([node("Transpose", ["X"], ["T"], perm=[2, 0, 1]),
                                           helper.make_node("Transpose", ["T"], ["Y"], name="t2", perm=[1, 0, 2])],
                                          {"X": rand((2, 3, 4))}),
    "Concat_same_input": lambda: one("Concat", rand((2, 2, 3)), inputs=["X", "X"], axis=1),
    "Concat_two_inputs": lambda: Case([node("Concat", ["A", "B"], axis=-1)], {"A": rand((2, 2, 3), 1),
                                                                              "B": rand((2, 2, 2), 2)},
                                      wrt=("A", "B")),
    "Concat_single_input": lambda: one("Concat", rand((2, 2, 3)), inputs=["X"], axis=1),
    "Slice_step1": lambda: one("Slice", rand((2, 5, 6)), {"s": _i64([1]), "e": _i64([4]), "a": _i64([1])},
                               ["X", "s", "e", "a"]),
    # Bounds for every axis, the batch's in full (tf2onnx style): identity along the batch.
    "Slice_no_axes_full_batch": lambda: one("Slice", rand((2, 5, 6)), {"s": _i64([0, 1, 2]),
                                                                       "e": _i64([2 ** 63 - 1, 4, 100])},
                                            ["X", "s", "e"]),
    "Slice_step3_negative_start": lambda: one("Slice", rand((2, 3, 8)), {"s": _i64([-7]), "e": _i64([100]),
                                                                         "a": _i64([2]), "st": _i64([3])},
                                              ["X", "s", "e", "a", "st"]),
    "Slice_step2": lambda: one("Slice", rand((2, 5, 6)), {"s": _i64([0]), "e": _i64([6]), "a": _i64([2]),
                                                          "st": _i64([2])}, ["X", "s", "e", "a", "st"]),
    "Slice_negative_step": lambda: one("Slice", rand((2, 5, 6)), {"s": _i64([-1]), "e": _i64([-100]),
                                                                  "a": _i64([2]), "st": _i64([-2])},
                                       ["X", "s", "e", "a", "st"]),
    "Slice_negative_step_bounded": lambda: one("Slice", rand((2, 5, 6)), {"s": _i64([4, 3]), "e": _i64([0, 0]),
                                                                          "a": _i64([-1, 1]), "st": _i64([-1, -1])},
                                               ["X", "s", "e", "a", "st"]),
    "Slice_multi_axes": lambda: one("Slice", rand((2, 5, 6)), {"s": _i64([1, -4]), "e": _i64([-1, 6]),
                                                               "a": _i64([-1, 1]), "st": _i64([2, 1])},
                                    ["X", "s", "e", "a", "st"]),
    "Pad_positive": lambda: one("Pad", rand((2, 2, 3, 3)), {"p": _i64([0, 0, 1, 2, 0, 0, 2, 1])}, ["X", "p"]),
    "Pad_negative": lambda: one("Pad", rand((2, 2, 4, 4)), {"p": _i64([0, 0, -1, 1, 0, 0, 1, -2])}, ["X", "p"]),
    "Pad_value": lambda: one("Pad", rand((2, 2, 3)), {"p": _i64([0, 1, 0, 0, 2, 1]), "v": np.array(0.5)},
                             ["X", "p", "v"]),
    "Pad_axes_opset18": lambda: one("Pad", rand((2, 2, 3)), {"p": _i64([1, -1, 2, 1]), "ax": _i64([-1, 1])},
                                    ["X", "p", "", "ax"], opset=18),
    "Expand": lambda: one("Expand", rand((2, 3, 1)), {"s": _i64([1, 3, 4])}, ["X", "s"]),
    # Expand prepends an axis (the batch moves to axis 1; a Transpose brings it back for the score).
    "Expand_new_axis": lambda: Case([node("Expand", ["X", "s"], ["E"]),
                                     helper.make_node("Transpose", ["E"], ["Y"], name="t", perm=[1, 0, 2, 3])],
                                    {"X": rand((2, 1, 3))}, {"s": _i64([2, 1, 4, 3])}),
    "Tile": lambda: one("Tile", rand((2, 2, 3)), {"r": _i64([1, 2, 3])}, ["X", "r"]),
    "Gather_scalar_negative_last_axis": lambda: one("Gather", rand((2, 3, 4)), {"i": np.array(-1, dtype=np.int64)},
                                                    ["X", "i"], axis=2),
    "Gather_scalar": lambda: one("Gather", rand((2, 4, 3)), {"i": np.array(2, dtype=np.int64)}, ["X", "i"], axis=1),
    "Gather_vector_repeats": lambda: one("Gather", rand((2, 4, 3)), {"i": _i64([0, 2, 2, -1])}, ["X", "i"],
                                         axis=1),
    "Gather_2d_last_axis": lambda: one("Gather", rand((2, 3, 4)), {"i": _i64([[0, 3], [1, 1]])}, ["X", "i"],
                                       axis=-1),
}


@pytest.mark.parametrize("name", list(SHAPE_CASES))
def test_data_movement(name):
    check(SHAPE_CASES[name]())


@pytest.mark.parametrize("unused", [0, 1])
def test_split_with_unused_output(unused):
    used = 1 - unused
    n = node("Split", ["X", "sp"], outputs=["Y0", "Y1"], axis=1)
    case = Case([n], {"X": rand((2, 6, 2))}, {"sp": _i64([2, 4])}, score=f"Y{used}")
    check(case)


def test_split_three_outputs_reordered():
    nodes = [node("Split", ["X", "sp"], outputs=["A", "B", "C"], axis=2),
             helper.make_node("Concat", ["C", "A"], ["Y"], name="concat", axis=2)]
    check(Case(nodes, {"X": rand((2, 3, 6))}, {"sp": _i64([1, 2, 3])}))


def test_split_both_outputs_used():
    nodes = [node("Split", ["X"], outputs=["Y0", "Y1"], axis=-1, num_outputs=2),
             helper.make_node("Mul", ["Y0", "Y1"], ["Y"], name="mul")]
    check(Case(nodes, {"X": rand((2, 3, 4))}, opset=18))


RESIZE = {
    "nearest_asymmetric_floor_scales2": (
        (2, 2, 3, 3), dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        {"scales": np.array([1.0, 1.0, 2.0, 2.0])}),
    "nearest_default_scales_non_integer": (
        (2, 2, 3, 4), dict(mode="nearest"), {"scales": np.array([1.0, 1.0, 1.5, 2.5])}),
    "linear_half_pixel_sizes": (
        (2, 2, 3, 4), dict(mode="linear", coordinate_transformation_mode="half_pixel"),
        {"sizes": _i64([2, 2, 5, 7])}),
    "linear_half_pixel_downsample": (
        (2, 2, 6, 5), dict(mode="linear", coordinate_transformation_mode="half_pixel"),
        {"sizes": _i64([2, 2, 3, 2])}),
    "linear_align_corners": (
        (2, 2, 3, 4), dict(mode="linear", coordinate_transformation_mode="align_corners"),
        {"scales": np.array([1.0, 1.0, 2.0, 1.5])}),
    "cubic_scales": ((1, 2, 3, 3), dict(mode="cubic"), {"scales": np.array([1.0, 1.0, 2.0, 2.0])}),
    "nearest_pytorch_half_pixel_round_prefer_ceil": (
        (2, 2, 3, 4), dict(mode="nearest", coordinate_transformation_mode="pytorch_half_pixel",
                           nearest_mode="round_prefer_ceil"), {"scales": np.array([1.0, 1.0, 1.7, 2.3])}),
    "linear_antialias_downsample_opset18": (
        (2, 2, 6, 7), dict(mode="linear", antialias=1), {"sizes": _i64([2, 2, 3, 4]), "opset": 18}),
    "cubic_antialias_half_pixel_symmetric_opset19": (
        (2, 2, 6, 7), dict(mode="cubic", antialias=1, coordinate_transformation_mode="half_pixel_symmetric"),
        {"scales": np.array([1.0, 1.0, 0.5, 0.6]), "opset": 19}),
    # opset 11/12 exports: empty roi and scales tensors next to the sizes.
    "linear_sizes_empty_roi_scales": (
        (2, 2, 3, 4), dict(mode="linear"), {"roi": np.zeros(0), "scales": np.zeros(0), "sizes": _i64([2, 2, 6, 5])}),
}


@pytest.mark.parametrize("name", list(RESIZE))
def test_resize(name):
    shape, attrs, consts = RESIZE[name]
    consts = dict(consts)
    opset = consts.pop("opset", 17)
    inputs = ["X", "roi" if "roi" in consts else "", "scales" if "scales" in consts else "",
              "sizes" if "sizes" in consts else ""]
    while not inputs[-1]:
        inputs.pop()
    check(one("Resize", rand(shape), consts, inputs, opset=opset, **attrs))


# --------------------------------------------------------------------------------------------------------------------
# Fan-out and the engine around the rules
# --------------------------------------------------------------------------------------------------------------------

def test_fan_out_sums_contributions():
    nodes = [helper.make_node("Relu", ["X"], ["r"], name="relu"), helper.make_node("Exp", ["X"], ["e"], name="exp"),
             helper.make_node("Mul", ["r", "e"], ["Y"], name="mul")]
    check(Case(nodes, {"X": rand((2, 3, 4), kinks=(0.0,))}))


def _sin_model(on_path: bool, via_shape: bool = False):
    nodes = [helper.make_node("Sin", ["X"], ["s"], name="my_sine")]
    extra = ()
    if on_path:
        nodes.append(helper.make_node("ReduceSum", ["s", "ax"], ["Y"], name="sum", keepdims=1))
    elif via_shape:  # Sin only feeds a shape computation
        nodes += [helper.make_node("Shape", ["s"], ["shp"], name="shape"),
                  helper.make_node("Relu", ["X"], ["r"], name="relu"),
                  helper.make_node("Reshape", ["r", "shp"], ["Y"], name="reshape")]
    else:  # Sin on a branch that does not reach the score
        nodes.append(helper.make_node("Relu", ["X"], ["Y"], name="relu"))
        extra = ("s",)
    inits = {"ax": _i64([2])} if on_path else {}
    return Case(nodes, {"X": rand((2, 3, 4), kinks=(0.0,))}, inits, extra_outputs=extra)


def test_op_without_rule_on_path_raises():
    with pytest.raises(UnsupportedOpError) as err:
        gradient_graph(_sin_model(on_path=True))
    message = str(err.value)
    assert "my_sine" in message and "Sin" in message
    assert "issue" in message and "gradient path" in message, message
    assert err.value.node_name == "my_sine" and err.value.op_type == "Sin"


@pytest.mark.parametrize("via_shape", [False, True], ids=["side_branch", "shape_only"])
def test_op_without_rule_off_path_is_fine(via_shape):
    check(_sin_model(on_path=False, via_shape=via_shape))


def test_gradient_output_name():
    gg = gradient_graph(one("Relu", rand((2, 3), kinks=(0.0,))))
    assert gg.gradients == {"X": grad_name("X")}


# --------------------------------------------------------------------------------------------------------------------
# Variants the rules refuse, with a message naming the node
# --------------------------------------------------------------------------------------------------------------------

UNSUPPORTED = {
    "conv_transpose_weight_grad": lambda: Case([node("ConvTranspose", ["X", "W"])],
                                               {"X": rand((1, 2, 4, 4)), "W": _w((2, 3, 3, 3))},
                                               wrt=("X", "W"), dims={"W": [2, 3, 3, 3]}),
    "pow_runtime_exponent": lambda: one("Pow", rand((2, 3)), inputs=["X", "P"], extra={"P": np.array(2.0)},
                                        dims={"P": []}),
    "pow_tensor_exponent": lambda: one("Pow", rand((2, 3)), {"P": np.array([2.0, 3.0, 2.0])}, ["X", "P"]),
    "max_three_inputs": lambda: one("Max", rand((2, 3)), {"K": np.zeros(3), "L": np.ones(3)}, ["X", "K", "L"]),
    "matmul_1d_first": lambda: Case([node("MatMul", ["v", "B"])], {"v": rand((3,)), "B": rand((2, 3, 4))},
                                    wrt=("v",), dims={"v": [3]}),
    "maxpool_storage_order": lambda: one("MaxPool", distinct((1, 1, 4, 4)), kernel_shape=[2, 2], strides=[2, 2],
                                         storage_order=1),
    "slice_batch_partial": lambda: one("Slice", rand((2, 5, 6)), {"s": _i64([0, 1]), "e": _i64([9, 4])},
                                       ["X", "s", "e"]),
    "slice_batch_step2": lambda: one("Slice", rand((2, 5, 6)), {"s": _i64([0, 1]), "e": _i64([2 ** 63 - 1, 4]),
                                                                "a": _i64([0, 1]), "st": _i64([2, 1])},
                                     ["X", "s", "e", "a", "st"]),
    "gather_batch_axis": lambda: one("Gather", rand((2, 3)), {"i": _i64([0])}, ["X", "i"], axis=0),
    "dropout_training": lambda: one("Dropout", rand((2, 3)), {"r": np.array(0.5), "t": np.array(True)},
                                    ["X", "r", "t"]),
    "tile_batch": lambda: one("Tile", rand((2, 3)), {"r": _i64([2, 1])}, ["X", "r"]),
    "concat_batch": lambda: Case([node("Concat", ["A", "B"], axis=0)], {"A": rand((2, 3)), "B": rand((2, 3))},
                                 wrt=("A", "B")),
    "resize_axes": lambda: one("Resize", rand((1, 2, 3, 3)), {"sc": np.array([2.0, 2.0])}, ["X", "", "sc"],
                               opset=18, axes=[2, 3], mode="nearest"),
    "batchnorm_param_grad": lambda: Case([node("BatchNormalization", ["X", "s", "b", "m", "v"])],
                                         {"X": rand((2, 2, 3)), "s": np.ones(2)},
                                         {"b": np.zeros(2), "m": np.zeros(2), "v": np.ones(2)}, wrt=("X", "s"),
                                         dims={"s": [2]}),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_variant_raises(name):
    case = UNSUPPORTED[name]()
    with pytest.raises(UnsupportedOpError) as err:
        gradient_graph(case)
    op = case.nodes[0].op_type
    message = str(err.value)
    assert f"'{case.nodes[0].name}'" in message and f"op_type {op}" in message, message
    assert err.value.op_type == op
