"""Keeping a chosen set of outputs on a rewritten graph (a graph pass: the outputs of a gradient graph, the tensors
a run exposes)."""
from __future__ import annotations

import copy

import onnx

from .expose import expose

__all__ = ["keep_outputs"]


def keep_outputs(model: onnx.ModelProto, names, info, private: bool = False) -> onnx.ModelProto:
    """Like :func:`~onnx_cnnviz.graph.expose.expose`, keeping the outputs the gradient pass declared.

    No second copy of the weights is made either way: :func:`~onnx_cnnviz.graph.expose.expose` only sees the
    outputs.

    Args:
        model: the ONNX model.
        names: the tensors to output.
        info: tensor name -> its static type and shape.
        private: ``model`` is a copy nobody else holds (a gradient graph just built), edited in place; otherwise it
            is copied once.

    Returns:
        The model with those outputs.
    """
    outputs = onnx.ModelProto()
    outputs.graph.output.extend(model.graph.output)  # copies, safe from the edits below
    declared = {o.name: o for o in outputs.graph.output}
    exposed = expose(outputs, [n for n in names if n not in declared], info)
    if not private:
        model = copy.deepcopy(model)
    del model.graph.output[:]
    model.graph.output.extend(exposed.graph.output)
    for name in names:
        if name in declared:
            model.graph.output.append(declared[name])
    # Put outputs in the order asked for.
    order = {name: i for i, name in enumerate(names)}
    outs = sorted(model.graph.output, key=lambda o: order.get(o.name, len(order)))
    del model.graph.output[:]
    model.graph.output.extend(outs)
    return model
