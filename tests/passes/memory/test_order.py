"""Memory-aware execution orders (passes/memory/order.py)."""

from __future__ import annotations

from memory_cases import build_dag, kernel_calls
from memory_models import OPTS, TARGET, two_branches
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm.passes.memory import FluidMLMemoryPlan
from fluidml_tvm.passes.memory.lifetimes import (
    live_set_lower_bound,
    planned_bytes,
)
from fluidml_tvm.passes.memory.verify import verify_module
from fluidml_tvm.pipeline import lower_to_memory_slot


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
    assert kernel_calls(planned) == kernel_calls(mod)


def test_reorder_lowers_the_bound_and_keeps_numerics():
    # two_branches lists a1, b1 before their consumers: the depth-first order holds one wide
    # tensor at a time (4 x 256 fp32 = 4096 B) instead of two.
    before = lower_to_memory_slot(
        from_onnx(two_branches(), keep_params_in_input=False), TARGET, OPTS
    )
    planner = FluidMLMemoryPlan(verify=True)
    planned = planner(before)
    assert live_set_lower_bound(before)["main"] == 2 * 4096 + 128
    assert planner.plans["main"].order.startswith("order dfs")
    assert planned_bytes(planned)["main"] == 4096 + 128
    no_reorder = FluidMLMemoryPlan(reorder=False)(before)
    assert planned_bytes(no_reorder)["main"] == 2 * 4096 + 128
