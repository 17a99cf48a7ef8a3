"""The occlusion prefix: make the occluded images inside the graph (copy, edit, return).

Occlusion (Zeiler & Fergus 2014, Sec. 4.2) runs the classifier on many copies of one image, each with a window
replaced by a baseline. Sending every copy from the host costs one full image per window; instead the rewritten graph
takes the image once and a small int64 tensor of window positions, and builds the batch itself::

    image     (1, C, H, W) float   the preprocessed image
    positions (P, 2)       int64   (top, left) of each window; a window partly outside the image is clipped, one
                                   entirely outside (top >= H, say) leaves the image untouched
    window    (2,)         int64   (height, width) of the window
    baseline  (C,)         float   the value put inside the window, per channel

    rows_in[p, r] = top[p] <= r < top[p] + wh          (P, H)   from a constant row index grid
    cols_in[p, c] = left[p] <= c < left[p] + ww         (P, W)
    mask          = rows_in[:, None, :, None] & cols_in[:, None, None, :]          (P, 1, H, W)
    occluded      = Where(mask, baseline[None, :, None, None], image)             (P, C, H, W)

``occluded`` takes the name of the model's image input, so the model's nodes read it unchanged. The graph outputs the
class scores of every occluded image (P, K), or their softmax (``mode="probability"``). Only ``ai.onnx`` operators are
emitted.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import InputError, ModelStructureError
from .builder import GraphBuilder
from .load import BATCH_DIM, opset_of

IMAGE = "cnnviz/occlusion/image"
POSITIONS = "cnnviz/occlusion/positions"
WINDOW = "cnnviz/occlusion/window"
BASELINE = "cnnviz/occlusion/baseline"
OUTPUT = "cnnviz/occlusion/scores"
MODES = ("score", "probability")


def occlusion_graph(model: onnx.ModelProto, input_name: str, score_name: str, mode: str = "score",
                    expose_images: bool = False) -> onnx.ModelProto:
    """Return a copy of ``model`` fed by the occlusion prefix.

    ``model`` must have its image input ``input_name`` shaped (N, C, H, W) with C, H, W fixed (``Model.spec(hw)``'s
    model is). Inputs of the result: :data:`IMAGE`, :data:`POSITIONS`, :data:`WINDOW`, :data:`BASELINE`; outputs:
    :data:`OUTPUT` (P, K) scores (``mode="score"``) or softmax probabilities (``mode="probability"``), and, with
    ``expose_images``, the occluded batch itself under the image input's name (for tests and inspection).
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
    model = copy.deepcopy(model)
    graph = model.graph
    image_vi = next((v for v in graph.input if v.name == input_name), None)
    if image_vi is None:
        raise InputError(f"'{input_name}' is not an input of the graph.")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in image_vi.type.tensor_type.shape.dim]
    if len(dims) != 4 or any(d is None for d in dims[1:]):
        raise InputError(f"the image input must be (N, C, H, W) with C, H, W fixed, got {dims}.")
    _, c, h, w = dims
    elem = image_vi.type.tensor_type.elem_type

    taken = {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    taken |= {t.name for t in graph.initializer}
    taken |= {o for node in graph.node for o in list(node.output) + list(node.input)}
    for name in (IMAGE, POSITIONS, WINDOW, BASELINE, OUTPUT):
        if name in taken:
            raise ModelStructureError(f"the graph already has a tensor named '{name}'.")
    b = GraphBuilder(taken | {IMAGE, POSITIONS, WINDOW, BASELINE, OUTPUT}, opset_of(model), prefix="cnnviz/occlusion")

    # Window corners: (P, 1) columns of the positions, and the far edges (exclusive).
    top = b.op("Slice", [POSITIONS, b.ints([0]), b.ints([1]), b.ints([1])], hint="top")
    left = b.op("Slice", [POSITIONS, b.ints([1]), b.ints([2]), b.ints([1])], hint="left")
    wh = b.op("Slice", [WINDOW, b.ints([0]), b.ints([1])], hint="window_h")  # (1,)
    ww = b.op("Slice", [WINDOW, b.ints([1]), b.ints([2])], hint="window_w")
    bottom = b.op("Add", [top, wh], hint="bottom")
    right = b.op("Add", [left, ww], hint="right")

    rows = b.const(np.arange(h, dtype=np.int64)[None, :], dtype=np.int64, hint="rows")  # (1, H)
    cols = b.const(np.arange(w, dtype=np.int64)[None, :], dtype=np.int64, hint="cols")  # (1, W)
    rows_in = b.op("And", [b.op("GreaterOrEqual", [rows, top]), b.op("Less", [rows, bottom])], hint="rows_in")
    cols_in = b.op("And", [b.op("GreaterOrEqual", [cols, left]), b.op("Less", [cols, right])], hint="cols_in")
    mask = b.op("And", [b.op("Unsqueeze", [rows_in, b.ints([1, 3])], hint="rows_in_4d"),    # (P, 1, H, 1)
                        b.op("Unsqueeze", [cols_in, b.ints([1, 2])], hint="cols_in_4d")],   # (P, 1, 1, W)
                hint="mask")                                                                   # (P, 1, H, W)
    fill = b.op("Reshape", [BASELINE, b.ints([1, c, 1, 1])], hint="baseline_4d")
    b.nodes.append(helper.make_node("Where", [mask, fill, IMAGE], [input_name], name=b.unique("occlude_node")))
    n_prefix = len(b.nodes)

    # Scores as (P, K), optionally through a softmax.
    flat = b.op("Flatten", [score_name], hint="scores_2d", axis=1)
    if mode == "probability":
        b.nodes.append(helper.make_node("Softmax", [flat], [OUTPUT], name=b.unique("softmax_node"), axis=1))
    else:
        b.nodes.append(helper.make_node("Identity", [flat], [OUTPUT], name=b.unique("identity_node")))

    # The prefix goes first (nodes must stay topologically sorted).
    prefix, suffix = b.nodes[:n_prefix], b.nodes[n_prefix:]
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(prefix + old + suffix)
    graph.initializer.extend(b.initializers)

    del graph.input[:]
    graph.input.extend([
        helper.make_tensor_value_info(IMAGE, elem, [1, c, h, w]),
        helper.make_tensor_value_info(POSITIONS, TensorProto.INT64, ["P", 2]),
        helper.make_tensor_value_info(WINDOW, TensorProto.INT64, [2]),
        helper.make_tensor_value_info(BASELINE, elem, [c]),
    ])
    score_vi = next((v for v in list(graph.output) + list(graph.value_info) if v.name == score_name), None)
    k = None
    if score_vi is not None and score_vi.type.tensor_type.HasField("shape"):
        sdims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in score_vi.type.tensor_type.shape.dim]
        if len(sdims) >= 2 and all(d is not None for d in sdims[1:]):
            k = int(np.prod(sdims[1:]))
    # The batch is P now: existing shape annotations name it BATCH_DIM; call it P there too.
    _rename_batch_dim_inplace(graph, BATCH_DIM, "P")
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["P", k])]
    if expose_images:
        outputs.append(helper.make_tensor_value_info(input_name, elem, ["P", c, h, w]))
    del graph.output[:]
    graph.output.extend(outputs)
    # The image input's value info now describes an intermediate: keep the graph free of duplicates.
    keep = [v for v in graph.value_info if v.name not in (input_name, OUTPUT)]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    return model


def _rename_batch_dim_inplace(graph: onnx.GraphProto, old: str, new: str) -> None:
    for value in list(graph.value_info) + list(graph.output):
        if not value.type.tensor_type.HasField("shape"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param == old:
                dim.dim_param = new


def window_positions(size: tuple, window: tuple, stride: tuple) -> np.ndarray:
    """(P, 2) int64 (top, left) of every window, placed as captum's ``Occlusion`` places them.

    Along an axis of length ``n`` with window ``k`` and stride ``s`` there are ``ceil((n - k) / s) + 1`` windows at
    ``0, s, 2s, ...``: the last one may reach past the border and is then clipped (captum pads the window with a
    negative amount). Rows vary slowest.
    """
    tops = _starts(size[0], window[0], stride[0])
    lefts = _starts(size[1], window[1], stride[1])
    grid = np.stack(np.meshgrid(tops, lefts, indexing="ij"), axis=-1).reshape(-1, 2)
    return grid.astype(np.int64)


def _starts(n: int, k: int, s: int) -> np.ndarray:
    count = int(np.ceil((n - k) / s)) + 1 if n > k else 1
    return np.arange(count, dtype=np.int64) * s
