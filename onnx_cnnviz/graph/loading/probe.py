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
    red unless its log level is 4 (fatal only).

    Unoptimised: a probe runs once or twice, and the optimisers' rewrites copy weights -- constant folding stores
    every weight computed from the stored ones (timm's weight-standardised convolutions), the NCHWc transformer a
    reordered copy of every Conv kernel -- which took timm nfnet_f1's load from 1.7 to 5.1 GB (issue 26).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    # Held weights (graph/held.py) are read in place, as the model's own sessions read them (runtime.py), rather
    # than copied into the session: a second copy of every weight for a probe that runs twice.
    names, values = [], []
    for tensor in model.graph.initializer:
        if held.key_of(tensor) is not None:
            names.append(tensor.name)
            values.append(ort.OrtValue.ortvalue_from_numpy(held.value(tensor)))
    if not names:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    options.add_session_config_entry("session.disable_prepacking", "1")  # a pre-packed weight is a private copy
    # What the graph reads while the session is built (its placeholders need data; dropped once built), and what
    # the kernels read at run time, in place.
    options.add_external_initializers(names, values)
    for name, value in zip(names, values):
        options.add_initializer(name, value)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.cnnviz_held_weights = values  # onnxruntime reads them in place: they must outlive the session
    return session
