"""The memory planner on small ONNX models: numerics vs ONNX Runtime with the planner on, planned
bytes vs the stock StaticPlanBlockMemory and the live-set lower bound, and one hand-checked MLP."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from memory_models import bert_like, branchy, mlp, small_convnet, vgg_like
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm.options import Options
from fluidml_tvm.passes import memory_stage
from fluidml_tvm.passes.memory_analysis import (
    live_set_lower_bound,
    lower_to_memory_slot,
    memory_report,
    memory_timeline,
    planned_bytes,
)
from fluidml_tvm.passes.memory_plan import FluidMLMemoryPlan
from fluidml_tvm.passes.memory_verify import verify_module
from fluidml_tvm.pipeline import get_pipeline, memory_passes

TARGET = tvm.target.Target({"kind": "llvm"})
OPTS = Options(schedule=False, layout=False, verify=True)
MODELS = {
    "mlp": mlp,
    "convnet": small_convnet,
    "branchy": branchy,
    "bert_like": bert_like,
    "vgg_like": vgg_like,
}


def _input(model):
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(1).standard_normal(dims).astype("float32")


def test_memory_stage_is_the_planner():
    stage = memory_stage(TARGET, OPTS)
    assert len(stage) == 1 and stage[0].info.name == "FluidMLMemoryPlan"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_numerics_match_onnxruntime(name):
    model = MODELS[name]()
    x = _input(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})
    mod = from_onnx(model, keep_params_in_input=False)
    ex = tvm.compile(mod, TARGET, relax_pipeline=get_pipeline(TARGET, OPTS))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    outs = [out] if hasattr(out, "numpy") else list(out)
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o.numpy(), r, rtol=1e-4, atol=1e-4)


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
