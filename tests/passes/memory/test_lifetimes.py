"""Lifetimes, planned bytes and the live-set bound (passes/memory/lifetimes.py)."""

from __future__ import annotations

import pytest
from memory_models import (
    MODELS,
    OPTS,
    TARGET,
    mlp,
)
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm.passes.memory import FluidMLMemoryPlan
from fluidml_tvm.passes.memory.lifetimes import (
    live_set_lower_bound,
    memory_timeline,
    planned_bytes,
)
from fluidml_tvm.passes.memory.verify import verify_module
from fluidml_tvm.pipeline import lower_to_memory_slot
from fluidml_tvm.tools.memory_report import memory_report


@pytest.mark.parametrize("name", sorted(MODELS))
def test_planned_bytes_vs_stock_and_bound(name):
    mod = from_onnx(MODELS[name](), keep_params_in_input=False)
    before = lower_to_memory_slot(mod, TARGET, OPTS)
    planner = FluidMLMemoryPlan()
    planned = planner(before)
    assert verify_module(planned) == []
    ours = planned_bytes(planned)["main"]
    stock = planned_bytes(relax.transform.StaticPlanBlockMemory()(before))["main"]
    bound = live_set_lower_bound(planned)["main"]
    assert planner.plans["main"].planned > 0  # the arena really holds the intermediates
    assert ours <= stock
    assert bound <= ours <= 1.05 * bound
    report = memory_report(before, TARGET, OPTS, lowered=True)["main"]
    assert report["planned"] == ours and report["stock"] == stock


def test_hand_checked_mlp():
    # x[4,16] -> 32 -> 64 -> 48 -> 8. Intermediates (fp32): h1 = 4*32*4 = 512 B, h2 = 1024 B,
    # h3 = 768 B; y is returned (not in the arena). Each op reads its input while writing its
    # output, so h1+h2 and h2+h3 are live together, h1 and h3 never are:
    # arena = max(512 + 1024, 1024 + 768) = 1792 bytes, every size a multiple of 64.
    dims = (16, 32, 64, 48, 8)
    mod = from_onnx(mlp(batch=4, dims=dims), keep_params_in_input=False)
    before = lower_to_memory_slot(mod, TARGET, OPTS)
    planned = FluidMLMemoryPlan(verify=True)(before)
    h = [4 * d * 4 for d in dims[1:-1]]
    expected = max(a + b for a, b in zip(h, h[1:]))
    assert expected == 1792
    assert planned_bytes(planned) == {"main": expected}
    assert live_set_lower_bound(before) == {"main": expected}
    timeline = memory_timeline(planned, "main")
    assert max(timeline) == expected and min(timeline) >= 0
