"""Whole-model latency with a schedule rule on and off, vs ONNX Runtime, interleaved in one process.

For each zoo model (full size): one ONNX Runtime session and one fluidml-tvm build per setting of
``fluidml.schedule_off`` (default: the depthwise rule on, then off), all run round by round
under a load probe (the share of the CPU other processes took, see
:class:`fluidml_tvm.schedules.measure.LoadProbe`); each keeps its best quiet round (else its best
round). Outputs are checked against ONNX Runtime. 2 threads for every engine.

    python benchmarks/bench_conv_rules.py [--models mobilenet resnet50] [--off "" depthwise]
        [--rounds 5] [--seconds 1.0] [--cost measured]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

THREADS = 2
os.environ["TVM_NUM_THREADS"] = str(THREADS)  # before TVM's runtime starts its thread pool

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tvm  # noqa: E402
from rounds import pick, timed_round  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from fluidml_tvm import pipeline  # noqa: E402
from fluidml_tvm.options import Options  # noqa: E402
from fluidml_tvm.schedules import host_target  # noqa: E402
from fluidml_tvm.tools import zoo  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["mobilenet", "resnet50"])
    ap.add_argument("--off", nargs="*", default=["", "depthwise"],
                    help="fluidml.schedule_off values, one build each")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="per engine per round")
    ap.add_argument("--cost", default="measured")
    ap.add_argument("--trials", type=int, default=8)
    args = ap.parse_args(argv)
    target = host_target()
    print(f"target {target}  threads {THREADS}  cost {args.cost}  trials {args.trials}  "
          f"cache {Options().cache_dir}")
    for name in args.models:
        model = zoo.build(name, "full")
        feeds = zoo.random_inputs(model, seed=0)
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        ref = sess.run(None, feeds)[0]
        engines = {"ort": lambda sess=sess, feeds=feeds: sess.run(None, feeds)}
        for off in args.off:
            opts = Options(cost=args.cost, tune_trials=args.trials, schedule_off=off)
            t0 = time.time()
            mod = from_onnx(model, keep_params_in_input=False)
            ex = tvm.compile(mod, target, relax_pipeline=pipeline.get_pipeline(target, opts))
            vm = relax.VirtualMachine(ex, tvm.cpu())
            arrays = [tvm.runtime.tensor(v) for v in feeds.values()]
            out = vm["main"](*arrays)
            out = (out[0] if isinstance(out, (list, tuple)) else out).numpy()
            err = float(np.abs(out - ref).max() / (np.abs(ref).max() + 1e-9))
            label = f"fluidml off={off or '-'}"
            print(f"{name}: compiled {label} in {time.time() - t0:.1f} s, rel. err vs ORT "
                  f"{err:.1e}")
            sys.stdout.flush()
            engines[label] = lambda vm=vm, arrays=arrays: vm["main"](*arrays)
        rounds = {k: [] for k in engines}
        for _ in range(args.rounds):
            for k, fn in engines.items():
                rounds[k].append(timed_round(fn, args.seconds))
        t_ort = pick(rounds["ort"])[0]
        for k in engines:
            t, q, worst = pick(rounds[k])
            print(f"  {name:10s} {k:28s} {t * 1e3:8.2f} ms  x ORT {t / t_ort:5.2f}  "
                  f"quiet rounds {q}/{args.rounds}, max load {worst:.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
