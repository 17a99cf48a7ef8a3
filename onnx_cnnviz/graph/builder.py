"""A small helper that appends standard ``ai.onnx`` nodes and constants to a graph under construction.

Graph passes (exposing tensors, the backward graph, the occlusion prefix) use it so that every generated name is
unique and every constant becomes an initializer. Only operators of the default domain are ever emitted.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


class GraphBuilder:
    """Collects new nodes and initializers for a graph, with names that do not clash with the model's.

    Args:
        existing_names: every name already used in the model (:func:`onnx_cnnviz.graph.subgraphs.all_names`).
        opset: the model's ``ai.onnx`` opset version (some ops' forms depend on it).
        prefix: the prefix of every new name.
    """

    def __init__(self, existing_names: set[str], opset: int, prefix: str = "cnnviz"):
        self.taken = set(existing_names)
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._const_cache: dict[tuple, str] = {}
        self._count = 0

    def unique(self, hint: str) -> str:
        """A new name: ``prefix/hint``, numbered when taken.

        Args:
            hint: what the tensor is.

        Returns:
            A name used nowhere in the model or by this builder.
        """
        base = f"{self.prefix}/{hint}"
        name = base
        while name in self.taken:
            self._count += 1
            name = f"{base}_{self._count}"
        self.taken.add(name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, outputs: int = 1, **attrs):
        """Append one node.

        Args:
            op_type: the ONNX operator.
            inputs: its input tensor names ("" for a left-out optional input).
            hint: the output's name hint (default: the operator's name).
            outputs: the number of outputs.
            **attrs: the node's attributes.

        Returns:
            Its output name, or a list of names when ``outputs > 1``.
        """
        hint = hint or op_type
        names = [self.unique(f"{hint}" if outputs == 1 else f"{hint}_out{i}") for i in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        node = helper.make_node(op_type, list(inputs), names, name=self.unique(f"{hint}_node"), **attrs)
        self.nodes.append(node)
        return names[0] if outputs == 1 else names

    def const(self, value, dtype=np.float32, hint: str = "const") -> str:
        """A constant as an initializer; small scalars and vectors are shared between uses.

        Args:
            value: the value (anything ``numpy.asarray`` takes).
            dtype: its numpy type.
            hint: the name hint.

        Returns:
            The initializer's name.
        """
        arr = np.asarray(value, dtype=dtype)
        key = None
        if arr.size <= 16:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._const_cache:
                return self._const_cache[key]
        name = self.unique(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._const_cache[key] = name
        return name

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        """An int64 vector constant (axes, shapes, pads).

        Args:
            values: the integers.
            hint: the name hint.

        Returns:
            The initializer's name.
        """
        return self.const(np.asarray(list(values), dtype=np.int64), dtype=np.int64, hint=hint)

    # --- a few composite helpers used by many rules -------------------------------------------------------------
    def reduce_sum(self, x: str, axes: Sequence[int], keepdims: bool = True, hint: str = "reduce_sum") -> str:
        """``ReduceSum`` over ``axes`` in the opset's form (axes as an attribute before opset 13, an input after).

        Args:
            x: the tensor.
            axes: the axes to sum; none returns ``x`` unchanged.
            keepdims: keep the summed axes with size 1.
            hint: the name hint.

        Returns:
            The sum's name.
        """
        if not axes:
            return x
        # ReduceSum takes axes as an input since opset 13; the engine normalises models to opset >= 17.
        return self.op("ReduceSum", [x, self.ints(sorted(axes))], hint=hint, keepdims=int(keepdims))

    def shape(self, x: str, hint: str = "shape") -> str:
        """``Shape(x)``.

        Args:
            x: the tensor.
            hint: the name hint.

        Returns:
            The shape tensor's name.
        """
        return self.op("Shape", [x], hint=hint)

    def zeros_like(self, x: str, hint: str = "zeros") -> str:
        """Float zeros of ``x``'s shape (``ConstantOfShape``).

        Args:
            x: the tensor.
            hint: the name hint.

        Returns:
            The zeros' name.
        """
        return self.op("ConstantOfShape", [self.shape(x)], hint=hint,
                       value=helper.make_tensor("value", FLOAT, [1], [0.0]))
