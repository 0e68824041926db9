"""Small readers of Relax IR shared by FluidML's graph-level passes."""

from __future__ import annotations

import tvm
from tvm import relax, tirx

CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def static_shape(ty) -> list[int] | None:
    """The shape of a tensor type whose dims are all constants (None: symbolic or unknown)."""
    values = getattr(getattr(ty, "shape", None), "values", None)
    if values is None or not all(isinstance(d, tirx.IntImm) for d in values):
        return None
    return [int(d) for d in values]


def static_nbytes(ty) -> int | None:
    """Bytes of a tensor type with a static shape (None: symbolic)."""
    shape = static_shape(ty)
    if shape is None:
        return None
    n = 1
    for d in shape:
        n *= d
    return n * tvm.runtime.DataType(ty.dtype).bits // 8


def is_call_tir(e) -> bool:
    return isinstance(e, relax.Call) and e.op.same_as(CALL_TIR)


def callee(call) -> str:
    """The name of what a call calls: the PrimFunc of a call_tir, a function, an op."""
    if is_call_tir(call):
        return call.args[0].name_hint
    if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.GlobalVar):
        return call.op.name_hint
    if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op):
        return call.op.name
    return type(call).__name__


def use_counts(func: relax.Function) -> dict:
    """How often each variable is used in ``func``'s body."""
    counts: dict = {}

    def visit(e):
        if isinstance(e, relax.Var):
            counts[e] = counts.get(e, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


def dataflow_blocks(func: relax.Function):
    """Each dataflow block of ``func`` with what a graph rewrite matches against:
    ``(block, value_of, users, outside)`` - the value bound to each var, each var's users in the
    block, and the vars visible after the block (its outputs)."""
    for block in func.body.blocks:
        if not isinstance(block, relax.DataflowBlock):
            continue
        value_of = {b.var: b.value for b in block.bindings if isinstance(b, relax.VarBinding)}
        users = {v: list(us) for v, us in relax.analysis.udchain(block).items()}
        outside = {b.var for b in block.bindings if not isinstance(b.var, relax.DataflowVar)}
        yield block, value_of, users, outside


def is_op(expr, op) -> bool:
    """Whether ``expr`` is a call of the relax operator ``op`` (a ``tvm.ir.Op``)."""
    return isinstance(expr, relax.Call) and expr.op.same_as(op)


def const_value(expr, value_of=None):
    """The numpy array of a constant, or None. With ``value_of`` (var -> bound value), also of a
    var bound to a constant (what the constant folds leave) or to a ``reshape`` of one (the
    importer reshapes a conv bias to ``[1, C, 1, 1]`` before adding it)."""
    bound = value_of.get(expr) if value_of is not None and isinstance(expr, relax.Var) else None
    if isinstance(bound, tvm.ir.GenericConst):
        expr = bound
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    if is_op(bound, tvm.ir.Op.get("relax.reshape")):
        inner = const_value(bound.args[0], value_of)
        return None if inner is None else inner.reshape(
            [int(d) for d in bound.ty.shape.values])
    return None
