"""The injective rule: elementwise kernels parallel and vectorized, transposes that move the
innermost dim tiled lanes x lanes, all computing what they computed before."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import TensorProto as TP
from onnx import helper as h

from fluidml_tvm.schedules import cpu_info

from ..models import TARGET, onnx_model
from ..models import schedule as run_schedule


def test_elementwise_kernel_is_parallel_and_vectorized(tmp_path):
    n = [h.make_node("Add", ["a", "b"], ["s"]), h.make_node("Relu", ["s"], ["y"])]
    vi = [h.make_tensor_value_info(x, TP.FLOAT, [64, 256]) for x in ("a", "b")]
    model = onnx_model(n, vi, [h.make_tensor_value_info("y", TP.FLOAT, [64, 256])], [])
    out, dec = run_schedule(model, tmp_path)
    (d,) = dec.values()
    assert d.choice == "injective"
    text = [f for gv, f in out.functions_items() if isinstance(f, tvm.tirx.PrimFunc)][0].script()
    assert "T.parallel" in text and "T.vectorized" in text



@pytest.mark.parametrize("src, mid, perm, tiled", [
    ((1, 32, 96), (1, 32, 3, 32), (0, 2, 3, 1), True),  # attention's K -> K^T
    ((64, 48), (64, 48), (1, 0), True),
    ((1, 32, 96), (1, 32, 3, 32), (0, 2, 1, 3), False),  # innermost dim stays: no tiling
])
def test_transpose_kernels_tile_and_compute_the_same(src, mid, perm, tiled):
    from fluidml_tvm.passes.layout.variants import reshape_transpose_variant
    from fluidml_tvm.schedules.rules import injective

    func = reshape_transpose_variant(src, mid, perm, None)
    cpu = cpu_info(TARGET)
    sch, why = injective.schedule_injective(func, cpu)
    assert sch is not None, why
    (block,) = injective.root_blocks(sch)
    loops = sch.get_loops(block)
    lanes = cpu.lanes(32)
    shape = [int(sch.get(lp).extent) for lp in loops]
    assert (shape[-2:] == [lanes, lanes]) is tiled, (shape, sch.mod.script())
    lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}),
                      TARGET)
    x = np.random.default_rng(8).standard_normal(src).astype("f4")
    want = x.reshape(mid).transpose(perm)
    out = tvm.runtime.tensor(np.zeros(want.shape, "f4"))
    lib["main"](tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), want)


def test_rows_no_vector_divides_run_whole_vectors_and_a_peeled_tail():
    """An elementwise exp over rows of 1500 (int64 indices, as relax legalizes): the kernel's
    indices are narrowed to int32 and each row runs 93 whole vectors and a peeled tail - not
    the 16-lane unrolled scalar code it had (whisper-sized 6 x 1500 x 1500: 14.4 -> 2.5 ms) -
    and it computes what the unscheduled kernel computes."""
    from tvm import s_tir, te, tirx

    from fluidml_tvm.schedules.measure import random_args
    from fluidml_tvm.schedules.rules import injective

    from ..models import build

    cpu = cpu_info(TARGET)
    lanes = cpu.lanes(32)
    shape = [tirx.IntImm("int64", 4), tirx.IntImm("int64", 1500)]
    A = te.placeholder(shape, name="A")
    func = te.create_prim_func([A, te.compute(shape, lambda i, j: te.exp(A[i, j]), name="E")])
    sch, _ = injective.schedule_injective(func, cpu)
    out = sch.mod["main"]
    passes = [s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.LowerOpaqueBlock(),
              tirx.transform.FlattenBuffer(), s_tir.transform.LoopPartition(),
              tirx.transform.VectorizeLoop(True)]
    with TARGET:
        low = tvm.transform.Sequential(passes)(
            tvm.IRModule({"main": out.with_attr("global_symbol", "main")})).script()
    assert f"range({1500 // lanes})" in low, low
    assert "pragma_unroll_explicit" not in out.script()
    dev = tvm.cpu()
    args = random_args(func, dev, seed=5)
    new = [tvm.runtime.tensor(a.numpy(), dev) for a in args]
    build(func)["main"](*args)
    build(out)["main"](*new)
    np.testing.assert_allclose(new[-1].numpy(), args[-1].numpy(), rtol=1e-6)
