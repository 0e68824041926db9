"""FluidMLResidualOrder: the rewrite, the measured decision, numerics against ONNX Runtime."""

import numpy as np
import onnxruntime as ort
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm.decisions import from_module
from fluidml_tvm.options import Options
from fluidml_tvm.passes.residual_order import FluidMLResidualOrder, swap_sums
from fluidml_tvm.pipeline import get_pipeline
from fluidml_tvm.tools import zoo

TARGET = tvm.target.Target({"kind": "llvm"})
RNG = np.random.default_rng(0)
WA, WF = (RNG.standard_normal((16, 16)).astype("float32") for _ in range(2))


def _module(swapped: bool):
    """x + (c @ WA) + (h @ WF); ``swapped``: the form the pass writes."""
    bb = relax.BlockBuilder()
    x, c, h = (relax.Var(n, relax.TensorType((8, 16), "float32")) for n in "xch")
    with bb.function("main", [x, c, h]):
        with bb.dataflow():
            a = bb.emit(relax.op.matmul(c, relax.const(WA)))
            if swapped:
                f = bb.emit(relax.op.matmul(h, relax.const(WF)))
                s1 = bb.emit(relax.op.add(x, a))
                out = bb.emit_output(relax.op.add(f, s1))
            else:
                s1 = bb.emit(relax.op.add(x, a))
                f = bb.emit(relax.op.matmul(h, relax.const(WF)))
                out = bb.emit_output(relax.op.add(s1, f))
        bb.emit_func_output(out)
    return bb.get()


def test_swap_rewrites_the_sum_and_moves_the_inner_add():
    after, n = swap_sums(_module(False))
    assert n == 1
    tvm.ir.assert_structural_equal(after, _module(True), map_free_vars=True)
    again, n2 = swap_sums(_module(True))  # add(F, s1): F is not an add of two tensors
    assert n2 == 0 and again.same_as(_module(True)) is False


def test_decision_is_measured_and_reported():
    p = FluidMLResidualOrder(TARGET)
    out = p(_module(False))
    assert "1 residual sums" in p.decision and "bytes as written" in p.decision
    (record,) = from_module(out, "residual_order")
    assert record.data["bound_as_written"] > 0 and record.reason == p.decision


def test_tiny_gpt_neox_swapped_lower_bound_and_matches_ort():
    model = zoo.build("gpt-neox", size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    mod = from_onnx(model, keep_params_in_input=False)
    p = FluidMLResidualOrder(TARGET)
    p(mod)
    kept, swapped = p.bounds
    assert "2 residual sums" in p.decision and f"{kept} bytes as written" in p.decision
    assert p.decision.endswith("swapped" if swapped < kept else "kept as written")
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for on in (True, False):
        opts = Options(cost="analytic", verify=True, residual_order=on)
        ex = tvm.compile(mod, TARGET, relax_pipeline=get_pipeline(TARGET, opts))
        out = relax.VirtualMachine(ex, tvm.cpu())["main"](
            tvm.runtime.tensor(feeds["input_ids"])).numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
