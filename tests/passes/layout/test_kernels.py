"""Layout-changed kernels (passes/layout/kernels.py): a matmul reading and writing through any
permutation computes what numpy computes on the logical tensors."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te

from fluidml_tvm.passes.layout.kernels import permuted_matmul
from fluidml_tvm.passes.layout.layouts import inverse, phys_shape


def test_permuted_matmul_matches_numpy():
    rng = np.random.default_rng(0)
    a_shape, b_shape, out_shape = (2, 3, 4), (2, 4, 5), (2, 3, 5)
    la, lb, lo = (0, 2, 1), (1, 0, 2), (2, 0, 1)
    a = te.placeholder(phys_shape(a_shape, la), name="A")
    b = te.placeholder(phys_shape(b_shape, lb), name="B")
    c = permuted_matmul(a, b, la, lb, lo, a_shape, b_shape, out_shape, "float32")
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b, c])}),
                      target=tvm.target.Target({"kind": "llvm"}))
    x = rng.standard_normal(a_shape).astype("f4")
    y = rng.standard_normal(b_shape).astype("f4")
    out = tvm.runtime.tensor(np.zeros(phys_shape(out_shape, lo), "f4"))
    lib["main"](tvm.runtime.tensor(x.transpose(la)), tvm.runtime.tensor(y.transpose(lb)), out)
    np.testing.assert_allclose(out.numpy().transpose(inverse(lo)), x @ y, rtol=1e-5, atol=1e-5)
