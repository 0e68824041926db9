"""The memory stage's front door (passes/memory/stage.py): the planner in StaticPlanBlockMemory's
slot, its kill switches and decisions."""

from __future__ import annotations

from memory_models import OPTS, TARGET, bert_like
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm.decisions import from_module
from fluidml_tvm.options import Options
from fluidml_tvm.passes.memory import FluidMLMemoryPlan
from fluidml_tvm.passes.memory import memory_passes as memory_stage
from fluidml_tvm.pipeline import lower_to_memory_slot, memory_passes


def test_memory_stage_is_the_planner():
    stage = memory_stage(TARGET, OPTS)
    assert len(stage) == 1 and stage[0].info.name == "FluidMLMemoryPlan"


def test_kill_switch_keeps_stock_planner():
    off = memory_passes(TARGET, Options(schedule=False, layout=False, memory=False))
    on = memory_passes(TARGET, OPTS)
    assert [p.info.name for p in off] == ["StaticPlanBlockMemory"]
    assert [p.info.name for p in on] == ["FluidMLMemoryPlan"]


def test_planner_leaves_its_input_untouched():
    # IRModule.__setitem__ mutates in place; a planner that edited its input would make every
    # later comparison (e.g. against the stock planner on the same module) measure itself.
    before = lower_to_memory_slot(from_onnx(bert_like(), keep_params_in_input=False), TARGET, OPTS)
    text = before["main"].script()
    FluidMLMemoryPlan()(before)
    assert before["main"].script() == text
    assert "fluidml_arena" not in text


def test_each_function_plan_is_a_decision_record():
    """The stage's decisions travel with the module as data (fluidml_tvm.decisions)."""
    before = lower_to_memory_slot(from_onnx(bert_like(), keep_params_in_input=False), TARGET, OPTS)
    planner = FluidMLMemoryPlan()
    after = planner(before)
    (record,) = from_module(after, "memory")
    plan = planner.plans["main"]
    assert record.subject == "function main" and record.choice == plan.strategy
    assert record.data["arena"] == plan.arena > 0 and record.data["bound"] == plan.bound
    assert f"in {plan.arena} bytes, live-set bound {plan.bound}" in record.reason


def test_planner_switches_come_from_options():
    (p,) = memory_passes(TARGET, Options(memory_reorder=False, memory_inplace=False,
                                         memory_split=False, verify=True))
    assert (p.reorder, p.inplace, p.split_outputs, p.verify) == (False, False, False, True)
    (q,) = memory_passes(TARGET, Options())
    assert (q.reorder, q.inplace, q.split_outputs, q.verify) == (True, True, True, False)
