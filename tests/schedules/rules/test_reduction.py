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


def _same_as_unscheduled(func, sch):
    dev = tvm.cpu()
    args = random_args(func, dev, seed=3)
    new = [tvm.runtime.tensor(a.numpy(), dev) for a in args]
    build(func)["main"](*args)
    build(sch.mod["main"])["main"](*new)
    np.testing.assert_allclose(new[-1].numpy(), args[-1].numpy(), rtol=1e-5, atol=1e-6)


def test_softmax_row_form():
    A = te.placeholder((4, 16, 128), name="A")  # above MIN_PARALLEL_ELEMS: a parallel row loop
    func = te.create_prim_func([A, topi.nn.softmax(A, axis=-1)])
    assert reduction.analyze(func)[0] is not None
    sch, why = reduction.schedule_reduction(func, cpu_info(TARGET))
    assert why.startswith("reduction (row form:"), why
    assert "T.parallel" in sch.mod.script()
    _same_as_unscheduled(func, sch)


@pytest.mark.parametrize("E, parts", [(1500, 15), (128, None), (197, 0), (40, 10)])
def test_row_reductions_as_vector_partial_results(E, parts):
    """A row's max and sum as ``v`` partial results, one vector a step (rfactor): v = the lanes
    where they divide the row, else the largest count down to half of them (1500: 15), none for
    a prime row (197: the scalar reduction stays); the results are the unscheduled kernel's."""
    cpu = cpu_info(TARGET)
    lanes = cpu.lanes(32)
    parts = lanes if parts is None else parts
    A = te.placeholder((6, E), name="A")
    B = te.compute((6, E), lambda i, j: A[i, j] * 0.5, name="B")  # an input that is not a param
    func = te.create_prim_func([A, topi.nn.softmax(B, axis=-1)])
    sch, why = reduction.schedule_reduction(func, cpu)
    assert why.startswith("reduction (row form:"), why
    want = reduction.partial_count(E, lanes) if E >= 2 * lanes else None
    if lanes == 16 and E >= 2 * lanes:
        assert want == (parts or None)
    if want:
        assert f"2 reduction(s) as [{want}] partial results" in why
        text = sch.mod.script()
        assert "_rf_update" in text and text.count("T.vectorized") >= 3, text
    else:
        assert "partial results" not in why
    _same_as_unscheduled(func, sch)


@pytest.mark.parametrize("hw", [56, 7])
def test_mean_over_a_map_as_partial_results(hw):
    """A squeeze-and-excitation block's global mean ([1, C, H, W] over H and W, keepdims): the
    two reduction axes are one row of H x W, reduced as vector partial results (3136 = 196 x
    16; 49, which no count of 4 or more divides, keeps the scalar sum), the result the
    unscheduled kernel's."""
    cpu = cpu_info(TARGET)
    A = te.placeholder((1, 24, hw, hw), name="A")
    S = topi.sum(A, axis=(2, 3), keepdims=True)  # relax.mean's legalized form: sum, divide
    M = te.compute(S.shape, lambda *i: S(*i) / float(hw * hw), name="mean")
    func = te.create_prim_func([A, M])
    sch, why = reduction.schedule_reduction(func, cpu)
    want = reduction.partial_count(hw * hw, cpu.lanes(32))
    assert why.startswith("reduction (row form:"), why
    if hw * hw >= 2 * cpu.lanes(32) and want:
        assert f"as [{want}] partial results" in why, why
    else:
        assert "partial results" not in why, why
    _same_as_unscheduled(func, sch)


def test_partial_count():
    assert reduction.partial_count(1536, 16) == 16
    assert reduction.partial_count(1500, 16) == 15
    assert reduction.partial_count(1000, 16) == 10
    assert reduction.partial_count(197, 16) is None
    assert reduction.partial_count(100, 8) == 5  # from lanes - 1 down to half of them
    assert reduction.partial_count(196, 8) == 7
    assert reduction.partial_count(52, 16) == 13
    assert reduction.partial_count(194, 16) is None  # 2 x 97


def test_column_sum_generic_form():
    A = te.placeholder((96, 64), name="A")
    k = te.reduce_axis((0, 96), name="k")
    func = te.create_prim_func([A, te.compute((64,), lambda j: te.sum(A[k, j], axis=k))])
    sch, why = reduction.schedule_reduction(func, cpu_info(TARGET))
    assert "generic" in why and "vectorized under the reduction" in why, why
    _same_as_unscheduled(func, sch)


def test_no_reduction_block():
    A = te.placeholder((8,), name="A")
    func = te.create_prim_func([A, te.compute((8,), lambda i: A[i] + 1.0)])
    assert reduction.analyze(func) == (None, "no reduction block")
    assert reduction.schedule_reduction(func, cpu_info(TARGET)) == (None, "no reduction block")
