"""Planned arena vs stock planner vs live-set bound, per function (benchmarks/bench_memory.py)."""

from __future__ import annotations

import tvm
from tvm import relax

from ..passes.memory import FluidMLMemoryPlan
from ..passes.memory.lifetimes import live_set_lower_bound, planned_bytes
from ..pipeline import lower_to_memory_slot


def memory_report(mod: tvm.IRModule, target, options=None, lowered: bool = False) -> dict:
    """Planned arena vs stock planner vs live-set bound, per function.

    ``mod`` is an imported module (or, with ``lowered=True``, one already at the memory slot).
    Returns ``{func: {"planned", "stock", "bound", "bound_planned_order", ...}}`` in bytes;
    ``bound`` is the live-set lower bound of the original binding order, ``bound_planned_order``
    that of the order the planner emitted (in-place handovers counted once),
    ``planned_one_arena`` the planned bytes without the output split, and
    ``runtime_peak_estimate`` the planner's estimate of arenas plus returned tensors held.
    """
    before = mod if lowered else lower_to_memory_slot(mod, target, options)
    planner = FluidMLMemoryPlan(verify=True)
    planned = planner(before)
    single = planned_bytes(FluidMLMemoryPlan(split_outputs=False)(before))
    stock = relax.transform.StaticPlanBlockMemory()(before)
    pb, sb = planned_bytes(planned), planned_bytes(stock)
    b0, b1 = live_set_lower_bound(before), live_set_lower_bound(planned)
    out = {}
    for name in pb:
        plan = planner.plans.get(name)
        out[name] = {
            "planned": pb[name],
            "stock": sb.get(name, 0),
            "bound": b0.get(name, 0),
            "bound_planned_order": b1.get(name, 0),
            "strategy": plan.strategy if plan else "",
            "planned_one_arena": single.get(name, 0),
            "runtime_peak_estimate": plan.runtime_peak if plan else 0,
            "split": plan.split if plan else "",
            "split_decision": plan.split_decision if plan else "",
            "order": plan.order if plan else "",
            "inplace": len(plan.inplace) if plan else 0,
            "fallback": list(plan.fallback) if plan else [],
        }
    return out
