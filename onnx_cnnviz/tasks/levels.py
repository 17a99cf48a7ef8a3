"""Default layers beyond classifiers: a detector's feature pyramid levels (the maps its head reads, one per
resolution) and a segmenter's backbone output.

A one-stage detector head (YOLO, FCOS, RetinaNet, PicoDet) runs a box branch and a class branch of convolutions on
each pyramid level, so each level's map feeds at least two convolutions (or one whose output is split into both:
PicoDet's shared head); its anchors are one per location of every level, so the levels' h*w sum to the head's anchor
count. :func:`pyramid_levels` finds them from the graph alone: scanning the layers from the head back, the last map
of each resolution that feeds the head so, until the sizes add up to the anchors. Grad-CAM over them is the
multi-level detection CAM (each level's map upsampled and averaged, :func:`onnx_cnnviz.grad_cam` with
``layer=levels``); the coarsest level is the detector's default layer, the one pytorch-grad-cam's YOLO tutorials
explain at.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..graph.structure import Layer, consumers

__all__ = ["pyramid_levels", "backbone_output", "own_levels"]


def pyramid_levels(model: onnx.ModelProto, layers: list[Layer], anchors: int | None) -> list[str]:
    """The pyramid levels of a detector head with ``anchors`` anchor points, finest first ([] when none add up).

    Args:
        model: the model specialised to an input size (``Model.spec().model``).
        layers: its candidate layers (``Model.layers``), input to output order.
        anchors: the head's anchor count (None: unknown, no levels).

    Returns:
        Layer names, finest resolution first.
    """
    if not anchors:
        return []
    used_by = consumers(model.graph)
    found: dict[tuple, str] = {}
    total = 0
    for layer in reversed(layers):
        hw = tuple(layer.shape[2:])
        if hw in found or not _feeds_head(layer.name, used_by):
            continue
        found[hw] = layer.name
        total += int(hw[0]) * int(hw[1])
        if total >= anchors:
            break
    if total != anchors:
        return []
    return [name for _, name in sorted(found.items(), key=lambda item: -item[0][0] * item[0][1])]


def own_levels(m, targets) -> list[str] | None:
    """The pyramid level each detection of ``targets`` reads: the level of its anchor point (the head's anchors run
    over the levels finest first, ``h_k * w_k`` of each). A one-stage head scores an anchor from its own level's
    branch only, so at another level a detection's gradient, and its Grad-CAM, is zero: its own level is where a
    layer method explains it. None where the model has no levels, a target is not a :class:`Detection` of the head
    output, or the head's layout gives no anchor (``Decoder.anchor_of``).

    Args:
        m: the detector.
        targets: the detections.

    Returns:
        One level name per target, or None.
    """
    from .detection import Detection

    decoder = getattr(m, "decoder", None)
    if not getattr(m, "levels", None) or decoder is None or not isinstance(targets, (list, tuple)) or not targets:
        return None
    bounds = np.cumsum([int(np.prod(m.layer(name).shape[2:])) for name in m.levels])
    found = []
    for t in targets:
        if not isinstance(t, Detection) or t.output not in (None, m.score_name):
            return None
        anchor = decoder.anchor_of(t.element)
        if anchor is None or not 0 <= anchor < bounds[-1]:
            return None
        found.append(m.levels[int(np.searchsorted(bounds, anchor, side="right"))])
    return found


def _feeds_head(name: str, used_by: dict) -> bool:
    """Whether map ``name`` feeds a head's prediction convolutions: two or more (a box branch and a class branch), or
    one whose output is split into both (PicoDet's ``share_cls_reg`` head: one Conv, then Split into C + 4 (R + 1))."""
    convs = [node for node in used_by.get(name, []) if node.op_type == "Conv"]
    return len(convs) >= 2 or any(user.op_type == "Split" for conv in convs for user in used_by.get(conv.output[0], []))


def backbone_output(model: onnx.ModelProto, layers: list[Layer]) -> str | None:
    """A segmenter's default layer: the backbone's last map, which the decoder head reads.

    The last layer at the coarsest spatial resolution (h*w > 1) with the most channels, a Concat of head branches
    (DeepLabV3's ASPP) aside: a backbone ends wide (ResNet's 2048, MobileNetV3's 960) and its head narrows it
    (FCN's 512, ASPP's 256, LR-ASPP's 128). pytorch-grad-cam's segmentation tutorial explains at this map
    (``model.backbone.layer4``); the layer before a residual block's fork or a head's first branch would be an
    earlier block. None without spatial layers.
    """
    spatial = [la for la in layers if len(la.shape) == 4 and la.shape[2] * la.shape[3] > 1]
    if not spatial:
        return None
    coarsest = min(la.shape[2] * la.shape[3] for la in spatial)
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    at_coarsest = [la for la in spatial if la.shape[2] * la.shape[3] == coarsest and producers.get(la.name) != "Concat"]
    if not at_coarsest:
        return [la for la in spatial if la.shape[2] * la.shape[3] == coarsest][-1].name
    widest = max(la.shape[1] for la in at_coarsest)
    return [la for la in at_coarsest if la.shape[1] == widest][-1].name
