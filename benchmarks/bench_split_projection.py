"""Latency and memory of one FluidML graph rewrite on vs off (default: FluidMLSplitProjection on
GPT-NeoX-small; ``--key fluidml.residual_order`` for FluidMLResidualOrder).

Both variants are compiled with the default fluidml pipeline (measured schedules, cache in
``FLUIDML_TVM_CACHE``), exported, loaded into this one process and timed interleaved: each round
runs "on" and "off" once, alternating which goes first, so load from other processes hits both
alike. Reported: min and median of the per-round times and their ratios (on / off), the planned
activation bytes and live-set bound of each, and the max abs difference from ONNX Runtime.

Usage::

    python benchmarks/bench_split_projection.py [--model zoo:gpt-neox:full] [--rounds 40]
        [--key fluidml.split_projection]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:gpt-neox:full")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--key", default="fluidml.split_projection", help="the kill switch to flip")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from fluidml_tvm.compiler import compile as compile_model
    from fluidml_tvm.runtime import load
    from fluidml_tvm.tools import zoo

    model, _ = zoo.resolve(args.model)
    feeds = zoo.random_inputs(model, seed=0)
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(os.environ["TVM_NUM_THREADS"])
    ref = ort.InferenceSession(model.SerializeToString(), so,
                               providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    work = tempfile.mkdtemp(prefix="fluidml-split-")
    models, info = {}, {}
    for label, flag in (("on", 1), ("off", 0)):
        t0 = time.perf_counter()
        c = compile_model(model, target="x86", pass_config=[f"{args.key}={flag}"])
        path = c.export(os.path.join(work, f"{label}.so"))
        info[label] = {"compile_s": round(time.perf_counter() - t0, 1),
                       "planned_bytes": sum((c.planned_memory or {}).values()),
                       "bound_bytes": sum((c.memory_bound or {}).values())}
        if label == "on":
            stage = args.key.split(".", 1)[1]
            info["report"] = c.reports.get(stage, "")[:2000]
        del c
        models[label] = load(path, num_threads=int(os.environ["TVM_NUM_THREADS"]))
        out = list(models[label].run(feeds).values())[0]
        info[label]["max_abs_diff_vs_ort"] = float(np.abs(out - ref).max())
    arrays = {k: m._arrays(feeds) for k, m in models.items()}
    for k, m in models.items():  # warm-up
        m.vm["main"](*arrays[k])
    times = {k: [] for k in models}
    for r in range(args.rounds):
        for k in (("on", "off") if r % 2 == 0 else ("off", "on")):
            t = time.perf_counter()
            models[k].vm["main"](*arrays[k])
            times[k].append(time.perf_counter() - t)
    for k, ts in times.items():
        info[k].update(min_ms=round(1e3 * min(ts), 3), median_ms=round(1e3 * np.median(ts), 3))
    info["ratio_min"] = round(info["on"]["min_ms"] / info["off"]["min_ms"], 3)
    info["ratio_median"] = round(info["on"]["median_ms"] / info["off"]["median_ms"], 3)
    info.update(model=args.model, key=args.key, rounds=args.rounds,
                threads=os.environ["TVM_NUM_THREADS"], loadavg=os.getloadavg())
    print(json.dumps(info, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(info, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
