"""Backward rule of ``Einsum``, built from Einsum, ReduceSum and constants (standard operators only).

For ``Y = einsum("s_1,...,s_m->o", X_1, ..., X_m)`` the gradient of input ``k`` is the same sum of products with
``X_k`` replaced by the output gradient ``G``:

    dX_k[s_k] = sum over every label not in s_k of  G[o] * prod_{j != k} X_j[s_j]
              = einsum("o,s_1,..(without s_k)..,s_m->s_k", G, X_1, ..., X_m)

(the rule of every multilinear map; Goodfellow et al., "Deep Learning", 6.5; tinygrad and JAX derive their einsum
transposes the same way). Three cases need a second step, because an equation cannot create a label that none of its
operands has, nor write a diagonal:

* a label of ``s_k`` that appears nowhere else (``ij->i``: j was summed in the forward) receives ``G`` unchanged along
  it: the result is multiplied by a vector of ones over that label;
* a label repeated in ``s_k`` (``ii->i``, a diagonal or trace) receives ``G`` on the diagonal only: the result is
  multiplied by an identity matrix between the first occurrence and a fresh label for each repeat;
* broadcasting (onnxruntime, like numpy, stretches a dimension of size 1 of any label or of the ellipsis; the ellipsis
  blocks of the operands are aligned on the right): the gradient is summed over each dimension where ``X_k`` was
  stretched, back to size 1, and expanded where another operand was (the einsum then gives size 1 there).

Both first cases are one extra ``Einsum`` with constant operands (ones, identity), built only when needed.
"""
from __future__ import annotations

import string

import numpy as np
from onnx import TensorProto, helper

from ....errors import ModelStructureError
from . import register

ELLIPSIS = "..."


def parse_equation(equation: str, ranks: list[int]) -> tuple[list[list[str]], list[str]]:
    """The operands' and the output's subscripts as token lists (letters and ``"..."``); an implicit output (no
    ``->``) is written out as numpy and onnxruntime define it: the ellipsis, then every label used exactly once, in
    alphabetical order.

    Args:
        equation: the node's ``equation`` attribute, e.g. ``"bij,bjk->bik"`` or ``"...ij,...jk"``.
        ranks: the rank of each operand, in input order.

    Returns:
        (subscripts of each operand, subscripts of the output), each a list of single letters and ``"..."``.

    Raises:
        ModelStructureError: the text is not an equation over ``len(ranks)`` operands of those ranks.
    """
    text = equation.replace(" ", "")
    lhs, arrow, rhs = text.partition("->")
    terms = [_tokens(t) for t in lhs.split(",")]
    if len(terms) != len(ranks):
        raise ModelStructureError(f"the Einsum equation has {len(terms)} operands, the node {len(ranks)}; the model is "
                                  "not valid ONNX: re-export it")
    for term, rank in zip(terms, ranks):
        letters = sum(1 for t in term if t != ELLIPSIS)
        if term.count(ELLIPSIS) > 1 or letters > rank or (ELLIPSIS not in term and letters != rank):
            raise ModelStructureError(f"the Einsum subscripts '{''.join(term)}' do not fit an operand of rank {rank}; "
                                      "the model is not valid ONNX: re-export it")
    if arrow:
        out = _tokens(rhs)
    else:
        counts = {}
        for term in terms:
            for t in term:
                if t != ELLIPSIS:
                    counts[t] = counts.get(t, 0) + 1
        out = ([ELLIPSIS] if any(ELLIPSIS in t for t in terms) else []) + sorted(t for t, c in counts.items()
                                                                                  if c == 1)
    if len(set(t for t in out)) != len(out):
        raise ModelStructureError(f"the Einsum output subscripts '{''.join(out)}' repeat a label; the model is not "
                                  "valid ONNX: re-export it")
    return terms, out


def _tokens(term: str) -> list[str]:
    """``"b...ij"`` -> ``["b", "...", "i", "j"]``."""
    tokens, i = [], 0
    while i < len(term):
        if term.startswith(ELLIPSIS, i):
            tokens.append(ELLIPSIS)
            i += 3
        elif term[i] in string.ascii_letters:
            tokens.append(term[i])
            i += 1
        else:
            raise ModelStructureError(f"'{term[i]}' in an Einsum equation is not a subscript label (letters and '...' "
                                      "only); the model is not valid ONNX: re-export it")
    return tokens


def _dims(tokens: list[str], shape: tuple) -> dict:
    """Label -> size (first occurrence) and ``"..."`` -> the tuple of ellipsis sizes, for one operand."""
    out, pos = {}, 0
    ell = len(shape) - sum(1 for t in tokens if t != ELLIPSIS)
    for t in tokens:
        if t == ELLIPSIS:
            out[ELLIPSIS] = tuple(shape[pos:pos + ell])
            pos += ell
        else:
            out.setdefault(t, shape[pos])
            pos += 1
    return out


def _broadcast(sizes) -> int | None:
    """The size that dimensions of ``sizes`` broadcast to: None (a batch-dependent size) wins over everything but is
    never 1; otherwise the largest."""
    sizes = list(sizes)
    if any(s is None for s in sizes):
        return None
    return max(sizes) if sizes else 1


def _broadcast_ellipsis(blocks) -> tuple:
    """Right-aligned broadcast of several ellipsis blocks."""
    blocks = [b for b in blocks if b is not None]
    rank = max((len(b) for b in blocks), default=0)
    padded = [(1,) * (rank - len(b)) + tuple(b) for b in blocks]
    return tuple(_broadcast(col) for col in zip(*padded)) if padded else ()


def _subscripts(tokens: list[str]) -> str:
    return "".join(tokens)


@register("Einsum")
def einsum(ctx, node, dys):
    equation = ctx.attr("equation")
    if isinstance(equation, bytes):
        equation = equation.decode()
    shapes = [ctx.shape(name) for name in node.input]
    try:
        terms, out = parse_equation(equation or "", [len(s) for s in shapes])
    except ModelStructureError as exc:
        ctx.unsupported(f"its equation '{equation}' could not be read ({exc})")
    if any(ELLIPSIS in t for t in terms) and ELLIPSIS not in out:
        ctx.unsupported(f"the equation '{equation}' sums over the ellipsis dimensions (onnxruntime does not run it)")
    dims = [_dims(t, s) for t, s in zip(terms, shapes)]
    out_dims = _dims(out, ctx.shape(node.output[0]))
    return [_input_grad(ctx, node, dys[0], k, terms, out, dims, out_dims) if ctx.wants(k) else None
            for k in range(len(node.input))]


def _input_grad(ctx, node, g: str, k: int, terms, out, dims, out_dims) -> str:
    """dL/dX_k: the einsum of G with the other operands, summed where X_k was broadcast, then spread over the labels
    it summed alone and put on its diagonals."""
    b = ctx.b
    term = terms[k]
    others = [j for j in range(len(terms)) if j != k]
    elsewhere = set(out).union(*(set(terms[j]) for j in others))
    keep = [t for t in dict.fromkeys(term) if t in elsewhere]  # each label once; '...' stays where it is
    operands = [g] + [node.input[j] for j in others]
    subs = [_subscripts(out)] + [_subscripts(terms[j]) for j in others]
    grad_dims = [out_dims] + [dims[j] for j in others]
    # onnxruntime wants the ellipsis in the output whenever an operand has one: keep it, then sum it away when X_k
    # has none (its forward summed X_k against every ellipsis position).
    ellipsis_rank = len(_broadcast_ellipsis([d.get(ELLIPSIS) for d in grad_dims])) if ELLIPSIS in out else 0
    spare = ELLIPSIS in out and ELLIPSIS not in keep
    result = ([ELLIPSIS] if spare else []) + keep
    r = b.op("Einsum", operands, hint="einsum_grad", equation=",".join(subs) + "->" + _subscripts(result))
    if spare and ellipsis_rank:
        r = b.reduce_sum(r, list(range(ellipsis_rank)), keepdims=False, hint="einsum_ellipsis_sum")
    # The sizes of r, from the operands of that einsum, and those of X_k: sum back every stretched dimension.
    r = _unbroadcast(ctx, r, keep, grad_dims, dims[k])
    if keep == term:
        return r
    return _place(ctx, r, keep, term, node.input[k])


def _unbroadcast(ctx, r: str, keep: list[str], grad_dims: list[dict], own: dict) -> str:
    """Bring ``r`` (subscripts ``keep``) to X_k's sizes: sum where X_k has size 1 but the einsum produced more (X_k
    was stretched), and over the leading ellipsis dimensions X_k lacks; expand where the einsum produced size 1 but
    X_k has more (another operand was stretched along a label X_k shares: its gradient is the same at every
    position)."""
    b = ctx.b
    drop, ones, grow, axis = [], [], [], 0
    sizes = []  # X_k's size for each axis of r once the missing ellipsis dimensions are summed
    for t in keep:
        if t == ELLIPSIS:
            produced = _broadcast_ellipsis([d.get(ELLIPSIS) for d in grad_dims])
            mine = own.get(ELLIPSIS, ())
            extra = len(produced) - len(mine)
            drop += list(range(axis, axis + extra))
            for i, (p, m) in enumerate(zip(produced[extra:], mine)):
                if m == 1 and p != 1:
                    ones.append(axis + extra + i)
                elif p == 1 and m != 1:
                    grow.append(len(sizes))
                sizes.append(m)
            axis += len(produced)
            continue
        produced = _broadcast(d[t] for d in grad_dims if t in d)
        if own[t] == 1 and produced != 1:
            ones.append(axis)
        elif produced == 1 and own[t] != 1:
            grow.append(len(sizes))
        sizes.append(own[t])
        axis += 1
    if ones:
        r = b.reduce_sum(r, ones, keepdims=True, hint="einsum_unbroadcast")
    if drop:
        r = b.reduce_sum(r, drop, keepdims=False, hint="einsum_unbroadcast")
    if grow:
        if any(sizes[i] is None for i in grow):
            ctx.unsupported("an operand stretched along a dimension that follows the batch")
        target = [int(sizes[i]) if i in grow else 1 for i in range(len(sizes))]
        r = b.op("Expand", [r, b.ints(target)], hint="einsum_expand")
    return r


def _place(ctx, r: str, keep: list[str], term: list[str], x: str) -> str:
    """From ``r`` over ``keep`` to X_k's own subscripts ``term``: ones over the labels only X_k has, an identity
    between each repeated label and a fresh one (its diagonal)."""
    b = ctx.b
    used = set(t for t in term if t != ELLIPSIS) | set(keep)
    fresh = iter(c for c in string.ascii_lowercase + string.ascii_uppercase if c not in used)
    operands, subs, target, seen = [r], [_subscripts(keep)], [], set()
    for label, size, axis in _axes(term, ctx.shape(x)):
        if label == ELLIPSIS:
            target.append(ELLIPSIS)
        elif label in seen:  # a repeat: its own fresh label, tied to the first occurrence by an identity
            if size is None:
                ctx.unsupported(f"a diagonal over a dimension that follows the batch ('{label}')")
            new = next(fresh)
            operands.append(b.const(np.eye(size, dtype=np.float32), hint="einsum_eye"))
            subs.append(label + new)
            target.append(new)
        else:
            seen.add(label)
            target.append(label)
            if label not in keep:  # summed by X_k alone in the forward: G is spread evenly over it
                operands.append(_ones(ctx, x, axis, size))
                subs.append(label)
    return b.op("Einsum", operands, hint="einsum_place", equation=",".join(subs) + "->" + _subscripts(target))


def _axes(term: list[str], shape: tuple):
    """``(label, size, axis)`` per token of ``term``; the ellipsis comes once, with size None."""
    ell = len(shape) - sum(1 for t in term if t != ELLIPSIS)
    pos = 0
    for t in term:
        if t == ELLIPSIS:
            yield ELLIPSIS, None, pos
            pos += ell
        else:
            yield t, shape[pos], pos
            pos += 1


def _ones(ctx, x: str, axis: int, size) -> str:
    """A vector of ones as long as axis ``axis`` of ``x``: a constant when the size is known, else built from
    ``Shape(x)`` at run time (the size follows the batch)."""
    b = ctx.b
    if size is not None:
        return b.const(np.ones(int(size), dtype=np.float32), hint="einsum_ones")
    length = b.op("Slice", [b.shape(x), b.ints([axis]), b.ints([axis + 1])])
    return b.op("ConstantOfShape", [length], hint="einsum_ones",
                value=helper.make_tensor("value", TensorProto.FLOAT, [1], [1.0]))
