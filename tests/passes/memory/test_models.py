"""The memory planner on small ONNX models: numerics vs ONNX Runtime with the planner on, planned
bytes vs the stock StaticPlanBlockMemory and the live-set lower bound, and one hand-checked MLP."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from memory_models import (
    MODELS,
    OPTS,
    TARGET,
)
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm.options import Options
from fluidml_tvm.passes.memory import FluidMLMemoryPlan
from fluidml_tvm.pipeline import get_pipeline, lower_to_memory_slot
from fluidml_tvm.tools.memory_report import memory_report


def _input(model):
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(1).standard_normal(dims).astype("float32")


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


