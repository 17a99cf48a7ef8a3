"""Recipro-CAM (Byun & Lee, "Recipro-CAM: Fast gradient-free visual explanations for convolutional neural
networks", arXiv:2209.14074, 2022): the network's own head scores each spatial position of a feature map alone.

For a feature layer ``A`` (C, h, w) of one image and each position ``(i, j)``, the "mosaic" feature map keeps that
position's C activations and zeroes every other position, ``A^(ij) = A (.) M^(ij)`` with ``M^(ij)_{c,a,b} = 1`` iff
``(a, b) = (i, j)``; the rest of the network, from the layer to the scores (the head), is run on the h*w mosaics as
one batch, and the map is the target's score on each::

    L^c[i, j] = S_c(head(A (.) M^(ij)))

No gradient and no image perturbation: one forward pass to the layer, then h*w runs of the head only (global pooling
and a classifier on a ResNet: a few microseconds each). The mask and the score are OpenVINO XAI 1.1.0's
``ReciproCAM`` (``openvino_xai/methods/white_box/recipro_cam.py``: the feature map tiled h*w times times a one-hot
spatial mask over all channels, the head re-run on it, the logits before any final Softmax), so the raw map at the
layer's resolution equals theirs; their ``embed_scaling`` min-max scales each class map to [0, 255], ours
(``normalize``) to [0, 1], then (``upsample``) bilinearly to the input size like every map of this package.

The head is cut from the model's graph at the layer (:func:`head_graph`): every node between the layer and the score.
Where the layer's only reader is a ``GlobalAveragePool`` (ResNets, MobileNets, EfficientNets), the head starts after
it and each masked map enters as its pooled value ``A[:, i, j] / (h w)``, (C, 1, 1) instead of (C, h, w).
A node of the head that also reads a tensor computed before the layer (a skip connection around it) reads that
tensor of the unmasked image, as OpenVINO XAI's graph does at batch 1. On a token layer (a ViT's (N, 1 + h*w, C)
block output) the class and other prefix tokens are kept unmasked and only the patch tokens masked, OpenVINO XAI's
``ViTReciproCAM`` with ``use_gaussian=False, cls_token=True`` at one block boundary (theirs by default also masks
with a 3x3 Gaussian and patches the block's LayerNorm branch separately: not the same numbers).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import InputError, ModelStructureError
from ..graph import held
from ..graph.layout import batch_leading
from ..graph.structure import downstream, upstream
from ..graph.subgraphs import node_inputs
from ..maps import finish_maps
from ..model import Model
from ..runtime import available_memory
from ..targets import resolve
from .arguments import batch_size as check_batch_size

__all__ = ["reciprocam", "head_graph"]

#: Bytes of masked feature maps made and run through the head at once when ``batch_size`` is not given.
MOSAIC_BUDGET = 128 * 1024 * 1024


def head_graph(model: onnx.ModelProto, layer: str, output: str, image: str, info: dict,
               constants: dict | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """The part of ``model`` from tensor ``layer`` to tensor ``output``, as a model of its own (copy, cut, return).

    Args:
        model: a normalised model (``Model.spec(hw).model``), its nodes topologically sorted.
        layer: the tensor the head starts from; the result's first input, its batch dynamic.
        output: the tensor the head ends at (the scores); the result's one output.
        image: the model's image input.
        info: tensor name -> :class:`~onnx_cnnviz.graph.shapes.TensorInfo` of ``model``.
        constants: tensors computed at run time whose value does not depend on the batch (shape arithmetic): they
            become initializers of the head.

    Returns:
        The head model and the names of its other inputs: float tensors computed from the image before ``layer``
        (skip connections around it), batch first, which the caller feeds from the unmasked image.

    Raises:
        ModelStructureError: ``output`` does not depend on ``layer``, or the head reads a batch-dependent tensor
            computed before ``layer`` that is not a batch-first float tensor (shape arithmetic on the batch size).
    """
    graph = model.graph
    constants = constants or {}
    from_layer = downstream(graph, {layer})
    if output not in from_layer:
        raise ModelStructureError(f"the output '{output}' does not depend on layer '{layer}'; choose a layer on the "
                                  "path from the image to the scores (Model.layers).")
    needed = upstream(graph, {output})
    from_image = downstream(graph, {image})
    nodes = []
    for node in graph.node:
        outs = [o for o in node.output if o]
        if layer in outs or not any(o in needed for o in outs):
            continue
        # after the layer, or constant (Constant nodes, arithmetic on initializers): part of the head
        if any(o in from_layer for o in outs) or not any(o in from_image for o in outs):
            nodes.append(node)
    made = {o for node in nodes for o in node.output if o}
    read = [name for node in nodes for name in node_inputs(node)]
    leading = None  # float tensors whose axis 0 is the batch, sample for sample (computed when needed)
    initializers = {t.name: t for t in graph.initializer}
    extras, folded = [], []
    for name in dict.fromkeys(read):
        if name in made or name == layer or name in initializers:
            continue
        if name in constants:
            folded.append(numpy_helper.from_array(np.asarray(constants[name]), name))
            continue
        if leading is None:
            leading = batch_leading(model, image, info)
        if name not in leading:
            raise ModelStructureError(f"the network after layer '{layer}' reads '{name}', computed before the layer "
                                      "from the batch size, so it cannot score h*w masked copies per image; "
                                      "Recipro-CAM needs a head that takes its batch from its own input (Flatten, "
                                      "Reshape to (0, -1) or (-1, C)): re-export the model so.")
        extras.append(name)

    def value_info(name: str) -> onnx.ValueInfoProto:
        ti = info[name]
        dims = ["B"] + ([f"d{i}" if d is None else int(d) for i, d in enumerate(ti.shape[1:], 1)]
                        if ti.shape else [])
        return helper.make_tensor_value_info(name, ti.elem_type, dims if ti.shape else None)

    used = set(read)
    head = helper.make_graph(list(nodes), "cnnviz-reciprocam-head", [value_info(layer)] + [value_info(e)
                                                                                           for e in extras],
                             [value_info(output)],
                             [t for name, t in initializers.items() if name in used] + folded)
    result = onnx.ModelProto()
    held.copy_fields(model, result, "graph")
    result.graph.CopyFrom(head)
    return result, extras


def _pooled(model: onnx.ModelProto, layer: str) -> str | None:
    """The output of the ``GlobalAveragePool`` that is the only reader of ``layer``, or None.

    Its value on a masked feature map that keeps position (i, j) alone is ``A[:, i, j] / (h w)`` (the other
    positions are zeros), so the head can start after the pool and take (C, 1, 1) rows instead of (C, h, w) maps: h*w
    times less memory and copying, the same numbers up to the pool's rounding of that one division."""
    readers = [node for node in model.graph.node if layer in node_inputs(node)]
    if len(readers) != 1 or any(o.name == layer for o in model.graph.output):
        return None
    node = readers[0]
    if node.op_type != "GlobalAveragePool" or node.domain not in ("", "ai.onnx"):
        return None
    return node.output[0]


def _native_mosaics(A_native: np.ndarray, A: np.ndarray, rows: np.ndarray, view) -> np.ndarray:
    """The masked feature maps of ``rows`` (image * h*w + position), in the model's own layout.

    ``A``: (N, C, h, w) view of ``A_native``. A row keeps one position's C values and zeroes the others; in a token
    layout the prefix tokens (class, registers) are kept as they are."""
    n_img, _, h, w = A.shape
    img, pos = rows // (h * w), rows % (h * w)
    ii, jj = pos // w, pos % w
    mosaic = np.zeros((len(rows),) + A.shape[1:], dtype=A.dtype)
    mosaic[np.arange(len(rows)), :, ii, jj] = A[img, :, ii, jj]
    if view is None:
        return mosaic
    native = view.from_nchw(mosaic)
    if view.grid is not None and view.prefix:
        native[:, :view.prefix] = A_native[img, :view.prefix]
    return np.ascontiguousarray(native)


def reciprocam(m: Model, x, targets=None, layer=None, *, upsample: bool = True, normalize: bool = True,
               batch_size: int | None = None, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Recipro-CAM (Byun & Lee 2022, arXiv:2209.14074): ``L^c[i, j] = S_c(head(A (.) M^(ij)))``, the target's score
    when only position (i, j) of the feature layer is kept (see the module's notes), equal to OpenVINO XAI 1.1.0's
    ``ReciproCAM`` before its scaling.

    Args:
        m: the model.
        x: (N, C, H, W) float32 images, preprocessed for the model.
        targets: None (each image's top-1 class), an int or class name, a target object, or one per image.
        layer: the feature layer (None: ``m.default_layer``); one name.
        upsample: bilinear resize to the input size (``cv2.resize``); False keeps the layer's (h, w).
        normalize: per-image min-max to [0, 1]; False returns the raw scores.
        batch_size: images per forward pass, and images' worth of masked feature maps (``batch_size * h * w``) per
            run of the head (default: the model's batch size, and as many masked maps as fit 128 MiB).
        progress: ``progress(done, total)`` after each run of the head, with the masked maps scored and N * h * w.

    Returns:
        (N, H, W) float32 maps ((N, h, w) without ``upsample``).

    Raises:
        InputError: bad ``x``, targets, layer or batch size.
        ModelStructureError: the head from ``layer`` cannot be run on its own (see :func:`head_graph`).
    """
    batch_size = check_batch_size(batch_size)
    x = m.check_input(x)
    names = m.layer_names(layer)
    if len(names) != 1:
        raise InputError(f"Recipro-CAM reads one layer, got {len(names)}: {names}.")
    name = names[0]
    n = len(x)
    hw = tuple(x.shape[2:])
    spec = m.spec(hw)
    seeds = resolve(m, targets, n) if targets is not None else None
    output = seeds.tensor if seeds is not None else m.score_name
    key = (hw, name, output)
    view = spec.views.get(name)
    pooled = None if view is not None else m.cached(("reciprocam-pool", hw, name), lambda: _pooled(spec.model, name))
    head, extras = m.cached(("reciprocam-head",) + key, lambda: head_graph(
        spec.model, pooled or name, output, m.input_name, spec.info, spec.constants))

    # 1. One forward pass to the layer (and the tensors the head also reads, and the scores), in the model's layout.
    wanted = [name] + extras
    forward = m.cached_session(("reciprocam-forward", hw, tuple(wanted)),
                               lambda: m.build_graph(hw, outputs=wanted, inline_weights=False))
    step = 1 if m.static_batch else int(batch_size or m.batch_size)
    parts = [forward.run({m.input_name: x[s:s + step]}, [m.score_name] + wanted) for s in range(0, n, step)]
    got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    A_native = got[name]
    A = view.to_nchw(A_native) if view is not None else A_native
    h, w = A.shape[2:]
    top1 = got[m.score_name].reshape(n, -1).argmax(axis=1) if seeds is None else None

    # 2. The head on every masked feature map, in runs of ``rows``.
    session = m.cached_session(("reciprocam",) + key, lambda: head)
    total = n * h * w
    if m.static_batch:
        rows = 1
    elif batch_size:
        rows = batch_size * h * w
    else:
        budget = MOSAIC_BUDGET
        free = available_memory()
        if free is not None:
            budget = min(budget, free // 4)
        row_bytes = A_native[0].nbytes // (h * w if pooled else 1)
        rows = max(1, min(total, budget // max(1, row_bytes)))
    raw = np.empty(total, dtype=np.float64)
    for start in range(0, total, rows):
        index = np.arange(start, min(start + rows, total))
        img = index // (h * w)
        if pooled:  # the pooled masked map: the one kept position's values over h * w, as the pool computes it
            pos = index % (h * w)
            feeds = {pooled: (A[img, :, pos // w, pos % w] / np.float32(h * w))[:, :, None, None]}
        else:
            feeds = {name: _native_mosaics(A_native, A, index, view)}
        feeds.update({e: got[e][img] for e in extras})
        flat = session.run(feeds, [output])[output].reshape(len(index), -1)
        raw[index] = flat[np.arange(len(index)), top1[img]] if seeds is None else seeds.values(flat, img)
        if progress is not None:
            progress(int(index[-1]) + 1, total)
    maps = raw.reshape(n, h, w).astype(np.float32)
    return finish_maps(maps, hw, upsample, normalize)
