"""The reduction rule: row form (softmax: every nest under the fused row loop), the generic form
(a column sum: the output axis vectorized under the reduction), both computing what the
unscheduled kernel computes; a kernel without a reduction is not its kind."""

from __future__ import annotations

import numpy as np
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
