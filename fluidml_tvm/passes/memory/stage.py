"""The memory stage's front door: FluidMLMemoryPlan, one arena per Relax function, in
StaticPlanBlockMemory's slot.

Contract
--------
Reads a module right after ``CallTIRRewrite``: every kernel output is an
``R.builtin.alloc_tensor``, kernels are called in destination-passing style. For each Relax
function it

0. with ``concat``, writes the inputs of each concat it can take straight into their slabs of
   its output and drops the copy (:mod:`.concat`);
1. computes each intermediate's lifetime (allocating binding .. last use of it or of any alias,
   no padding; :func:`memory_analysis.collect_lifetimes`);
2. considers other execution orders (:mod:`memory_order`: valid topological orders of the
   bindings, allocations kept right before their writer) and, in each, in-place reuse
   (:mod:`memory_inplace`: an elementwise kernel's output takes the bytes of an input that dies
   at that call, decided from the kernel's TensorIR); keeps the order with the lowest live-set
   bound, the original one on ties;
3. packs the intermediates into one arena (:func:`memory_pack.pack`: the smallest of several
   heuristics, greedy by size as FluidML/TFLite among them), every offset 64-byte aligned; with
   ``split_outputs``, a second small arena holds the tensors still live when the first returned
   tensor is allocated, when the run-time peak this saves exceeds the bytes it adds and the
   arenas stay within 1.05x of the live-set bound;
4. rewrites the function: ``R.memory.alloc_storage`` (``uint8``, the size in bytes) per arena,
   every planned tensor ``R.memory.alloc_tensor(arena, offset, shape, dtype)``; a non-zero offset
   goes through ``R.memory.ensure_zero_offset`` (kernels assume ``byte_offset == 0``; an aligned
   offset makes it a free view).

The module it is given is not modified (it works on a clone). What it does not plan, it leaves as
``R.builtin.alloc_tensor`` for the stock ``StaticPlanBlockMemory``, which runs right after it,
with the reason logged at debug level and kept in :attr:`FluidMLMemoryPlan.plans`: tensors that
escape (returned, passed to a non-kernel call), symbolic shapes (even with an upper bound),
non-global scopes or other devices, and whole functions with control flow or dataflow blocks. The
order is kept when the function calls anything whose effects the dependencies do not show.

``verify=True`` runs the independent verifier (:mod:`memory_verify`) on the result and raises
:class:`memory_verify.MemoryPlanError` on a bad plan (a ``RuntimeError`` once it has crossed the
TVM FFI).
"""

from __future__ import annotations

from dataclasses import asdict

import tvm
from tvm import relax

from ... import decisions as dec
from ...options import Options
from .lifetimes import relax_functions
from .plan import FunctionPlan, plan_function
from .verify import check_module

STAGE = "memory"


def memory_passes(target, options: Options) -> list:
    """Passes of the memory slot (StaticPlanBlockMemory's); empty keeps the stock planner."""
    return [FluidMLMemoryPlan(verify=options.verify, reorder=options.memory_reorder,
                              inplace=options.memory_inplace, split_outputs=options.memory_split,
                              concat=options.memory_concat)]


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
        it adds and the arenas stay within ``SPLIT_SLACK`` (1.05x) of the live-set bound.
        ``False``: always one arena; ``"always"``: split whenever possible.
    concat
        Write the inputs of a concat along a contiguous axis straight into their slabs of its
        output and drop the copy (:mod:`.concat`); the binding order is then kept.
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
        concat: bool = True,
    ):
        self.concat = concat
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
            func, self.plans[gv.name_hint] = plan_function(mod, gv, self)
            if func is not None:
                mod[gv] = func
        if self.stock_fallback:
            mod = relax.transform.StaticPlanBlockMemory()(mod)
        if self.verify:
            check_module(mod)
        return dec.attach(mod, STAGE, [decision(p) for p in self.plans.values()])


def decision(plan: FunctionPlan) -> dec.Decision:
    """A function's memory plan as a decision record (``--report``)."""
    if not plan.planned and plan.fallback:
        return dec.Decision(STAGE, f"function {plan.name}", "stock planner",
                            "; ".join(plan.fallback), asdict(plan))
    reason = (f"{plan.planned} tensors ({len(plan.inplace)} in-place) in {plan.arena} bytes, "
              f"live-set bound {plan.bound}; {plan.order}")
    if plan.concats:
        reason += "; concats: " + "; ".join(plan.concats)
    if plan.split:
        reason += f"; {plan.split}"
    if plan.fallback:
        reason += f"; left to StaticPlanBlockMemory: {'; '.join(plan.fallback)}"
    return dec.Decision(STAGE, f"function {plan.name}", plan.strategy or "arena", reason,
                        asdict(plan))

