"""Memory-aware execution order: pick, among valid topological orders, one with a low live-set peak.

Used by :class:`memory_plan.FluidMLMemoryPlan` before packing (FluidML keeps one fixed order).

Contract
--------
Input: a Relax function with a single non-dataflow binding block, as after ``CallTIRRewrite``, and
its :class:`memory_analysis.FunctionLifetimes`. Bindings are grouped into *units*: every binding
that is not an ``alloc_tensor``, together with the ``alloc_tensor`` bindings whose first reader it
is (they stay right before it, so no lifetime is padded). A unit depends on the units that define
the variables it reads. Orders are built by list scheduling with several greedy keys (least net
growth of live bytes, least peak while the unit runs) and by depth-first post-orders from the
outputs (dependencies in original, reversed, or heaviest-first order); the planner scores each
with in-place reuse and keeps the lowest live-set bound, ties going to the original order.

The order is left unchanged (reason logged) when the function may have effects that variable
dependencies do not show: a call to an extern function or an Op other than the allocation and view
ops, a kernel that writes into a tensor it did not freshly allocate (an in-place call), or into a
view of another tensor (``R.memory.view``: an in-place concat's slabs, :mod:`.concat`).
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax

from .lifetimes import (
    BUILTIN_ALLOC,
    MEM_ALLOC_STORAGE,
    MEM_ALLOC_TENSOR,
    VIEW_OPS,
    FunctionLifetimes,
)

logger = logging.getLogger("fluidml_tvm.memory")

_ALLOC_OPS = (BUILTIN_ALLOC, MEM_ALLOC_TENSOR)
MEM_VIEW = tvm.ir.Op.get("relax.memory.view")


def _is_alloc(value) -> bool:
    return isinstance(value, relax.Call) and any(value.op.same_as(o) for o in _ALLOC_OPS)


def why_not_reorderable(mod: tvm.IRModule, func: relax.Function) -> str | None:
    if len(func.body.blocks) != 1 or isinstance(func.body.blocks[0], relax.DataflowBlock):
        return "not a single non-dataflow binding block"
    bindings = func.body.blocks[0].bindings
    alloc_vars = {b.var for b in bindings if _is_alloc(b.value)}
    for k, b in enumerate(bindings):
        v = b.value
        if not isinstance(v, relax.Call):
            continue
        op = v.op
        if isinstance(op, tvm.ir.GlobalVar):
            if not isinstance(mod[op], tvm.tirx.PrimFunc):
                return f"call to Relax function {op.name_hint}"
            # An in-place kernel binds its result to one of its inputs right after the call.
            nxt = bindings[k + 1].value if k + 1 < len(bindings) else None
            if (
                isinstance(nxt, relax.Var)
                and nxt not in alloc_vars
                and any(nxt.same_as(a) for a in v.args)
            ):
                return f"in-place kernel call {op.name_hint}"
        elif isinstance(op, tvm.ir.Op):
            if op.same_as(MEM_VIEW):
                # in-place concat slabs (.concat): kernels write into views of the concat's
                # output, which its readers do not name
                return "kernels write into views (an in-place concat)"
            known = _ALLOC_OPS + VIEW_OPS + (MEM_ALLOC_STORAGE,)
            if not any(op.same_as(o) for o in known):
                return f"call to {op.name} (effects unknown)"
        else:
            return f"call to {op} (effects unknown)"
    return None


def _units(func: relax.Function, life: FunctionLifetimes):
    """Group binding indices into units; return (units, deps) with deps[u] = set of units."""
    bindings = life.bindings
    n = len(bindings)
    first_reader: dict = {}
    for i, b in enumerate(bindings):
        for v in relax.analysis.free_vars(b.value):
            first_reader.setdefault(v, i)
    owner = [-1] * n
    units: list[list[int]] = []
    pending_allocs: dict[int, list[int]] = {}
    for i, b in enumerate(bindings):
        if _is_alloc(b.value) and first_reader.get(b.var, -1) > i:
            pending_allocs.setdefault(first_reader[b.var], []).append(i)
            continue
        unit = [*pending_allocs.pop(i, []), i]
        for j in unit:
            owner[j] = len(units)
        units.append(unit)
    for i in sorted(j for js in pending_allocs.values() for j in js):  # never read: own unit
        owner[i] = len(units)
        units.append([i])
    defined = {b.var: owner[i] for i, b in enumerate(bindings)}
    deps = []
    for u, unit in enumerate(units):
        d = set()
        for j in unit:
            for v in relax.analysis.free_vars(bindings[j].value):
                if v in defined and defined[v] != u:
                    d.add(defined[v])
        deps.append(d)
    return units, deps


def order_peak(order_units, units, life: FunctionLifetimes) -> int:
    """Live-set peak of the intermediates when units run in ``order_units``."""
    ts = life.intermediates()
    ids = {id(t): k for k, t in enumerate(life.tensors)}
    planned = {ids[id(t)]: t.nbytes for t in ts}
    pos = {}
    p = 0
    for u in order_units:
        for j in units[u]:
            pos[j] = p
            p += 1
    start, end = {}, {}
    for j, used in enumerate(life.uses):
        for t in used:
            if t in planned:
                end[t] = max(end.get(t, -1), pos[j])
    for k, t in enumerate(life.tensors):
        if k in planned:
            start[k] = pos[t.index]
            end[k] = max(end.get(k, start[k]), start[k])
    delta = [0] * (p + 2)
    for k, size in planned.items():
        delta[start[k]] += size
        delta[end[k] + 1] -= size
    best = acc = 0
    for d in delta:
        acc += d
        best = max(best, acc)
    return best


def _schedule(units, deps, life: FunctionLifetimes, key: str) -> list[int]:
    n = len(units)
    planned = {
        k: t.nbytes
        for k, t in enumerate(life.tensors)
        if t.escaped is None and t.nbytes is not None
    }
    alloc_of = [[k for k in planned if life.tensors[k].index in set(unit)] for unit in units]
    reads = [set().union(*(life.uses[j] for j in unit)) & planned.keys() for unit in units]
    remaining = {k: 0 for k in planned}
    for u in range(n):
        for k in reads[u]:
            remaining[k] += 1
    indeg = [len(d) for d in deps]
    users = [[] for _ in range(n)]
    for u, d in enumerate(deps):
        for v in d:
            users[v].append(u)
    live = 0
    order: list[int] = []

    def score(u):
        alloc = sum(planned[k] for k in alloc_of[u])
        freed = sum(planned[k] for k in reads[u] if remaining[k] == 1 and k not in alloc_of[u])
        freed += sum(planned[k] for k in alloc_of[u] if remaining[k] == 0)  # never read
        if key == "net":
            return (alloc - freed, live + alloc, u)
        if key == "peak":
            return (live + alloc, alloc - freed, u)
        return (u,)

    ready = [u for u in range(n) if indeg[u] == 0]
    while ready:
        u = min(ready, key=score)
        ready.remove(u)
        order.append(u)
        live += sum(planned[k] for k in alloc_of[u])
        for k in reads[u]:
            remaining[k] -= 1
            if remaining[k] == 0:
                live -= planned[k]
        for k in alloc_of[u]:
            if remaining[k] == 0:
                live -= planned[k]
        for w in users[u]:
            indeg[w] -= 1
            if indeg[w] == 0:
                ready.append(w)
    if len(order) != n:
        raise RuntimeError("dependency cycle among binding units (planner bug)")
    return order


def _dfs(units, deps, life: FunctionLifetimes, key: str) -> list[int]:
    """Depth-first post-order from the sinks: each unit runs right after what it needs.

    ``key`` picks which dependency runs first: ``dfs`` original order, ``dfs-rev`` reversed,
    ``dfs-heavy`` the one with the most bytes allocated in its (approximate) ancestry first
    (Sethi-Ullman: the costly subtree first, while nothing else is held).
    """
    n = len(units)
    own = [0] * n
    for t in life.intermediates():
        for u, unit in enumerate(units):
            if t.index in unit:
                own[u] += t.nbytes
                break
    heavy = [0] * n
    for u in range(n):  # units are in a valid topological order: deps come first
        heavy[u] = own[u] + sum(heavy[d] for d in deps[u])
    users = [0] * n
    for d in deps:
        for v in d:
            users[v] += 1
    sinks = [u for u in range(n) if users[u] == 0]

    def kids(u):
        ds = sorted(deps[u])
        if key == "dfs-rev":
            return ds[::-1]
        if key == "dfs-heavy":
            return sorted(ds, key=lambda d: (-heavy[d], d))
        return ds

    order, done = [], set()
    for root in sinks:
        stack = [(root, iter(kids(root)))]
        while stack:
            u, it = stack[-1]
            nxt = next((d for d in it if d not in done), None)
            if nxt is None:
                stack.pop()
                if u not in done:
                    done.add(u)
                    order.append(u)
            else:
                stack.append((nxt, iter(kids(nxt))))
    return order


def candidate_orders(mod: tvm.IRModule, func: relax.Function, life: FunctionLifetimes):
    """Return ``(candidates, report)``: ``[(name, function)]`` in orders other than the original.

    The caller scores each candidate (with in-place reuse, which this module does not model) and
    keeps the original order on ties.
    """
    why = why_not_reorderable(mod, func)
    if why:
        return [], f"order kept: {why}"
    units, deps = _units(func, life)
    original = list(range(len(units)))
    seen = [original]
    out, scores = [], {"original": order_peak(original, units, life)}
    for key in ("net", "peak", "dfs", "dfs-rev", "dfs-heavy"):
        order = (
            _schedule(units, deps, life, key)
            if key in ("net", "peak")
            else _dfs(units, deps, life, key)
        )
        if sorted(order) != original:
            raise RuntimeError(f"order {key} is not a permutation of the units (planner bug)")
        scores[key] = order_peak(order, units, life)
        if order in seen:
            continue
        seen.append(order)
        new = [life.bindings[j] for u in order for j in units[u]]
        body = relax.SeqExpr([relax.BindingBlock(new)], func.body.body)
        out.append(
            (
                key,
                relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs, func.span),
            )
        )
    return out, f"live-set peaks without in-place by order: {scores}"
