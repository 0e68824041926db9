"""FluidMLSplitProjection: structure before/after, refusals, numerics against ONNX Runtime."""

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx
from tvm.script import relax as R

from fluidml_tvm.options import Options
from fluidml_tvm.passes.memory.lifetimes import live_set_lower_bound
from fluidml_tvm.passes.split_projection import FluidMLSplitProjection
from fluidml_tvm.pipeline import get_pipeline, lower_to_memory_slot
from fluidml_tvm.tools import zoo

TARGET = tvm.target.Target({"kind": "llvm"})
RNG = np.random.default_rng(0)
W = RNG.standard_normal((16, 24)).astype("float32")
B = RNG.standard_normal(24).astype("float32")


def _before():
    """x @ W + b viewed as [1, 8, 2, 12] (2 groups of 12 columns), cut into 3 slices of 4."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(W)))
            y = bb.emit(relax.op.add(y, relax.const(B)))
            y = bb.emit(relax.op.reshape(y, [1, 8, 2, 12]))
            q = bb.emit(relax.op.strided_slice(y, [3], [0], [4]))
            k = bb.emit(relax.op.strided_slice(y, [3], [4], [8]))
            v = bb.emit(relax.op.strided_slice(y, [3], [8], [2**63 - 1]))
            out = bb.emit_output(relax.op.add(relax.op.multiply(q, k), v))
        bb.emit_func_output(out)
    return bb.get()


def _expected():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            parts = []
            for lo in (0, 4, 8):
                cols = np.concatenate([np.arange(lo, lo + 4), 12 + np.arange(lo, lo + 4)])
                y = bb.emit(relax.op.matmul(x, relax.const(W[:, cols])))
                y = bb.emit(relax.op.add(y, relax.const(B[cols])))
                parts.append(bb.emit(relax.op.reshape(y, [1, 8, 2, 4])))
            q, k, v = parts
            out = bb.emit_output(relax.op.add(relax.op.multiply(q, k), v))
        bb.emit_func_output(out)
    return bb.get()


def test_split_structure_interleaved_groups():
    p = FluidMLSplitProjection()
    after = p(_before())
    tvm.ir.assert_structural_equal(after.without_attr("fluidml.decisions.split_projection"),
                                   _expected(), map_free_vars=True)
    assert "split - [16x24] into 3 projections" in p.report()
    assert "in each of 2 groups" in p.report()
    assert "fluidml.decisions.split_projection" in after.attrs


@tvm.script.ir_module
class WeightIsAParameter:
    @R.function
    def main(x: R.Tensor((8, 16), "float32"), w: R.Tensor((16, 24), "float32")):
        with R.dataflow():
            y = R.matmul(x, w)
            a = R.strided_slice(y, (1,), (0,), (8,))
            c = R.strided_slice(y, (1,), (8,), (24,))
            gv = R.add(a, R.strided_slice(c, (1,), (0,), (8,)))
            R.output(gv)
        return gv


def test_non_constant_weight_is_left_alone():
    after = FluidMLSplitProjection()(WeightIsAParameter)
    tvm.ir.assert_structural_equal(after.without_attr("fluidml.decisions.split_projection"),
                                   WeightIsAParameter)


def _gemm_model(starts, ends, transb=True):
    """Gemm(x, W[24, 16], b, transB=1) cut into column slices, each one a graph output."""
    rng = np.random.default_rng(1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])
    w = rng.standard_normal((24, 16) if transb else (16, 24)).astype("float32")
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(rng.standard_normal(24).astype("float32"), "b"),
             numpy_helper.from_array(np.array([1], np.int64), "ax")]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=int(transb))]
    outs = []
    for j, (s, e) in enumerate(zip(starts, ends)):
        inits += [numpy_helper.from_array(np.array([s], np.int64), f"s{j}"),
                  numpy_helper.from_array(np.array([e], np.int64), f"e{j}")]
        nodes.append(helper.make_node("Slice", ["y", f"s{j}", f"e{j}", "ax"], [f"o{j}"]))
        width = min(e, 24) - s
        outs.append(helper.make_tensor_value_info(f"o{j}", TensorProto.FLOAT, [8, width]))
    graph = helper.make_graph(nodes, "g", [x], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, feeds, opts):
    mod = from_onnx(model, keep_params_in_input=False)
    ex = tvm.compile(mod, TARGET, relax_pipeline=get_pipeline(TARGET, opts))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    return [o.numpy() for o in out] if not hasattr(out, "numpy") else [out.numpy()]


@pytest.mark.parametrize("starts,ends,transb", [
    ([0, 8], [8, 100], True),       # transposed constant weight, unequal parts, end past the axis
    ([0, 20], [4, 24], False),      # columns 4..20 are read by nobody: not computed
])
def test_hand_built_onnx_matches_ort(starts, ends, transb):
    model = _gemm_model(starts, ends, transb)
    feeds = {"x": np.random.default_rng(2).standard_normal((8, 16)).astype("float32")}
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)
    p = FluidMLSplitProjection()
    p(from_onnx(model, keep_params_in_input=False))
    assert "split - [16x24] into 2 projections" in p.report()
    got = _run(model, feeds, Options(cost="analytic", verify=True))
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_overlapping_slices_are_kept():
    p = FluidMLSplitProjection()
    p(from_onnx(_gemm_model([0, 4], [8, 24]), keep_params_in_input=False))
    assert "slices overlap" in p.report() and "split" not in p.report()


def test_tiny_gpt_neox_matches_ort_and_lowers_the_bound():
    model = zoo.build("gpt-neox", size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    on, off = Options(cost="analytic", verify=True), Options(cost="analytic", verify=True,
                                                             split_projection=False)
    got = _run(model, feeds, on)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    mod = from_onnx(model, keep_params_in_input=False)
    lean = Options(schedule=False, layout=False)
    bound_on = live_set_lower_bound(lower_to_memory_slot(mod, TARGET, lean))["main"]
    bound_off = live_set_lower_bound(
        lower_to_memory_slot(mod, TARGET, Options(schedule=False, layout=False,
                                                  split_projection=False)))["main"]
    assert bound_on < bound_off
    assert off.split_projection is False


def test_flattened_projection_after_shape_folding_matches_ort():
    # The dynamic export folded by onnxsim: a 2-D matmul [B*S, 3H] viewed as [B, S, nh, 3D].
    import fluidml_tvm

    model = zoo.build("gpt-neox", size="tiny", seed=0, dynamic=True)
    c = fluidml_tvm.compile(model, input_shapes={"input_ids": [1, 16]},
                            options=Options(cost="analytic", verify=True))
    assert "split - [64x192] into 3 projections" in c.report()
    feeds = {"input_ids": zoo.random_inputs(zoo.build("gpt-neox", size="tiny", seed=0),
                                            seed=0)["input_ids"]}
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(list(c.load().run(feeds).values())[0], ref, rtol=1e-4, atol=1e-4)
