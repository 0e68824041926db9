"""Invariant tests of the memory planner on many random cases (hypothesis).

Abstract lifetime sets are packed by :func:`memory_plan.pack` and checked by the independent
:func:`memory_verify.check_intervals`; random DAGs are built as post-CallTIRRewrite Relax IR,
planned by the pass and checked by the IR verifier.
"""

from __future__ import annotations

import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import relax

from fluidml_tvm.passes.memory_analysis import live_set_lower_bound
from fluidml_tvm.passes.memory_plan import (
    ALIGN,
    FluidMLMemoryPlan,
    Interval,
    align_up,
    live_bound,
    pack,
)
from fluidml_tvm.passes.memory_verify import check_intervals, verify_module

intervals_st = st.lists(
    st.tuples(st.integers(1, 5000), st.integers(0, 60), st.integers(0, 20)).map(
        lambda t: Interval(t[0], t[1], t[1] + t[2])
    ),
    min_size=0,
    max_size=40,
)


@settings(max_examples=2500, deadline=None)
@given(intervals_st)
def test_random_lifetimes_pack_without_overlap(ivs):
    p = pack(ivs, random_tries=2)
    sized = [(align_up(iv.size, ALIGN), iv.start, iv.end) for iv in ivs]
    assert check_intervals(sized, p.offsets, p.size) == []
    assert p.size >= live_bound(ivs, ALIGN)  # nobody beats the live-set bound
    assert p.size <= sum(s for s, _, _ in sized)  # never worse than no reuse at all


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=30))
def test_chain_reaches_the_bound(sizes):
    # A chain: tensor i lives from step i to step i+1 (read by the next op). Greedy by breadth
    # or by size must reach the live-set bound exactly on two-at-a-time lifetimes.
    ivs = [Interval(s, i, i + 1) for i, s in enumerate(sizes)]
    assert pack(ivs).size == live_bound(ivs, ALIGN)


def _kernel():
    # A PrimFunc the random graphs call in destination-passing style; never run.
    @tvm.script.ir.ir_module
    class M:
        @tvm.script.tirx.prim_func(private=True)
        def k(a: tvm.script.tirx.handle):
            tvm.script.tirx.evaluate(0)

    return M["k"]


def build_dag(spec) -> tvm.IRModule:
    """Post-CallTIRRewrite IR of a random DAG: ``spec`` = [(n_elems, [input indices]), ...].

    Node 0 is the function input; each op allocates its output with ``R.builtin.alloc_tensor``
    and calls an extern kernel with (inputs..., output). The last node is returned.
    """
    x = relax.Var("x", relax.TensorType([16], "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        vals = [x]
        for n, ins in spec:
            out = bb.emit(
                relax.op.builtin.alloc_tensor(relax.ShapeExpr([n]), "float32", 0), name_hint="alloc"
            )
            args = [vals[i % len(vals)] for i in ins] + [out]
            bb.emit(relax.Call(relax.ExternFunc("kernel"), args))
            vals.append(bb.emit(out, name_hint="lv"))
        bb.emit_func_output(vals[-1])
    return bb.get()


dag_st = st.lists(
    st.tuples(st.integers(1, 2048), st.lists(st.integers(0, 10**6), min_size=1, max_size=3)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag_st)
def test_random_dags_plan_and_verify(spec):
    mod = build_dag(spec)
    bound = live_set_lower_bound(mod)["main"]
    planner = FluidMLMemoryPlan(stock_fallback=False)
    planned = planner(mod)
    assert verify_module(planned) == []
    plan = planner.plans["main"]
    if plan.planned:
        assert plan.bound == bound
        assert plan.arena >= bound
        # The planned module keeps the binding order: its bound is the same.
        assert live_set_lower_bound(planned)["main"] == bound
    # The returned tensor is never planned into the arena.
    assert any("returned" in f for f in plan.fallback)
