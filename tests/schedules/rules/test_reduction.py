"""The reduction rule: row form (softmax: every nest under the fused row loop), the generic form
(a column sum: the output axis vectorized under the reduction), both computing what the
unscheduled kernel computes; a kernel without a reduction is not its kind."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te, topi

from fluidml_tvm.schedules import cpu_info
from fluidml_tvm.schedules.measure import random_args
from fluidml_tvm.schedules.rules import reduction

from ..models import TARGET, build


def _same_as_unscheduled(func, out):
    dev = tvm.cpu()
    args = random_args(func, dev, seed=3)
    new = [tvm.runtime.tensor(a.numpy(), dev) for a in args]
    build(func)["main"](*args)
    build(out)["main"](*new)
    np.testing.assert_allclose(new[-1].numpy(), args[-1].numpy(), rtol=1e-5, atol=1e-6)


def test_softmax_row_form():
    A = te.placeholder((4, 16, 128), name="A")  # above MIN_PARALLEL_ELEMS: a parallel row loop
    func = te.create_prim_func([A, topi.nn.softmax(A, axis=-1)])
    assert reduction.analyze(func)[0] is not None
    out, why = reduction.schedule_reduction(func, cpu_info(TARGET))
    assert why.startswith("reduction (row form:"), why
    assert "T.parallel" in out.script()
    assert "T_softmax_exp computed once a row" in why, why  # read by the sum and the division
    _same_as_unscheduled(func, out)


@pytest.mark.parametrize("E", [1500, 128, 197, 40, 20])
def test_row_reductions_as_vector_partial_results(E):
    """A row's max and sum as one vector of partial results, one vector a step (rfactor), for
    every row of two vectors or more; a row the lanes do not divide (1500, 197, 40) ends in a
    guarded step that reads nothing past the row (the guard compute_at drops is put back),
    a shorter row keeps the scalar reduction; the results are the unscheduled kernel's, in
    rows laid one after another so a read past a row would change them."""
    cpu = cpu_info(TARGET)
    lanes = cpu.lanes(32)
    A = te.placeholder((6, E), name="A")
    B = te.compute((6, E), lambda i, j: A[i, j] * 0.5, name="B")  # an input that is not a param
    func = te.create_prim_func([A, topi.nn.softmax(B, axis=-1)])
    out, why = reduction.schedule_reduction(func, cpu)
    assert why.startswith("reduction (row form:"), why
    if E >= 2 * lanes:
        assert f"2 reduction(s) as [{lanes}] partial results" in why, why
        text = out.script()
        assert "_rf_update" in text and text.count("T.vectorized") >= 3, text
        assert ("guarded last step" in why) == (E % lanes != 0), why
        if E % lanes:
            assert "T.where(" in text and f"< {E})" in text, text
    else:
        assert "partial results" not in why
    _same_as_unscheduled(func, out)


def test_guard_tails_restores_the_guard():
    """Without the guard a 197-wide row's partial sums would take 11 elements of the next
    row: the scheduled kernel with the guard stripped off differs from the unscheduled one,
    with it they agree (the check above can fail)."""
    cpu = cpu_info(TARGET)
    A = te.placeholder((4, 197), name="A")
    k = te.reduce_axis((0, 197), name="k")
    S = te.compute((4,), lambda i: te.sum(A[i, k], axis=k), name="S")
    func = te.create_prim_func([A, te.compute((4, 197), lambda i, j: A[i, j] - S[i], name="C")])
    out, why = reduction.schedule_reduction(func, cpu)
    assert "guarded last step of [197]" in why, why
    _same_as_unscheduled(func, out)

    import tvm_ffi
    from tvm import s_tir

    def strip(realize):
        if realize.block.name_hint.endswith("_rf_update"):
            return s_tir.SBlockRealize(realize.iter_values, True, realize.block)
        return realize

    with pytest.raises(AssertionError):
        _same_as_unscheduled(func, tvm_ffi.structural_map(out, [(s_tir.SBlockRealize, strip)]))


@pytest.mark.parametrize("hw", [56, 7])
def test_mean_over_a_map_as_partial_results(hw):
    """A squeeze-and-excitation block's global mean ([1, C, H, W] over H and W, keepdims): the
    two reduction axes are one row of H x W, reduced as vector partial results (3136 = 196 x
    16; 49 = 3 x 16 + a guarded 1 on AVX-512), the result the unscheduled kernel's."""
    cpu = cpu_info(TARGET)
    A = te.placeholder((1, 24, hw, hw), name="A")
    S = topi.sum(A, axis=(2, 3), keepdims=True)  # relax.mean's legalized form: sum, divide
    M = te.compute(S.shape, lambda *i: S(*i) / float(hw * hw), name="mean")
    func = te.create_prim_func([A, M])
    out, why = reduction.schedule_reduction(func, cpu)
    lanes = cpu.lanes(32)
    assert why.startswith("reduction (row form:"), why
    if hw * hw >= 2 * lanes:
        assert f"as [{lanes}] partial results" in why, why
        assert ("guarded last step" in why) == (hw * hw % lanes != 0), why
    else:
        assert "partial results" not in why, why
    _same_as_unscheduled(func, out)


def test_column_sum_generic_form():
    A = te.placeholder((96, 64), name="A")
    k = te.reduce_axis((0, 96), name="k")
    func = te.create_prim_func([A, te.compute((64,), lambda j: te.sum(A[k, j], axis=k))])
    out, why = reduction.schedule_reduction(func, cpu_info(TARGET))
    assert "generic" in why and "vectorized under the reduction" in why, why
    _same_as_unscheduled(func, out)


def test_no_reduction_block():
    A = te.placeholder((8,), name="A")
    func = te.create_prim_func([A, te.compute((8,), lambda i: A[i] + 1.0)])
    assert reduction.analyze(func) == (None, "no reduction block")
    assert reduction.schedule_reduction(func, cpu_info(TARGET)) == (None, "no reduction block")


def test_int64_rows_are_peeled():
    """Relax legalizes with int64 indices; LoopPartition peels the guarded last vector of int32
    loops only, so the rule narrows the kernel's indices first: lowered, the 1500-wide row of
    a softmax legalized with int64 shapes runs 93 whole vectors and a peeled tail, not 94
    guarded steps lane by lane (13.6 vs 5.0 ms on the 2-core AVX-512 host)."""
    from tvm import s_tir, tirx

    cpu = cpu_info(TARGET)
    lanes = cpu.lanes(32)
    E = 1500
    A = te.placeholder([tirx.IntImm("int64", 4), tirx.IntImm("int64", E)], name="A")
    func = te.create_prim_func([A, topi.nn.softmax(A, axis=-1)])
    out, why = reduction.schedule_reduction(func, cpu)
    assert "guarded last step" in why or E % lanes == 0, why
    passes = [s_tir.transform.LowerInitBlock(), s_tir.transform.ConvertBlocksToOpaque(),
              s_tir.transform.CompactBufferAllocation(), s_tir.transform.LowerOpaqueBlock(),
              tirx.transform.FlattenBuffer(), tirx.transform.NarrowDataType(32),
              s_tir.transform.LoopPartition(), tirx.transform.VectorizeLoop(True)]
    with TARGET:
        low = tvm.transform.Sequential(passes)(
            tvm.IRModule({"main": out.with_attr("global_symbol", "main")})).script()
    whole = E // lanes
    assert f"range({whole})" in low, low  # the whole vectors, peeled from the guarded step
    assert f"T.grid({whole + 1}, {lanes})" not in low, low  # no loop of guarded lanes
    _same_as_unscheduled(func, out)
