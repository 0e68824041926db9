"""Independent verifier of a planned Relax module's memory.

Written apart from the planner on purpose: it shares no code with :mod:`memory_plan` or
:mod:`memory_analysis` and trusts nothing the planner recorded; it reads only the planned IR.

For every Relax function it

* records each ``R.memory.alloc_storage`` (its size in bytes) and each
  ``R.memory.alloc_tensor(storage, offset, shape, dtype)`` (a byte range of that storage);
* recomputes lifetimes: a tensor lives from its ``alloc_tensor`` binding to the last binding whose
  value mentions it or anything derived from it. Derivation is conservative: the result of any
  binding that is not a kernel call (a GlobalVar naming a PrimFunc, or an ExternFunc) may alias
  every tensor its value mentions. Mentions in the function's return value, and in If branches,
  count as uses to the end of the function;
* checks: every offset is a multiple of 64 and non-negative; every tensor lies inside its storage;
  a tensor at a non-zero offset is only used through ``R.memory.ensure_zero_offset``; and no two
  tensors of one storage whose lifetimes share a program point share a byte.

``verify_module`` returns the violations as strings; ``check_module`` raises
:class:`MemoryPlanError` listing them.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .verify_kernel import elementwise_overwrite

ALIGNMENT = 64


class MemoryPlanError(RuntimeError):
    """A memory plan that would corrupt data or read out of bounds (a planner bug)."""


def _op_named(expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def _ints(shape) -> list[int] | None:
    vals = []
    for d in getattr(shape, "values", None) or []:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        vals.append(int(d.value))
    return vals if isinstance(shape, relax.ShapeExpr) else None


def _nbytes(shape, dtype) -> int | None:
    dims = _ints(shape)
    if dims is None:
        return None
    dt = tvm.DataType(str(dtype.value))
    n = (dt.bits * dt.lanes + 7) // 8
    for d in dims:
        n *= d
    return n


def _mentioned(expr) -> list:
    found = []

    def visit(e):
        if isinstance(e, relax.Var):
            found.append(e)

    relax.analysis.post_order_visit(expr, visit)
    return found


class _Tensor:
    __slots__ = ("born", "dies", "first_use", "name", "nbytes", "offset", "raw_users", "storage")

    def __init__(self, name, storage, offset, nbytes, born):
        self.name, self.storage, self.offset, self.nbytes = name, storage, offset, nbytes
        self.born = self.dies = born
        self.first_use = None
        self.raw_users: list[str] = []

    @property
    def start(self) -> int:
        """Its bytes matter from the first binding that uses it (the alloc binding writes none)."""
        return self.born if self.first_use is None else self.first_use


def _verify_function(mod: tvm.IRModule, name: str, func: relax.Function) -> list[str]:
    problems: list[str] = []
    if not isinstance(func.body, relax.SeqExpr):
        return problems
    steps = [b for blk in func.body.blocks for b in blk.bindings]
    end = len(steps)
    storages: dict = {}  # Var -> size in bytes (None: symbolic)
    tensors: list[_Tensor] = []
    derived: dict = {}  # Var -> set of tensor indices
    kernel_args: dict = {}  # binding index of a kernel call -> tensors mentioned by each argument
    fields_of: dict = {}  # Var bound to a tuple -> tensors of each field

    def is_kernel(op) -> bool:
        if isinstance(op, relax.ExternFunc):
            return True
        if isinstance(op, tvm.ir.GlobalVar) and op in mod.get_global_vars():
            return isinstance(mod[op], tvm.tirx.PrimFunc)
        return False

    for step, b in enumerate(steps):
        value = b.value
        mentioned = set()
        for v in _mentioned(value):
            mentioned |= derived.get(v, set())
        last = end if isinstance(value, (relax.If, relax.SeqExpr, relax.Function)) else step
        for t in mentioned:
            tensors[t].dies = max(tensors[t].dies, last)
            if tensors[t].first_use is None and step > tensors[t].born and _touches(value):
                tensors[t].first_use = step
        if isinstance(value, relax.Call) and is_kernel(value.op):
            kernel_args[step] = [_tensors_in(a, derived) for a in value.args]
        if _op_named(value, "relax.memory.alloc_storage"):
            dims = _ints(value.args[0])
            storages[b.var] = None if dims is None else _prod(dims)
            continue
        if _op_named(value, "relax.memory.alloc_tensor"):
            storage, offset, shape, dtype = value.args[:4]
            off = int(offset.value) if isinstance(offset, tvm.tirx.IntImm) else None
            tensors.append(_Tensor(b.var.name, storage, off, _nbytes(shape, dtype), step))
            derived[b.var] = {len(tensors) - 1}
            continue
        # Direct uses of a raw (non-zero offset) tensor must be ensure_zero_offset.
        if not _op_named(value, "relax.memory.ensure_zero_offset"):
            for v in _mentioned(value):
                for t in derived.get(v, set()):
                    tt = tensors[t]
                    if v.same_as(_raw_var(steps, tt)) and tt.offset:
                        tt.raw_users.append(b.var.name)
        if isinstance(value, relax.Call) and is_kernel(value.op):
            derived[b.var] = set()
        elif isinstance(value, relax.Tuple):
            fields_of[b.var] = [_tensors_in(f, derived) for f in value.fields]
            derived[b.var] = mentioned
        elif isinstance(value, relax.TupleGetItem) and value.tuple_value in fields_of:
            derived[b.var] = fields_of[value.tuple_value][value.index]
        else:
            derived[b.var] = mentioned
            if isinstance(value, relax.Var) and value in fields_of:
                fields_of[b.var] = fields_of[value]
    returned = set()
    for v in _mentioned(func.body.body):
        returned |= derived.get(v, set())
    for t in returned:
        tensors[t].dies = end
        problems.append(f"{name}: {tensors[t].name} lives in a planned storage and is returned")

    for t in tensors:
        if t.offset is None:
            problems.append(f"{name}: {t.name} has a non-constant offset")
            continue
        if t.offset < 0 or t.offset % ALIGNMENT:
            problems.append(f"{name}: {t.name} offset {t.offset} is not {ALIGNMENT}-byte aligned")
        size = storages.get(t.storage, "unknown")
        if size == "unknown":
            problems.append(f"{name}: {t.name} is in a storage not allocated in this function")
        elif size is not None and t.nbytes is not None and t.offset + t.nbytes > size:
            problems.append(
                f"{name}: {t.name} [{t.offset}, {t.offset + t.nbytes}) exceeds its storage of "
                f"{size} bytes"
            )
        if t.raw_users:
            problems.append(
                f"{name}: {t.name} at offset {t.offset} used without ensure_zero_offset by "
                f"{', '.join(t.raw_users)}"
            )
    by_storage: dict = {}
    for t in tensors:
        if t.offset is not None and t.nbytes is not None:
            by_storage.setdefault(t.storage, []).append(t)
    for group in by_storage.values():
        group.sort(key=lambda t: t.offset)
        for i, a in enumerate(group):
            for c in group[i + 1 :]:
                if c.offset >= a.offset + a.nbytes:
                    break
                if a.start <= c.dies and c.start <= a.dies:
                    if _handover_ok(mod, steps, kernel_args, tensors, a, c):
                        continue
                    problems.append(
                        f"{name}: {a.name} [{a.offset}, {a.offset + a.nbytes}) live "
                        f"{a.start}..{a.dies} overlaps {c.name} "
                        f"[{c.offset}, {c.offset + c.nbytes}) live {c.start}..{c.dies}"
                    )
    return problems


def _touches(value) -> bool:
    """Whether a binding may read or write tensor bytes (views and renamings do not)."""
    if isinstance(value, (relax.Var, relax.Tuple, relax.TupleGetItem)):
        return False
    views = ("relax.memory.ensure_zero_offset", "relax.memory.view", "relax.reshape")
    return not any(_op_named(value, n) for n in views)


def _tensors_in(expr, derived) -> set:
    out = set()
    for v in _mentioned(expr):
        out |= derived.get(v, set())
    return out


def _handover_ok(mod, steps, kernel_args, tensors, a: _Tensor, c: _Tensor) -> bool:
    """An in-place handover: one kernel call reads one tensor for the last time and writes the
    other first; both take the same bytes, each is one argument, the kernel is elementwise."""
    old, new = (a, c) if a.dies == c.start else (c, a)
    step = old.dies
    if new.start != step or old.start >= step or step not in kernel_args:
        return False
    if (old.offset, old.nbytes) != (new.offset, new.nbytes):
        return False
    ia, ic = tensors.index(old), tensors.index(new)
    args = kernel_args[step]
    pos_old = [k for k, ts in enumerate(args) if ia in ts]
    pos_new = [k for k, ts in enumerate(args) if ic in ts]
    if len(pos_old) != 1 or len(pos_new) != 1 or len(args[pos_old[0]]) != 1:
        return False
    if len(args[pos_new[0]]) != 1:
        return False
    prim = mod[steps[step].value.op]
    return elementwise_overwrite(prim, pos_old[0], pos_new[0])


def _raw_var(steps, t: _Tensor):
    return steps[t.born].var


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


def verify_module(mod: tvm.IRModule) -> list[str]:
    """Every violation of the memory plan of every Relax function in ``mod`` (empty: valid)."""
    problems = []
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            problems += _verify_function(mod, gv.name_hint, func)
    return problems


def check_module(mod: tvm.IRModule) -> None:
    """Raise :class:`MemoryPlanError` if ``verify_module`` finds anything."""
    problems = verify_module(mod)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise MemoryPlanError(f"invalid memory plan ({len(problems)} problems):\n  {shown}{more}")


def check_intervals(intervals, offsets, arena: int, alignment: int = ALIGNMENT) -> list[str]:
    """The same checks on an abstract plan: ``(size, start, end)`` triples and their offsets."""
    problems = []
    items = sorted(range(len(intervals)), key=lambda i: offsets[i])
    for i in items:
        size = intervals[i][0]
        if offsets[i] < 0 or offsets[i] % alignment:
            problems.append(f"buffer {i}: offset {offsets[i]} not aligned")
        if offsets[i] + size > arena:
            problems.append(
                f"buffer {i}: [{offsets[i]}, {offsets[i] + size}) outside arena {arena}"
            )
    for x, i in enumerate(items):
        si, ai, bi = intervals[i]
        for j in items[x + 1 :]:
            sj, aj, bj = intervals[j]
            if offsets[j] >= offsets[i] + si:
                break
            if ai <= bj and aj <= bi and sj > 0 and si > 0:
                problems.append(f"buffers {i} and {j} overlap in time and bytes")
    return problems
