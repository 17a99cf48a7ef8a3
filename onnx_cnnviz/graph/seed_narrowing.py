"""What a backward seed reaches, found before the backward graph is built: the seed moved to the part of a Concat it
lies in, and the tensors no nonzero cotangent reaches, which the backward graph then leaves out.

A detector's head output is often a Concat of parts (ultralytics: the decoded boxes, then the sigmoid class scores;
``(N, 4 + C, A)``), and a detection's seed is one class score of one anchor.

*Narrowing.* The gradient of ``sum(seed * Concat(a, b))`` is the gradient of ``sum(seed_b * b)`` when the seed is
zero outside ``b``'s slice (the Concat copies each input to its slice, nothing else), so the backward pass can start
at ``b`` (:meth:`SeedPaths.narrow`).

*Dead tensors.* A one-stage detector computes each pyramid level's scores from that level's own branch; the branches
meet only in data-movement ops at the end of the head (per level a Concat of box and class maps, a Reshape, a Concat
over levels, a Split into box and class parts). Differentiated as they are, the other levels' branches, the box
branches and the neck path that feeds only them get a zero cotangent and cost a backward pass anyway: at a fine
level's own layer, most of the head and the neck. Following the seed's nonzero positions (its support) backward
through those ops finds the tensors whose gradient is zero (:meth:`SeedPaths.dead`), and the backward graph leaves
them out. The same numbers, less work.

The support ``S(t)`` is a boolean mask over ``t``'s elements per sample that may hold a nonzero gradient, or "full";
nodes are visited in reverse topological order:

* Concat: each input gets its slice of ``S(y)``; Split: the input gets the outputs' masks side by side (all false for
  an output no gradient reaches); Reshape, Flatten, Squeeze, Unsqueeze: ``S(y)`` reshaped; Transpose: ``S(y)``
  transposed back;
* element-wise ops of one variable (Sigmoid, Relu, Exp, ...), and Add, Sub, Mul, Div for an input of the output's
  own shape: ``S(y)`` (the gradient is ``g`` times a local factor, element by element);
* a node none of whose outputs has support contributes nothing; any other node gives each input full support.

Each rule maps a zero cotangent element to zero gradient elements, so ``S`` only over-approximates the nonzero
positions, and a tensor that gets no support from any consumer has a gradient of exactly zero.
"""
from __future__ import annotations

import numpy as np
import onnx

from .ops import node_attr
from .structure import upstream

__all__ = ["SeedPaths", "narrow_seed"]

#: Element-wise ops of one variable: their gradient is the cotangent times a local factor, element by element.
UNARY = frozenset({"Abs", "Cast", "Ceil", "Clip", "Cos", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid",
                   "HardSwish", "Identity", "LeakyRelu", "Log", "Mish", "Neg", "Reciprocal", "Relu", "Round",
                   "Selu", "Sigmoid", "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Tanh", "ThresholdedRelu"})
#: Element-wise ops of two variables: for an input of the output's shape, as :data:`UNARY`.
BINARY = frozenset({"Add", "Sub", "Mul", "Div"})
RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
FULL = True  # the support of a tensor any element of whose gradient may be nonzero


class SeedPaths:
    """The structure of one graph that :meth:`narrow` and :meth:`dead` read, built once per graph.

    Args:
        model: the graph (specialised to an input size: the masks need static shapes).
        info: tensor name -> :class:`~onnx_cnnviz.graph.shapes.TensorInfo`.
    """

    def __init__(self, model: onnx.ModelProto, info: dict):
        self.graph = model.graph
        self.info = info
        self.producer = {o: node for node in model.graph.node for o in node.output if o}
        self.initializers = {t.name for t in model.graph.initializer}
        self._upstream: dict[str, list] = {}
        self._dead_if_full: dict[str, frozenset] = {}

    def narrow(self, at: str, rows: np.ndarray) -> tuple[str, np.ndarray]:
        """``(tensor, rows)`` of the seed ``rows`` (N, elements of ``at`` per sample) at ``at``, moved through every
        Concat (along an axis after the batch, static sizes) whose nonzero seed lies in one input.

        Args:
            at: the tensor the seed is given at.
            rows: the seed, one row per sample.

        Returns:
            The tensor to seed and its rows (``at`` and ``rows`` themselves where nothing narrows).
        """
        return self.narrow_with_support(at, rows)[:2]

    def narrow_with_support(self, at: str, rows: np.ndarray) -> tuple[str, np.ndarray, np.ndarray | None]:
        """:meth:`narrow`, and the support of the rows it returns: where any row is nonzero, over the tensor's
        per-sample elements (None where that tensor's shape is not static). The rows are read once; a narrowed seed
        is written as zeros and its nonzero values (a detection's seed is one element: no copy of the rest)."""
        shape = self._static(at)
        if shape is None:
            return at, rows, None
        support = first = np.any(rows, axis=0).reshape(shape)
        start_at = at
        # The nonzero positions, followed through the Concats as multi-indices into each tensor's per-sample shape.
        where = None
        while True:
            node = self.producer.get(at)
            if node is None or node.op_type != "Concat" or node.domain not in ("", "ai.onnx"):
                break
            parts = [self._static(name) for name in node.input]
            if any(p is None or len(p) != len(shape) for p in parts) \
                    or any(name in self.initializers for name in node.input):
                break
            axis = int(node_attr(node, "axis", 0)) % (len(shape) + 1)
            if axis == 0:
                break
            other = tuple(i for i in range(len(shape)) if i != axis - 1)
            used = np.flatnonzero(np.any(support, axis=other))
            if used.size == 0:
                break
            ends = np.cumsum([p[axis - 1] for p in parts])
            k = int(np.searchsorted(ends, used[0], side="right"))
            begin = int(ends[k - 1]) if k else 0
            if used[-1] >= ends[k]:
                break  # the seed spans several inputs
            if where is None:
                where = list(np.nonzero(support))
            where[axis - 1] = where[axis - 1] - begin
            support = np.take(support, np.arange(begin, int(ends[k])), axis=axis - 1)
            at, shape = node.input[k], parts[k]
        if at == start_at:
            return at, rows, support
        narrowed = np.zeros((len(rows), int(np.prod(shape))), rows.dtype)
        narrowed[:, np.ravel_multi_index(tuple(where), shape)] = rows[:, np.flatnonzero(first)]
        return at, narrowed, support

    def dead(self, at: str, rows: np.ndarray, support: np.ndarray | None = None) -> frozenset:
        """The tensors upstream of ``at`` whose gradient is zero for the seed ``rows`` at ``at`` (any row's nonzero
        elements count): produced by some node, float, and reached by no support (see the module).

        Args:
            at: the tensor the seed is given at.
            rows: the seed, one row per sample (N, elements of ``at`` per sample).
            support: where any row is nonzero, over ``at``'s per-sample shape, when known already
                (:meth:`narrow_with_support`).

        Returns:
            Their names (empty where every tensor may get a nonzero gradient).
        """
        shape = self._static(at)
        mask = FULL if shape is None else np.any(rows, axis=0).reshape(shape) if support is None else support
        if mask is not FULL and not mask.any():
            return frozenset()  # a zero seed: nothing to prune that matters
        node = self.producer.get(at)
        if mask is not FULL and (mask.all() or node is not None and all(
                part is FULL for part in self._input_support(node, [mask if o == at else None for o in node.output]))):
            mask = FULL  # the same as a seed on every element (a classifier's Gemm): computed once per tensor
        if mask is FULL:
            if at not in self._dead_if_full:
                self._dead_if_full[at] = self._propagate(at, FULL)
            return self._dead_if_full[at]
        return self._propagate(at, mask)

    def _propagate(self, at: str, mask) -> frozenset:
        support: dict[str, np.ndarray | bool] = {at: mask}
        nodes = self._nodes_upstream(at)
        for node in reversed(nodes):
            outs = [support.get(o) if o else None for o in node.output]
            if all(s is None for s in outs):
                continue
            for name, part in zip(node.input, self._input_support(node, outs)):
                if name and part is not None:
                    support[name] = _merge(support.get(name), part)
        return frozenset(o for node in nodes for o in node.output
                         if o and o not in support and self._is_float(o))

    # --- support rules --------------------------------------------------------------------------------------------
    def _input_support(self, node: onnx.NodeProto, outs: list) -> list:
        """The support each input of ``node`` gets from it, given its outputs' (see the module); full by default."""
        full = [FULL] * len(node.input)
        if node.domain not in ("", "ai.onnx"):
            return full
        op, y = node.op_type, outs[0]
        if op in UNARY and len(node.output) == 1:
            return [y] + [FULL] * (len(node.input) - 1)
        if op in BINARY:
            out_shape = self._static(node.output[0])
            return [y if self._static(name) == out_shape and out_shape is not None else FULL for name in node.input]
        if op in RESHAPES and len(node.output) == 1:
            shape = self._static(node.input[0])
            if y is FULL or shape is None or y.size != int(np.prod(shape)):
                return full
            return [y.reshape(shape)] + [None] * (len(node.input) - 1)
        if op == "Transpose":
            perm = node_attr(node, "perm", None)
            if y is FULL or perm is None or perm[0] != 0:
                return full
            return [np.transpose(y, np.argsort([p - 1 for p in perm[1:]]))]
        if op == "Concat":
            return self._concat(node, y)
        if op == "Split":
            return self._split(node, outs)
        return full

    def _concat(self, node: onnx.NodeProto, y) -> list:
        shape = self._static(node.output[0])
        parts = [self._static(name) for name in node.input]
        if y is FULL or shape is None or any(p is None or len(p) != len(shape) for p in parts):
            return [FULL] * len(node.input)
        axis = int(node_attr(node, "axis", 0)) % (len(shape) + 1)
        if axis == 0:
            return [FULL] * len(node.input)
        out, start = [], 0
        for p in parts:
            piece = np.take(y, np.arange(start, start + p[axis - 1]), axis=axis - 1)
            start += p[axis - 1]
            out.append(piece if piece.any() else None)
        return out

    def _split(self, node: onnx.NodeProto, outs: list) -> list:
        shape = self._static(node.input[0])
        parts = [self._static(name) for name in node.output]
        rest = [None] * (len(node.input) - 1)  # the split sizes: integers
        if shape is None or any(p is None or len(p) != len(shape) for p in parts):
            return [FULL] + rest
        axis = int(node_attr(node, "axis", 0)) % (len(shape) + 1)
        if axis == 0 or sum(p[axis - 1] for p in parts) != shape[axis - 1]:
            return [FULL] + rest
        pieces = [np.zeros(p, bool) if s is None else np.ones(p, bool) if s is FULL else s
                  for s, p in zip(outs, parts)]
        mask = np.concatenate(pieces, axis=axis - 1)
        return [FULL if mask.all() else mask] + rest

    # --- structure ------------------------------------------------------------------------------------------------
    def _nodes_upstream(self, at: str) -> list:
        nodes = self._upstream.get(at)
        if nodes is None:
            needed = upstream(self.graph, [at])
            nodes = self._upstream[at] = [n for n in self.graph.node if any(o in needed for o in n.output if o)]
        return nodes

    def _is_float(self, name: str) -> bool:
        ti = self.info.get(name)
        return ti is None or ti.is_float

    def _static(self, name: str) -> tuple | None:
        """The per-sample shape of a float tensor with the batch first, when static."""
        ti = self.info.get(name)
        if ti is None or ti.shape is None or not ti.is_float or not ti.shape or ti.shape[0] is not None \
                or 0 not in ti.batch_axes or any(d is None for d in ti.shape[1:]):
            return None
        return tuple(int(d) for d in ti.shape[1:])


def _merge(a, b):
    """The union of two supports (None: none yet)."""
    if a is None:
        return b
    if a is FULL or b is FULL:
        return FULL
    if a.shape != b.shape:
        return FULL
    merged = a | b
    return FULL if merged.all() else merged


def narrow_seed(model: onnx.ModelProto, info: dict, at: str, rows: np.ndarray) -> tuple[str, np.ndarray]:
    """:meth:`SeedPaths.narrow` on a graph read once (a model's runs keep one :class:`SeedPaths` per input size)."""
    return SeedPaths(model, info).narrow(at, rows)
