"""FluidMLSchedule: every PrimFunc scheduled, numerics vs ONNX Runtime, the measurement cache,
per-target vector widths. Tiny shapes, few trials, a temporary cache: well under two minutes."""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402
from tvm import relax, te  # noqa: E402
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from fluidml_tvm import pipeline  # noqa: E402
from fluidml_tvm.costdb import CostDB  # noqa: E402
from fluidml_tvm.options import Options  # noqa: E402
from fluidml_tvm.schedules import FluidMLSchedule, cpu_info, host_target  # noqa: E402
from fluidml_tvm.schedules import matmul as mm  # noqa: E402
from fluidml_tvm.schedules.fluidml_schedule import pack_array  # noqa: E402

TARGET = host_target()


# ---- models ---------------------------------------------------------------------------------
def _model(nodes, inputs, outputs, inits):
    g = h.make_graph(nodes, "g", inputs, outputs, inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def bert_layer(S=16, H=32, heads=2, F=64, seed=0):
    """One BERT encoder layer: QKV projections, attention, output projection, LayerNorm, GELU
    FFN, residuals - the kernels a BERT compile produces, at a tiny size."""
    rng = np.random.default_rng(seed)
    D = H // heads
    init = []

    def w(name, *shape):
        init.append(nh.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name))
        return name

    def c(name, arr):
        init.append(nh.from_array(np.asarray(arr), name))
        return name

    n = [h.make_node("MatMul", ["x", w("wq", H, H)], ["q0"]),
         h.make_node("Add", ["q0", w("bq", H)], ["q1"]),
         h.make_node("MatMul", ["x", w("wk", H, H)], ["k0"]),
         h.make_node("Add", ["k0", w("bk", H)], ["k1"]),
         h.make_node("MatMul", ["x", w("wv", H, H)], ["v0"]),
         h.make_node("Add", ["v0", w("bv", H)], ["v1"])]
    c("shp", np.array([1, S, heads, D], np.int64))
    for t in "qkv":
        n.append(h.make_node("Reshape", [f"{t}1", "shp"], [f"{t}2"]))
    n += [h.make_node("Transpose", ["q2"], ["q3"], perm=[0, 2, 1, 3]),
          h.make_node("Transpose", ["k2"], ["k3"], perm=[0, 2, 3, 1]),
          h.make_node("Transpose", ["v2"], ["v3"], perm=[0, 2, 1, 3]),
          h.make_node("MatMul", ["q3", "k3"], ["s0"]),
          h.make_node("Mul", ["s0", c("scale", np.array(1 / np.sqrt(D), np.float32))], ["s1"]),
          h.make_node("Softmax", ["s1"], ["p"], axis=-1),
          h.make_node("MatMul", ["p", "v3"], ["o0"]),
          h.make_node("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
          h.make_node("Reshape", ["o1", c("shp2", np.array([1, S, H], np.int64))], ["o2"]),
          h.make_node("MatMul", ["o2", w("wo", H, H)], ["o3"]),
          h.make_node("Add", ["o3", w("bo", H)], ["o4"]),
          h.make_node("Add", ["o4", "x"], ["r1"]),
          h.make_node("LayerNormalization", ["r1", w("ln1g", H), w("ln1b", H)], ["l1"],
                      axis=-1, epsilon=1e-5),
          h.make_node("MatMul", ["l1", w("w1", H, F)], ["f0"]),
          h.make_node("Add", ["f0", w("bf1", F)], ["f1"]),
          h.make_node("Mul", ["f1", c("isq2", np.array(1 / np.sqrt(2), np.float32))], ["g0"]),
          h.make_node("Erf", ["g0"], ["g1"]),
          h.make_node("Add", ["g1", c("one", np.array(1, np.float32))], ["g2"]),
          h.make_node("Mul", ["f1", "g2"], ["g3"]),
          h.make_node("Mul", ["g3", c("half", np.array(0.5, np.float32))], ["g4"]),
          h.make_node("MatMul", ["g4", w("w2", F, H)], ["f2"]),
          h.make_node("Add", ["f2", w("bf2", H)], ["f3"]),
          h.make_node("Add", ["f3", "l1"], ["r2"]),
          h.make_node("LayerNormalization", ["r2", w("ln2g", H), w("ln2b", H)], ["y"],
                      axis=-1, epsilon=1e-5)]
    return _model(n, [h.make_tensor_value_info("x", TP.FLOAT, [1, S, H])],
                  [h.make_tensor_value_info("y", TP.FLOAT, [1, S, H])], init)


def gemm_model(M=32, N=48, K=40, trans_b=1, act="Relu", seed=0):
    """Gemm with transB (the NT form of a dense layer) and an activation epilogue."""
    rng = np.random.default_rng(seed)
    wshape = (N, K) if trans_b else (K, N)
    init = [nh.from_array(rng.standard_normal(wshape).astype(np.float32), "w"),
            nh.from_array(rng.standard_normal(N).astype(np.float32), "b")]
    n = [h.make_node("Gemm", ["x", "w", "b"], ["g"], transB=trans_b),
         h.make_node(act, ["g"], ["y"])]
    return _model(n, [h.make_tensor_value_info("x", TP.FLOAT, [M, K])],
                  [h.make_tensor_value_info("y", TP.FLOAT, [M, N])], init)


def two_input_matmul(B=2, M=16, N=24, K=8, trans_b=True):
    """Batch matmul of two activations, B given transposed (attention's Q @ K^T)."""
    n = [h.make_node("Transpose", ["b"], ["bt"], perm=[0, 2, 1])] if trans_b else []
    n.append(h.make_node("MatMul", ["a", "bt" if trans_b else "b"], ["y"]))
    bshape = [B, N, K] if trans_b else [B, K, N]
    return _model(n, [h.make_tensor_value_info("a", TP.FLOAT, [B, M, K]),
                      h.make_tensor_value_info("b", TP.FLOAT, bshape)],
                  [h.make_tensor_value_info("y", TP.FLOAT, [B, M, N])], [])


# ---- helpers --------------------------------------------------------------------------------
def _run_ort(model, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _compile_run(model, feeds, options, target=TARGET):
    mod = from_onnx(model, keep_params_in_input=False)
    ex = tvm.compile(mod, target, relax_pipeline=pipeline.get_pipeline(target, options))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()]).numpy()


def _fused(model, target=TARGET):
    """The module right after FuseTIR (what the schedule slot sees)."""
    mod = from_onnx(model, keep_params_in_input=False)
    seq = cpu_generic.library_dispatch_passes(target) + cpu_generic.legalize_passes(target)
    with target:
        return tvm.transform.Sequential(seq)(mod)


def _schedule(model, tmp_path, trials=2, target=TARGET):
    mod = _fused(model, target)
    p = FluidMLSchedule(target, Options(tune_trials=trials, cache_dir=str(tmp_path)))
    with target:
        out = p(mod)
    return out, {d.kernel: d for d in p.decisions}


def _opts(tmp_path, **kw):
    return Options(layout=False, memory=False, tune_trials=kw.pop("tune_trials", 2),
                   cache_dir=str(tmp_path), **kw)


# ---- numerics vs ONNX Runtime ----------------------------------------------------------------
def test_bert_layer_matches_ort_and_every_kernel_is_scheduled(tmp_path):
    model = bert_layer()
    x = np.random.default_rng(1).standard_normal((1, 16, 32)).astype(np.float32)
    out = _compile_run(model, {"x": x}, _opts(tmp_path))
    np.testing.assert_allclose(out, _run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)
    out, dec = _schedule(model, tmp_path)
    assert all(d.rule != "none" for d in dec.values()), [str(d) for d in dec.values()]
    text = str(out.attrs["fluidml.schedule_report"])
    assert all(f"{k}: {d.rule}" in text for k, d in dec.items())
    rules = {k: d.rule for k, d in dec.items()}
    # the 6 matmuls (4 projections / FFN with bias, GELU or residual epilogues, 2 attention)
    assert sum(r == "matmul" for r in rules.values()) == len([k for k in rules if "matmul" in k])
    assert rules["softmax"] == "reduction" and rules["layer_norm"] == "reduction"
    assert any(r == "injective" for r in rules.values())


@pytest.mark.parametrize("trans_b,act", [(1, "Relu"), (0, "Sigmoid")])
def test_gemm_epilogue_matches_ort(tmp_path, trans_b, act):
    model = gemm_model(trans_b=trans_b, act=act)
    x = np.random.default_rng(2).standard_normal((32, 40)).astype(np.float32)
    out = _compile_run(model, {"x": x}, _opts(tmp_path))
    np.testing.assert_allclose(out, _run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)
    _, dec = _schedule(model, tmp_path)
    assert [d.rule for d in dec.values() if "matmul" in d.kernel] == ["matmul"]


@pytest.mark.parametrize("trans_b", [True, False])
def test_batch_matmul_of_activations(tmp_path, trans_b):
    model = two_input_matmul(trans_b=trans_b)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 16, 8)).astype(np.float32)
    b = rng.standard_normal((2, 24, 8) if trans_b else (2, 8, 24)).astype(np.float32)
    out = _compile_run(model, {"a": a, "b": b}, _opts(tmp_path))
    np.testing.assert_allclose(out, _run_ort(model, {"a": a, "b": b}), rtol=1e-4, atol=1e-4)


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
    from fluidml_tvm.passes.layout_measure import matmul_variant

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
    func = _matmul_func(M, N, K)
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


def test_pack_array_matches_index_map():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 32)).astype("f4")  # [K, N]
    p = pack_array(w, ("k", "n"), 16)
    assert p.shape == (2, 6, 16)
    for k in range(6):
        for n in range(32):
            assert p[n // 16, k, n % 16] == w[k, n]
    wt = np.ascontiguousarray(w.T)  # [N, K]
    np.testing.assert_array_equal(pack_array(wt, ("n", "k"), 16), p)


# ---- measurement cache ------------------------------------------------------------------------
def _set_load(monkeypatch, load):
    """Make every timing round report ``load`` as the other processes' share of the CPU."""
    from fluidml_tvm.schedules import measure

    def exit_(self, *exc):
        self.load = load
        return False

    monkeypatch.setattr(measure.LoadProbe, "__exit__", exit_)


@pytest.mark.parametrize("rule", ["matmul", "conv2d"])
def test_second_compile_measures_nothing(tmp_path, rule, monkeypatch):
    _set_load(monkeypatch, 0.0)  # a quiet machine (a loaded one re-measures: next test)
    # both above the measuring threshold (2*64^3 FLOPs)
    if rule == "matmul":
        model = gemm_model(M=64, N=64, K=128, trans_b=0)
    else:
        model = conv_model(C=16, H=16, W=16, O=32)
    _, dec = _schedule(model, tmp_path, trials=3)
    (first,) = [d for d in dec.values() if d.rule == rule]
    assert first.measured >= 2 and first.seconds > 0
    n = CostDB(str(tmp_path)).count()
    assert n == first.measured
    _, dec2 = _schedule(model, tmp_path, trials=3)
    (second,) = [d for d in dec2.values() if d.rule == rule]
    assert second.measured == 0 and "cached" in second.reason
    assert second.config == first.config
    assert CostDB(str(tmp_path)).count() == n


def test_loaded_measurement_is_provisional_and_remeasured(tmp_path, monkeypatch):
    """A choice measured while other processes took the CPU is re-measured by the next
    compiles (at most REMEASURE_ATTEMPTS times in all); a quiet measurement settles it."""
    from fluidml_tvm.costdb import REMEASURE_ATTEMPTS

    model = gemm_model(M=64, N=64, K=128, trans_b=0)
    _set_load(monkeypatch, 0.6)
    measured = []
    for _ in range(REMEASURE_ATTEMPTS + 1):
        _, dec = _schedule(model, tmp_path, trials=3)
        (d,) = [d for d in dec.values() if d.rule == "matmul"]
        measured.append(d.measured)
        assert "loaded machine" in d.reason
    assert all(m >= 2 for m in measured[:REMEASURE_ATTEMPTS]) and measured[-1] == 0
    # a loaded measurement never replaces a quiet one of the same config; a quiet one settles
    db = CostDB(str(tmp_path / "q"))
    db.record("t", "r", "w", {"a": 1}, 1.0, load=0.0)
    db.record("t", "r", "w", {"a": 1}, 0.5, load=0.9)
    assert db.measured("t", "r", "w", with_load=True) == {'{"a": 1}': (1.0, 0.0)}
    db.choose("t", "r", "w", {"a": 1}, 1.0, 1, noisy=True)
    assert db.best("t", "r", "w") is None and db.best("t", "r", "w", provisional=True)
    db.choose("t", "r", "w", {"a": 1}, 1.0, 1, noisy=False)
    assert db.best("t", "r", "w") == ({"a": 1}, 1.0)


def test_load_probe_sees_another_process():
    """The probe attributes CPU time of another busy process to 'others' (Linux only)."""
    import subprocess
    import sys
    import time

    from fluidml_tvm.schedules.measure import LoadProbe

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        with LoadProbe() as p:
            time.sleep(0.5)
    finally:
        busy.kill()
        busy.wait()
    assert p.load >= 0.8 / (os.cpu_count() or 1)


def test_analytic_cost_measures_nothing(tmp_path):
    model = gemm_model(M=64, N=64, K=128, trans_b=0)
    mod = _fused(model)
    p = FluidMLSchedule(TARGET, Options(cost="analytic", cache_dir=str(tmp_path)))
    with TARGET:
        p(mod)
    assert all(d.measured == 0 for d in p.decisions)
    assert not os.path.exists(os.path.join(tmp_path, CostDB.FILENAME))


# ---- fallbacks and reporting ----------------------------------------------------------------
def test_elementwise_kernel_is_parallel_and_vectorized(tmp_path):
    n = [h.make_node("Add", ["a", "b"], ["s"]), h.make_node("Relu", ["s"], ["y"])]
    vi = [h.make_tensor_value_info(x, TP.FLOAT, [64, 256]) for x in ("a", "b")]
    model = _model(n, vi, [h.make_tensor_value_info("y", TP.FLOAT, [64, 256])], [])
    out, dec = _schedule(model, tmp_path)
    (d,) = dec.values()
    assert d.rule == "injective"
    text = [f for gv, f in out.functions_items() if isinstance(f, tvm.tirx.PrimFunc)][0].script()
    assert "T.parallel" in text and "T.vectorized" in text


def test_unmatched_kernel_is_reported_by_name():
    from tvm.script import tirx as T

    @T.prim_func
    def opaque(a: T.handle):
        A = T.match_buffer(a, (4,), "float32")
        for i in range(4):
            A[i] = T.float32(0)

    mod = tvm.IRModule({"opaque_kernel": opaque})
    p = FluidMLSchedule(TARGET, Options(cost="analytic"))
    with pytest.warns(UserWarning, match="opaque_kernel"):
        with TARGET:
            p(mod)
    assert p.decisions[0].rule == "none"


# ---- per-target attributes --------------------------------------------------------------------
def test_vector_width_comes_from_the_target_not_the_host():
    avx512 = cpu_info({"kind": "llvm", "mcpu": "skylake-avx512"})
    avx2 = cpu_info({"kind": "llvm", "mcpu": "haswell"})
    neon = cpu_info({"kind": "llvm", "mcpu": "cortex-a72", "mtriple": "aarch64-linux-gnu",
                     "mattr": ["+neon"]})
    assert (avx512.isa, avx512.lanes(), avx512.vector_registers) == ("avx512", 16, 32)
    assert (avx2.isa, avx2.lanes(), avx2.vector_registers) == ("avx2", 8, 16)
    assert (neon.isa, neon.lanes(), neon.vector_registers) == ("neon", 4, 32)
    match, _ = mm.analyze(_matmul_func(128, 96, 64))
    for cpu in (avx512, avx2, neon):
        for cfg in mm.candidates(match, cpu, 8):
            assert cfg.mr * cfg.nv + 2 <= cpu.vector_registers
            assert 96 % (cfg.nv * cpu.lanes()) == 0


def test_aarch64_target_schedules_and_builds(tmp_path):
    """A board target is scheduled from its own attributes (NEON, 4 lanes) and cross-built;
    it cannot be measured here, so the analytic choice is used."""
    target = tvm.target.Target("raspberry-pi/4b-aarch64")
    mod = _fused(gemm_model(M=32, N=32, K=32, trans_b=0), target)
    p = FluidMLSchedule(target, Options(tune_trials=4, cache_dir=str(tmp_path)))
    with target:
        out = p(mod)
    dec = [d for d in p.decisions if d.rule == "matmul"]
    assert dec and dec[0].measured == 0 and dec[0].config["nv"] * 4 <= 32
    ex = tvm.compile(out, target, relax_pipeline=relax.get_pipeline("default"))
    assert ex is not None


def _matmul_func(M, N, K):
    A = te.placeholder((M, K), name="A")
    B = te.placeholder((K, N), name="B")
    k = te.reduce_axis((0, K), name="k")
    C = te.compute((M, N), lambda i, j: te.sum(A[i, k] * B[k, j], axis=k), name="C")
    return te.create_prim_func([A, B, C])


# ---- conv2d -----------------------------------------------------------------------------------
def conv_model(C=8, H=14, W=14, O=16, k=3, stride=1, pad=1, group=1, seed=0):  # noqa: E741
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((O, C // group, k, k)) * 0.1).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    OH, OW = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    n = [h.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], strides=[stride] * 2,
                     pads=[pad] * 4, group=group),
         h.make_node("Relu", ["c"], ["y"])]
    return _model(n, [h.make_tensor_value_info("x", TP.FLOAT, [1, C, H, W])],
                  [h.make_tensor_value_info("y", TP.FLOAT, [1, O, OH, OW])],
                  [nh.from_array(w, "w"), nh.from_array(b, "b")])


@pytest.mark.parametrize(
    "kw,rule",
    [
        (dict(), "conv2d"),  # 3x3, pad 1
        (dict(k=1, pad=0, O=32), "conv2d"),  # 1x1
        (dict(stride=2, H=16, W=16), "conv2d"),  # strided
        (dict(C=3, H=12, W=12), "conv2d"),  # RGB input layer
        (dict(C=16, O=16, group=16), "depthwise"),  # depthwise, 14 columns: one vector
        (dict(C=16, O=16, group=16, H=16, W=16), "depthwise"),  # 16 columns: 2 x 8 lanes
        (dict(C=16, O=16, group=16, H=16, W=16, stride=2), "depthwise"),  # strided
        (dict(C=16, O=32, group=8), "reduction"),  # grouped (2 channels a group): generic
    ],
)
def test_conv2d_matches_ort(tmp_path, kw, rule):
    model = conv_model(**kw)
    shape = [1, kw.get("C", 8), kw.get("H", 14), kw.get("W", 14)]
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    out = _compile_run(model, {"x": x}, _opts(tmp_path))
    np.testing.assert_allclose(out, _run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)
    _, dec = _schedule(model, tmp_path)
    assert [d.rule for d in dec.values() if "conv" in d.kernel] == [rule]


@pytest.mark.parametrize("epilogue", [True, False])
def test_pointwise_tile_over_rows_and_columns(epilogue):
    """1x1 stride-1 conv on a 14x14 map: a tile of positions that straddles rows (the rows x
    columns axis, conv1x1), with a bias+ReLU epilogue and without, matches ORT."""
    from fluidml_tvm.schedules import conv2d

    if epilogue:
        model = conv_model(C=16, H=14, W=14, O=48, k=1, pad=0)
    else:
        w = (np.random.default_rng(0).standard_normal((48, 16, 1, 1)) * 0.1).astype(np.float32)
        model = _model([h.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])],
                       [h.make_tensor_value_info("x", TP.FLOAT, [1, 16, 14, 14])],
                       [h.make_tensor_value_info("y", TP.FLOAT, [1, 48, 14, 14])],
                       [nh.from_array(w, "w")])
    mod = _fused(model)
    (gv,) = [gv for gv, f in mod.functions_items() if "conv" in gv.name_hint]
    m, _ = conv2d.analyze(mod[gv])
    assert m.rows == 14
    (tile,) = conv2d.candidates_pointwise(m, cpu_info(TARGET), 1)
    assert 14 % tile[0] != 0 and 196 % tile[0] == 0
    sch, why, pack = conv2d.schedule_conv2d(mod[gv], cpu_info(TARGET), {}, tile, fuse_rows=True)
    assert "rows x columns (196)" in why and pack is None
    mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    x = np.random.default_rng(3).standard_normal([1, 16, 14, 14]).astype(np.float32)
    ex = tvm.compile(mod, TARGET, relax_pipeline=cpu_generic.get_default_pipeline(TARGET))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, _run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_nhwc(stride):
    """NHWC depthwise (channels innermost): vector along the channels, every tile exact."""
    from tvm import topi

    from fluidml_tvm.schedules import depthwise

    X = te.placeholder((1, 12, 12, 32), name="X")
    W = te.placeholder((3, 3, 32, 1), name="W")
    Y = topi.nn.depthwise_conv2d_nhwc(X, W, stride, 1, 1)
    func = te.create_prim_func([X, W, Y])
    m, why = depthwise.analyze(func)
    assert m is not None and m.f_is_vector, why
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 12, 12, 32)).astype("f4")
    w = rng.standard_normal((3, 3, 32, 1)).astype("f4")
    shape = [int(d) for d in Y.shape]
    ref = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), TARGET)
    want = tvm.runtime.tensor(np.zeros(shape, "f4"))
    ref["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), want)
    for nv in depthwise.candidates(m, cpu_info(TARGET)):
        sch, why = depthwise.schedule_depthwise(func, cpu_info(TARGET), nv)
        assert "channels innermost" in why
        lib = tvm.compile(
            tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), TARGET)
        got = tvm.runtime.tensor(np.zeros(shape, "f4"))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), got)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nv", [1, 2])
def test_depthwise_tiles_compute_the_same(tmp_path, nv):
    """Each register tile of the depthwise rule (with the ReLU epilogue per tile) matches ORT,
    and fluidml.schedule_off=depthwise gives the kernel back to the generic rule."""
    from fluidml_tvm.schedules import depthwise

    model = conv_model(C=16, O=16, group=16, H=16, W=32)  # 2 x 16 lanes (AVX-512) divide W
    mod = _fused(model)
    (gv,) = [gv for gv, f in mod.functions_items() if "conv" in gv.name_hint]
    m, _ = depthwise.analyze(mod[gv])
    assert m is not None and m.v_extent == 32 and not m.f_is_vector
    sch, why = depthwise.schedule_depthwise(mod[gv], cpu_info(TARGET), nv)
    assert f"tile {nv} x 8 lanes" in why or f"tile {nv} x 16 lanes" in why
    mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    x = np.random.default_rng(2).standard_normal([1, 16, 16, 32]).astype(np.float32)
    ex = tvm.compile(mod, TARGET, relax_pipeline=cpu_generic.get_default_pipeline(TARGET))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, _run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)
    off = FluidMLSchedule(TARGET, _opts(tmp_path, schedule_off="depthwise"))
    with TARGET:
        off(_fused(model))
    assert [d.rule for d in off.decisions if "conv" in d.kernel] == ["reduction"]


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
    lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}),
                      TARGET)
    assert f"@{fn}f(" not in lib.mod.inspect_source("ll")  # no scalar libm call left
    x = np.linspace(lo, hi, 256).astype("f4")
    y = tvm.runtime.tensor(np.zeros(256, "f4"))
    lib["main"](tvm.runtime.tensor(x), y)
    ref = np.array([getattr(math, fn)(float(v)) for v in x])
    err = np.abs(y.numpy() - ref) / np.maximum(np.abs(ref), 1.0 if fn == "erf" else 1e-30)
    assert err.max() < tol


# ---- every kernel of the zoo models: scheduled == unscheduled ---------------------------------
@pytest.mark.parametrize("name", ["bert", "vgg11", "mobilenet"])
def test_every_zoo_kernel_computes_what_it_computed_before(name):
    """Each PrimFunc of a tiny zoo model, run alone on random inputs, gives the same output
    scheduled (constant weights packed as the pass packs them) as unscheduled."""
    from fluidml_tvm.schedules.fluidml_schedule import _constant_args
    from fluidml_tvm.schedules.measure import random_args
    from fluidml_tvm.tools import zoo

    model = zoo.build(name, size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    mod = from_onnx(model, shape_dict={k: list(v.shape) for k, v in feeds.items()},
                    keep_params_in_input=False)
    with TARGET:
        seq = cpu_generic.library_dispatch_passes(TARGET) + cpu_generic.legalize_passes(TARGET)
        mod = tvm.transform.Sequential(seq)(mod)
    consts = _constant_args(mod)
    p = FluidMLSchedule(TARGET, Options(cost="analytic"))
    cpu = cpu_info(TARGET)
    dev = tvm.cpu()
    checked = 0
    for gv, f in mod.functions_items():
        if not isinstance(f, tvm.tirx.PrimFunc):
            continue
        new, dec, pack = p._schedule_one(gv.name_hint, f, TARGET, cpu,
                                         consts.get(gv.name_hint, {}), None, False)
        assert new is not None, dec
        ref_lib = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}),
                              TARGET)
        new_lib = tvm.compile(tvm.IRModule({"main": new.with_attr("global_symbol", "main")}),
                              TARGET)
        args = random_args(f, dev, seed=1)
        new_args = []
        for i, x in enumerate(args[:-1]):
            arr = x.numpy()
            if pack and i in pack:
                arr = pack_array(arr, *pack[i])
            new_args.append(tvm.runtime.tensor(arr, dev))
        out = args[-1].numpy()
        new_args.append(tvm.runtime.tensor(np.zeros_like(out), dev))
        ref_lib["main"](*args)
        new_lib["main"](*new_args)
        ref = args[-1].numpy()
        np.testing.assert_allclose(new_args[-1].numpy(), ref, rtol=1e-4, atol=1e-4,
                                   err_msg=f"{gv.name_hint}: {dec}")
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("tile", [(4, 1, 0), (4, 1, 32), (2, 2, 32)])
def test_conv2d_tiles_and_reduction_blocking_compute_the_same(tile):
    from fluidml_tvm.schedules import conv2d
    from fluidml_tvm.schedules.measure import random_args

    mod = _fused(conv_model(C=64, H=8, W=8, O=32))  # 2 x 16 lanes (AVX-512) divide O
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    sch, why, pack = conv2d.schedule_conv2d(func, cpu_info(TARGET), {1: True}, tile)
    assert sch is not None, why
    assert ("reduction blocks of 32" in why) == (tile[2] == 32)
    dev = tvm.cpu()
    args = random_args(func, dev, seed=7)
    new_args = [tvm.runtime.tensor(pack_array(a.numpy(), *pack[i]) if i in pack else a.numpy())
                for i, a in enumerate(args[:-1])]
    new_args.append(tvm.runtime.tensor(np.zeros(args[-1].shape, "f4")))
    for f, a in ((func, args), (sch.mod["main"], new_args)):
        tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), TARGET)["main"](
            *a
        )
    np.testing.assert_allclose(new_args[-1].numpy(), args[-1].numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("src, mid, perm, tiled", [
    ((1, 32, 96), (1, 32, 3, 32), (0, 2, 3, 1), True),  # attention's K -> K^T
    ((64, 48), (64, 48), (1, 0), True),
    ((1, 32, 96), (1, 32, 3, 32), (0, 2, 1, 3), False),  # innermost dim stays: no tiling
])
def test_transpose_kernels_tile_and_compute_the_same(src, mid, perm, tiled):
    from fluidml_tvm.passes.layout_measure import reshape_transpose_variant
    from fluidml_tvm.schedules import injective

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
