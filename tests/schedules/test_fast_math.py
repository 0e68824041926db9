"""fast_math.py: exp/erf in FluidML's kernels are accurate, IEEE at the edges, vectorized, and
scoped: a stock TVM compile in the same process keeps libm's exact exp/erf (issue #15)."""

from __future__ import annotations

import ctypes
import ctypes.util
import math

import numpy as np
import onnx
import onnxruntime
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import te

import fluidml_tvm
from fluidml_tvm.schedules import fast_math

from .models import build

EDGES = np.array([np.nan, np.inf, -np.inf, 0.0, 1e-30, -1e-30, 88.72, 88.73, -87.0, -100.0,
                  -110.0, 6.0, -6.0], "f4")


def _kernel(fn, n: int, rewrite: bool):
    """``fn`` (a ``te`` function's name, or a function of the element) over ``n`` elements, in
    vectors of 16."""
    body = getattr(te, fn) if isinstance(fn, str) else fn
    A = te.placeholder((n,), name="A")
    B = te.compute((n,), lambda i: body(A[i]), name="B")
    sch = tvm.s_tir.Schedule(te.create_prim_func([A, B]))
    (lp,) = sch.get_loops(sch.get_sblock("B"))
    sch.vectorize(sch.split(lp, [None, 16])[1])
    func = sch.mod["main"]
    return build(fast_math.apply(func) if rewrite else func)


def _run(lib, x):
    y = tvm.runtime.tensor(np.zeros(len(x), "f4"))
    lib["main"](tvm.runtime.tensor(x), y)
    return y.numpy()


def _ref(fn: str, v: float) -> float:
    if fn == "sigmoid":
        return v if math.isnan(v) else 1.0 / (1.0 + math.exp(-v)) if v > -700 else 0.0
    return getattr(math, fn)(v)


@pytest.mark.parametrize("fn", ["exp", "erf", "tanh", "sigmoid"])
def test_accurate_over_the_range_ieee_at_the_edges_and_vectorized(fn):
    x = np.concatenate([np.linspace(-110, 90, 8192, dtype="f4"), EDGES])
    n = len(x) + (-len(x)) % 16
    x = np.pad(x, (0, n - len(x)))
    lib = _kernel(fn, n, rewrite=True)
    ll = lib.mod.inspect_source("ll")
    assert f"@{fn}f(" not in ll and "@expf(" not in ll and "llvm.exp." not in ll  # no libm left
    # TVM's vectorizer kept the 16-lane loop (a tirx.isnan in the expression made it run the
    # loop lane by lane: no 16-lane vector in the IR)
    assert "<16 x float>" in ll
    got = _run(lib, x)
    with np.errstate(over="ignore"):
        ref = np.array([_ref(fn, float(v)) for v in x])  # float64, NaN/inf as IEEE
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    over = ref > np.finfo("f4").max  # not representable: inf in fp32
    assert np.all(got[over] == np.inf)
    fin = np.isfinite(ref) & ~over
    if fn == "exp":
        normal = fin & (x >= -87.3)
        rel = np.abs(got[normal] - ref[normal]) / ref[normal]
        assert rel.max() <= 2e-7
        assert np.abs(got[fin & (x < -87.3)] - ref[fin & (x < -87.3)]).max() <= 2e-45
        assert got[x == np.inf].tolist() == [np.inf] and got[x == -np.inf].tolist() == [0.0]
        assert np.all(got[x == np.float32(88.73)] == np.inf)
    else:
        assert np.abs(got[fin] - ref[fin]).max() <= 3e-7
        low = 0.0 if fn == "sigmoid" else -1.0
        assert got[x == np.inf].tolist() == [1.0] and got[x == -np.inf].tolist() == [low]


def _unary_model(op: str) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _libm(name: str, x: np.ndarray) -> np.ndarray:
    """glibc's own expf/erff, value by value (what TVM's default lowering calls)."""
    f = getattr(ctypes.CDLL(ctypes.util.find_library("m")), name)
    f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float]
    return np.array([f(float(v)) for v in x], "f4")


def test_scoped_to_fluidml_stock_keeps_libm_after_a_fluidml_compile():
    x = np.linspace(-20, 20, 64, dtype="f4")
    x[:3] = [np.nan, np.inf, -np.inf]
    for op, libm in (("Exp", "expf"), ("Erf", "erff")):
        model = _unary_model(op)
        ours = fluidml_tvm.compile(model, pass_config=["fluidml.cost=analytic"])
        stock = fluidml_tvm.compile(model, pass_config=["fluidml=0"])  # after, same process
        exact = fluidml_tvm.compile(model, pass_config=["fluidml.cost=analytic",
                                                        "fluidml.fast_math=0"])
        want = _libm(libm, x)
        for compiled in (stock, exact):
            got = compiled.load().run({"x": x})["y"]
            np.testing.assert_array_equal(got, want)  # libm's own values, bit for bit
        fast = ours.load().run({"x": x})["y"]
        np.testing.assert_allclose(fast, want, rtol=3e-7, atol=3e-7)
        assert np.isnan(fast[0]) and fast[1] == want[1] and fast[2] == want[2]
        ort = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_allclose(fast, ort, rtol=3e-7, atol=3e-7)  # NaN/inf where ORT has them


def test_division_by_a_constant_becomes_a_multiplication_within_1_5_ulp():
    n = 4096
    x = np.concatenate([np.random.default_rng(0).standard_normal(n - 8).astype("f4") * 1e3,
                        np.array([0.0, -0.0, 1e-38, -3e38, 3e38, np.inf, -np.inf, np.nan], "f4")])
    for c, bound in ((6.0, 1.5), (0.25, 0.0)):  # 1 / 0.25 is exact: bit for bit
        lib = _kernel(lambda a, c=c: a / tvm.tirx.const(c, "float32"), n, rewrite=True)
        assert "fdiv" not in lib.mod.inspect_source("ll")  # no division left
        got, want = _run(lib, x), x / np.float32(c)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        fin = np.isfinite(want) & (want != 0)
        err = (np.abs(got[fin].astype("f8") - want[fin].astype("f8"))
               / np.spacing(np.abs(want[fin])))
        assert err.max() <= bound
        assert np.array_equal(got[~fin], want[~fin], equal_nan=True)  # zeros, infinities, NaN
    # a constant whose reciprocal is not a normal fp32 number stays a division
    lib = _kernel(lambda a: a / tvm.tirx.const(1e38, "float32"), n, rewrite=True)
    assert "fdiv" in lib.mod.inspect_source("ll")
