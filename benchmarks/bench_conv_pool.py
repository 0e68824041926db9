"""conv+ReLU+max-pool fusion (``fluidml.fuse_conv_pool``): planned memory and latency, on vs off.

``--memory``: each model (``fluidml_tvm.tools.zoo``, full size unless ``--size``) is imported and
lowered by the ``fluidml`` pipeline up to its memory slot with the schedule stage on (the fusion
needs it; ``fluidml.cost=analytic``, layout stage off: neither changes which tensors exist),
fusion on and off, then planned by ``FluidMLMemoryPlan`` (verified) and by the stock
``StaticPlanBlockMemory``. Also reported: the largest buffer a kernel allocates for itself
(``kernel workspace``: padded inputs, packed weights, the fused kernels' conv tiles), which no
planner sees: bytes allocated outside parallel loops plus ``threads`` x the bytes allocated
inside one parallel iteration, from the lowered TensorIR; ``live_plus_workspace_peak`` is the
largest, over kernel calls, of the live intermediates (binding order) plus that kernel's
workspace: an estimate of the activation peak at run time that the planned bytes do not show.

``--latency``: the model compiled with fusion on and off (full pipeline, ``fluidml.cost`` as
given, default measured, cache in ``$FLUIDML_TVM_CACHE``), both loaded in this process and timed
interleaved: ``--rounds`` rounds, each one batch of ``--repeat`` runs of each variant in
alternating order; the ratio is per round (fused / unfused), the median and the range reported.

Usage::

    python benchmarks/bench_conv_pool.py --memory [--models vgg11,vgg16] [--size full]
    python benchmarks/bench_conv_pool.py --latency [--models vgg11] [--rounds 7] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace

os.environ.setdefault("TVM_NUM_THREADS", "2")

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm.options import Options
from fluidml_tvm.passes.memory.lifetimes import (
    collect_lifetimes,
    live_set_lower_bound,
    lower_to_memory_slot,
    memory_report,
    memory_timeline,
    planned_bytes,
)
from fluidml_tvm.tools import zoo

THREADS = int(os.environ["TVM_NUM_THREADS"])


def _allocs(stmt, in_par: bool, out: list) -> None:
    t = tvm.tirx
    if isinstance(stmt, t.SeqStmt):
        for s in stmt.seq:
            _allocs(s, in_par, out)
    elif isinstance(stmt, t.For):
        _allocs(stmt.body, in_par or stmt.kind == t.ForKind.PARALLEL, out)
    elif isinstance(stmt, t.IfThenElse):
        _allocs(stmt.then_case, in_par, out)
        if stmt.else_case is not None:
            _allocs(stmt.else_case, in_par, out)
    elif isinstance(stmt, t.AllocBuffer):
        n = 1
        for d in stmt.buffer.shape:
            n *= int(d)
        out.append((stmt.buffer.name, n * tvm.runtime.DataType(stmt.buffer.dtype).bits // 8,
                    in_par))
    elif getattr(stmt, "body", None) is not None:
        _allocs(stmt.body, in_par, out)


def kernel_workspaces(mod: tvm.IRModule) -> dict[str, int]:
    """Bytes each scheduled PrimFunc allocates for itself (see the module doc)."""
    s = tvm.s_tir.transform
    lower = tvm.transform.Sequential([
        s.LowerInitBlock(), s.PlanAndUpdateBufferAllocationLocation(),
        s.ConvertBlocksToOpaque(), s.CompactBufferAllocation(), s.LowerOpaqueBlock(),
    ])
    out = {}
    for gv, f in mod.functions_items():
        if not isinstance(f, tvm.tirx.PrimFunc):
            continue
        low = lower(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}))["main"]
        found: list = []
        _allocs(low.body, False, found)
        out[gv.name_hint] = sum(b * (THREADS if par else 1) for _, b, par in found)
    return out


def memory(name: str, size: str) -> dict:
    model = zoo.build(name, size=size, seed=0)
    mod = from_onnx(model, keep_params_in_input=False)
    del model
    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})
    base = Options(layout=False, cost="analytic")
    row = {"model": name, "size": size}
    for fuse in (False, True):
        t0 = time.time()
        opts = replace(base, fuse_conv_pool=fuse)
        before = lower_to_memory_slot(mod, target, opts)
        rep = memory_report(before, target, opts, lowered=True)["main"]
        ws = kernel_workspaces(before)
        top = max(ws, key=ws.get)
        # live intermediates at each kernel call + the workspace that kernel allocates
        life = collect_lifetimes(before, "main")
        timeline = memory_timeline(before, "main")
        with_ws = 0
        for i, bnd in enumerate(life.bindings):
            op = getattr(bnd.value, "op", None)
            extra = ws.get(op.name_hint, 0) if isinstance(op, tvm.ir.GlobalVar) else 0
            with_ws = max(with_ws, timeline[i] + extra)
        key = "fused" if fuse else "unfused"
        row[key] = {
            "planned": rep["planned"],
            "stock": planned_bytes(relax.transform.StaticPlanBlockMemory()(before))["main"],
            "bound": live_set_lower_bound(before)["main"],
            "kernel_workspace_max": ws[top],
            "kernel_workspace_max_kernel": top,
            "live_plus_workspace_peak": with_ws,
            "seconds": round(time.time() - t0, 1),
        }
        print(name, key, row[key], flush=True)
    return row


def latency(name: str, size: str, rounds: int, repeat: int, cost: str) -> dict:
    import numpy as np

    import fluidml_tvm

    model = zoo.build(name, size=size, seed=0)
    inputs = zoo.random_inputs(model, size=size)
    loaded = {}
    outs = {}
    for fuse in (0, 1):
        t0 = time.time()
        c = fluidml_tvm.compile(model, "x86", pass_config=[
            f"fluidml.fuse_conv_pool={fuse}", f"fluidml.cost={cost}"])
        loaded[fuse] = c.load()
        outs[fuse] = list(loaded[fuse].run(inputs).values())
        print(f"compiled fuse={fuse} in {time.time() - t0:.0f} s; planned {c.planned_memory}",
              flush=True)
        if fuse:
            rep = c.report()
            print(rep[rep.index("## fuse_conv_pool"):rep.index("## memory")], flush=True)
    err = max(float(np.abs(a - b).max()) for a, b in zip(outs[0], outs[1]))
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, inputs)
    ort_err = {f: max(float(np.abs(a - r).max()) for a, r in zip(outs[f], ref)) for f in outs}
    ort_scale = max(float(np.abs(r).max()) for r in ref)
    times = {0: [], 1: []}
    ratios = []
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        best = {}
        for fuse in order:
            best[fuse] = min(loaded[fuse].time(inputs, repeat=repeat))
            times[fuse].append(best[fuse])
        ratios.append(best[1] / best[0])
    row = {
        "model": name, "size": size, "threads": THREADS, "rounds": rounds, "repeat": repeat,
        "cost": cost, "unfused_ms_best": min(times[0]) * 1e3, "fused_ms_best": min(times[1]) * 1e3,
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
        "ratio_max": max(ratios), "ratio_of_bests": min(times[1]) / min(times[0]),
        "max_abs_diff_fused_vs_unfused": err,
        "max_abs_diff_vs_ort": {"unfused": ort_err[0], "fused": ort_err[1]},
        "ort_output_scale": ort_scale,
        "load": os.getloadavg(),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--models", default="vgg11,vgg16")
    ap.add_argument("--size", default="full")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cost", default="measured")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = []
    print(f"load average {os.getloadavg()}, TVM_NUM_THREADS={THREADS}", flush=True)
    for name in args.models.split(","):
        if args.memory:
            rows.append(memory(name, args.size))
        if args.latency:
            rows.append(latency(name, args.size, args.rounds, args.repeat, args.cost))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
