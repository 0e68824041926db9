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

from fluidml_tvm.passes.memory import FluidMLMemoryPlan
from fluidml_tvm.passes.memory.lifetimes import live_set_lower_bound
from fluidml_tvm.passes.memory.pack import ALIGN, Interval, align_up, live_bound, pack
from fluidml_tvm.passes.memory.verify import check_intervals, verify_module

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


# Two GPT-NeoX layers after the QKV split and the residual rewrite, in units of 4 KiB (the real
# unit is 0.26 MB): a residual stream alternating between two tensors, the 4-unit MLP activation
# that must sit between the residual and the LayerNorm output, 2-unit attention scores. Every
# greedy order packs it into 7 units; the live-set bound is 6.
GPT_LAYERS = [(1 / 64, 0, 4), (1, 3, 43), (1, 6, 22), (1, 9, 13), (1, 12, 34), (1, 15, 19),
              (1, 18, 28), (1, 21, 25), (1, 24, 28), (2, 27, 31), (2, 30, 34), (1, 33, 37),
              (1, 36, 40), (1, 39, 88), (1, 42, 46), (4, 45, 49), (1, 51, 67), (1, 54, 58),
              (1, 57, 79), (1, 60, 64), (1, 63, 73), (1, 66, 70), (1, 69, 73), (2, 72, 76),
              (2, 75, 79), (1, 78, 82), (1, 81, 85), (1, 84, 105), (1, 87, 91), (4, 90, 94),
              (1, 96, 105), (1, 99, 103), (1, 102, 105)]


def test_exact_search_reaches_the_bound_where_greedy_orders_do_not():
    ivs = [Interval(int(u * 4096), a, b) for u, a, b in GPT_LAYERS]
    p = pack(ivs)
    assert p.size == live_bound(ivs, ALIGN) == 6 * 4096
    assert p.strategy == "exact/time-order"
    assert min(v for k, v in p.tried.items() if k != "exact/time-order") == 7 * 4096
    sized = [(align_up(iv.size, ALIGN), iv.start, iv.end) for iv in ivs]
    assert check_intervals(sized, p.offsets, p.size) == []


def _kernel(arity: int) -> tvm.tirx.PrimFunc:
    # An opaque PrimFunc with ``arity`` handle parameters: a kernel the planner cannot see into
    # (so no in-place reuse), called in destination-passing style; never run.
    params = [tvm.tirx.Var(f"p{i}", "handle") for i in range(arity)]
    return tvm.tirx.PrimFunc(params, tvm.tirx.Evaluate(tvm.tirx.const(0, "int32")))


def build_dag(spec, extern: bool = False) -> tvm.IRModule:
    """Post-CallTIRRewrite IR of a random DAG: ``spec`` = [(n_elems, [input indices]), ...].

    Node 0 is the function input; each op allocates its output with ``R.builtin.alloc_tensor``
    and calls a kernel with (inputs..., output): a PrimFunc of the module (the planner may then
    reorder), or with ``extern`` an extern function (order kept). The last node is returned.
    """
    x = relax.Var("x", relax.TensorType([16], "float32"))
    bb = relax.BlockBuilder()
    kernels = {n: bb.add_func(_kernel(n), f"kernel{n}") for n in range(2, 5)}
    with bb.function("main", [x]):
        vals = [x]
        for n, ins in spec:
            out = bb.emit(
                relax.op.builtin.alloc_tensor(relax.ShapeExpr([n]), "float32", 0), name_hint="alloc"
            )
            args = [vals[i % len(vals)] for i in ins] + [out]
            op = relax.ExternFunc("kernel") if extern else kernels[len(args)]
            bb.emit(relax.Call(op, args))
            vals.append(bb.emit(out, name_hint="lv"))
        bb.emit_func_output(vals[-1])
    return bb.get()


dag_st = st.lists(
    st.tuples(st.integers(1, 2048), st.lists(st.integers(0, 10**6), min_size=1, max_size=3)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag_st, st.booleans(), st.sampled_from([False, True, "always"]))
def test_random_dags_plan_and_verify(spec, extern, split):
    mod = build_dag(spec, extern)
    bound = live_set_lower_bound(mod)["main"]
    planner = FluidMLMemoryPlan(stock_fallback=False, split_outputs=split)
    planned = planner(mod)
    assert verify_module(planned) == []
    plan = planner.plans["main"]
    if plan.planned:
        # The planner only takes an order whose live-set bound is no worse than the original's,
        # and packs within 5% of the bound of the order it took (aligned sizes aside).
        assert plan.bound <= bound
        assert live_set_lower_bound(planned)["main"] == plan.bound
        assert plan.bound <= plan.arena
        if not plan.split:
            assert plan.arena <= 1.05 * plan.bound + 64 * plan.planned
        if extern:
            assert plan.order.startswith("order original")
    # The returned tensor is never planned into the arena.
    assert any("returned" in f for f in plan.fallback)
    # Same computation: the kernel calls and their arguments are the same, only moved.
    assert _kernel_calls(planned) == _kernel_calls(mod)


def _kernel_calls(mod) -> list[str]:
    out = []
    for b in mod["main"].body.blocks[0].bindings:
        v = b.value
        if isinstance(v, relax.Call) and not isinstance(v.op, tvm.ir.Op):
            out.append(f"{v.op}({', '.join(a.name for a in v.args)})")
    return sorted(out)


def test_dag_reorder_example():
    # x -> a1 (1000 floats), x -> b1 (1000), a1 -> a2, b1 -> b2, (a2, b2) -> y: listed
    # breadth-first. A depth-first order never holds a1 and b1 together.
    spec = [(1000, [0]), (1000, [0]), (10, [1]), (10, [2]), (10, [3, 4])]
    mod = build_dag(spec)
    planner = FluidMLMemoryPlan(stock_fallback=False)
    planned = planner(mod)
    assert verify_module(planned) == []
    assert live_set_lower_bound(mod)["main"] == 8000 + 40
    assert live_set_lower_bound(planned)["main"] == 4000 + 40 + 40
    assert not planner.plans["main"].order.startswith("order original")
    assert _kernel_calls(planned) == _kernel_calls(mod)
