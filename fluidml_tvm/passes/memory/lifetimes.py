"""Lifetimes of a Relax function's intermediate tensors, and the public memory helpers.

The IR read here is what the memory slot of the pipeline sees (after ``CallTIRRewrite``): one
``R.builtin.alloc_tensor`` per kernel output, kernels called in destination-passing style, plus,
after a planner ran, ``R.memory.alloc_storage`` / ``R.memory.alloc_tensor`` pairs.

Program points are the function's bindings, numbered in order across its binding blocks. An
intermediate lives from the binding that allocates it to the last binding that reads it or any
alias of it (``x = y``, ``R.reshape``, ``R.memory.view``, ``R.memory.ensure_zero_offset``, tuples,
``match_cast``): no padding. A tensor that the function returns, or that a call other than a
PrimFunc / extern function receives, *escapes*: it lives to the end and is not an intermediate.

Public helpers
--------------
planned_bytes(mod)
    ``{function: sum of alloc_storage sizes}`` of a planned module.
live_set_lower_bound(mod)
    ``{function: max over program points of the bytes of the intermediates live there}``.
memory_timeline(mod, func)
    live intermediate bytes at every binding of ``func`` (for plots).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

import tvm
from tvm import relax

logger = logging.getLogger("fluidml_tvm.memory")

_OP = tvm.ir.Op.get
BUILTIN_ALLOC = _OP("relax.builtin.alloc_tensor")
MEM_ALLOC_TENSOR = _OP("relax.memory.alloc_tensor")
MEM_ALLOC_STORAGE = _OP("relax.memory.alloc_storage")
# Ops whose result is (a view of) their first argument's memory.
VIEW_OPS = (
    _OP("relax.reshape"),
    _OP("relax.memory.view"),
    _OP("relax.memory.ensure_zero_offset"),
)
CALL_TIR_DYN = _OP("relax.vm.call_tir_dyn")


def dtype_bytes(dtype) -> int:
    dt = tvm.DataType(str(dtype))
    return (dt.bits * dt.lanes + 7) // 8


def static_shape(shape_expr) -> list[int] | None:
    """The int dims of a ``ShapeExpr``, or None if one is symbolic."""
    if not isinstance(shape_expr, relax.ShapeExpr):
        return None
    dims = []
    for d in shape_expr.values:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        dims.append(int(d.value))
    return dims


@dataclass
class TensorLife:
    """One intermediate tensor: an ``alloc_tensor`` binding and the range of bindings it lives."""

    var: relax.Var
    index: int
    kind: str  # "builtin" (unplanned) or "planned" (memory.alloc_tensor)
    shape: list[int] | None
    dtype: str
    nbytes: int | None
    end: int
    escaped: str | None = None  # why it is not an intermediate (returned, passed on, ...)
    scope: str = "global"
    device_index: int = 0
    storage: relax.Var | None = None
    offset: int | None = None
    first_touch: int | None = None  # first binding that may read or write its bytes

    @property
    def start(self) -> int:
        return self.index


@dataclass
class FunctionLifetimes:
    """Lifetimes of one function: flattened bindings, tensors, and a reason if it is unsupported."""

    name: str
    bindings: list
    tensors: list[TensorLife] = field(default_factory=list)
    unsupported: str | None = None
    uses: list[set] = field(default_factory=list)  # tensor ids each binding reads (any alias)
    var_tensors: dict = field(default_factory=dict)  # Var -> tensor ids it may hold

    def intermediates(self) -> list[TensorLife]:
        return [t for t in self.tensors if t.escaped is None and t.nbytes is not None]


def _is_primfunc_call(mod: tvm.IRModule, op) -> bool:
    if isinstance(op, relax.ExternFunc):
        return True
    if isinstance(op, tvm.ir.GlobalVar):
        try:
            return isinstance(mod[op], tvm.tirx.PrimFunc)
        except (KeyError, ValueError, tvm.TVMError):
            return False
    return isinstance(op, tvm.ir.Op) and op.same_as(CALL_TIR_DYN)


def _alloc_info(call) -> tuple:
    """(shape, dtype, device_index, scope, storage, offset) of an alloc_tensor call."""
    if call.op.same_as(BUILTIN_ALLOC):
        shape, dtype, dev, scope = call.args[0], call.args[1], call.args[2], call.args[3]
        dev_index = int(dev.value) if isinstance(dev, tvm.tirx.IntImm) else -99
        return static_shape(shape), str(dtype.value), dev_index, str(scope.value), None, None
    storage, offset, shape, dtype = call.args[0], call.args[1], call.args[2], call.args[3]
    off = int(offset.value) if isinstance(offset, tvm.tirx.IntImm) else None
    return static_shape(shape), str(dtype.value), 0, "global", storage, off


def collect_lifetimes(mod: tvm.IRModule, gvar_or_name, func=None) -> FunctionLifetimes:
    """Walk one Relax function and return every alloc_tensor's lifetime (see module docstring).

    ``func`` overrides the function stored in ``mod`` under that name (a candidate rewrite).
    """
    gvar = mod.get_global_var(gvar_or_name) if isinstance(gvar_or_name, str) else gvar_or_name
    func = mod[gvar] if func is None else func
    name = gvar.name_hint
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return FunctionLifetimes(name, [], unsupported="function body is not a SeqExpr")
    bindings = [b for block in body.blocks for b in block.bindings]
    out = FunctionLifetimes(name, bindings)
    alias: dict = out.var_tensors  # Var -> set of tensor ids it may refer to
    tuple_fields: dict = {}  # Var bound to a tuple literal -> tensor ids of each field

    def refs(expr) -> set:
        ids = set()
        for v in relax.analysis.free_vars(expr):
            ids |= alias.get(v, set())
        return ids

    def escape(ids, why: str):
        for i in ids:
            t = out.tensors[i]
            if t.escaped is None:
                t.escaped = why
                logger.debug("%s: %s escapes: %s", name, t.var.name, why)

    for i, b in enumerate(bindings):
        value = b.value
        if isinstance(value, (relax.If, relax.SeqExpr, relax.Function)):
            out.unsupported = f"control flow or nested function at binding {b.var.name}"
            return out
        used = refs(value)
        out.uses.append(used)
        touches = _touches(value)
        for t in used:
            out.tensors[t].end = max(out.tensors[t].end, i)
            if touches and out.tensors[t].first_touch is None:
                out.tensors[t].first_touch = i
        if isinstance(value, relax.Call) and (
            value.op.same_as(BUILTIN_ALLOC) or value.op.same_as(MEM_ALLOC_TENSOR)
        ):
            shape, dtype, dev, scope, storage, offset = _alloc_info(value)
            nbytes = None if shape is None else _prod(shape) * dtype_bytes(dtype)
            kind = "builtin" if value.op.same_as(BUILTIN_ALLOC) else "planned"
            out.tensors.append(
                TensorLife(
                    b.var, i, kind, shape, dtype, nbytes, i, None, scope, dev, storage, offset
                )
            )
            alias[b.var] = {len(out.tensors) - 1}
            continue
        if isinstance(value, relax.Call):
            op = value.op
            if any(op.same_as(v) for v in VIEW_OPS):
                alias[b.var] = refs(value.args[0])
            elif _is_primfunc_call(mod, op):
                alias[b.var] = set()  # DPS kernels return nothing; extern calls keep no reference
            elif isinstance(op, tvm.ir.Op) and op.same_as(MEM_ALLOC_STORAGE):
                alias[b.var] = set()
            else:
                escape(used, f"passed to {op} at binding {b.var.name}")
                alias[b.var] = used
            continue
        if isinstance(value, relax.Tuple):
            tuple_fields[b.var] = [refs(f) for f in value.fields]
        elif isinstance(value, relax.TupleGetItem) and value.tuple_value in tuple_fields:
            alias[b.var] = tuple_fields[value.tuple_value][value.index]
            continue
        elif isinstance(value, relax.Var) and value in tuple_fields:
            tuple_fields[b.var] = tuple_fields[value]
        # Var, Tuple, other TupleGetItem, MatchCast, leaves: may alias every tensor used.
        alias[b.var] = used
    ret = refs(body.body)
    for t in ret:
        out.tensors[t].end = len(bindings)
    escape(ret, "returned by the function")
    return out


def _touches(value) -> bool:
    if isinstance(value, (relax.Var, relax.Tuple, relax.TupleGetItem)):
        return False
    return not (isinstance(value, relax.Call) and any(value.op.same_as(v) for v in VIEW_OPS))


def merge_handovers(tensors) -> list:
    """Intervals of planned tensors, counting an in-place handover once.

    Two planned tensors at the same storage, offset and size where one is last used by the very
    binding that first touches the other (a kernel writing its output over a dying input) are one
    buffer. Returns objects with ``start``, ``end``, ``nbytes``.
    """
    plain = [
        SimpleNamespace(start=t.start, end=t.end, nbytes=t.nbytes)
        for t in tensors
        if t.kind != "planned"
    ]
    groups: dict = {}
    for t in tensors:
        if t.kind == "planned":
            groups.setdefault((t.storage, t.offset, t.nbytes), []).append(t)
    for ts in groups.values():
        ts.sort(key=lambda t: t.start)
        cur = None
        for t in ts:
            if cur is not None and cur.end >= t.start and cur.end == t.first_touch:
                cur.end = max(cur.end, t.end)
                continue
            cur = SimpleNamespace(start=t.start, end=t.end, nbytes=t.nbytes)
            plain.append(cur)
    return plain


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def relax_functions(mod: tvm.IRModule) -> list:
    return [gv for gv, f in mod.functions.items() if isinstance(f, relax.Function)]


def live_bytes_per_point(n_points: int, tensors) -> list[int]:
    """Live bytes at each program point for tensors with ``start``, ``end``, ``nbytes``."""
    delta = [0] * (n_points + 2)
    for t in tensors:
        delta[t.start] += t.nbytes
        delta[t.end + 1] -= t.nbytes
    live, acc = [], 0
    for p in range(n_points + 1):
        acc += delta[p]
        live.append(acc)
    return live


def memory_timeline(mod: tvm.IRModule, func="main") -> list[int]:
    """Live intermediate bytes at every binding of ``func`` (before or after planning)."""
    life = collect_lifetimes(mod, func)
    ts = merge_handovers(life.intermediates())
    return live_bytes_per_point(len(life.bindings), ts)[: len(life.bindings)]


def live_set_lower_bound(mod: tvm.IRModule) -> dict[str, int]:
    """Max over program points of the live intermediate bytes, per Relax function.

    Inputs, constants and escaping tensors (outputs) are excluded. No planner of this binding order
    can use fewer bytes for the same intermediates. In a planned module, a buffer that an
    elementwise kernel overwrites in place counts once (:func:`merge_handovers`).
    """
    out = {}
    for gv in relax_functions(mod):
        life = collect_lifetimes(mod, gv)
        ts = merge_handovers(life.intermediates())
        out[gv.name_hint] = max(live_bytes_per_point(len(life.bindings), ts), default=0)
    return out


def storage_bytes(call) -> int | None:
    """Bytes of an ``R.memory.alloc_storage`` call (its size is in bytes, as stock emits it)."""
    dims = static_shape(call.args[0])
    return None if dims is None else _prod(dims)


def storage_sizes(func) -> list[int]:
    """Sizes in bytes of every ``R.memory.alloc_storage`` in ``func`` (0 for symbolic sizes)."""
    sizes = []

    def visit(e):
        is_op = isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op)
        if is_op and e.op.same_as(MEM_ALLOC_STORAGE):
            sizes.append(storage_bytes(e) or 0)

    relax.analysis.post_order_visit(func, visit)
    return sizes


def planned_bytes(mod: tvm.IRModule) -> dict[str, int]:
    """Sum of ``R.memory.alloc_storage`` sizes per Relax function of a planned module."""
    return {gv.name_hint: sum(storage_sizes(mod[gv])) for gv in relax_functions(mod)}
