"""A kernel's work for the roofline view (schedules/work.py)."""

from __future__ import annotations

from tvm import te

from fluidml_tvm.schedules.work import kernel_work


def test_work_counts_multiply_adds_and_parameter_bytes():
    a, b = te.placeholder((64, 128), name="A"), te.placeholder((128, 32), name="B")
    k = te.reduce_axis((0, 128), name="k")
    c = te.compute((64, 32), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    work = kernel_work(te.create_prim_func([a, b, c]))
    assert work == {"flops": 2 * 64 * 32 * 128, "bytes": 4 * (64 * 128 + 128 * 32 + 64 * 32)}
