"""fp32 MatMul GFLOP/s: fluidml-tvm's scheduled kernel vs ONNX Runtime's MatMul, same run.

Each shape is one ONNX MatMul ``[M, K] x [K, N]`` with a constant weight (a dense layer), compiled
with the ``fluidml`` pipeline (candidates measured with ``--trials``, cached in ``--cache``) and
run through the Relax VM; ONNX Runtime runs the same model. Both use 2 threads
(``TVM_NUM_THREADS=2`` is set before TVM's runtime starts; ORT ``intra_op_num_threads=2``).
Timings are interleaved, round by round, and each engine keeps its best round, so load from other
processes on a shared machine hits both alike; the ratio is the number to read. Each round runs
under a load probe (the share of the CPU other processes took meanwhile,
:class:`fluidml_tvm.schedules.measure.LoadProbe`): an engine's best *quiet* round is kept where it
has one, and the table says how many rounds of each engine were quiet (``q``) and the worst load
seen, so a ratio measured on a loaded machine says so.

    python benchmarks/bench_matmul.py [--trials 8] [--rounds 7] [--cache DIR] [--shapes 128x768x768]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

THREADS = 2
os.environ["TVM_NUM_THREADS"] = str(THREADS)  # before TVM's runtime starts its thread pool

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402
from rounds import pick, timed_round  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from fluidml_tvm import decisions, pipeline  # noqa: E402
from fluidml_tvm.instruments import CaptureAfter  # noqa: E402
from fluidml_tvm.options import Options  # noqa: E402
from fluidml_tvm.schedules import host_target  # noqa: E402

SHAPES = [(128, 768, 768), (128, 3072, 768), (128, 768, 3072), (1024, 1024, 1024)]  # M, N, K


def matmul_model(M, N, K, seed=0):
    w = np.random.default_rng(seed).standard_normal((K, N)).astype(np.float32)
    g = h.make_graph(
        [h.make_node("MatMul", ["a", "w"], ["c"])], "mm",
        [h.make_tensor_value_info("a", TP.FLOAT, [M, K])],
        [h.make_tensor_value_info("c", TP.FLOAT, [M, N])], [nh.from_array(w, "w")],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def matmul_decision(mod) -> str:
    """The schedule chosen for the MatMul kernel, from the schedule stage's decisions."""
    found = [d for d in decisions.from_module(mod, "schedule") or [] if d.choice == "matmul"]
    return found[0].reason if found else "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8, help="candidates measured per kernel")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.25, help="per engine per round")
    ap.add_argument("--cache", default=None, help="measurement cache dir (default: a fresh one)")
    ap.add_argument("--shapes", nargs="*", default=None, help="MxNxK ...")
    args = ap.parse_args(argv)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    cache = args.cache or tempfile.mkdtemp(prefix="fluidml-bench-")
    target = host_target()
    opts = Options(tune_trials=args.trials, cache_dir=cache)
    print(f"target {target}  threads: TVM {THREADS}, ORT {THREADS}  trials/kernel {args.trials}"
          f"  cache {cache}")
    print(f"{'M x N x K':>18} {'compile s':>9} {'fluidml GF/s':>12} {'ORT GF/s':>9} {'ratio':>6}"
          f"  quiet rounds (fluidml/ORT of {args.rounds}), max load   schedule")
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    ratios = []
    for M, N, K in shapes:
        model = matmul_model(M, N, K)
        t0 = time.time()
        mod = from_onnx(model, keep_params_in_input=False)
        cap = CaptureAfter(["FluidMLSchedule"])
        with tvm.transform.PassContext(instruments=[cap]):
            ex = tvm.compile(mod, target, relax_pipeline=pipeline.get_pipeline(target, opts))
        compile_s = time.time() - t0
        vm = relax.VirtualMachine(ex, tvm.cpu())
        a = np.random.default_rng(1).standard_normal((M, K)).astype(np.float32)
        a_tvm = tvm.runtime.tensor(a)
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        ref = sess.run(None, {"a": a})[0]
        out = vm["main"](a_tvm).numpy()
        err = float(np.abs(out - ref).max() / (np.abs(ref).max() + 1e-9))
        run_tvm = functools.partial(vm["main"], a_tvm)
        run_ort = functools.partial(sess.run, None, {"a": a})
        t_tvm, t_ort = [], []
        for _ in range(args.rounds):
            t_tvm.append(timed_round(run_tvm, args.seconds))
            t_ort.append(timed_round(run_ort, args.seconds))
        flops = 2.0 * M * N * K
        (bt, qt, lt), (bo, qo, lo) = pick(t_tvm), pick(t_ort)
        g_tvm, g_ort = flops / bt / 1e9, flops / bo / 1e9
        ratios.append(g_tvm / g_ort)
        print(f"{f'{M}x{N}x{K}':>18} {compile_s:9.1f} {g_tvm:12.1f} {g_ort:9.1f} "
              f"{g_tvm / g_ort:6.2f}  {qt}/{qo}, {max(lt, lo):.2f}   {matmul_decision(cap.mod)}"
              + (f"  REL.ERR {err:.1e}" if err > 1e-4 else ""))
        sys.stdout.flush()
    geo = float(np.exp(np.mean(np.log(ratios))))
    print(f"geomean fluidml/ORT GFLOP/s ratio: {geo:.2f}")


if __name__ == "__main__":
    main()
