"""The matmul rule: Gemm epilogues and batch matmuls against ONNX Runtime, the NN / NT / TN
operand orders, the run-time packing copy of a K-innermost B, every loop order."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

from fluidml_tvm.schedules import cpu_info
from fluidml_tvm.schedules.rules import matmul as mm

from ..models import (
    TARGET,
    compile_run,
    gemm_model,
    matmul_func,
    opts,
    run_ort,
    two_input_matmul,
)
from ..models import schedule as run_schedule


@pytest.mark.parametrize("trans_b,act", [(1, "Relu"), (0, "Sigmoid")])
def test_gemm_epilogue_matches_ort(tmp_path, trans_b, act):
    model = gemm_model(trans_b=trans_b, act=act)
    x = np.random.default_rng(2).standard_normal((32, 40)).astype(np.float32)
    out = compile_run(model, {"x": x}, opts(tmp_path))
    np.testing.assert_allclose(out, run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)
    _, dec = run_schedule(model, tmp_path)
    assert [d.choice for d in dec.values() if "matmul" in d.subject] == ["matmul"]


@pytest.mark.parametrize("trans_b", [True, False])
def test_batch_matmul_of_activations(tmp_path, trans_b):
    model = two_input_matmul(trans_b=trans_b)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 16, 8)).astype(np.float32)
    b = rng.standard_normal((2, 24, 8) if trans_b else (2, 8, 24)).astype(np.float32)
    out = compile_run(model, {"a": a, "b": b}, opts(tmp_path))
    np.testing.assert_allclose(out, run_ort(model, {"a": a, "b": b}), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("form", ["NN", "NT", "TN"])
def test_matmul_forms_standalone(form):
    """NT/TN operand orders (B[j,k], A[k,i]) are matched as matmuls and computed right."""
    M, N, K, B = 16, 32, 24, 2
    a_shape = (B, M, K) if form != "TN" else (B, K, M)
    b_shape = (B, N, K) if form == "NT" else (B, K, N)
    A = te.placeholder(a_shape, name="A")
    Bt = te.placeholder(b_shape, name="B")
    k = te.reduce_axis((0, K), name="k")

    def body(b, i, j):
        av = A[b, i, k] if form != "TN" else A[b, k, i]
        bv = Bt[b, j, k] if form == "NT" else Bt[b, k, j]
        return te.sum(av * bv, axis=k)

    C = te.compute((B, M, N), body, name="C")
    func = te.create_prim_func([A, Bt, C])
    match, why = mm.analyze(func)
    assert match is not None, why
    assert (match.batch, match.m, match.n, match.k) == (B, M, N, K)
    cpu = cpu_info(TARGET)
    cfg = mm.candidates(match, cpu, 1)[0]
    sch = mm.apply(func, match, cfg, cpu, pack_param=False)
    lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}),
                      TARGET)
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(a_shape).astype("f4"), rng.standard_normal(b_shape).astype("f4")
    c = tvm.runtime.tensor(np.zeros((B, M, N), "f4"))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    a2 = a if form != "TN" else a.transpose(0, 2, 1)
    b2 = b if form != "NT" else b.transpose(0, 2, 1)
    np.testing.assert_allclose(c.numpy(), a2 @ b2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lb, transposing", [((0, 1, 3, 2), True), ((0, 3, 1, 2), False)])
def test_nt_packing_copy(lb, transposing):
    """B with K innermost (attention's K read as [s, d]) is packed at run time by a copy in the
    packed order, except where its rows are 2 KiB apart (L1 set aliasing); both compute A @ B."""
    from fluidml_tvm.passes.layout.measure import matmul_variant

    H, S, D = 8, 128, 64
    ident = (0, 1, 2, 3)
    func = matmul_variant((1, H, S, D), (1, H, D, S), (1, H, S, S), ident, lb, ident)
    match, why = mm.analyze(func)
    assert match is not None, why
    cpu = cpu_info(TARGET)
    cfg = mm.candidates(match, cpu, 1)[0]
    nr = cfg.nv * cpu.lanes(32)
    phys_b = tuple((1, H, D, S)[d] for d in lb)
    assert mm._rows_fit_l1(match.roles_b, list(phys_b), nr) is transposing
    sch = mm.apply(func, match, cfg, cpu, pack_param=False)
    text = sch.mod.script()
    assert ("ax2_1_1 in T.vectorized" in text) is transposing, text[:2000]
    lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}),
                      TARGET)
    rng = np.random.default_rng(7)
    a = rng.standard_normal((1, H, S, D)).astype("f4")
    kt = rng.standard_normal((1, H, D, S)).astype("f4")  # logical K^T
    c = tvm.runtime.tensor(np.zeros((1, H, S, S), "f4"))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(np.ascontiguousarray(
        kt.transpose(lb))), c)
    np.testing.assert_allclose(c.numpy(), a @ kt, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order", mm.ORDERS)
@pytest.mark.parametrize("pack", [True, False])
def test_every_matmul_loop_order_computes_the_same(order, pack):
    """Each loop order (K blocked ones included), B packed at run time or read in place."""
    M, N, K = 32, 48, 128
    func = matmul_func(M, N, K)
    match, _ = mm.analyze(func)
    cpu = cpu_info(TARGET)
    lanes = cpu.lanes(32)
    kc = 32 if order in ("kblock", "kouter") else 0
    cfg = mm.MatmulConfig(4, 48 // lanes if 48 % lanes == 0 else 1, 16, order, kc, pack)
    sch = mm.apply(func, match, cfg, cpu, pack_param=False)
    lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}),
                      TARGET)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((M, K)).astype("f4"), rng.standard_normal((K, N)).astype("f4")
    c = tvm.runtime.tensor(np.zeros((M, N), "f4"))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    np.testing.assert_allclose(c.numpy(), a @ b, rtol=1e-4, atol=1e-4)
