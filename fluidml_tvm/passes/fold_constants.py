"""``FluidMLFoldConstants``: data movement and elementwise arithmetic on constants computed with
numpy before legalization.

The importer leaves ops on constants in the graph (a conv bias reshaped to ``[1, C, 1, 1]``,
a weight transposed, a LayerScale ``gamma * beta``); TVM's FoldConstant, after LegalizeOps,
evaluates each by building its legalized kernel with LLVM and running it: ~27 ms a kernel on
the 2-core AVX-512 host, 2.2 s of EfficientNet-B0's 8.8 s warm compile (82 folds), 1.5 s of
MNASNet's 5.7 s (55), 0.75 s of SqueezeNet's 4.8 s (27). Here the same values come from numpy,
exactly: reshapes (``reshape``, ``expand_dims``, ``squeeze``, ``flatten``) and ``permute_dims``
move elements, and one IEEE operation per element (``add``, ``subtract``, ``multiply``,
``divide`` of two constants of the same dtype) rounds as TVM's kernel does. The result must
have the call's static shape and dtype, or the call is left to FoldConstant; so is every other
op. A value computed twice from one constant (a bias reshaped for each of its uses) is one
constant. Only the ``fluidml`` pipeline runs it (kill switch ``fluidml.fold_constants``).
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax

from .relax_util import static_shape

log = logging.getLogger("fluidml_tvm.fold_constants")

_RESHAPES = ("relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten")
_ARITH = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
          "relax.divide": np.divide}


def evaluate(call, const_of=lambda e: e) -> np.ndarray | None:
    """The value of ``call`` when it is one of the folded ops and its arguments are constants
    (``const_of``: an argument's constant, through a variable bound to one), computed with
    numpy; None otherwise (left to FoldConstant)."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    name = call.op.name
    if name not in _RESHAPES and name != "relax.permute_dims" and name not in _ARITH:
        return None
    shape = static_shape(call.ty)
    if shape is None:
        return None
    dtype = str(call.ty.dtype)
    data = const_of(call.args[0])
    if not isinstance(data, tvm.ir.GenericConst):
        return None
    a = data.value.numpy()
    if name in _RESHAPES:
        value = a.reshape(shape) if a.size == int(np.prod(shape)) else None
    elif name == "relax.permute_dims":
        axes = call.attrs.axes
        value = np.transpose(a, None if axes is None else [int(x) for x in axes])
    else:
        other = const_of(call.args[1])
        if not isinstance(other, tvm.ir.GenericConst):
            return None
        b = other.value.numpy()
        if a.dtype != b.dtype or str(a.dtype) != dtype or not np.issubdtype(a.dtype, np.number):
            return None  # (numpy's bool "add" is a logical or)
        if name == "relax.divide" and not np.issubdtype(a.dtype, np.floating):
            return None  # integer division rounds differently (numpy floors, TVM truncates)
        with np.errstate(all="ignore"):
            value = _ARITH[name](a, b)
    if value is None or list(value.shape) != shape or str(value.dtype) != dtype:
        return None
    return np.ascontiguousarray(value)


@relax.expr_functor.mutator
class _Fold(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.folded = 0
        self._seen: dict = {}  # (op, argument handles, shape) -> the constant made for it

    def _const_of(self, expr):
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if isinstance(bound, tvm.ir.GenericConst):
                return bound
        return expr

    def visit_call_(self, call):  # noqa: N802 - TVM visitor name
        call = super().visit_call_(call)
        value = evaluate(call, self._const_of)
        if value is None:
            return call
        consts = [self._const_of(a) for a in call.args]  # (a reshape's shape: in the type)
        key = (call.op.name, tuple(c.__hash__() for c in consts
                                   if isinstance(c, tvm.ir.GenericConst)), str(call.ty))
        if key not in self._seen:
            self._seen[key] = relax.const(value, str(value.dtype))
        self.folded += 1
        return self._seen[key]


@tvm.transform.module_pass(opt_level=0, name="FluidMLFoldConstants")
class FluidMLFoldConstants:
    """Fold the ops on constants numpy computes exactly (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        out, folded = mod, 0
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            fold = _Fold(out)
            new = fold.visit_expr(func)
            if fold.folded:
                fold.builder_.update_func(gv, new)
                out = fold.builder_.get()
                folded += fold.folded
        if out is not mod:
            out = relax.transform.DeadCodeElimination()(out)
        log.info("%d ops on constants folded with numpy", folded)
        return out
