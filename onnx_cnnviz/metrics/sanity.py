"""Sanity check by model parameter randomisation (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, "Sanity Checks
for Saliency Maps", NeurIPS 2018, Sec. 3.1 and Fig. 2).

An explanation that is meant to say *why this model* decided must change when the model's learned weights are
destroyed. The *cascading* randomisation test re-initialises the weights stage by stage from the logits down to the
first layer (stage k randomises every learnable layer of the first k groups) and compares, at each stage, the
randomised model's explanation with the trained model's: Spearman rank correlation of the absolute maps and of the
signed maps, and SSIM. The paper's finding on Inception v3: gradient, integrated gradients and Grad-CAM fall to
near-zero rank correlation, while guided backpropagation and Guided Grad-CAM stay visually and numerically close to
the trained model's maps, whatever the weights (they behave like edge detectors). The *independent* variant
randomises one group at a time, the rest trained. On EfficientNet-Lite0 (``benchmarks/sanity_check.py``,
``docs/sanity_check.md``) the gradient, SmoothGrad and Grad-CAM part from the trained maps as soon as the logits are
randomised, while guided backprop stays above 0.88 until half the blocks are random; unlike on the paper's Inception
v3, it falls too (0.11) once the lowest blocks are randomised as well.

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

Comparison (:func:`randomisation_check`): maps of shape (N, C, H, W) are reduced as the paper's code reduces them
(its ``VisualizeImageGrayscale`` / ``VisualizeImageDiverging``): the *absolute* map is ``sum_c |a_c|``, the *signed*
map ``sum_c a_c``; an (N, H, W) map is taken as it is (and its absolute value). Spearman's rank correlation is the
Pearson correlation of the ranks (ties get their average rank, as ``scipy.stats.spearmanr``); it is undefined (NaN)
when either map is constant, as scipy returns. SSIM is computed on the absolute maps normalised to [0, 1] as the
paper's visualisation does (minus the minimum, divided by the 99th percentile's distance to it, clipped), with the
parameters of ``skimage.metrics.structural_similarity`` (7 x 7 uniform window, sample covariance, K1 = 0.01,
K2 = 0.03, data range 1, the mean over the window centres at least 3 pixels from the border). Spearman is computed
on the unclipped maps: clipping is monotonic, so it only ties the top 1% of pixels.

Targets: by default each image's top-1 class *on the trained model*, held fixed at every stage (``retarget=False``),
so that only the weights change between the two maps. The paper's released code explains each randomised model's own
top-1 class instead (``prediction_class = imglogits.argmax()`` on the randomised network); ``retarget=True`` does
that. :class:`SanityResult` records both: ``top1`` holds each randomised model's top-1 class.
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import cv2
import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InputError, ModelStructureError
from ..graph import held
from ..graph import load as graph_load
from ..model import Model
from .base import MetricResult

#: Ops whose weight is a learned matrix or kernel.
LEARNABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
INITS = ("normal", "uniform")
MODES = ("cascading", "independent")
MEASURES = ("spearman_abs", "spearman", "ssim")
#: A block (a named module grouped as one stage) holds at most this fraction of the learnable layers: a module
#: holding more (VGG's ``features``, a ResNet-50's ``layer3``) is split into its own sub-modules.
MAX_BLOCK_FRACTION = 0.25
#: SSIM's constants and window, skimage's defaults (Wang et al. 2004).
SSIM_WINDOW, SSIM_K1, SSIM_K2 = 7, 0.01, 0.03
#: The percentile the paper's visualisation clips absolute maps at before SSIM.
CLIP_PERCENTILE = 99.0


# ---------------------------------------------------------------------------------------------------------------
# learnable layers and their groups
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LearnableLayer:
    """One layer whose parameters the test re-initialises.

    ``node``: the node's name (its first output's name when unnamed). ``op_type``. ``weight``: the weight
    initializer. ``bias``: bias initializers (the node's own bias input, an ``Add`` right after). ``norm``: the
    scale and B of a ``BatchNormalization`` right after (reset to 1 and 0). ``kept``: that BatchNormalization's
    running mean and variance (left as they are). ``fan_in``: inputs per output unit (Kaiming's fan-in).
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
        """Every initializer this layer's randomisation rewrites."""
        return (self.weight,) + self.bias + self.norm


@dataclass(frozen=True)
class Group:
    """One stage's unit: ``name`` (a block's module path, or a layer's node name) and its ``layers``."""
    name: str
    layers: tuple

    @property
    def nodes(self) -> tuple:
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
    """The learnable layers of ``model`` (a path, bytes, an ``onnx.ModelProto`` or a loaded :class:`Model`), from the
    head towards the input (reverse topological order). A weight shared by several nodes belongs to the first (the
    closest to the head). :class:`ModelStructureError` when there is none."""
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
    """The groups of learnable layers the test randomises, head first (see the module docstring for ``stages``:
    ``"blocks"``, ``"layers"``, a number of stages, or explicit groups)."""
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
    if isinstance(source, Model):
        # The model's own normalised, batch-dynamic graph: loading it again gives the same model (same input, score,
        # layers); the Model itself keeps it unchanged.
        return source.graph_proto
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
    """A copy of ``model`` (a path, bytes, ModelProto or :class:`Model`) with the parameters of ``layers``
    re-initialised (see the module docstring); every other initializer, node and attribute untouched."""
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
    """The layers randomised at ``stage`` (0-based): groups 0..stage when cascading, group ``stage`` alone when
    independent."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
    if isinstance(stage, bool) or not isinstance(stage, (int, np.integer)) or not 0 <= stage < len(groups):
        raise InputError(f"stage must be an int from 0 to {len(groups) - 1}, not {stage!r}.")
    chosen = groups[:stage + 1] if mode == "cascading" else [groups[stage]]
    return [layer for group in chosen for layer in group.layers]


def randomised_models(model, stages="blocks", seed: int = 0, init: str = "normal",
                      mode: str = "cascading") -> Iterable[tuple[Group, onnx.ModelProto]]:
    """``(group, randomised ModelProto)`` for each stage in turn, one model at a time (each is a plain ONNX model:
    save it with ``onnx.save`` or load it with :func:`onnx_cnnviz.load`)."""
    proto = _proto(model)
    groups = randomisation_groups(learnable_layers(proto), stages)
    for k, group in enumerate(groups):
        yield group, randomise(proto, stage_layers(groups, k, mode), seed, init)


# ---------------------------------------------------------------------------------------------------------------
# comparing maps
# ---------------------------------------------------------------------------------------------------------------
def _ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (``scipy.stats.rankdata(method="average")``)."""
    order = np.argsort(v, kind="mergesort")
    ordered = v[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(v)]
    average = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = average[np.cumsum(first) - 1]
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation of two maps (flattened): the Pearson correlation of their ranks, ties averaged.
    NaN when either map is constant (a correlation with a constant is undefined; ``scipy.stats.spearmanr`` says the
    same)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"the two maps differ in size: {a.size} and {b.size} values.")
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    if denom == 0.0:
        return float("nan")
    return float(np.clip((ra * rb).sum() / denom, -1.0, 1.0))


def ssim(a, b, data_range: float = 1.0) -> float:
    """Mean structural similarity of two 2-D maps (Wang et al. 2004), as ``skimage.metrics.structural_similarity``
    computes it by default: 7 x 7 uniform window, sample covariance, ``K1 = 0.01``, ``K2 = 0.03``, averaged over the
    window centres at least 3 pixels from the border.

    ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))``, ``C_i = (K_i L)^2``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise InputError(f"SSIM compares two 2-D maps of one shape, got {a.shape} and {b.shape}.")
    if min(a.shape) < SSIM_WINDOW:
        raise InputError(f"SSIM needs maps of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {a.shape}.")
    win = (SSIM_WINDOW, SSIM_WINDOW)
    mean = lambda img: cv2.blur(img, win, borderType=cv2.BORDER_REFLECT)  # noqa: E731 - the window average
    n = SSIM_WINDOW ** 2
    cov_norm = n / (n - 1.0)
    ua, ub = mean(a), mean(b)
    va = cov_norm * (mean(a * a) - ua * ua)
    vb = cov_norm * (mean(b * b) - ub * ub)
    vab = cov_norm * (mean(a * b) - ua * ub)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    pad = (SSIM_WINDOW - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def absolute_maps(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) ``|map|``, or ``sum_c |a_c|`` for (N, C, H, W) attributions (the paper's grayscale view)."""
    maps = np.asarray(maps, dtype=np.float64)
    return np.abs(maps) if maps.ndim == 3 else np.abs(maps).sum(axis=1)


def signed_maps(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) maps as they are, or ``sum_c a_c`` for (N, C, H, W) attributions (the paper's diverging view)."""
    maps = np.asarray(maps, dtype=np.float64)
    return maps if maps.ndim == 3 else maps.sum(axis=1)


def unit_map(m: np.ndarray) -> np.ndarray:
    """A non-negative 2-D map in [0, 1] as the paper's ``VisualizeImageGrayscale`` shows it: ``(m - min) / (p99 -
    min)``, clipped (the max when the 99th percentile equals the minimum; zeros for a constant map)."""
    lo = float(m.min())
    hi = float(np.percentile(m, CLIP_PERCENTILE))
    if hi <= lo:
        hi = float(m.max())
    if hi <= lo:
        return np.zeros_like(m, dtype=np.float64)
    return np.clip((m - lo) / (hi - lo), 0.0, 1.0)


def compare_maps(original: np.ndarray, randomised: np.ndarray) -> dict:
    """Per image: ``spearman_abs``, ``spearman`` (signed) and ``ssim`` (of the [0, 1] absolute maps), (N,) each."""
    if np.shape(original) != np.shape(randomised):
        raise InputError(f"the maps differ in shape: {np.shape(original)} and {np.shape(randomised)}.")
    abs_o, abs_r = absolute_maps(original), absolute_maps(randomised)
    sig_o, sig_r = signed_maps(original), signed_maps(randomised)
    return {
        "spearman_abs": np.array([spearman(o, r) for o, r in zip(abs_o, abs_r)]),
        "spearman": np.array([spearman(o, r) for o, r in zip(sig_o, sig_r)]),
        "ssim": np.array([ssim(unit_map(o), unit_map(r)) for o, r in zip(abs_o, abs_r)]),
    }


# ---------------------------------------------------------------------------------------------------------------
# the check
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SanityResult:
    """The randomisation test on a batch of images.

    ``methods``: the registry names compared. ``stages``: each stage's label (the group randomised last, the
    paper's x-axis). ``randomised``: per stage, the node names whose parameters were re-initialised (cumulative when
    cascading). ``mode``: "cascading" | "independent". ``targets``: (N,) the classes explained on the trained model.
    ``top1``: (S, N) each randomised model's top-1 class. ``spearman_abs``, ``spearman``, ``ssim``: method -> (S, N)
    per stage and image (NaN where a map is constant). ``init``, ``seed``: how the weights were drawn.
    ``retarget``: whether each randomised model explained its own top-1 class.
    """
    methods: tuple
    stages: list
    randomised: list
    mode: str
    targets: np.ndarray
    top1: np.ndarray
    spearman_abs: dict
    spearman: dict
    ssim: dict
    init: str = "normal"
    seed: int = 0
    retarget: bool = False
    details: dict = field(default_factory=dict)

    def values(self, measure: str = "spearman_abs") -> dict:
        """method -> (S, N) of ``measure`` (:data:`MEASURES`)."""
        if measure not in MEASURES:
            raise InputError(f"measure must be one of {', '.join(MEASURES)}, not {measure!r}.")
        return getattr(self, measure)

    def mean(self, measure: str = "spearman_abs") -> dict:
        """method -> (S,) the mean over images (NaNs of constant maps left out; NaN when every image's is)."""
        out = {}
        for name, arr in self.values(measure).items():
            finite = np.isfinite(arr)
            total = np.where(finite, arr, 0.0).sum(axis=1)
            count = finite.sum(axis=1)
            out[name] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return out

    def __len__(self) -> int:
        return len(self.stages)


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an int, not {seed!r}.")
    return int(seed)


def _methods(methods) -> tuple:
    from ..methods import registry

    if isinstance(methods, (str, registry.Method)):
        methods = (methods,)
    try:
        methods = tuple(methods)
    except TypeError:
        raise InputError(f"methods must be registry names or a list of them, not {methods!r}.") from None
    if not methods:
        raise InputError("methods is empty; name at least one (see onnx_cnnviz.registry.names()).")
    return tuple(registry.get(meth).name for meth in methods)


def _load_options(source, options: dict | None) -> dict:
    """How each randomised model is loaded: the given Model's own settings, overridden by ``options``."""
    opts = {}
    if isinstance(source, Model):
        opts = {"device": source.device, "batch_size": source.batch_size, "threads": source.threads,
                "input_size": source.__dict__.get("_input_size"), "max_pixels": source.max_pixels}
    opts.update(options or {})
    opts.setdefault("max_nodes", None)  # the randomised graph has the nodes of a model already accepted
    return opts


def _explain(model: Model, method: str, x: np.ndarray, targets: np.ndarray, layer, params: dict,
             batch_size) -> np.ndarray:
    from ..methods import registry

    meth = registry.get(method)
    return np.asarray(registry.explain(model, meth, x, targets, layer=layer if meth.uses_layer else None,
                                       params=params.get(method), batch_size=batch_size), dtype=np.float32)


def randomisation_check(model, x, methods=("saliency", "gradcam", "guided", "guided-gradcam"), targets=None, *,
                        stages="blocks", mode: str = "cascading", seed: int = 0, init: str = "normal",
                        retarget: bool = False, layer: str | None = None, method_params: dict | None = None,
                        load_options: dict | None = None, batch_size: int | None = None,
                        progress: Callable[[int, int], None] | None = None) -> SanityResult:
    """The model parameter randomisation test (Adebayo et al. 2018) of ``methods`` on images ``x``.

    ``model``: a path, bytes, an ``onnx.ModelProto`` or a loaded :class:`Model` (never modified). ``x``: (N, C, H, W)
    images as the model takes them. ``methods``: registry names (``onnx_cnnviz.registry.names()``). ``targets``: the
    classes explained (None: each image's top-1 on the trained model). ``stages``: ``"blocks"``, ``"layers"``, a
    number of stages or explicit groups (module docstring). ``mode``: ``"cascading"`` (stage k randomises groups
    1..k) or ``"independent"`` (group k alone). ``seed``, ``init``: how the weights are drawn. ``retarget``: explain
    each randomised model's own top-1 class (the paper's released code) instead of the trained model's class.
    ``layer``: the CAM layer (None: the default layer). ``method_params``: method name -> its parameters.
    ``load_options``: keyword arguments of :func:`onnx_cnnviz.load` for the randomised models (a given Model's own
    device, batch size and threads by default). ``progress(done, total)``: called after each method at each stage.

    Returns a :class:`SanityResult`: per stage, method and image, the Spearman rank correlation of the absolute and
    of the signed maps with the trained model's, and the SSIM of the [0, 1] absolute maps.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
    if init not in INITS:
        raise InputError(f"init must be one of {', '.join(INITS)}, not {init!r}.")
    seed = _seed(seed)
    names = _methods(methods)
    params = dict(method_params or {})
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise InputError(f"method_params names {unknown[0]!r}, which is not among the methods compared "
                         f"({', '.join(names)}).")
    opts = _load_options(model, load_options)
    trained = model if isinstance(model, Model) else Model(model, **opts)
    proto = _proto(model)
    groups = randomisation_groups(learnable_layers(proto), stages)
    x = trained.check_input(x)
    clean = trained.scores(x, batch_size=batch_size)
    targets = np.argmax(clean, axis=1).astype(np.int64) if targets is None else trained.targets_for(targets, len(x))
    original = {name: _explain(trained, name, x, targets, layer, params, batch_size) for name in names}
    measures = {key: {name: np.full((len(groups), len(x)), np.nan) for name in names} for key in MEASURES}
    top1 = np.zeros((len(groups), len(x)), dtype=np.int64)
    randomised_nodes, total = [], len(groups) * len(names)
    for k in range(len(groups)):
        layers = stage_layers(groups, k, mode)
        randomised_nodes.append([la.node for la in layers])
        rand = Model(randomise(proto, layers, seed, init), **opts)
        top1[k] = np.argmax(rand.scores(x, batch_size=batch_size), axis=1)
        stage_targets = top1[k] if retarget else targets
        for j, name in enumerate(names):
            maps = _explain(rand, name, x, stage_targets, layer, params, batch_size)
            for key, values in compare_maps(original[name], maps).items():
                measures[key][name][k] = values
            if progress is not None:
                progress(k * len(names) + j + 1, total)
        del rand  # its sessions and weights go before the next stage's are built
    return SanityResult(names, [g.name for g in groups], randomised_nodes, mode, targets, top1,
                        measures["spearman_abs"], measures["spearman"], measures["ssim"], init, seed, retarget,
                        details={"groups": groups})


def model_randomisation(m, x, method, targets=None, *, stages="blocks", measure: str = "spearman_abs",
                        mode: str = "cascading", seed: int = 0, init: str = "normal", layer: str | None = None,
                        method_params: dict | None = None, batch_size: int | None = None,
                        progress: Callable[[int, int], None] | None = None) -> MetricResult:
    """The randomisation test of one method as a :class:`MetricResult`, the shape of every metric of
    :mod:`onnx_cnnviz.metrics.registry` (``takes="method"``): ``values`` (N,) the ``measure`` after the last stage
    (every layer randomised, when cascading), ``curve`` (N, S) the measure at each stage, ``axis`` the stage numbers
    1..S. Lower is better: a map that keeps resembling the trained model's once the weights are gone does not
    explain the model. ``details``: the stage labels and the other two measures' curves."""
    from ..methods import registry

    if measure not in MEASURES:
        raise InputError(f"measure must be one of {', '.join(MEASURES)}, not {measure!r}.")
    name = registry.get(method).name if isinstance(method, (str, registry.Method)) else None
    if name is None:
        raise InputError(f"the randomisation test re-explains each randomised model, so method must be a registry "
                         f"name (see onnx_cnnviz.registry.names()), not {type(method).__name__}.")
    params = {name: method_params} if method_params else None
    result = randomisation_check(m, x, (name,), targets, stages=stages, mode=mode, seed=seed, init=init,
                                 layer=layer, method_params=params, batch_size=batch_size, progress=progress)
    curves = {key: result.values(key)[name].T for key in MEASURES}
    return MetricResult("model-randomisation", curves[measure][:, -1].copy(), result.targets, False, None,
                        curve=curves[measure], axis=np.arange(1, len(result.stages) + 1),
                        axis_name=f"stage ({mode} randomisation from the head)",
                        details={"stages": result.stages, "top1": result.top1.T, "measure": measure,
                                 **{key: value for key, value in curves.items() if key != measure}})


__all__ = ["LearnableLayer", "Group", "SanityResult", "learnable_layers", "randomisation_groups", "randomise",
           "stage_layers", "randomised_models", "randomisation_check", "model_randomisation", "spearman", "ssim", "compare_maps",
           "absolute_maps", "signed_maps", "unit_map", "LEARNABLE_OPS", "INITS", "MODES", "MEASURES"]
