"""The classifier head: every walk back from the class score (or from a layer) through the graph.

* :func:`find_score` — the class vector before a final Softmax/LogSoftmax/Sigmoid; :func:`choose_score` — which
  output holds it when there are several (``probs = Softmax(logits)``, ``label = ArgMax(probs)``, a TopK), and why;
* :func:`cam_head` — CAM's class weights over a globally average-pooled feature map (Zhou et al. 2016);
* :func:`spatial_head` — the last spatial map before the score and the head nodes after it (the fully convolutional
  rewrite);
* :func:`penultimate_input` — the representation the last linear layer classifies (Krizhevsky et al.'s fc7 code);
* :func:`producing_conv` — the convolution whose output a layer is, through activations and normalisations;

built from three helpers: :func:`walk_back` through a set of op types (:mod:`onnx_cnnviz.graph.ops`),
:func:`constant_value` of a weight behind Identity/Cast/Transpose, and :func:`global_average_input`.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import onnx

from ..errors import ModelStructureError
from . import held
from .ops import (CHANNEL_KEEPING, DENSE, HEAD_GLUE, INFERENCE_IDENTITIES, LINEAR_LAYERS, NORMALISERS,
                  ORDER_KEEPING_VIEWS, SCORE_VIEWS, WINDOWED_EQUIVALENT, node_attr)
from .structure import producers


# ==================================================================================================================
# Helpers
# ==================================================================================================================
def walk_back(name: str, made_by: dict, through, follow: Callable | None = None) -> tuple[str, list]:
    """Follow tensor ``name`` back while its producer's op_type is in ``through``.

    ``follow(node)`` picks the input to continue from (default: the first); when it returns None the walk stops.
    Returns the tensor reached (its producer, if any, is not in ``through``) and the nodes passed, score side first.
    """
    passed = []
    node = made_by.get(name)
    while node is not None and node.op_type in through:
        nxt = follow(node) if follow is not None else node.input[0]
        if nxt is None:
            break
        passed.append(node)
        name = nxt
        node = made_by.get(name)
    return name, passed


def constant_value(name: str, inits: dict, made_by: dict) -> np.ndarray | None:
    """The float32 value of a weight tensor: an initializer of ``inits`` (name -> TensorProto), possibly behind
    Identity / Cast / Transpose nodes (some exporters transpose a Linear's weight in the graph); None when it is
    computed from the input."""
    if name in inits:
        return held.value(inits[name]).astype(np.float32)
    node = made_by.get(name)
    if node is None or not node.input:
        return None
    if node.op_type in ("Identity", "Cast"):
        return constant_value(node.input[0], inits, made_by)
    if node.op_type == "Transpose":
        value = constant_value(node.input[0], inits, made_by)
        return None if value is None else np.transpose(value, node_attr(node, "perm"))
    return None


def reduce_axes(node: onnx.NodeProto, inits: dict, made_by: dict, rank: int) -> list[int] | None:
    """The axes a Reduce* node of a rank-``rank`` input reduces: its ``axes`` attribute (opset < 18) or constant
    input, every axis when it has neither (the ONNX default); None when the axes are computed at run time."""
    axes = node_attr(node, "axes")
    if axes is not None:
        return list(axes)
    if len(node.input) > 1 and node.input[1]:
        value = constant_value(node.input[1], inits, made_by)
        return None if value is None else [int(v) for v in value.reshape(-1)]
    return list(range(rank))


def global_average_input(node: onnx.NodeProto, info: dict, inits: dict, made_by: dict) -> str | None:
    """The 4-D input of a global spatial average (GlobalAveragePool, ReduceMean over H and W, or an AveragePool whose
    kernel covers the map without padding), else None."""
    if node.op_type == "GlobalAveragePool":
        return node.input[0]
    shape = info.get(node.input[0]).shape if info.get(node.input[0]) is not None else None
    if shape is None or len(shape) != 4:
        return None
    if node.op_type == "ReduceMean":
        axes = reduce_axes(node, inits, made_by, 4)
        return node.input[0] if axes is not None and sorted(a % 4 for a in axes) == [2, 3] else None
    if node.op_type == "AveragePool":
        kernel = list(node_attr(node, "kernel_shape", []))
        pads = list(node_attr(node, "pads", [0, 0, 0, 0]))
        if kernel == list(shape[2:]) and not any(pads):
            return node.input[0]
    return None


# ==================================================================================================================
# The score
# ==================================================================================================================
# What a deployed model computes from its class scores for convenience, next to them or instead of them: views of the
# same values, the final normalisers, and selections (the label, the top k, the confidence). An output computed from
# another through these alone holds no class scores of its own.
SAME_VALUES = SCORE_VIEWS | INFERENCE_IDENTITIES | {"Cast"}
# Selections count only along the class axis (1 or -1 of (N, K) scores): a ReduceMax over H and W is a global max
# pool, whose output is the class scores themselves.
SELECTIONS = {"ArgMax": "labels", "TopK": "top-k", "ReduceMax": "the maximum"}
DERIVING = SAME_VALUES | NORMALISERS | set(SELECTIONS)
# The class vectors an output may be, best first: the scores themselves, then their normalisations (whose input
# the score is then taken from).
CLASS_VECTORS = ("class scores", "log-probabilities", "probabilities", "sigmoid probabilities")
_NORMALISED = {"Softmax": "probabilities", "LogSoftmax": "log-probabilities", "Sigmoid": "sigmoid probabilities"}


@dataclass(frozen=True)
class OutputRole:
    """What one graph output is: ``name = ops(source)``, ``source`` being another output (``from_output``) or the
    tensor where the walk back through :data:`DERIVING` ops stops; ``root`` is where the walk ends through every
    output, the same for all outputs computed from one tensor."""
    name: str
    source: str
    ops: tuple  # (op_type, output index) from source to name, source side first
    root: str
    kind: str  # one of CLASS_VECTORS, or "labels", "top-k scores", "top-k labels", "the maximum"
    producer: str  # what computes ``root``: "Gemm 'fc'", or "the graph input"
    from_output: bool = False

    @property
    def is_class_vector(self) -> bool:
        return self.kind in CLASS_VECTORS

    @property
    def expression(self) -> str:
        """``Softmax(logits)``, ``ArgMax(probs)``, ``TopK(logits).indices`` (views left out): ``name`` in terms of
        ``source``."""
        text = self.source
        for op, index in self.ops:
            if op in SAME_VALUES:
                continue
            text = f"{op}({text})" + ((".indices" if index else ".values") if op == "TopK" else "")
        return text

    @property
    def formula(self) -> str:
        """``probs = Softmax(logits)`` when the output is computed from another tensor by more than views, else
        its bare name."""
        return f"{self.name} = {self.expression}" if self.from_output or self.expression != self.source else self.name

    def describe(self) -> str:
        """:attr:`formula` for an output computed from another, else what it is and what computes it:
        ``logits (class scores, computed by Gemm 'fc')``."""
        if self.from_output:
            return self.formula
        where = f"{self.source} " if self.expression != self.source else ""
        return f"{self.formula} ({self.kind}, {where}computed by {self.producer})"


@dataclass(frozen=True)
class ScoreChoice:
    """The class-score output :func:`choose_score` picked, the tensor the score is read from, and why."""
    output: str  # the output (or tensor) holding the class vector
    tensor: str  # the score: ``output``, or the input of its final normaliser
    skipped: str | None  # the normaliser skipped (Softmax, LogSoftmax, Sigmoid) or None
    reason: str  # one sentence
    outputs: tuple = ()  # OutputRole of every graph output, in graph order

    def summary(self) -> str:
        """``outputs: logits, probs = Softmax(logits), label = ArgMax(probs)``."""
        return "outputs: " + ", ".join(r.formula for r in self.outputs)


def output_roles(model: onnx.ModelProto) -> list[OutputRole]:
    """:class:`OutputRole` of every output of ``model``: which are computed from which (through :data:`DERIVING`
    ops only), and what each holds."""
    graph = model.graph
    made_by = producers(graph)
    inits = {t.name: t for t in graph.initializer}
    names = [o.name for o in graph.output]
    walks = {name: _walk_to_source(name, made_by, inits, set(names) - {name}) for name in names}
    roles: dict[str, OutputRole] = {}
    chains: dict[str, tuple] = {}  # output -> ops from its root

    def role(name: str) -> OutputRole:
        if name not in roles:
            source, ops = walks[name]
            if source != name and source in walks:  # computed from another output (a DAG: no cycle)
                parent = role(source)
                root, producer, chains[name] = parent.root, parent.producer, chains[source] + ops
            else:
                node = made_by.get(source)
                root, chains[name] = source, ops
                producer = f"{node.op_type} '{node.name or source}'" if node is not None else "the graph input"
            roles[name] = OutputRole(name, source, ops, root, _kind(chains[name]), producer,
                                     from_output=source != name and source in walks)
        return roles[name]

    return [role(name) for name in names]


def _walk_to_source(name: str, made_by: dict, inits: dict, others: set) -> tuple[str, tuple]:
    """Walk back from output ``name`` through :data:`DERIVING` ops until another output (in ``others``) or a tensor
    not made by them: ``(that tensor, ((op_type, output index), ...) source side first)``; ``(name, ())`` when
    ``name`` is not computed by such an op."""
    ops, current = [], name
    node = made_by.get(current)
    while node is not None and _derives(node, inits, made_by):
        ops.append((node.op_type, list(node.output).index(current)))
        current = node.input[0]
        if current in others:
            break
        node = made_by.get(current)
    return current, tuple(reversed(ops))


def _derives(node: onnx.NodeProto, inits: dict, made_by: dict) -> bool:
    """Whether ``node`` is one of :data:`DERIVING`, a selection only along the class axis."""
    if node.op_type not in DERIVING or not node.input or not node.input[0]:
        return False
    if node.op_type == "ReduceMax":
        axes = reduce_axes(node, inits, made_by, 2)
        return axes is not None and len(axes) == 1 and axes[0] in (1, -1)
    if node.op_type in ("ArgMax", "TopK"):
        return node_attr(node, "axis", 0 if node.op_type == "ArgMax" else -1) in (1, -1)
    return True


def _kind(ops) -> str:
    """What a tensor computed by ``ops`` from the class scores holds: the last op that changes values decides."""
    for op, index in reversed(list(ops)):
        if op in SAME_VALUES:
            continue
        if op in _NORMALISED:
            return _NORMALISED[op]
        if op == "TopK":
            return "top-k labels" if index else "top-k scores"
        return SELECTIONS[op]
    return "class scores"


def choose_score(model: onnx.ModelProto, wanted: str | None = None) -> ScoreChoice:
    """Pick the class-score output of ``model`` and the score tensor in it (see :func:`find_score`), saying why.

    With several outputs the choice is automatic when it is unambiguous: every output is computed from one tensor
    through views, final normalisers and selections (``probs = Softmax(logits)``, ``label = ArgMax(probs)``,
    ``TopK(logits)``; :func:`output_roles`). The class vector among them is chosen, the raw scores before their
    normalisations; when every output is a selection (a TopK's values and indices), the tensor they select from. Two
    outputs computed from different tensors may both be class scores (two heads): :class:`ModelStructureError`
    listing each output and what it is.
    """
    graph = model.graph
    outputs = [o.name for o in graph.output]
    made_by = producers(graph)
    if not outputs and wanted is None:
        raise ModelStructureError("the model has no outputs, so there is no class score to explain; the export "
                                  "is incomplete (give the exporter the output names) or this is not a classifier.")
    roles = tuple(output_roles(model)) if outputs else ()
    if wanted is not None:
        if wanted not in outputs and wanted not in made_by:
            raise ModelStructureError(
                f"the model has no output or tensor named '{wanted}'; its outputs are: {', '.join(outputs)}.")
        chosen = next((r for r in roles if r.name == wanted), None)
        if chosen is not None and not chosen.is_class_vector:
            raise ModelStructureError(
                f"the output '{wanted}' holds {chosen.kind} ({chosen.describe()}), not a class vector; choose the "
                f"class scores with output=NAME (--output NAME on the command line): {_listing(roles)}.")
        return _score_in(wanted, made_by, "named with output=NAME (--output)", roles)
    if len({r.root for r in roles}) > 1:
        raise ModelStructureError(
            f"the model has several outputs ({', '.join(outputs)}) computed from different tensors, so more than one "
            f"could be the class scores: {_listing(roles)}. Choose the class scores with output=NAME (--output NAME "
            "on the command line).")
    vectors = [r for r in roles if r.is_class_vector]
    if not vectors:
        root = roles[0].root
        return _score_in(root, made_by, f"every output selects from the class scores '{root}'", roles)
    best = min(vectors, key=lambda r: CLASS_VECTORS.index(r.kind))
    if len(outputs) == 1:
        return _score_in(best.name, made_by, "the model's only output", roles)
    return _score_in(best.name, made_by, "the other outputs are computed from its class scores", roles)


def _listing(roles) -> str:
    return ", ".join(r.describe() for r in roles)


def _score_in(output: str, made_by: dict, reason: str, roles: tuple) -> ScoreChoice:
    """The score in ``output``: the input of a final Softmax/LogSoftmax/Sigmoid, also behind views, else itself."""
    name, _ = walk_back(output, made_by, SCORE_VIEWS)
    node = made_by.get(name)
    if node is not None and node.op_type in NORMALISERS:
        return ScoreChoice(output, node.input[0], node.op_type, reason, roles)
    return ScoreChoice(output, output, None, reason, roles)


def find_score(model: onnx.ModelProto, wanted: str | None = None) -> tuple[str, str, str | None]:
    """Return ``(output_name, score_tensor, skipped_op)`` (:func:`choose_score` says why).

    The score is the class vector before any final Softmax/LogSoftmax/Sigmoid (Simonyan et al.; Grad-CAM), also when
    the normaliser is followed by Reshape/Flatten/Squeeze: then the normaliser's input is the score.
    """
    choice = choose_score(model, wanted)
    return choice.output, choice.tensor, choice.skipped


# ==================================================================================================================
# CAM's head
# ==================================================================================================================
@dataclass
class CamHead:
    """The linear classifier head CAM reads its class weights from."""
    layer: str  # the feature map feeding the head
    weights: np.ndarray  # (K, C): S_c = sum_k weights[c, k] * mean_ij A^k_ij (+ bias)
    form: str  # a readable description
    aliases: tuple = ()  # tensors equal to ``layer`` (through Identity / Dropout)


def cam_head(model: onnx.ModelProto, info: dict, score_name: str, num_classes: int) -> CamHead:
    """Find CAM's class weights: the score must be a linear function of a global average of one feature map.

    ``model`` and ``info``: a graph with its static shapes (``Model.spec()``); ``score_name``: the class-score tensor
    (:func:`find_score`); ``num_classes``: K, the number of scores. Accepted heads (Zhou et al., "Learning Deep
    Features for Discriminative Localization", CVPR 2016, Sec. 2, and its fully convolutional variant):

    * ``A -> GlobalAveragePool | ReduceMean(H, W) -> [Flatten/Reshape/Squeeze] -> Gemm | MatMul [+ Add]`` with
      constant weights (ResNet, DenseNet, MobileNet, EfficientNet, GoogLeNet, ...): ``w^c_k = W[c, k]``;
    * ``A -> Conv 1x1 (constant weights) -> [Relu] -> GlobalAveragePool -> [Flatten]`` (SqueezeNet, NiN):
      ``w^c_k = W_conv[c, k, 0, 0]``. A ReLU after the 1x1 conv makes the score no longer exactly linear in ``A``;
      CAM then uses the linear part ``sum_k w^c_k A^k``, as the paper's definition does.

    Biases are left out (they shift every location of ``M_c`` alike). Raises ModelStructureError otherwise.
    """
    graph = model.graph
    made_by = producers(graph)
    inits = {t.name: t for t in graph.initializer}
    walked: list = []

    def fail(reason: str):
        chain = " <- ".join(["score"] + walked) if walked else "score"
        raise ModelStructureError(
            f"CAM needs the class score to be a linear layer over a global average pool of a feature map "
            f"(GlobalAveragePool/ReduceMean -> [Flatten] -> Gemm/MatMul, or 1x1 Conv -> [Relu] -> "
            f"GlobalAveragePool); {reason} (walking back from the score: {chain}). Use grad_cam, which needs no "
            "particular head and equals CAM on such networks.")

    def back(name: str) -> str:
        name, passed = walk_back(name, made_by, ORDER_KEEPING_VIEWS)
        walked.extend(n.op_type for n in passed)
        return name

    def const(name: str):
        return constant_value(name, inits, made_by)

    name = back(score_name)
    node = made_by.get(name)
    if node is None:
        fail("the score is not computed by any node")
    walked.append(node.op_type)
    bias_add = None
    if node.op_type == "Add":  # MatMul + bias
        parts = [i for i in node.input if const(i) is None]
        if len(parts) != 1 or parts[0] not in made_by or made_by[parts[0]].op_type != "MatMul":
            fail("found an Add that is not a MatMul's bias")
        bias_add = node
        node = made_by[parts[0]]
        walked.append(node.op_type)

    if node.op_type in DENSE:
        b = const(node.input[1])
        if b is None:
            fail(f"the {node.op_type} node '{node.name}' has no constant weight matrix")
        if node.op_type == "Gemm":
            if node_attr(node, "transA", 0):
                fail(f"the Gemm node '{node.name}' transposes its input (transA=1)")
            weights = (b if node_attr(node, "transB", 0) else b.T) * float(node_attr(node, "alpha", 1.0))
        else:
            if b.ndim != 2:
                fail(f"the MatMul node '{node.name}' has a {b.ndim}-D weight")
            weights = b.T
        pooled = back(node.input[0])
        pool = made_by.get(pooled)
        feature = global_average_input(pool, info, inits, made_by) if pool is not None else None
        if pool is not None:
            walked.append(pool.op_type)
        if feature is None:
            fail("the linear layer's input is not a global average pool of a feature map")
        form = (f"{pool.op_type} -> {node.op_type}" + (" + Add" if bias_add is not None else "")
                + f" ({weights.shape[0]} classes x {weights.shape[1]} channels)")
    else:
        feature_map = global_average_input(node, info, inits, made_by)
        if feature_map is None:
            fail(f"found {node.op_type} where a Gemm/MatMul or a global average pool was expected")
        conv_out = feature_map
        relu = made_by.get(conv_out)
        if relu is not None and relu.op_type == "Relu":
            walked.append("Relu")
            conv_out = relu.input[0]
        conv_out = back(conv_out)
        conv = made_by.get(conv_out)
        if conv is None or conv.op_type != "Conv":
            if conv is not None:
                walked.append(conv.op_type)
            fail("the pooled map is not made by a 1x1 convolution (the CAM layer would be a classifier map)")
        walked.append("Conv")
        w = const(conv.input[1])
        plain = w is not None and w.ndim == 4 and w.shape[2:] == (1, 1) and int(node_attr(conv, "group", 1)) == 1 \
            and all(s == 1 for s in node_attr(conv, "strides", [1, 1])) and not any(node_attr(conv, "pads", [0] * 4))
        if not plain:
            fail(f"the Conv node '{conv.name}' before the pooling is not a plain 1x1 convolution with constant "
                 "weights")
        weights = w[:, :, 0, 0]
        feature = conv.input[0]
        form = (f"Conv 1x1{' -> Relu' if relu is not None and relu.op_type == 'Relu' else ''} -> {node.op_type} "
                f"({weights.shape[0]} classes x {weights.shape[1]} channels)")
    if weights.shape[0] != num_classes:
        fail(f"the head's weight matrix has {weights.shape[0]} rows but the model scores {num_classes} classes")
    _, same = walk_back(feature, made_by, INFERENCE_IDENTITIES)
    aliases = [feature] + [n.input[0] for n in same]
    return CamHead(feature, weights.astype(np.float32), form, tuple(aliases))


# ==================================================================================================================
# Other heads
# ==================================================================================================================
def spatial_head(model: onnx.ModelProto, score_name: str, info: dict) -> tuple[str, list]:
    """``(map, nodes)``: the last spatial feature map (4-D, h * w > 1) before the score, and the head nodes from it
    to ``score_name`` in graph order (each followed through its first non-constant input)."""
    made_by = producers(model.graph)
    inits = {t.name for t in model.graph.initializer}
    head, name = [], score_name
    while True:
        node = made_by.get(name)
        if node is None:
            raise ModelStructureError(f"no spatial feature map found before the score '{score_name}'.")
        ti = info.get(name)
        if ti is not None and ti.shape is not None and len(ti.shape) == 4 and node.op_type not in WINDOWED_EQUIVALENT \
                and (ti.shape[2] or 0) * (ti.shape[3] or 0) > 1:
            break
        head.append(node)
        data = [i for i in node.input if i and i not in inits]
        if not data:
            raise ModelStructureError(f"the head node '{node.name}' ({node.op_type}) has no data input.")
        name = data[0]
    head.reverse()
    return name, head


def penultimate_input(model: onnx.ModelProto, score_name: str, input_name: str) -> str | None:
    """The input of the last linear layer (Gemm, MatMul or a classifier Conv) before the score, walking back through
    the head's glue (:data:`~onnx_cnnviz.graph.ops.HEAD_GLUE`); None when the walk meets anything else."""
    graph = model.graph
    made_by = producers(graph)
    inits = {t.name for t in graph.initializer}

    def data_input(node):
        data = [i for i in node.input if i and i not in inits and i in made_by or i == input_name]
        return data[0] if data else None

    name, _ = walk_back(score_name, made_by, HEAD_GLUE, data_input)
    node = made_by.get(name)
    return node.input[0] if node is not None and node.op_type in LINEAR_LAYERS else None


def producing_conv(model: onnx.ModelProto, name: str) -> onnx.NodeProto | None:
    """The Conv whose output ``name`` is, through ops that keep its grid and channels (activations, normalisations,
    residual adds: :data:`~onnx_cnnviz.graph.ops.CHANNEL_KEEPING`); None when there is none."""
    graph = model.graph
    made_by = producers(graph)
    inits = {t.name for t in graph.initializer}

    def feature_input(node):  # the input that is itself a feature map, not a per-channel constant
        spatial = [i for i in node.input if i in made_by and i not in inits]
        return spatial[0] if spatial else None

    name, _ = walk_back(name, made_by, CHANNEL_KEEPING, feature_input)
    node = made_by.get(name)
    return node if node is not None and node.op_type == "Conv" else None
