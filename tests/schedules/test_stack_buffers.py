"""stack_buffers.py: a parallel loop's per-iteration buffers stay on the stack, not a workspace
allocation every iteration; the numbers do not change, and only FluidML's CPU builds use it."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import s_tir, te

from fluidml_tvm.schedules import host_target, stack_buffers


def _row_kernel(rows: int, cols: int):
    """``B = exp(A) * 2`` with ``exp(A)`` computed a row at a time under a parallel row loop:
    a ``cols * 4``-byte buffer per iteration."""
    a = te.placeholder((rows, cols), "float32", "A")
    c = te.compute((rows, cols), lambda i, j: te.exp(a[i, j]), "C")
    b = te.compute((rows, cols), lambda i, j: c[i, j] * 2.0, "B")
    sch = s_tir.Schedule(te.create_prim_func([a, b]))
    row, _ = sch.get_loops(sch.get_sblock("B"))
    sch.parallel(row)
    sch.compute_at(sch.get_sblock("C"), row)
    return sch.mod["main"]


def _workspace_calls(lib) -> int:
    ll = lib.mod.inspect_source("ll")
    return sum(1 for ln in ll.splitlines()
               if "@__TVMBackendAllocWorkspace" in ln and "load ptr" in ln)


@pytest.mark.parametrize("cols,stacked", [(1024, True), (32 << 10, False)])
def test_row_buffers_of_a_parallel_loop_stay_on_the_stack(cols, stacked):
    """A 4 KB row buffer: TVM's lowering allocates it from the workspace every iteration, the
    fluidml pipeline keeps it on the stack; a 128 KB one (over MAX_BYTES) stays a workspace
    allocation. The results are the same."""
    target = host_target()
    func = _row_kernel(8, cols)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    stock = tvm.compile(mod, target=target)
    ours = tvm.compile(mod, target=target, tir_pipeline=stack_buffers.pipeline_name(target, True))
    assert _workspace_calls(stock) == 1
    assert _workspace_calls(ours) == (0 if stacked else 1)
    x = np.random.default_rng(0).standard_normal((8, cols)).astype("float32")
    outs = []
    for lib in (stock, ours):
        out = tvm.runtime.tensor(np.zeros_like(x))
        lib["main"](tvm.runtime.tensor(x), out)
        outs.append(out.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[1], np.exp(x) * 2, rtol=1e-5)


def test_only_fluidml_cpu_builds_with_the_option_on_use_it():
    cpu = host_target()
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    assert stack_buffers.pipeline_name(cpu) == stack_buffers.PIPELINE  # on by default
    assert stack_buffers.pipeline_name(arm) == stack_buffers.PIPELINE  # boards: LLVM CPUs
    assert stack_buffers.pipeline_name(cuda) == "default"
    with stack_buffers.use(False):  # fluidml=0, fluidml.schedule=0 or fluidml.stack_buffers=0
        assert stack_buffers.pipeline_name(cpu) == "default"
    assert stack_buffers.pipeline_name(cpu, enabled=False) == "default"


def test_kernel_cache_keys_carry_the_tir_pipeline(tmp_path):
    """An object built by one TIR pipeline is not linked for a compile using the other."""
    from fluidml_tvm import kernel_cache

    target = host_target()
    mod = tvm.IRModule({"k": _row_kernel(4, 512).with_attr("global_symbol", "k")})
    stats = kernel_cache.Stats()
    with tvm.transform.PassContext(opt_level=3):
        kernel_cache.kernel_objects(mod, target, str(tmp_path), stats, tir_pipeline="default")
        kernel_cache.kernel_objects(mod, target, str(tmp_path), stats,
                                    tir_pipeline=stack_buffers.pipeline_name(target, True))
    assert (stats.built, stats.found) == (2, 0)
