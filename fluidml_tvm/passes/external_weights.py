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
the library (scalars, shapes, tiny biases). Weights that every kernel reads only as a gather table
(an embedding: rows picked by another tensor's values) are listed in ``gathered``: the loader maps
them for random access, so a process holds only the rows it reads (GPT-NeoX-small's 103 MB input
embedding, of which a 128-token run reads 128 rows).
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


def _read_regions(stmt, out: list) -> None:
    """Every read region of every SBlock under ``stmt``."""
    t = tvm.tirx
    if isinstance(stmt, tvm.s_tir.SBlockRealize):
        stmt = stmt.block
    if isinstance(stmt, tvm.s_tir.SBlock):
        out.extend(stmt.reads)
        for child in (stmt.init, stmt.body):
            if child is not None:
                _read_regions(child, out)
        return
    if isinstance(stmt, t.SeqStmt):
        for child in stmt.seq:
            _read_regions(child, out)
    elif isinstance(stmt, t.IfThenElse):
        _read_regions(stmt.then_case, out)
        if stmt.else_case is not None:
            _read_regions(stmt.else_case, out)
    elif getattr(stmt, "body", None) is not None:
        _read_regions(stmt.body, out)


def gathers(prim: tvm.tirx.PrimFunc, pos: int) -> bool:
    """Whether the kernel reads parameter ``pos`` only at rows picked by another buffer's values
    (a gather, e.g. an embedding lookup ``A[ids[i], j]``): it then touches a few rows of it."""
    if pos >= len(prim.params):
        return False
    buf = prim.params[pos]  # TVM 0.27: PrimFunc parameters are the buffers
    regions: list = []
    _read_regions(prim.body, regions)
    mine = [r for r in regions if r.source.same_as(buf)]

    def indirect(e) -> bool:  # TVM 0.27: a BufferLoad is a tvm.ir.TensorLoad
        e = e.value if isinstance(e, tvm.ir.prim.expr.Cast) else e
        return isinstance(e, tvm.ir.expr.TensorLoad)

    return bool(mine) and all(any(indirect(rng.min) for rng in r.region) for r in mine)


def _gathered_consts(mod: tvm.IRModule, func) -> set:
    """Keys of the constants that every use passes to a kernel as a gather table."""
    gather, other = set(), set()

    def scan(e, in_kernel_call=False):
        if isinstance(e, GenericConst):
            other.add(e.__hash__())
        elif isinstance(e, relax.Call):
            kernel = isinstance(e.op, tvm.ir.GlobalVar) and isinstance(
                mod[e.op], tvm.tirx.PrimFunc)
            for i, a in enumerate(e.args):
                if kernel and isinstance(a, GenericConst):
                    (gather if gathers(mod[e.op], i) else other).add(a.__hash__())
                else:
                    scan(a)
        elif isinstance(e, relax.Tuple):
            for f in e.fields:
                scan(f)

    for block in func.body.blocks:
        for b in block.bindings:
            scan(b.value)
    return gather - other


@tvm.transform.module_pass(opt_level=0, name="FluidMLExternalizeWeights")
class ExternalizeWeights:
    """Turn constants of at least ``min_bytes`` into trailing parameters of ``main``.

    After the pass, ``self.weights`` lists ``(name, numpy array)`` in parameter order.
    """

    def __init__(self, min_bytes: int = 4096, func_name: str = "main"):
        self.min_bytes = min_bytes
        self.func_name = func_name
        self.weights: list = []
        self.gathered: set = set()  # names of weights only read as gather tables (embeddings)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        gv = mod.get_global_var(self.func_name)
        func = mod[gv]
        replacer = _Replace(mod, self.min_bytes)
        gathered = _gathered_consts(mod, func) if isinstance(func.body, relax.SeqExpr) else set()
        body = replacer.visit_expr(func.body)
        if not replacer.params:
            self.weights = []
            return mod
        params = list(func.params) + [v for v, _ in replacer.params]
        new = relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
        new = new.with_attr("fluidml.num_weights", len(replacer.params))
        self.weights = [(v.name, arr) for v, arr in replacer.params]
        self.gathered = {v.name for key, v in replacer.by_const.items() if key in gathered}
        out = mod.clone() if hasattr(mod, "clone") else mod
        out[gv] = new
        return out
