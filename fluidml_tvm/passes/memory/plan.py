"""How one Relax function is planned (the memory stage's work; the contract is in :mod:`.stage`).

Lifetimes (:mod:`.lifetimes`), candidate execution orders (:mod:`.order`), in-place reuse
(:mod:`.inplace`), packing into one or two arenas (:mod:`.pack`), and the rewrite to
``R.memory.alloc_storage`` / ``alloc_tensor(arena, offset)``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

import tvm
from tvm import relax

from .concat import in_place_concats
from .inplace import inplace_pairs
from .lifetimes import collect_lifetimes
from .order import candidate_orders
from .pack import ALIGN, Interval, live_bound, pack

logger = logging.getLogger("fluidml_tvm.memory")

# A second arena for the outputs' tail is made only while all arenas together stay within this
# factor of the live-set bound (the planner's 1.05x goal). On GPT-NeoX-small the tail arena saves
# 1.31 MB of the estimated run-time peak (26.02 vs 27.33 MB, the 25.8 MB logits included) and
# adds 0.26 MB planned (1.167x the bound): one arena is kept (benchmarks/results/memory.md).
SPLIT_SLACK = 1.05



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
    split: str = ""  # why a second arena was made (split_outputs); empty: one arena
    split_decision: str = ""  # the numbers behind making (or not making) a second arena
    runtime_peak: int = 0  # estimated bytes held at run time, arenas plus returned tensors
    fallback: list[str] = field(default_factory=list)  # "tensor: reason" or "function: reason"
    concats: list[str] = field(default_factory=list)  # per concat kernel: in place or copied, why


def plan_function(mod: tvm.IRModule, gv, cfg) -> tuple[relax.Function | None, FunctionPlan]:
    """Plan one Relax function: ``(new function or None, what was decided)``. ``cfg`` holds the
    switches (``reorder``, ``inplace``, ``split_outputs``, ``random_tries``) of
    :class:`.stage.FluidMLMemoryPlan`."""
    name = gv.name_hint
    plan = FunctionPlan(name)
    func = mod[gv]
    life = collect_lifetimes(mod, gv)
    if life.unsupported is None and any(
        isinstance(b, relax.DataflowBlock) for b in func.body.blocks
    ):
        life.unsupported = "dataflow block (expected ToNonDataflow before the memory slot)"
    if life.unsupported:
        plan.fallback.append(f"function: {life.unsupported}")
        logger.debug("%s: left to StaticPlanBlockMemory: %s", name, life.unsupported)
        return None, plan
    if getattr(cfg, "concat", False):
        written, plan.concats = in_place_concats(mod, func, life)
        if written is not None:
            func = written
            life = collect_lifetimes(mod, gv, func)
    cands = [("original", func)]
    if cfg.reorder:
        more, why = candidate_orders(mod, func, life)
        cands += more
        logger.debug("%s: %s", name, why)
    best, bounds = None, {}
    for order_name, f in cands:
        c = _candidate(cfg, mod, gv, f, order_name, life if f is func else None)
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
        return (best.func if best.func is not func else None), plan
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
    if cfg.split_outputs and p0 is not None:
        body = [k for k, iv in enumerate(intervals) if iv.end < p0]
        tail = [k for k, iv in enumerate(intervals) if iv.end >= p0]
        if body and tail:
            options.append([body, tail])
    layouts = []
    for parts in options:
        packs = [pack([intervals[k] for k in part], ALIGN, cfg.random_tries) for part in parts]
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
        # Split when the run-time peak it saves exceeds the planned bytes it adds, and the
        # arenas stay within SPLIT_SLACK of the live-set bound ("always": whenever possible).
        one, two = layouts
        saved = one[2] - two[2]
        total = sum(x.size for x in two[1])
        added = total - one[1][0].size
        within = total <= SPLIT_SLACK * best.bound
        take = cfg.split_outputs == "always" or (saved > added and within)
        plan.split_decision = (
            f"second arena for the {len(two[0][1])} tensors live at the first output's "
            f"allocation: saves {saved} bytes of estimated run-time peak, adds {added} planned "
            f"bytes ({total / max(best.bound, 1):.3f}x the live-set bound); "
            + ("split" if take else
               "kept one arena (" + ("over " + f"{SPLIT_SLACK}x the bound"
                                     if not within else "saves less than it adds") + ")")
        )
        logger.debug("%s: %s", name, plan.split_decision)
        if take:
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
    return _rewrite(func, where, sizes), plan

def _candidate(cfg, mod, gv, func, order_name, life=None) -> SimpleNamespace:
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
    if cfg.inplace and plannable:
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
