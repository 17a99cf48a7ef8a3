"""Model parameter randomisation as a graph edit, for the sanity check of :mod:`onnx_cnnviz.metrics.sanity`
(Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, "Sanity Checks for Saliency Maps", NeurIPS 2018, Sec. 3.1).

Everything is a graph edit on the model's own ONNX, no framework:

* **Learnable layers** (:func:`learnable_layers`): ``Conv``, ``ConvTranspose``, ``Gemm`` and ``MatMul`` nodes that take
  their weight straight from an initializer, with the parameters that belong to them: the bias (the node's third
  input, or an ``Add`` of an initializer right after a ``MatMul``/``Conv``) and a ``BatchNormalization`` right after.
  They are listed from the head towards the input (reverse topological order).
* **Groups** (:func:`randomisation_groups`): ``stages="blocks"`` (default) groups layers by the module that holds them,
  read from the node names that exporters write (``/_blocks.15/_project_conv/Conv`` belongs to ``_blocks.15``): a
  layer's block is the shallowest named module holding at least 2 learnable layers and at most a quarter of them
  (so EfficientNet's MBConv blocks, GoogLeNet's inception modules, ResNet's stages, and VGG's single layers), the
  paper's grouping of Inception v3 into ``Logits, Mixed_7c, ..., Conv2d_1a_3x3``; a layer in no such module is its
  own group. ``stages="layers"``: one group per layer. ``stages=n``: the blocks split into ``n`` contiguous runs as
  evenly as possible, the head's run the smallest. Or explicit groups: a list whose items are node names or name
  prefixes (or lists of them), head first.
* **Re-initialisation** (:func:`randomise`), with a fixed seed: ``init="normal"`` (default) draws each weight tensor
  from ``N(0, s^2)`` with ``s`` the standard deviation of the trained tensor itself (the layer's own scale, which
  the trained network's activations are used to), and each bias the same way from the trained bias's spread;
  ``init="uniform"`` draws weights and biases from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, what torch's
  ``reset_parameters`` gives ``nn.Conv2d`` / ``nn.Linear`` (the re-initialisation Quantus's randomisation test uses).
  A tensor with zero spread (an all-zero bias) is drawn with the Kaiming-normal scale ``sqrt(2 / fan_in)`` instead,
  so that it is really changed. A ``BatchNormalization``'s ``scale`` and ``B`` are reset to 1 and 0 (their
  initial values, as the paper's code re-initialises TF's trainable variables) and its running mean and variance are
  kept (not trainable: the paper's code keeps them too). Each tensor's values depend only on ``seed`` and its name, so
  a layer randomised at stage k keeps the same random values at every later stage (a true cascade), and the same
  seed gives the same models in any process.
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass
from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InputError, ModelStructureError
from . import held
from . import load as graph_load

#: Ops whose weight is a learned matrix or kernel.
LEARNABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
INITS = ("normal", "uniform")
MODES = ("cascading", "independent")
#: A block (a named module grouped as one stage) holds at most this fraction of the learnable layers: a module
#: holding more (VGG's ``features``, a ResNet-50's ``layer3``) is split into its own sub-modules.
MAX_BLOCK_FRACTION = 0.25


# ---------------------------------------------------------------------------------------------------------------
# learnable layers and their groups
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LearnableLayer:
    """One layer whose parameters the randomisation test re-initialises.

    Attributes:
        node: the node's name (its first output's name when unnamed).
        op_type: its operator.
        weight: the weight initializer.
        bias: bias initializers (the node's own bias input, an ``Add`` right after).
        norm: the scale and B of a ``BatchNormalization`` right after (reset to 1 and 0).
        kept: that BatchNormalization's running mean and variance (left as they are).
        fan_in: inputs per output unit (Kaiming's fan-in).
    """
    node: str
    op_type: str
    weight: str
    bias: tuple = ()
    norm: tuple = ()
    kept: tuple = ()
    fan_in: int = 1

    @property
    def parameters(self) -> tuple:
        """Every initializer this layer's randomisation rewrites.

        Returns:
            The weight, biases and normalisation parameters' names.
        """
        return (self.weight,) + self.bias + self.norm


@dataclass(frozen=True)
class Group:
    """One stage's unit of the randomisation test.

    Attributes:
        name: a block's module path, or a layer's node name.
        layers: its learnable layers.
    """
    name: str
    layers: tuple

    @property
    def nodes(self) -> tuple:
        """The node names of the group's layers.

        Returns:
            One name per layer.
        """
        return tuple(layer.node for layer in self.layers)


def _node_name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _float_inits(graph: onnx.GraphProto) -> dict:
    return {t.name: t for t in graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                                    onnx.TensorProto.FLOAT16,
                                                                    onnx.TensorProto.BFLOAT16)}


def _consumers(graph: onnx.GraphProto) -> dict:
    users: dict = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _weight_input(node: onnx.NodeProto, inits: dict) -> int | None:
    """Which input of ``node`` is its learned weight (an initializer facing a computed tensor), or None."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return 1 if len(node.input) > 1 and node.input[1] in inits else None
    if len(node.input) < 2:
        return None
    a, b = (node.input[0] in inits), (node.input[1] in inits)
    if a == b:  # both constant (folded arithmetic) or both computed (attention's Q K^T): nothing learned here
        return None
    return 1 if b else 0


def _fan_in(node: onnx.NodeProto, index: int, shape: tuple) -> int:
    """Inputs per output unit, as torch's ``_calculate_fan_in_and_fan_out`` counts them for the weight's layout."""
    if node.op_type == "Conv":
        return int(np.prod(shape[1:]))
    if node.op_type == "ConvTranspose":  # (C_in, C_out / group, k...): torch counts dim 1 times the kernel
        return int(np.prod(shape[1:]))
    if node.op_type == "Gemm":
        trans = _attr(node, "transB" if index == 1 else "transA", 0)
        if index == 1:
            return int(shape[1] if trans else shape[0])
        return int(shape[0] if trans else shape[1])
    return int(shape[0] if index == 1 else shape[-1])  # MatMul: x @ W, W (C_in, C_out)


def _only_user(users: dict, name: str, op_type: str):
    found = users.get(name, [])
    return found[0] if len(found) == 1 and found[0].op_type == op_type else None


def _layer(node: onnx.NodeProto, index: int, inits: dict, users: dict, claimed: set) -> LearnableLayer:
    """The layer of ``node`` with its bias and following BatchNormalization."""
    weight = node.input[index]
    bias = []
    if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2] in inits:
        bias.append(node.input[2])
    out = node.output[0]
    add = _only_user(users, out, "Add")
    if add is not None:
        other = [n for n in add.input if n != out]
        if len(other) == 1 and other[0] in inits and other[0] not in claimed:
            bias.append(other[0])
            out = add.output[0]
    norm, kept = (), ()
    bn = _only_user(users, out, "BatchNormalization")
    if bn is not None and len(bn.input) == 5 and all(n in inits for n in bn.input[1:]):
        norm, kept = tuple(bn.input[1:3]), tuple(bn.input[3:5])
    shape = tuple(inits[weight].dims)
    return LearnableLayer(_node_name(node), node.op_type, weight, tuple(b for b in bias if b not in claimed),
                          tuple(n for n in norm if n not in claimed), kept, max(1, _fan_in(node, index, shape)))


def learnable_layers(model) -> list[LearnableLayer]:
    """The learnable layers of ``model``, from the head towards the input (reverse topological order).

    A weight shared by several nodes belongs to the first (the closest to the head).

    Args:
        model: a path, bytes, an ``onnx.ModelProto`` or a loaded :class:`~onnx_cnnviz.model.Model`.

    Returns:
        The layers.

    Raises:
        ModelStructureError: the model has no learnable layer.
    """
    proto = _proto(model)
    graph = proto.graph
    inits = _float_inits(graph)
    users = _consumers(graph)
    claimed: set = set()
    layers = []
    for node in reversed(list(graph.node)):
        if node.op_type not in LEARNABLE_OPS or node.domain not in ("", "ai.onnx"):
            continue
        index = _weight_input(node, inits)
        if index is None or node.input[index] in claimed:
            continue
        layer = _layer(node, index, inits, users, claimed)
        claimed.update(layer.parameters)
        layers.append(layer)
    if not layers:
        raise ModelStructureError(
            "the model has no learnable layer to randomise: no Conv, ConvTranspose, Gemm or MatMul node takes its "
            "weight straight from an initializer (quantised or computed weights are not supported); export the "
            "model with plain float weights.")
    return layers


def _module_path(name: str) -> tuple:
    """The module path of a node name: ``/layer4/layer4.1/conv2/Conv`` -> ``(layer4, layer4.1, conv2)``."""
    parts = [p for p in name.split("/") if p]
    return tuple(parts[:-1])


def _label(layer: LearnableLayer) -> str:
    """A layer's name in a stage label: its module path (``_fc``), or its node name when it has none."""
    return "/".join(_module_path(layer.node)) or layer.node


def _blocks(layers: list) -> list[Group]:
    """Layers grouped by their block (see the module docstring), groups in order of their first layer."""
    paths = [_module_path(layer.node) for layer in layers]
    counts: dict = {}
    for path in paths:
        for depth in range(1, len(path) + 1):
            counts[path[:depth]] = counts.get(path[:depth], 0) + 1
    limit = max(2, int(MAX_BLOCK_FRACTION * len(layers)))
    groups: dict = {}
    for layer, path in zip(layers, paths):
        # the layer's own module (its last path element) is not a block: a block holds several layers
        block = next((path[:d] for d in range(1, len(path)) if 2 <= counts[path[:d]] <= limit), None)
        key = "/".join(block) if block else _label(layer)
        groups.setdefault(key, []).append(layer)
    return [Group(name, tuple(members)) for name, members in groups.items()]


def _split(groups: list[Group], n: int) -> list[Group]:
    """``groups`` merged into ``n`` contiguous runs, as even as possible, the smallest runs at the head."""
    sizes = [len(part) for part in np.array_split(np.arange(len(groups)), n)][::-1]
    out, start = [], 0
    for size in sizes:
        run = groups[start:start + size]
        name = run[0].name if size == 1 else f"{run[0].name} .. {run[-1].name}"
        out.append(Group(name, tuple(layer for g in run for layer in g.layers)))
        start += size
    return out


def _explicit(layers: list, stages) -> list[Group]:
    """Explicit groups: each item a node name or name prefix, or a list of them."""
    out, taken = [], {}
    for item in stages:
        keys = [item] if isinstance(item, str) else list(item) if isinstance(item, (list, tuple)) else None
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise InputError(f"an explicit stage is a node name or name prefix, or a list of them; got {item!r}.")
        members = []
        for key in keys:
            found = [la for la in layers if la.node == key or la.node.startswith(key)]
            if not found:
                some = ", ".join(la.node for la in layers[:5])
                raise InputError(f"stage {key!r} names no learnable layer (Conv/Gemm/MatMul with an initializer "
                                 f"weight); the layers, head first, are named like: {some}, ... "
                                 "(see sanity.learnable_layers).")
            members += [la for la in found if la not in members]
        for la in members:
            if la.node in taken:
                raise InputError(f"layer '{la.node}' is in two stages ({taken[la.node]!r} and {item!r}); each layer "
                                 "belongs to one stage.")
            taken[la.node] = item
        name = keys[0] if len(keys) == 1 else " + ".join(keys)
        out.append(Group(name, tuple(members)))
    if not out:
        raise InputError("stages is an empty list; give at least one stage.")
    return out


def randomisation_groups(model, stages="blocks") -> list[Group]:
    """The groups of learnable layers the test randomises, head first.

    Args:
        model: a path, bytes, an ``onnx.ModelProto`` or a loaded :class:`~onnx_cnnviz.model.Model`.
        stages: ``"blocks"``, ``"layers"``, a number of stages, or explicit groups (the module docstring).

    Returns:
        The groups.

    Raises:
        InputError: a bad ``stages``.
        ModelStructureError: the model has no learnable layer.
    """
    layers = model if isinstance(model, list) else learnable_layers(model)
    if isinstance(stages, str):
        if stages == "layers":
            return [Group(_label(la), (la,)) for la in layers]
        if stages == "blocks":
            return _blocks(layers)
        raise InputError(f"stages must be 'blocks', 'layers', a number of stages or a list of groups, not "
                         f"{stages!r}.")
    if isinstance(stages, (int, np.integer)) and not isinstance(stages, bool):
        blocks = _blocks(layers)
        if not 1 <= stages <= len(blocks):
            raise InputError(f"stages={int(stages)} is out of range: the model has {len(blocks)} blocks "
                             f"({len(layers)} learnable layers); give 1 to {len(blocks)}, or stages='layers' for "
                             "one stage per layer.")
        return _split(blocks, int(stages))
    if isinstance(stages, (list, tuple)):
        return _explicit(layers, stages)
    raise InputError(f"stages must be 'blocks', 'layers', a number of stages or a list of groups, not {stages!r}.")


# ---------------------------------------------------------------------------------------------------------------
# the graph edit
# ---------------------------------------------------------------------------------------------------------------
def _proto(source) -> onnx.ModelProto:
    """The normalised ModelProto of ``source`` (a path, bytes, a ModelProto or a loaded :class:`Model`); the source
    is never modified."""
    graph_proto = getattr(source, "graph_proto", None)  # a loaded Model (graph/ never imports the Model class)
    if isinstance(graph_proto, onnx.ModelProto):
        # The model's own normalised, batch-dynamic graph: loading it again gives the same model (same input, score,
        # layers); the Model itself keeps it unchanged.
        return graph_proto
    return graph_load.normalise(graph_load.read_model(source, max_nodes=None))


def _rng(seed: int, name: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and the tensor's name (crc32 is stable across processes, unlike
    ``hash``)."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def _drawn(values: np.ndarray, name: str, fan_in: int, init: str, seed: int) -> np.ndarray:
    """New values for a weight or bias tensor (see the module docstring's re-initialisation)."""
    rng = _rng(seed, name)
    if init == "uniform":
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, values.shape).astype(values.dtype)
    scale = float(np.std(values.astype(np.float64)))
    if not np.isfinite(scale) or scale == 0.0:
        scale = float(np.sqrt(2.0 / fan_in))
    return rng.normal(0.0, scale, values.shape).astype(values.dtype)


def randomise(model, layers: Iterable[LearnableLayer], seed: int = 0, init: str = "normal") -> onnx.ModelProto:
    """A copy of ``model`` with the parameters of ``layers`` re-initialised (the module docstring gives the draws).

    Every other initializer, node and attribute is untouched.

    Args:
        model: a path, bytes, an ``onnx.ModelProto`` or a loaded :class:`~onnx_cnnviz.model.Model`.
        layers: the layers to re-initialise.
        seed: the draws' seed.
        init: how the weights are drawn (``"normal"``, ...: the module's ``INITS``).

    Returns:
        The randomised model.

    Raises:
        InputError: an unknown ``init``.
    """
    if init not in INITS:
        raise InputError(f"init must be one of {', '.join(INITS)}, not {init!r}.")
    seed = _seed(seed)
    proto = copy.deepcopy(_proto(model))
    index = {t.name: i for i, t in enumerate(proto.graph.initializer)}
    holding = held.new_holding()  # where re-drawn weights of a model held outside its graph go
    for layer in layers:
        for name in (layer.weight,) + layer.bias:
            _replace(proto, index, name, lambda v, n=name, f=layer.fan_in: _drawn(v, n, f, init, seed), holding)
        for name, value in zip(layer.norm, (1.0, 0.0)):
            _replace(proto, index, name, lambda v, c=value: np.full_like(v, c), holding)
    return proto


def _replace(proto: onnx.ModelProto, index: dict, name: str, new: Callable, holding: str) -> None:
    if name not in index:
        raise InputError(f"'{name}' is not an initializer of this model; the layers were listed from another model.")
    tensor = proto.graph.initializer[index[name]]
    values = np.ascontiguousarray(new(held.value(tensor)))
    if held.is_held(tensor):  # a model too large for one protobuf keeps its weights outside it (graph/held.py)
        held.put(tensor, values, holding)
    else:
        tensor.CopyFrom(numpy_helper.from_array(values, name))


def stage_layers(groups: list[Group], stage: int, mode: str = "cascading") -> list[LearnableLayer]:
    """The layers randomised at one stage.

    Args:
        groups: the groups, head first.
        stage: the stage, 0-based.
        mode: ``"cascading"`` (groups 0..stage) or ``"independent"`` (group ``stage`` alone).

    Returns:
        The layers.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
    if isinstance(stage, bool) or not isinstance(stage, (int, np.integer)) or not 0 <= stage < len(groups):
        raise InputError(f"stage must be an int from 0 to {len(groups) - 1}, not {stage!r}.")
    chosen = groups[:stage + 1] if mode == "cascading" else [groups[stage]]
    return [layer for group in chosen for layer in group.layers]


def randomised_models(model, stages="blocks", seed: int = 0, init: str = "normal",
                      mode: str = "cascading") -> Iterable[tuple[Group, onnx.ModelProto]]:
    """Each stage's randomised model in turn, one model at a time.

    Args:
        model: a path, bytes, an ``onnx.ModelProto`` or a loaded :class:`~onnx_cnnviz.model.Model`.
        stages: as :func:`randomisation_groups` takes them.
        seed: the draws' seed.
        init: how the weights are drawn.
        mode: ``"cascading"`` or ``"independent"``.

    Yields:
        ``(group, randomised ModelProto)``: a plain ONNX model (save it with ``onnx.save`` or load it with
        :func:`onnx_cnnviz.load`).
    """
    proto = _proto(model)
    groups = randomisation_groups(learnable_layers(proto), stages)
    for k, group in enumerate(groups):
        yield group, randomise(proto, stage_layers(groups, k, mode), seed, init)


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an int, not {seed!r}.")
    return int(seed)
