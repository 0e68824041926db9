"""fast_math.py: the vectorizable erf/exp lowerings are accurate and leave no scalar libm call."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

from .models import build


@pytest.mark.parametrize("fn,lo,hi,tol", [("erf", -6, 6, 1e-6), ("exp", -80, 80, 1e-6)])
def test_fast_math_is_accurate_and_vectorized(fn, lo, hi, tol):
    import math

    from fluidml_tvm.schedules import fast_math

    assert fast_math.register()
    A = te.placeholder((256,), name="A")
    B = te.compute((256,), lambda i: getattr(te, fn)(A[i]), name="B")
    sch = tvm.s_tir.Schedule(te.create_prim_func([A, B]))
    (lp,) = sch.get_loops(sch.get_sblock("B"))
    sch.vectorize(sch.split(lp, [None, 8])[1])
    lib = build(sch.mod["main"])
    assert f"@{fn}f(" not in lib.mod.inspect_source("ll")  # no scalar libm call left
    x = np.linspace(lo, hi, 256).astype("f4")
    y = tvm.runtime.tensor(np.zeros(256, "f4"))
    lib["main"](tvm.runtime.tensor(x), y)
    ref = np.array([getattr(math, fn)(float(v)) for v in x])
    err = np.abs(y.numpy() - ref) / np.maximum(np.abs(ref), 1.0 if fn == "erf" else 1e-30)
    assert err.max() < tol
