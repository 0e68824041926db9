"""The memory planner on small ONNX models: numerics vs ONNX Runtime with the planner on, planned
bytes vs the stock StaticPlanBlockMemory and the live-set lower bound, and one hand-checked MLP."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from memory_models import bert_like, branchy, mlp, small_convnet, split_topk, two_branches, vgg_like
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
from fluidml_tvm.passes.memory_plan import FluidMLMemoryPlan, inplace_safe
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
    "two_branches": two_branches,
    "split_topk": split_topk,
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


def test_inplace_reuse_on_residual_adds():
    # branchy's residual blocks end in conv+add+relu+add kernels whose residual input dies there.
    before = lower_to_memory_slot(from_onnx(branchy(), keep_params_in_input=False), TARGET, OPTS)
    planner = FluidMLMemoryPlan(verify=True)
    with_inplace = planned_bytes(planner(before))["main"]
    without = planned_bytes(FluidMLMemoryPlan(inplace=False)(before))["main"]
    assert planner.plans["main"].inplace
    assert with_inplace < without


def test_inplace_safe_accepts_elementwise_rejects_others():
    before = lower_to_memory_slot(from_onnx(bert_like(), keep_params_in_input=False), TARGET, OPTS)
    funcs = {
        gv.name_hint: f for gv, f in before.functions.items() if isinstance(f, tvm.tirx.PrimFunc)
    }
    # residual add fused after a matmul: the residual (param 3) may be overwritten by the output
    name = next(n for n in funcs if n.startswith("fused_matmul") and n.endswith("add_add1"))
    assert inplace_safe(funcs[name], 3, len(funcs[name].params) - 1) is None
    # ... but not the matmul's own input (read by a reduction, at other elements)
    assert inplace_safe(funcs[name], 0, len(funcs[name].params) - 1) is not None
    # a transpose reads other elements than it writes
    name = next(n for n in funcs if "reshape_transpose" in n)
    assert inplace_safe(funcs[name], 0, 1) is not None


@pytest.mark.parametrize("name", ["bert", "gpt-neox", "vgg11", "resnet50", "mobilenet"])
def test_zoo_tiny_numerics_and_bytes(name):
    from fluidml_tvm.tools import zoo

    model = zoo.build(name, size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, feeds)
    mod = from_onnx(model, keep_params_in_input=False)
    ex = tvm.compile(mod, TARGET, relax_pipeline=get_pipeline(TARGET, OPTS))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    names = [i.name for i in model.graph.input if i.name in feeds]
    out = vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in names])
    outs = [out] if hasattr(out, "numpy") else list(out)
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o.numpy(), r, rtol=1e-3, atol=1e-3)
    rep = memory_report(mod, TARGET, OPTS)["main"]
    assert rep["planned"] <= rep["stock"]
    # One arena packs within 5% of the bound; the output split may add a small second arena.
    assert rep["planned_one_arena"] <= 1.05 * rep["bound_planned_order"]


@pytest.mark.parametrize("name", ["branchy", "bert_like"])
def test_with_every_stage_on(name, tmp_path, monkeypatch):
    # The planner after the schedule stage: scheduled kernels, verifier on, still exact and
    # still in place where the scheduled TensorIR allows it.
    monkeypatch.setenv("FLUIDML_TVM_CACHE", str(tmp_path))
    model = MODELS[name]()
    x = _input(model)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    opts = Options(verify=True, cost="analytic")
    mod = from_onnx(model, keep_params_in_input=False)
    before = lower_to_memory_slot(mod, TARGET, opts)
    planner = FluidMLMemoryPlan(verify=True)
    planner(before)
    assert planner.plans["main"].inplace
    ex = tvm.compile(mod, TARGET, relax_pipeline=get_pipeline(TARGET, opts))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))
    outs = [out] if hasattr(out, "numpy") else list(out)
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o.numpy(), r, rtol=1e-3, atol=1e-3)


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


def test_inplace_through_kernel_buffers():
    # ResNet's batch_norm(+add)+relu kernels compute per-channel scales from the weights into
    # buffers of their own and chain pointwise blocks through others: the conv output they read
    # may still be overwritten by their output; the convolution itself may not.
    from fluidml_tvm.tools import zoo

    mod = from_onnx(zoo.build("resnet50", size="tiny", seed=0), keep_params_in_input=False)
    before = lower_to_memory_slot(mod, TARGET, OPTS)
    funcs = {
        g.name_hint: f for g, f in before.functions.items() if isinstance(f, tvm.tirx.PrimFunc)
    }
    bn = funcs["fused_batch_norm_relu"]
    assert inplace_safe(bn, 0, len(bn.params) - 1) is None
    assert inplace_safe(bn, 1, len(bn.params) - 1) is not None  # a per-channel weight
    convs = [f for n, f in funcs.items() if n.startswith("conv2d")]
    assert convs and all(inplace_safe(f, 0, len(f.params) - 1) for f in convs)
    planner = FluidMLMemoryPlan(verify=True)
    planned = planner(before)
    assert len(planner.plans["main"].inplace) >= 5
    stock = planned_bytes(relax.transform.StaticPlanBlockMemory()(before))["main"]
    assert planned_bytes(planned)["main"] < 0.8 * stock
