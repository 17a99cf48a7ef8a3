"""Backward rules of matrix products.

Gemm: ``Y = alpha * A' B' + beta * C`` with ``A' = A^T if transA`` and ``B' = B^T if transB``:
``dA' = alpha g B'^T``, ``dB' = alpha A'^T g``, ``dC = unbroadcast(beta g)``.
MatMul (numpy semantics): ``dA = g B^T``, ``dB = A^T g``, each summed over broadcast batch dims.
"""
from __future__ import annotations

import numpy as np

from . import register
from ._common import unbroadcast


@register("Gemm")
def gemm(ctx, node, dys):
    b, g = ctx.b, dys[0]
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    a_name, b_name = node.input[0], node.input[1]
    da = db = dc = None
    if ctx.wants(0):
        if not ta:
            da = b.op("Gemm", [g, b_name], hint="gemm_dA", alpha=alpha, transB=1 - tb)
        else:
            da = b.op("Gemm", [b_name, g], hint="gemm_dA", alpha=alpha, transA=tb, transB=1)
    if ctx.wants(1):
        if not tb:
            db = b.op("Gemm", [a_name, g], hint="gemm_dB", alpha=alpha, transA=1 - ta)
        else:
            db = b.op("Gemm", [g, a_name], hint="gemm_dB", alpha=alpha, transA=1, transB=ta)
    if ctx.wants(2):
        scaled = g if beta == 1.0 else b.op("Mul", [g, b.const(beta)])
        dc = unbroadcast(ctx, scaled, node.input[2], ctx.shape(node.output[0]))
    return [da, db, dc]


def _swap_last(ctx, name: str) -> str:
    """``name`` with its last two axes swapped; folded into a new constant when ``name`` is a weight."""
    value = ctx.value(name)
    if value is not None:
        return ctx.b.const(np.ascontiguousarray(np.swapaxes(value, -1, -2)), hint="matmul_T")
    rank = len(ctx.shape(name))
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return ctx.b.op("Transpose", [name], hint="matmul_T", perm=perm)


@register("MatMul")
def matmul(ctx, node, dys):
    b, g = ctx.b, dys[0]
    a_name, b_name = node.input
    a_rank, b_rank = len(ctx.shape(a_name)), len(ctx.shape(b_name))
    y_shape = ctx.shape(node.output[0])
    if a_rank < 2:
        ctx.unsupported("MatMul with a 1-D first operand")
    da = db = None
    if b_rank == 1:  # Y[..., m] = sum_k A[..., m, k] b[k]
        g_col = b.op("Unsqueeze", [g, b.ints([-1])])
        if ctx.wants(0):
            da = b.op("Mul", [g_col, b_name], hint="matmul_dA")
        if ctx.wants(1):
            full = b.op("Mul", [g_col, a_name])
            db = b.reduce_sum(full, list(range(a_rank - 1)), keepdims=False, hint="matmul_dB")
        return [da, db]
    if ctx.wants(0) and b_rank == 2 and (ctx.is_held(b_name) or ctx.value(b_name) is not None):
        # dA = G B^T as a Gemm with transB, which reads a 2-D weight in place (the one the forward MatMul reads,
        # shared by every session: runtime.SharedWeights), where a transposed copy would be stored beside it: in
        # the graph for a weight in it (0.2 GB for mvitv2_base_cls, issue 26), folded into every session for a held
        # one (graph/held.py; 2.5 GB for vit_h_14). A 2-D B broadcasts nothing, so A's leading axes are G's.
        rows = b.op("Reshape", [g, b.ints([-1, int(ctx.shape(b_name)[1])])], hint="matmul_dA_rows")
        da = b.op("Gemm", [rows, b_name], hint="matmul_dA", transB=1)
        da = b.op("Reshape", [da, b.shape(a_name)], hint="matmul_dA")
    elif ctx.wants(0):
        da = b.op("MatMul", [g, _swap_last(ctx, b_name)], hint="matmul_dA")
        da = unbroadcast(ctx, da, a_name, tuple(y_shape[:-2]) + tuple(ctx.shape(a_name)[-2:]))
    if ctx.wants(1):
        db = b.op("MatMul", [_swap_last(ctx, a_name), g], hint="matmul_dB")
        db = unbroadcast(ctx, db, b_name, tuple(y_shape[:-2]) + tuple(ctx.shape(b_name)[-2:]))
    return [da, db]
