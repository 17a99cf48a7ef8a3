"""The padding of a sliding window (Conv, pooling) along each spatial axis, ``auto_pad`` resolved as the ONNX spec does.

The backward rules, the receptive fields and incremental occlusion all need the explicit (begin, end) pads of a node
whatever way the exporter wrote them; they take them from here.
"""
from __future__ import annotations

from collections.abc import Sequence

import onnx

from .ops import node_attr


def split_padding(total: int, auto_pad: str) -> tuple[int, int]:
    """The begin and end halves of a total padding (the ONNX Conv and ConvTranspose specs).

    Args:
        total: padding pixels on one axis.
        auto_pad: ``"SAME_UPPER"`` puts the odd pixel at the end; anything else at the start.

    Returns:
        ``(begin, end)``.

    Example:
        >>> split_padding(3, "SAME_UPPER"), split_padding(3, "SAME_LOWER")
        ((1, 2), (2, 1))
    """
    small, big = total // 2, total - total // 2
    return (small, big) if auto_pad == "SAME_UPPER" else (big, small)


def explicit_pads(auto_pad: str, pads: Sequence[int] | None, in_spatial: Sequence[int], kernel: Sequence[int],
                  strides: Sequence[int], dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """Begin and end pads per spatial axis of a Conv or pooling window (ONNX spec, Conv / MaxPool ``auto_pad``).

    * ``SAME_UPPER`` / ``SAME_LOWER``: the output has ``ceil(in / s)`` positions, so the total padding is
      ``max(0, (out - 1) s + (k - 1) d + 1 - in)``, split by :func:`split_padding`;
    * ``VALID``: no padding;
    * ``NOTSET``: the ``pads`` attribute ``[b_1, ..., b_n, e_1, ..., e_n]`` (all zero when absent).

    Args:
        auto_pad: the node's ``auto_pad``.
        pads: its ``pads`` attribute, or None.
        in_spatial: the input's spatial sizes.
        kernel: the window per axis.
        strides: the strides per axis.
        dilations: the dilations per axis.

    Returns:
        ``(begins, ends)``, one int per axis each.
    """
    rank = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(in_spatial, kernel, strides, dilations):
            out = -(-size // s)
            begin, end = split_padding(max(0, (out - 1) * s + (k - 1) * d + 1 - size), auto_pad)
            begins.append(begin)
            ends.append(end)
        return begins, ends
    if auto_pad == "VALID":
        return [0] * rank, [0] * rank
    pads = list(pads) if pads is not None else [0] * (2 * rank)
    return pads[:rank], pads[rank:]


def window_geometry(node: onnx.NodeProto, in_spatial: Sequence, kernel: Sequence[int]):
    """The window geometry of a Conv or pooling node.

    Args:
        node: the node.
        in_spatial: the input's spatial sizes (read only for ``SAME_*`` padding).
        kernel: the window per axis.

    Returns:
        ``(strides, dilations, begins, ends)``, one int per axis each.
    """
    rank = len(kernel)
    strides = list(node_attr(node, "strides", [1] * rank))
    dilations = list(node_attr(node, "dilations", [1] * rank))
    begins, ends = explicit_pads(node_attr(node, "auto_pad", "NOTSET"), node_attr(node, "pads"), in_spatial, kernel,
                                 strides, dilations)
    return strides, dilations, begins, ends
