"""Running part of a graph quietly: the batch pass's checks and graph/shapes.py's probes run only the nodes they need
(:func:`pruned_to`) in a session whose failures are raised, never logged (:func:`quiet_session`)."""
from __future__ import annotations

import onnx
from onnx import helper

from .. import held
from ..subgraphs import node_inputs


def pruned_to(model: onnx.ModelProto, names, input_name: str) -> onnx.ModelProto:
    """A new model computing only ``names`` from ``input_name``: the nodes they need, the initializers those read.

    Probes run this instead of the whole model: shape arithmetic (``Shape -> Gather -> ...``) then costs nothing
    however large the image, because no node reads the image's values; and no weight is copied that is not needed.
    """
    graph = model.graph
    needed = set(names)
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(node_inputs(node))
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    g = out.graph
    g.name = graph.name
    g.node.extend(reversed(keep))
    g.input.extend(v for v in graph.input if v.name == input_name)
    g.initializer.extend(t for t in graph.initializer if t.name in needed)
    g.sparse_initializer.extend(t for t in graph.sparse_initializer if t.values.name in needed)
    for name in dict.fromkeys(names):
        g.output.append(helper.make_empty_tensor_value_info(name))
    return out


def quiet_session(model: onnx.ModelProto):
    """A CPU session whose failures are raised, never logged: onnxruntime prints errors (severity 3) to stderr in
    red unless its log level is 4 (fatal only)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    return held.session(model, options, ["CPUExecutionProvider"])
