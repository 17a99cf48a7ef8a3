"""Helpers shared by several backward rules."""
from __future__ import annotations


def unbroadcast(ctx, g: str, like: str, result_shape: tuple) -> str:
    """Sum ``g`` (shaped like the broadcast result) back to the shape of input ``like`` (numpy broadcasting rules).

    An input dim of 1 facing a result dim other than 1 was broadcast, and so was every leading dim the input lacks.
    A batch dim (None) facing an input dim of 1 is summed too: correct for every batch size, 1 included.
    """
    b = ctx.b
    in_shape = ctx.shape(like)
    offset = len(result_shape) - len(in_shape)
    axes = list(range(offset))
    axes += [offset + i for i, d in enumerate(in_shape) if d == 1 and result_shape[offset + i] != 1]
    if not axes:
        return g
    summed = b.reduce_sum(g, axes, keepdims=True, hint="unbroadcast")
    if offset == 0:
        return summed
    target = b.ints(in_shape) if all(d is not None for d in in_shape) else b.shape(like)
    return b.op("Reshape", [summed, target], hint="unbroadcast_reshape")


def reshape_to_input(ctx, g: str, x: str) -> str:
    """The gradient of any pure re-view (Reshape, Flatten, Squeeze, ...) is the output gradient in the input's shape."""
    shape = ctx.shape(x) if ctx.info.get(x) is not None and ctx.info[x].shape is not None else None
    if shape is not None and all(d is not None for d in shape[1:]) and len(shape) >= 1:
        # -1 stands for the batch: the element count fixes it whatever g's own layout is.
        target = ctx.b.ints([-1 if d is None else int(d) for d in shape])
    else:
        target = ctx.b.shape(x)
    return ctx.b.op("Reshape", [g, target], hint="view_back")


def times_function_of_input(ctx, node, dys, op: str, hint: str) -> list:
    """The rule of every op whose derivative is one ONNX op of its input: ``dx = g * op(x)``."""
    b = ctx.b
    return [b.op("Mul", [dys[0], b.op(op, [node.input[0]])], hint=hint)]


def blocked(ctx, g: str, like: str) -> str:
    """``g`` unchanged, passed through a 1x1 ``AveragePool`` (an exact identity: each output is its one input
    divided by 1) when ``like`` is a 4-D map whose channels a blocked layout can hold (a multiple of 8).

    onnxruntime's CPU provider runs convolutions, pools and the element-wise ops between them in a blocked channel
    layout (NCHWc), but a binary op joins it only when every input is already blocked, and only convolutions and
    pools convert a plain input. A gradient that comes out of an op with no blocked kernel (the ``Expand`` of a
    global pool's gradient, a ``ConvTranspose``) would otherwise keep every op downstream of it in plain NCHW: the
    ReLU masks and residual sums of a whole ResNet stage then run unblocked, with two conversions around each
    backward convolution, and the residual ``Sum`` cannot be fused into the convolution that produces one of its
    inputs. The pool converts once and lets all of that stay blocked. (An ``AveragePool`` rather than a
    ``MaxPool``: onnxruntime's max starts from the lowest finite float, so it would turn -inf and NaN into it.)
    Measured on torchvision's ResNet-50 (onnxruntime 1.31, 2 threads on a loaded 2-core machine): the optimised
    input-gradient graph went from 42 layout conversions out of the blocked layout and 20 into it to 11 and 8, its
    15 residual Sums all fused into backward convolutions; the backward part's kernel time at batch 8 from 1380 to
    1108 ms (a forward: 1026 ms); the whole graph, CPU time, median of 15 interleaved rounds, from 2.53x to 2.25x a
    forward at batch 1 and from 2.49x to 2.29x at batch 8 (benchmarks/backward_speed.py --against).
    A model with held weights (graph/held.py) runs without the NCHWc transformer (runtime.HELD_DISABLED_OPTIMIZERS),
    so there the pool would be one more pass for nothing: ``g`` is returned as it is.
    """
    if ctx.held:
        return g
    ti = ctx.info.get(like)
    shape = ti.shape if ti is not None else None
    if shape is None or len(shape) != 4 or shape[1] is None or int(shape[1]) % 8:
        return g
    return ctx.b.op("AveragePool", [g], hint="blocked", kernel_shape=[1, 1])
