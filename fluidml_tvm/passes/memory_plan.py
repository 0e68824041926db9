"""FluidMLMemoryPlan: one arena per Relax function, in StaticPlanBlockMemory's slot.

Contract
--------
Reads a module right after ``CallTIRRewrite``: every kernel output is an
``R.builtin.alloc_tensor``. For each Relax function it

1. computes each intermediate's lifetime (allocating binding .. last use of it or of any alias,
   no padding; :func:`memory_analysis.collect_lifetimes`);
2. packs the intermediates into one arena: several orders (greedy by size as FluidML/TFLite,
   greedy by breadth, by lifetime area, by start) with best-fit and first-fit gap choice, plus a few
   seeded random perturbations; the smallest packing wins (ties: the first strategy tried);
3. rewrites the function: one ``R.memory.alloc_storage`` (``uint8``, the arena size in bytes) at
   the top, every planned tensor ``R.memory.alloc_tensor(arena, offset, shape, dtype)`` with a
   64-byte aligned offset; a non-zero offset goes through ``R.memory.ensure_zero_offset`` (kernels
   assume ``byte_offset == 0``; an aligned offset makes it a free view).

What it does not plan, it leaves as ``R.builtin.alloc_tensor`` and hands to the stock
``StaticPlanBlockMemory``, which runs right after it, with the reason logged at debug level:
tensors that escape (returned, passed to a non-kernel call), symbolic shapes, non-global scopes or
other devices, and whole functions with control flow or dataflow blocks.

``verify=True`` runs the independent verifier (:mod:`memory_verify`) on the result and raises
:class:`memory_verify.MemoryPlanError` on a bad plan.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from types import SimpleNamespace

import tvm
from tvm import relax

from .memory_analysis import collect_lifetimes, relax_functions
from .memory_order import candidate_orders

logger = logging.getLogger("fluidml_tvm.memory")

ALIGN = 64


def align_up(x: int, a: int = ALIGN) -> int:
    return (x + a - 1) // a * a


# ----------------------------------------------------------------------------------------------
# Packing abstract intervals
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A buffer of ``size`` bytes live at program points ``start..end`` (inclusive)."""

    size: int
    start: int
    end: int

    def overlaps(self, other: Interval) -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class Packing:
    offsets: list[int]
    size: int
    strategy: str
    tried: dict[str, int] = field(default_factory=dict)


def live_bound(intervals: list[Interval], align: int = 1) -> int:
    """Max over program points of the summed (aligned) sizes live there."""
    events = []
    for iv in intervals:
        events.append((iv.start, 0, align_up(iv.size, align)))
        events.append((iv.end, 1, -align_up(iv.size, align)))
    best = acc = 0
    for _, _, d in sorted(events):
        acc += d
        best = max(best, acc)
    return best


def _place(intervals: list[Interval], order: list[int], best_fit: bool, align: int) -> list[int]:
    offsets = [-1] * len(intervals)
    placed: list[int] = []
    for i in order:
        iv = intervals[i]
        size = align_up(iv.size, align)
        busy = sorted(
            (offsets[j], offsets[j] + align_up(intervals[j].size, align))
            for j in placed
            if intervals[j].overlaps(iv)
        )
        chosen, chosen_gap, cursor = None, None, 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= size and (chosen is None or (best_fit and gap < chosen_gap)):
                chosen, chosen_gap = cursor, gap
                if not best_fit:
                    break
            cursor = max(cursor, hi)
        offsets[i] = cursor if chosen is None else chosen
        placed.append(i)
    return offsets


def _orders(intervals: list[Interval]) -> dict[str, list[int]]:
    n = range(len(intervals))
    iv = intervals
    orders = {
        "size": sorted(n, key=lambda i: (-iv[i].size, iv[i].start, -iv[i].end)),
        "area": sorted(n, key=lambda i: (-iv[i].size * (iv[i].end - iv[i].start + 1), iv[i].start)),
        "length": sorted(n, key=lambda i: (-(iv[i].end - iv[i].start), -iv[i].size)),
        "start": sorted(n, key=lambda i: (iv[i].start, -iv[i].size)),
    }
    # Greedy by breadth (TFLite): program points by live bytes, largest first; at each, its
    # tensors by size.
    if intervals:
        last = max(x.end for x in intervals)
        live = [0] * (last + 2)
        for x in intervals:
            for p in range(x.start, x.end + 1):
                live[p] += x.size
        seen, breadth = set(), []
        for p in sorted(range(last + 1), key=lambda p: -live[p]):
            for i in sorted(
                (i for i in n if iv[i].start <= p <= iv[i].end), key=lambda i: -iv[i].size
            ):
                if i not in seen:
                    seen.add(i)
                    breadth.append(i)
        orders["breadth"] = breadth
    return orders


def pack(
    intervals: list[Interval], align: int = ALIGN, random_tries: int = 16, seed: int = 0
) -> Packing:
    """Assign an ``align``-aligned offset to every interval; the smallest of several heuristics.

    Two intervals that overlap in time never overlap in bytes. The arena size is the largest
    ``offset + align_up(size)``.
    """
    if not intervals:
        return Packing([], 0, "empty")
    bound = live_bound(intervals, align)
    best: Packing | None = None
    tried: dict[str, int] = {}

    def consider(name: str, order: list[int], best_fit: bool):
        nonlocal best
        offs = _place(intervals, order, best_fit, align)
        size = max(o + align_up(iv.size, align) for o, iv in zip(offs, intervals))
        tried[name] = size
        if best is None or size < best.size:
            best = Packing(offs, size, name)

    for name, order in _orders(intervals).items():
        for best_fit in (True, False):
            consider(f"{name}/{'best' if best_fit else 'first'}-fit", order, best_fit)
            if best.size <= bound:
                break
        if best.size <= bound:
            break
    rng = random.Random(seed)
    base = _orders(intervals)["size"] if best.size > bound else []
    for k in range(random_tries if base else 0):
        # Perturb greedy-by-size: sort by size times a random factor in [0.7, 1.3].
        noisy = sorted(base, key=lambda i: -intervals[i].size * rng.uniform(0.7, 1.3))
        consider(f"size+noise#{k}/best-fit", noisy, True)
        if best.size <= bound:
            break
    if best.size > bound and len(intervals) > 1:
        _local_search(intervals, best, bound, align, rng, tried)
    best.tried = tried
    return best


def _local_search(intervals, best: Packing, bound: int, align: int, rng, tried) -> None:
    """Improve ``best`` in place: move one tensor earlier in the placement order, keep if not worse.

    The placement order is recovered from the best packing (by offset, then size); the number of
    moves is limited so that the work stays near 2e6 overlap tests.
    """
    n = len(intervals)
    order = sorted(range(n), key=lambda i: (best.offsets[i], -intervals[i].size))
    moves = max(8, min(400, 2_000_000 // (n * n)))
    cur = best.size
    for _ in range(moves):
        i, j = sorted(rng.sample(range(n), 2))
        cand = order[:i] + [order[j]] + order[i:j] + order[j + 1 :]
        offs = _place(intervals, cand, True, align)
        size = max(o + align_up(iv.size, align) for o, iv in zip(offs, intervals))
        if size <= cur:
            order, cur = cand, size
            if size < best.size:
                best.offsets, best.size, best.strategy = offs, size, "local-search/best-fit"
                if size <= bound:
                    break
    tried["local-search/best-fit"] = cur


# ----------------------------------------------------------------------------------------------
# In-place reuse
# ----------------------------------------------------------------------------------------------
def _identity_point(region, iter_vars) -> bool:
    """True if a BufferRegion is exactly the single point ``[v0, v1, ...]`` of the block vars."""
    if len(region.region) != len(iter_vars):
        return False
    for rng, iv in zip(region.region, iter_vars):
        ext = rng.extent
        if not (isinstance(ext, tvm.tirx.IntImm) and int(ext.value) == 1):
            return False
        if not rng.min.same_as(iv.var):
            return False
    return True


def _stmt_children(stmt):
    """Child statements of the statement kinds a scheduled PrimFunc uses; None for others."""
    t = tvm.tirx
    if isinstance(stmt, t.SeqStmt):
        return list(stmt.seq)
    if isinstance(stmt, t.For):
        return [stmt.body]
    if isinstance(stmt, tvm.s_tir.SBlockRealize):
        return [stmt.block]
    if isinstance(stmt, t.IfThenElse):
        return [stmt.then_case] + ([stmt.else_case] if stmt.else_case is not None else [])
    if isinstance(stmt, (t.LetStmt, t.AttrStmt, t.AllocBuffer, t.DeclBuffer)):
        return [stmt.body] if getattr(stmt, "body", None) is not None else []
    if isinstance(stmt, (t.BufferStore, t.Evaluate, t.Bind)):
        return []
    return None


def inplace_safe(prim: tvm.tirx.PrimFunc, in_pos: int, out_pos: int) -> str | None:
    """Why output parameter ``out_pos`` may NOT share memory with input ``in_pos`` (None: it may).

    Safe when the two buffers have the same static shape and dtype and every block that touches
    either is data-parallel, reads the input only at its own iteration point ``in[v]``, writes the
    output only at ``out[v]`` (a single store), and no other block reads the input or touches the
    output: each block instance then reads ``in[v]`` before it overwrites that same element, and
    no one reads it again. Block access regions are TVM's own (a superset of the real accesses).
    """
    try:
        din, dout = prim.params[in_pos], prim.params[out_pos]
        shape_in, shape_out = list(din.shape), list(dout.shape)
    except (IndexError, AttributeError):
        return "parameter is not a buffer"
    if str(din.dtype) != str(dout.dtype) or len(shape_in) != len(shape_out):
        return "dtype or rank differs"
    for a, b in zip(shape_in, shape_out):
        static = isinstance(a, tvm.tirx.IntImm) and isinstance(b, tvm.tirx.IntImm)
        if not static or int(a.value) != int(b.value):
            return "shapes differ or are symbolic"
    stack, n_readers, root = [prim.body], 0, True
    while stack:
        stmt = stack.pop()
        if isinstance(stmt, tvm.s_tir.SBlock):
            reads = [r for r in stmt.reads if r.source.same_as(din)]
            writes = [w for w in stmt.writes if w.source.same_as(dout)]
            touches_in_w = any(w.source.same_as(din) for w in stmt.writes)
            touches_out_r = any(r.source.same_as(dout) for r in stmt.reads)
            if touches_in_w or touches_out_r:
                return f"block {stmt.name_hint} writes the input or reads the output"
            if reads or writes:
                if root and not stmt.iter_vars:
                    return "root block accesses the buffers"
                if not (reads and writes):
                    return f"block {stmt.name_hint} reads the input without writing the output"
                if stmt.init is not None or any(iv.iter_type != 0 for iv in stmt.iter_vars):
                    return f"block {stmt.name_hint} is a reduction"
                if not all(_identity_point(r, stmt.iter_vars) for r in reads + writes):
                    return f"block {stmt.name_hint} accesses another element"
                body = stmt.body
                if not (isinstance(body, tvm.tirx.BufferStore) and body.buffer.same_as(dout)):
                    return f"block {stmt.name_hint} body is not a single store to the output"
                n_readers += 1
            root = False
            children = [stmt.body] + ([stmt.init] if stmt.init is not None else [])
        else:
            children = _stmt_children(stmt)
            if children is None:
                return f"unsupported statement {type(stmt).__name__}"
        stack.extend(children)
    return None if n_readers else "no block reads the input"


def inplace_pairs(mod: tvm.IRModule, life, plannable: set) -> list[tuple[int, int, str]]:
    """(input tensor, output tensor, reason) pairs where the output may take the input's bytes.

    The input must die at the kernel call that first writes the output, appear in exactly one
    argument of that call, and the kernel must pass :func:`inplace_safe` for that pair.
    """
    first_use: dict[int, int] = {}
    for j, used in enumerate(life.uses):
        for t in used:
            if j > life.tensors[t].index:
                first_use.setdefault(t, j)
    pairs, taken = [], set()
    for j, b in enumerate(life.bindings):
        call = b.value
        if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.GlobalVar)):
            continue
        prim = mod[call.op]
        if not isinstance(prim, tvm.tirx.PrimFunc):
            continue
        arg_tokens = []
        for a in call.args:
            ids = set()
            for v in relax.analysis.free_vars(a):
                ids |= _alias_ids(life, v)
            arg_tokens.append(ids)
        outs = [
            k
            for k, ids in enumerate(arg_tokens)
            if len(ids) == 1
            and first_use.get(next(iter(ids))) == j
            and next(iter(ids)) in plannable
        ]
        for ko in outs:
            o = next(iter(arg_tokens[ko]))
            for ki, ids in enumerate(arg_tokens):
                if ki == ko or len(ids) != 1:
                    continue
                i = next(iter(ids))
                if i in taken or i == o or i not in plannable or life.tensors[i].end != j:
                    continue
                if sum(i in x for x in arg_tokens) != 1:
                    continue
                if life.tensors[i].nbytes != life.tensors[o].nbytes:
                    continue
                why = inplace_safe(prim, ki, ko)
                if why is None:
                    taken.add(i)
                    pairs.append(
                        (
                            i,
                            o,
                            f"{call.op.name_hint} writes {life.tensors[o].var.name} "
                            f"over {life.tensors[i].var.name}",
                        )
                    )
                    break
                logger.debug(
                    "no in-place for %s over %s in %s: %s",
                    life.tensors[o].var.name,
                    life.tensors[i].var.name,
                    call.op.name_hint,
                    why,
                )
    return pairs


def _alias_ids(life, var) -> set:
    # Tensors a variable may hold: recomputed from the recorded uses of its defining binding.
    return life.var_tensors.get(var, set())


# ----------------------------------------------------------------------------------------------
# The pass
# ----------------------------------------------------------------------------------------------
@dataclass
class FunctionPlan:
    """What the planner decided for one function (for reports and tests)."""

    name: str
    arena: int = 0
    bound: int = 0
    strategy: str = ""
    planned: int = 0
    order: str = ""  # the execution-order decision and its reason
    inplace: list[str] = field(default_factory=list)  # in-place reuses made, with reasons
    split: str = ""  # why a second arena was made (split_outputs)
    runtime_peak: int = 0  # estimated bytes held at run time, arenas plus returned tensors
    fallback: list[str] = field(default_factory=list)  # "tensor: reason" or "function: reason"


@tvm.transform.module_pass(opt_level=0, name="FluidMLMemoryPlan")
class FluidMLMemoryPlan:
    """Plan every Relax function's intermediates into one 64-byte aligned arena.

    Parameters
    ----------
    verify
        Run :func:`memory_verify.check_module` on the result; a bad plan raises.
    random_tries
        Extra randomly perturbed greedy-by-size orders tried when no heuristic reaches the
        live-set bound.
    reorder
        Choose a memory-aware execution order first (:mod:`memory_order`).
    inplace
        Let an elementwise kernel's output take the bytes of an input that dies at that call
        (:func:`inplace_safe` decides from the kernel's TensorIR).
    split_outputs
        Consider putting the tensors still live when the first returned tensor is allocated into
        a second arena, so that the main arena is freed before the outputs exist; kept when the
        estimated run-time peak it saves (arenas plus returned tensors) exceeds the planned bytes
        it adds. ``False``: always one arena; ``"always"``: split whenever possible.
    stock_fallback
        Run ``StaticPlanBlockMemory`` afterwards for what this pass leaves unplanned (True in the
        pipeline; tests may switch it off to look at the raw result).
    """

    def __init__(
        self,
        verify: bool = False,
        random_tries: int = 16,
        stock_fallback: bool = True,
        reorder: bool = True,
        inplace: bool = True,
        split_outputs: bool | str = True,
    ):
        self.split_outputs = split_outputs
        self.inplace = inplace
        self.verify = verify
        self.reorder = reorder
        self.random_tries = random_tries
        self.stock_fallback = stock_fallback
        self.plans: dict[str, FunctionPlan] = {}

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.plans = {}
        # IRModule.__setitem__ mutates in place: never touch the caller's module.
        mod = mod.clone()
        for gv in relax_functions(mod):
            func = self._plan_function(mod, gv)
            if func is not None:
                mod[gv] = func
        if self.stock_fallback:
            mod = relax.transform.StaticPlanBlockMemory()(mod)
        if self.verify:
            from .memory_verify import check_module

            check_module(mod)
        return mod

    def _plan_function(self, mod: tvm.IRModule, gv) -> relax.Function | None:
        name = gv.name_hint
        plan = self.plans[name] = FunctionPlan(name)
        func = mod[gv]
        life = collect_lifetimes(mod, gv)
        if life.unsupported is None and any(
            isinstance(b, relax.DataflowBlock) for b in func.body.blocks
        ):
            life.unsupported = "dataflow block (expected ToNonDataflow before the memory slot)"
        if life.unsupported:
            plan.fallback.append(f"function: {life.unsupported}")
            logger.debug("%s: left to StaticPlanBlockMemory: %s", name, life.unsupported)
            return None
        cands = [("original", func)]
        if self.reorder:
            more, why = candidate_orders(mod, func, life)
            cands += more
            logger.debug("%s: %s", name, why)
        best, bounds = None, {}
        for order_name, f in cands:
            c = self._candidate(mod, gv, f, order_name, life if f is func else None)
            logger.debug(
                "%s: order %s: bound %d with %d in-place", name, order_name, c.bound, len(c.inplace)
            )
            bounds[order_name] = c.bound
            if best is None or c.bound < best.bound:
                best = c
        plan.order = f"order {best.order}: in-place-aware live-set bounds {bounds}"
        plan.fallback += best.fallback
        plan.inplace = best.inplace
        for msg in best.fallback:
            logger.debug("%s: left to StaticPlanBlockMemory: %s", name, msg)
        if not best.intervals:
            return best.func if best.func is not func else None
        func, life, members, roots, intervals = (
            best.func,
            best.life,
            best.members,
            best.roots,
            best.intervals,
        )
        # Arenas: one, or a second ("tail") arena for the tensors still live when the first
        # returned tensor is allocated, so that the main arena is freed before the outputs exist.
        outs = [
            (t.index, t.nbytes)
            for t in life.tensors
            if t.escaped == "returned by the function" and t.nbytes is not None
        ]
        p0 = min((i for i, _ in outs), default=None)
        options = [[list(range(len(intervals)))]]
        if self.split_outputs and p0 is not None:
            body = [k for k, iv in enumerate(intervals) if iv.end < p0]
            tail = [k for k, iv in enumerate(intervals) if iv.end >= p0]
            if body and tail:
                options.append([body, tail])
        layouts = []
        for parts in options:
            packs = [pack([intervals[k] for k in part], ALIGN, self.random_tries) for part in parts]
            peak = _runtime_peak(parts, packs, intervals, outs)
            layouts.append((parts, packs, peak))
            logger.debug(
                "%s: %d arena(s) %s: estimated run-time peak %d",
                name,
                len(parts),
                [x.size for x in packs],
                peak,
            )
        best_layout = layouts[0]
        if len(layouts) > 1:
            # Split only when the run-time peak it saves exceeds the planned bytes it adds.
            one, two = layouts
            saved = one[2] - two[2]
            added = sum(x.size for x in two[1]) - one[1][0].size
            if self.split_outputs == "always" or saved > added:
                best_layout = two
        parts, packs, plan.runtime_peak = best_layout
        if len(parts) > 1:
            plan.split = (
                f"{len(parts[1])} tensors live at the first output's allocation "
                f"(binding {p0}) in a second arena: estimated run-time peak "
                f"{plan.runtime_peak} instead of one arena's"
            )
            logger.debug("%s: %s", name, plan.split)
        where, sizes, strategies = {}, [], []
        for a, (part, packing) in enumerate(zip(parts, packs)):
            sizes.append(packing.size)
            strategies.append(packing.strategy)
            for k, off in zip(part, packing.offsets):
                for m in members[roots[k]]:
                    where[life.tensors[m].index] = (a, off)
        plan.arena, plan.strategy, plan.planned = sum(sizes), "+".join(strategies), best.planned
        plan.bound = best.bound
        logger.debug(
            "%s: %d tensors (%d in-place) in %d arena(s) of %s bytes (live-set bound %d) by %s",
            name,
            best.planned,
            len(plan.inplace),
            len(sizes),
            sizes,
            plan.bound,
            plan.strategy,
        )
        return _rewrite(func, where, sizes)

    def _candidate(self, mod, gv, func, order_name, life=None) -> SimpleNamespace:
        """Lifetimes, in-place groups and live-set bound of ``func`` in its binding order."""
        life = life or collect_lifetimes(mod, gv, func)
        c = SimpleNamespace(func=func, life=life, order=order_name, fallback=[], inplace=[])
        chosen = []
        for t in life.tensors:
            if t.kind != "builtin":
                continue
            why = None
            if t.escaped:
                why = t.escaped
            elif t.nbytes is None:
                why = "symbolic shape"
            elif t.scope != "global":
                why = f"storage scope {t.scope}"
            elif t.device_index != 0:
                why = f"runtime device index {t.device_index}"
            if why:
                c.fallback.append(f"{t.var.name}: {why}")
            else:
                chosen.append(t)
        ids = {id(t): k for k, t in enumerate(life.tensors)}
        plannable = {ids[id(t)] for t in chosen}
        group = {k: k for k in plannable}  # in-place: output tensor -> tensor whose bytes it takes
        if self.inplace and plannable:
            for i, o, why in inplace_pairs(mod, life, plannable):
                group[o] = group[i]
                c.inplace.append(why)
        c.members = {}
        for k in sorted(plannable):
            c.members.setdefault(group[k], []).append(k)
        c.roots = sorted(c.members)
        c.intervals = []
        for r in c.roots:
            ts = [life.tensors[k] for k in c.members[r]]
            size = max(t.nbytes for t in ts)
            c.intervals.append(Interval(size, min(t.start for t in ts), max(t.end for t in ts)))
        c.bound = live_bound(c.intervals)
        c.planned = len(chosen)
        return c


def _runtime_peak(parts, packs, intervals, outs) -> int:
    """Estimated bytes held at run time: every arena from its first tensor's start (arena 0 from
    the top) to its last tensor's end, plus every returned tensor from its allocation on."""
    events = []
    for a, (part, packing) in enumerate(zip(parts, packs)):
        start = 0 if a == 0 else min(intervals[k].start for k in part)
        end = max(intervals[k].end for k in part)
        events += [(start, packing.size), (end + 1, -packing.size)]
    events += [(i, n) for i, n in outs]
    acc = best = 0
    for _, d in sorted(events, key=lambda e: (e[0], e[1])):
        acc += d
        best = max(best, acc)
    return best


def _rewrite(func: relax.Function, where: dict, sizes: list[int]) -> relax.Function:
    """Rewrite planned allocs: ``where[binding index] = (arena, offset)``.

    Arena 0 is allocated at the top of the function, any other right before its first tensor.
    """
    bb = relax.BlockBuilder()
    arenas, first = [], {}
    for a, size in enumerate(sizes):
        call = bb.normalize(
            relax.op.memory.alloc_storage(relax.ShapeExpr([size]), 0, "global", "uint8")
        )
        name = "fluidml_arena" if a == 0 else f"fluidml_arena{a}"
        arenas.append(relax.VarBinding(relax.Var(name, call.ty), call))
    for index, (a, _) in sorted(where.items()):
        first.setdefault(a, index)
    blocks, index = [], 0
    for bi, block in enumerate(func.body.blocks):
        new = [arenas[0]] if bi == 0 else []
        for b in block.bindings:
            if index in where:
                a, off = where[index]
                if a and first[a] == index:
                    new.append(arenas[a])
                call, arena = b.value, arenas[a].var
                tensor = bb.normalize(
                    relax.op.memory.alloc_tensor(arena, off, call.args[0], call.args[1], 0)
                )
                if off == 0:
                    new.append(relax.VarBinding(b.var, tensor))
                else:
                    raw = relax.Var(b.var.name + "_at", tensor.ty)
                    new.append(relax.VarBinding(raw, tensor))
                    new.append(
                        relax.VarBinding(
                            b.var, bb.normalize(relax.op.memory.ensure_zero_offset(raw))
                        )
                    )
            else:
                new.append(b)
            index += 1
        blocks.append(relax.BindingBlock(new))
    body = relax.SeqExpr(blocks, func.body.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
