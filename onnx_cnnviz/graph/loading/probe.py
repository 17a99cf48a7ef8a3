"""Running part of a graph quietly: the batch pass's checks and graph/shapes.py's probes run only the nodes they need
(:func:`pruned_to`) in a session whose failures are raised, never logged (:func:`quiet_session`)."""
from __future__ import annotations

import contextlib

import onnx
from onnx import helper, numpy_helper

from .. import held
from ..subgraphs import node_inputs


#: Float initializers of this many bytes and more that :func:`pruned_to` lends its model (``lend``) rather than
#: copies into it.
LEND_MIN_BYTES = 64 * 1024
_LENT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


class Lent:
    """The weights :func:`pruned_to` has lent (name -> placeholder), each made once however many models read it,
    in a holding of their own (graph/held.py)."""

    def __init__(self):
        self.holding = held.new_holding()
        self.placeholders: dict[str, onnx.TensorProto] = {}

    def placeholder(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        if tensor.name not in self.placeholders:
            placeholder = onnx.TensorProto(name=tensor.name)
            held.put(placeholder, numpy_helper.to_array(tensor), self.holding)
            self.placeholders[tensor.name] = placeholder
        return self.placeholders[tensor.name]


@contextlib.contextmanager
def lending():
    """A :class:`Lent` for :func:`pruned_to`'s ``lend``, its weights freed on exit (the sessions built meanwhile
    keep what they read alive as long as they live)."""
    lent = Lent()
    try:
        yield lent
    finally:
        held.release(lent.holding)


def pruned_to(model: onnx.ModelProto, names, input_name: str, lend: Lent | None = None) -> onnx.ModelProto:
    """A new model computing only ``names`` from ``input_name``: the nodes they need, the initializers those read.

    Probes run this instead of the whole model: shape arithmetic (``Shape -> Gather -> ...``) then costs nothing
    however large the image, because no node reads the image's values; and no weight is copied that is not needed.
    With ``lend`` (from :func:`lending`) the float weights not held already become held ones of that
    holding, which :func:`quiet_session` reads in place: one copy of them instead of four (the new model's, its
    serialised bytes, onnxruntime's parse of those and its own initializers: mvitv2_base_cls's load probe was 0.9
    GB of session for 0.2 GB of weights; issue 26).
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
    for tensor in graph.initializer:
        if tensor.name not in needed:
            continue
        if (lend is not None and tensor.data_type in _LENT_TYPES and not held.is_held(tensor)
                and tensor.data_location != onnx.TensorProto.EXTERNAL
                and held.declared_bytes(tensor) >= LEND_MIN_BYTES):
            g.initializer.append(lend.placeholder(tensor))
        else:
            g.initializer.append(tensor)
    g.sparse_initializer.extend(t for t in graph.sparse_initializer if t.values.name in needed)
    for name in dict.fromkeys(names):
        g.output.append(helper.make_empty_tensor_value_info(name))
    return out


def quiet_options():
    """:func:`quiet_session`'s session options: silent, unoptimised, no arena or memory pattern, nodes run in the
    graph's own order.

    The order: onnxruntime's default runs a node nothing reads (a probe's ``Shape`` of a tensor, whose output is a
    graph output) after everything else, keeping the tensor it reads alive until then; a probe reads every tensor
    that way, so all of them were alive at once (mvitv2_base_cls: 2.9 GB over the session at batch 2, 0.27 GB in
    the graph's order, as much as its plain forward pass; issue 26). ``PRIORITY_BASED`` runs them in the graph's
    order, where graph/shapes.py puts each wrapper right after its tensor's producer.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    if hasattr(ort, "ExecutionOrder"):
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return options


def quiet_session(model: onnx.ModelProto):
    """A CPU session whose failures are raised, never logged: onnxruntime prints errors (severity 3) to stderr in
    red unless its log level is 4 (fatal only).

    Unoptimised: a probe runs once or twice, and the optimisers' rewrites copy weights -- constant folding stores
    every weight computed from the stored ones (timm's weight-standardised convolutions), the NCHWc transformer a
    reordered copy of every Conv kernel -- which took timm nfnet_f1's load from 1.7 to 5.1 GB (issue 26).
    """
    import onnxruntime as ort

    options = quiet_options()
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
