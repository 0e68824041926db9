"""Planning one function (passes/memory/plan.py): arenas, the output split."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_cases import build_dag, dag_st, kernel_calls
from memory_models import OPTS, TARGET
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm.passes.memory import FluidMLMemoryPlan
from fluidml_tvm.passes.memory.lifetimes import (
    live_set_lower_bound,
    planned_bytes,
)
from fluidml_tvm.passes.memory.verify import verify_module
from fluidml_tvm.pipeline import lower_to_memory_slot


def test_output_split_lowers_runtime_peak_for_large_outputs():
    # GPT-NeoX's logits (16 x 512 fp32 = 32 KiB) are as large as all its intermediates: with one
    # arena they coexist with the whole arena; a second small arena for the final LayerNorm lets
    # the main arena go before the logits are allocated.
    from fluidml_tvm.tools import zoo

    mod = from_onnx(zoo.build("gpt-neox", size="tiny", seed=0), keep_params_in_input=False)
    before = lower_to_memory_slot(mod, TARGET, OPTS)
    split = FluidMLMemoryPlan(verify=True, split_outputs="always")
    single = FluidMLMemoryPlan(split_outputs=False)
    planned_split, planned_single = split(before), single(before)
    assert split.plans["main"].split and not single.plans["main"].split
    assert planned_split["main"].script().count("R.memory.alloc_storage") == 2
    saved = single.plans["main"].runtime_peak - split.plans["main"].runtime_peak
    added = planned_bytes(planned_split)["main"] - planned_bytes(planned_single)["main"]
    assert saved > added > 0
    # The default splits only while the arenas stay within 1.05x of the live-set bound.
    default = FluidMLMemoryPlan(verify=True)
    planned_default = planned_bytes(default(before))["main"]
    plan = default.plans["main"]
    assert f"saves {saved} bytes" in plan.split_decision
    if plan.split:
        assert planned_default <= 1.05 * plan.bound
    else:
        assert "kept one arena" in plan.split_decision
        assert planned_default == planned_bytes(planned_single)["main"]


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
    assert kernel_calls(planned) == kernel_calls(mod)
