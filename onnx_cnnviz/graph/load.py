"""Load an ONNX model and normalise it: the names the rest of the library imports, from the passes of
:mod:`onnx_cnnviz.graph.loading` (one module per pass; see its docstring for the order they run in).

:func:`read_model` reads under limits (graph/loading/read.py), :func:`normalise` returns the normal form
(graph/loading/normalise.py), :func:`make_batch_dynamic_inplace` makes the batch symbolic (graph/loading/batch.py).
"""
from __future__ import annotations

from .loading.batch import (BATCH_DIM, batch_free_shape, fix_batch_inplace, fold_identity_gathers_inplace,
                            input_batch_is_static, make_batch_dynamic_inplace)
from .loading.inference import infers_batch
from .loading.normalise import normalise
from .loading.order import topological_sort
from .loading.read import (MAX_NODES, MAX_PIXELS, MAX_TENSOR_BYTES, PROTOBUF_LIMIT, check_node_count,
                           check_tensor_sizes, check_text, check_total_size, count_nodes, read_model)
from .loading.size import set_input_shape_inplace
from .loading.versions import (KNOWN_GOOD_IR, KNOWN_GOOD_OPSET, MIN_OPSET, check_supported_versions, opset_of,
                               upgrade_opset)
from .loading.weights import (constants_to_initializers_inplace, drop_initializer_inputs_inplace,
                              float16_to_float32_inplace)

__all__ = ["BATCH_DIM", "MIN_OPSET", "MAX_NODES", "MAX_PIXELS", "MAX_TENSOR_BYTES", "PROTOBUF_LIMIT",
           "KNOWN_GOOD_IR", "KNOWN_GOOD_OPSET", "read_model", "normalise", "topological_sort", "opset_of",
           "upgrade_opset", "check_supported_versions", "check_node_count", "check_tensor_sizes", "check_text",
           "check_total_size", "count_nodes", "constants_to_initializers_inplace", "drop_initializer_inputs_inplace",
           "float16_to_float32_inplace", "input_batch_is_static", "make_batch_dynamic_inplace", "infers_batch",
           "fold_identity_gathers_inplace", "batch_free_shape", "fix_batch_inplace", "set_input_shape_inplace"]
