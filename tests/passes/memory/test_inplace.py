"""In-place reuse of a dying input by an elementwise kernel (passes/memory/inplace.py)."""

from __future__ import annotations

import tvm
from memory_models import OPTS, TARGET, bert_like, branchy
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm.decisions import from_module
from fluidml_tvm.passes.memory import FluidMLMemoryPlan
from fluidml_tvm.passes.memory.inplace import inplace_safe
from fluidml_tvm.passes.memory.lifetimes import (
    planned_bytes,
)
from fluidml_tvm.pipeline import lower_to_memory_slot


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


def test_inplace_through_kernel_buffers():
    # ResNet's batch_norm(+add)+relu kernels (BatchNorm left unfolded) compute per-channel
    # scales from the weights into buffers of their own and chain pointwise blocks through
    # others: the conv output they read may still be overwritten by their output; the
    # convolution itself may not.
    import dataclasses

    from fluidml_tvm.tools import zoo

    mod = from_onnx(zoo.build("resnet50", size="tiny", seed=0), keep_params_in_input=False)
    before = lower_to_memory_slot(mod, TARGET, dataclasses.replace(OPTS, fold_batchnorm=False))
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


def test_inplace_over_a_position_vector_kernel():
    """The 1x1 position-vector kernel (conv2d_cols.schedule_pointwise_cols) fuses rows and
    columns into one axis: its residual add reads r[.., p // X, p % X] and writes y at the same
    point, one-to-one over the map - the in-place check and the verifier prove that map
    bijective (TVM's iter-map analysis) where they required the plain iteration variables, and
    ResNet-50 lost 13 of its 16 in-place reuses (5.22 -> 7.23 MB planned) when the kernel came.
    The output stays ONNX Runtime's."""
    import numpy as np
    import onnxruntime as ort
    from memory_models import pointwise_residual

    from fluidml_tvm import pipeline
    from fluidml_tvm.options import Options

    model = pointwise_residual()
    opts = Options(layout=False, verify=True, tune_budget=0)
    before = lower_to_memory_slot(from_onnx(model, keep_params_in_input=False), TARGET, opts)
    schedule = from_module(before, "schedule") or []
    assert any("vectors along it" in d.reason for d in schedule if d.choice == "conv2d"), [
        d.reason for d in schedule]
    planner = FluidMLMemoryPlan(verify=True)
    planner(before)
    assert any("over" in w for w in planner.plans["main"].inplace), planner.plans["main"].inplace
    ex = tvm.compile(from_onnx(model, keep_params_in_input=False), TARGET,
                     relax_pipeline=pipeline.get_pipeline(TARGET, opts))
    x = np.random.default_rng(5).standard_normal((1, 16, 12, 12)).astype("float32")
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
