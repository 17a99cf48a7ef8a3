"""Backward rules of element-wise arithmetic with numpy broadcasting (gradients are summed back to each input's
shape by :func:`unbroadcast`)."""
from __future__ import annotations


from . import register
from ._common import times_function_of_input, unbroadcast


def _out_shape(ctx, node):
    return ctx.shape(node.output[0])


@register("Add")
def add(ctx, node, dys):
    """d(a + b) = (g, g)."""
    y = _out_shape(ctx, node)
    return [unbroadcast(ctx, dys[0], name, y) if ctx.wants(i) else None for i, name in enumerate(node.input)]


@register("Sum")
def sum_(ctx, node, dys):
    return add(ctx, node, dys)


def _binary(ctx, node, grad_a, grad_b) -> list:
    """A broadcasting binary op's rule: ``grad_a()``/``grad_b()`` build dL/da and dL/db at the output's shape; each
    is built only when its input needs a gradient, then summed back to that input's shape."""
    y = _out_shape(ctx, node)
    return [unbroadcast(ctx, grad(), name, y) if ctx.wants(i) else None
            for i, (grad, name) in enumerate(zip((grad_a, grad_b), node.input))]


@register("Sub")
def sub(ctx, node, dys):
    """d(a - b) = (g, -g)."""
    return _binary(ctx, node, lambda: dys[0], lambda: ctx.b.op("Neg", [dys[0]]))


@register("Mul")
def mul(ctx, node, dys):
    """d(a * b) = (g * b, g * a)."""
    b, (a_name, b_name) = ctx.b, node.input
    return _binary(ctx, node, lambda: b.op("Mul", [dys[0], b_name]), lambda: b.op("Mul", [dys[0], a_name]))


@register("Div")
def div(ctx, node, dys):
    """d(a / b) = (g / b, -g * y / b)."""
    b, b_name = ctx.b, node.input[1]
    return _binary(ctx, node, lambda: b.op("Div", [dys[0], b_name]),
                   lambda: b.op("Neg", [b.op("Div", [b.op("Mul", [dys[0], node.output[0]]), b_name])]))


@register("Neg")
def neg(ctx, node, dys):
    return [ctx.b.op("Neg", [dys[0]], hint="neg_grad")]


@register("Exp")
def exp(ctx, node, dys):
    """d exp(x) = g * y."""
    return [ctx.b.op("Mul", [dys[0], node.output[0]], hint="exp_grad")]


@register("Log")
def log(ctx, node, dys):
    """d log(x) = g / x."""
    return [ctx.b.op("Div", [dys[0], node.input[0]], hint="log_grad")]


@register("Sqrt")
def sqrt(ctx, node, dys):
    """d sqrt(x) = g / (2 y)."""
    b = ctx.b
    return [b.op("Div", [dys[0], b.op("Mul", [node.output[0], b.const(2.0)])], hint="sqrt_grad")]


@register("Reciprocal")
def reciprocal(ctx, node, dys):
    """d (1/x) = -g * y^2."""
    b, y = ctx.b, node.output[0]
    return [b.op("Neg", [b.op("Mul", [dys[0], b.op("Mul", [y, y])])], hint="reciprocal_grad")]


@register("Abs")
def abs_(ctx, node, dys):
    """d |x| = g * sign(x) (0 at 0, as torch)."""
    return times_function_of_input(ctx, node, dys, "Sign", "abs_grad")


@register("Pow")
def pow_(ctx, node, dys):
    """d x^p = g * p * x^(p-1); the exponent must be a constant (x^2 in LayerNorm decompositions)."""
    b = ctx.b
    if ctx.wants(1):
        ctx.unsupported("a gradient for the exponent of Pow was asked for")
    p = ctx.value(node.input[1])
    if p is None:
        ctx.unsupported("the exponent is computed at run time; only constant exponents are supported")
    p = float(p.reshape(-1)[0]) if p.size == 1 else None
    if p is None:
        ctx.unsupported("the exponent is not a scalar")
    x = node.input[0]
    if p == 2.0:
        slope = b.op("Mul", [x, b.const(2.0)])
    elif p == 1.0:
        return [dys[0], None]
    else:
        slope = b.op("Mul", [b.op("Pow", [x, b.const(p - 1.0)]), b.const(p)])
    return [b.op("Mul", [dys[0], slope], hint="pow_grad"), None]


def _select(ctx, node, dys, compare: str):
    """Max/Min: the gradient goes to the input that was selected (the first on ties, as torch's maximum)."""
    b, y = ctx.b, _out_shape(ctx, node)
    if len(node.input) != 2:
        ctx.unsupported(f"{node.op_type} with {len(node.input)} inputs (only 2 are supported)")
    a_name, b_name = node.input
    first = b.op(compare, [a_name, b_name])  # GreaterOrEqual / LessOrEqual: a wins ties
    zero = b.const(0.0)
    da = unbroadcast(ctx, b.op("Where", [first, dys[0], zero]), a_name, y) if ctx.wants(0) else None
    db = unbroadcast(ctx, b.op("Where", [first, zero, dys[0]]), b_name, y) if ctx.wants(1) else None
    return [da, db]


@register("Max")
def max_(ctx, node, dys):
    return _select(ctx, node, dys, "GreaterOrEqual")


@register("Min")
def min_(ctx, node, dys):
    return _select(ctx, node, dys, "LessOrEqual")


@register("Where")
def where(ctx, node, dys):
    """d Where(c, a, b) = (-, g where c, g where not c)."""
    b, y = ctx.b, _out_shape(ctx, node)
    cond, a_name, b_name = node.input
    zero = b.const(0.0)
    da = unbroadcast(ctx, b.op("Where", [cond, dys[0], zero]), a_name, y) if ctx.wants(1) else None
    db = unbroadcast(ctx, b.op("Where", [cond, zero, dys[0]]), b_name, y) if ctx.wants(2) else None
    return [None, da, db]


