"""ExternalizeWeights: large constants become parameters of ``main``, stored beside the library.

Why: a library with embedded weights is mapped from disk *and* copied into the VM's constant pool
when it loads, so a process holds its weights twice (BERT-base: ~1.7 GB peak RSS against ONNX
Runtime's ~0.7 GB). With this pass the library holds no large constant; :meth:`CompiledModel.export`
writes the weights, already transformed by every compile-time fold (packing, pre-permuted layouts),
into ``NAME.weights`` with 4096-byte aligned offsets, and :func:`fluidml_tvm.runtime.load` maps that
file copy-on-write and hands the pages to TVM through DLPack: one copy, shared with the page cache.

Contract: runs after every pass that folds constants (the pipeline puts it at the start of the
finalize phase, after memory planning, before VMShapeLower). Each Relax function keeps its own
runtime inputs first; the weights are appended as parameters named ``fluidml_w<i>``, and the
function gets the attribute ``fluidml.num_weights``. Constants smaller than ``min_bytes`` stay in
the library (scalars, shapes, tiny biases).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir import GenericConst


@relax.expr_functor.mutator
class _Replace(relax.PyExprMutator):
    def __init__(self, mod, min_bytes):
        super().__init__(mod)
        self.min_bytes = min_bytes
        self.params: list = []  # (Var, numpy array)
        self.by_const: dict = {}

    def visit_generic_const_(self, op: GenericConst):
        value = op.value
        if not hasattr(value, "numpy"):
            return op
        nbytes = int(np.prod(value.shape)) * np.dtype(value.dtype).itemsize
        if nbytes < self.min_bytes:
            return op
        key = op.__hash__()
        if key not in self.by_const:
            var = relax.Var(f"fluidml_w{len(self.params)}", op.ty)
            self.by_const[key] = var
            self.params.append((var, value.numpy()))
        return self.by_const[key]


@tvm.transform.module_pass(opt_level=0, name="FluidMLExternalizeWeights")
class ExternalizeWeights:
    """Turn constants of at least ``min_bytes`` into trailing parameters of ``main``.

    After the pass, ``self.weights`` lists ``(name, numpy array)`` in parameter order.
    """

    def __init__(self, min_bytes: int = 4096, func_name: str = "main"):
        self.min_bytes = min_bytes
        self.func_name = func_name
        self.weights: list = []

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        gv = mod.get_global_var(self.func_name)
        func = mod[gv]
        replacer = _Replace(mod, self.min_bytes)
        body = replacer.visit_expr(func.body)
        if not replacer.params:
            self.weights = []
            return mod
        params = list(func.params) + [v for v, _ in replacer.params]
        new = relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
        new = new.with_attr("fluidml.num_weights", len(replacer.params))
        self.weights = [(v.name, arr) for v, arr in replacer.params]
        out = mod.clone() if hasattr(mod, "clone") else mod
        out[gv] = new
        return out
