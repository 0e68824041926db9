"""Models and helpers the schedule tests share: tiny ONNX models of the kernels a compile meets
(a BERT layer, Gemm with epilogues, batch matmuls, convolutions), ONNX Runtime as the reference,
the module the schedule slot sees, and the stage run on it with a temporary cache."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import tvm
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from tvm import relax, te
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm import pipeline
from fluidml_tvm.options import Options
from fluidml_tvm.schedules import FluidMLSchedule, host_target

TARGET = host_target()


def onnx_model(nodes, inputs, outputs, inits):
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
    return onnx_model(n, [h.make_tensor_value_info("x", TP.FLOAT, [1, S, H])],
                      [h.make_tensor_value_info("y", TP.FLOAT, [1, S, H])], init)


def gemm_model(M=32, N=48, K=40, trans_b=1, act="Relu", seed=0):
    """Gemm with transB (the NT form of a dense layer) and an activation epilogue."""
    rng = np.random.default_rng(seed)
    wshape = (N, K) if trans_b else (K, N)
    init = [nh.from_array(rng.standard_normal(wshape).astype(np.float32), "w"),
            nh.from_array(rng.standard_normal(N).astype(np.float32), "b")]
    n = [h.make_node("Gemm", ["x", "w", "b"], ["g"], transB=trans_b),
         h.make_node(act, ["g"], ["y"])]
    return onnx_model(n, [h.make_tensor_value_info("x", TP.FLOAT, [M, K])],
                      [h.make_tensor_value_info("y", TP.FLOAT, [M, N])], init)


def two_input_matmul(B=2, M=16, N=24, K=8, trans_b=True):
    """Batch matmul of two activations, B given transposed (attention's Q @ K^T)."""
    n = [h.make_node("Transpose", ["b"], ["bt"], perm=[0, 2, 1])] if trans_b else []
    n.append(h.make_node("MatMul", ["a", "bt" if trans_b else "b"], ["y"]))
    bshape = [B, N, K] if trans_b else [B, K, N]
    return onnx_model(n, [h.make_tensor_value_info("a", TP.FLOAT, [B, M, K]),
                          h.make_tensor_value_info("b", TP.FLOAT, bshape)],
                      [h.make_tensor_value_info("y", TP.FLOAT, [B, M, N])], [])


def run_ort(model, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def compile_run(model, feeds, options, target=TARGET):
    mod = from_onnx(model, keep_params_in_input=False)
    ex = tvm.compile(mod, target, relax_pipeline=pipeline.get_pipeline(target, options))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()]).numpy()


def fused(model, target=TARGET):
    """The module right after FuseTIR (what the schedule slot sees)."""
    mod = from_onnx(model, keep_params_in_input=False)
    seq = cpu_generic.library_dispatch_passes(target) + cpu_generic.legalize_passes(target)
    with target:
        return tvm.transform.Sequential(seq)(mod)


def schedule(model, tmp_path, trials=2, target=TARGET, **options):
    mod = fused(model, target)
    p = FluidMLSchedule(target, Options(tune_trials=trials, cache_dir=str(tmp_path), **options))
    with target:
        out = p(mod)
    return out, {d.subject: d for d in p.decisions}


def opts(tmp_path, **kw):
    return Options(layout=False, memory=False, tune_trials=kw.pop("tune_trials", 2),
                   cache_dir=str(tmp_path), **kw)


def conv_model(C=8, H=14, W=14, O=16, k=3, stride=1, pad=1, group=1, seed=0):  # noqa: E741
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((O, C // group, k, k)) * 0.1).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    OH, OW = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    n = [h.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], strides=[stride] * 2,
                     pads=[pad] * 4, group=group),
         h.make_node("Relu", ["c"], ["y"])]
    return onnx_model(n, [h.make_tensor_value_info("x", TP.FLOAT, [1, C, H, W])],
                      [h.make_tensor_value_info("y", TP.FLOAT, [1, O, OH, OW])],
                      [nh.from_array(w, "w"), nh.from_array(b, "b")])


def matmul_func(M, N, K):
    A = te.placeholder((M, K), name="A")
    B = te.placeholder((K, N), name="B")
    k = te.reduce_axis((0, K), name="k")
    C = te.compute((M, N), lambda i, j: te.sum(A[i, k] * B[k, j], axis=k), name="C")
    return te.create_prim_func([A, B, C])


def set_load(monkeypatch, load):
    """Make every timing round report ``load`` as the other processes' share of the CPU."""
    from fluidml_tvm.schedules import measure

    def exit_(self, *exc):
        self.load = load
        return False

    monkeypatch.setattr(measure.LoadProbe, "__exit__", exit_)


def build(func: tvm.tirx.PrimFunc, target=TARGET):
    """``func`` compiled alone (as ``main``)."""
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
