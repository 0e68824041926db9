"""Planned activation memory: FluidML arena vs stock StaticPlanBlockMemory vs live-set bound.

For each model: import with ``relax.frontend.onnx.from_onnx`` (weights as constants), run the
``fluidml`` pipeline up to its memory slot (schedules and layout off: they do not change which
tensors exist), then plan with ``FluidMLMemoryPlan`` (verified) and with the stock planner.

Numbers are bytes of ``R.memory.alloc_storage`` in the planned IR (what the VM allocates for
intermediates); the bound is the max over program points of the live intermediate bytes in the
binding order the planner uses (inputs, weights and outputs excluded). Nothing is executed.

With ``--run``, smaller models are also compiled with the planner on and off (stock
StaticPlanBlockMemory) and executed: latency (best of N, ``TVM_NUM_THREADS`` as set, default 2)
and the measured peak of live heap bytes during a run (glibc ``mallinfo2`` sampled around every VM
call with ``memory_cfg="naive"``, minus the value at the run's first VM call, the outputs of the
previous run released; includes the outputs, excludes workspaces a kernel frees before it returns;
best of the 2nd and 3rd runs). ONNX Runtime (no memory arena) is sampled by a polling
thread, which can miss short peaks: its number is a lower estimate.

Usage::

    python benchmarks/bench_memory.py [--models bert,gpt-neox,vgg11] [--size full|tiny]
        [--run] [--out benchmarks/results/memory.json]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import threading
import time

os.environ.setdefault("TVM_NUM_THREADS", "2")

from dataclasses import replace

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm.options import Options
from fluidml_tvm.passes.memory.lifetimes import (
    live_set_lower_bound,
    lower_to_memory_slot,
    memory_report,
    planned_bytes,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def build_model(name: str, size: str):
    """A zoo model if ``fluidml_tvm.tools.zoo`` has it, else the small builders of the tests."""
    try:
        from fluidml_tvm.tools import zoo

        return zoo.build(name, size=size, seed=0), f"fluidml_tvm.zoo {name} ({size})"
    except (ImportError, KeyError, ValueError) as err:
        sys.path.insert(0, os.path.join(HERE, "..", "tests", "passes"))
        import memory_models as mm

        fallback = {
            "bert": lambda: mm.bert_like(layers=12, seq=128, hidden=768, heads=12, ffn=3072),
            "vgg11": lambda: mm.vgg_like(size=224, cfg=mm.VGG11, classes=1000, fc=4096),
        }
        if name not in fallback:
            raise
        return fallback[name](), f"tests/passes/memory_models {name} (zoo: {err})"


def measure(name: str, size: str, plot_dir: str | None = None) -> dict:
    t0 = time.time()
    model, source = build_model(name, size)
    mod = from_onnx(model, keep_params_in_input=False)
    del model
    target = tvm.target.Target({"kind": "llvm"})
    opts = Options(schedule=False, layout=False)
    before = lower_to_memory_slot(mod, target, opts)
    t1 = time.time()
    rep = memory_report(before, target, opts, lowered=True)["main"]
    t2 = time.time()
    # Stock TVM plans the IR without FluidML's graph rewrites (split_projection): that is the
    # baseline of the ratios; "stock" is StaticPlanBlockMemory on the IR the planner sees.
    unsplit = lower_to_memory_slot(mod, target, replace(opts, split_projection=False))
    stock_tvm = planned_bytes(relax.transform.StaticPlanBlockMemory()(unsplit))["main"]
    rep.update(
        model=name,
        size=size,
        source=source,
        stock_tvm=stock_tvm,
        bound_unsplit=live_set_lower_bound(unsplit)["main"],
        planned_over_stock=rep["planned"] / stock_tvm if stock_tvm else None,
        planned_over_bound=(
            rep["planned"] / rep["bound_planned_order"] if rep["bound_planned_order"] else None
        ),
        bound_over_stock=rep["bound_planned_order"] / stock_tvm if stock_tvm else None,
        lower_seconds=round(t1 - t0, 1),
        plan_seconds=round(t2 - t1, 1),
    )
    rep["fallback"] = rep["fallback"][:10]
    if plot_dir:
        _plot(name, before, rep, plot_dir)
    return rep


def _plot(name: str, before, rep: dict, plot_dir: str) -> None:
    """Live intermediate bytes per binding, before (original order) and after planning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fluidml_tvm.passes.memory.lifetimes import memory_timeline
    from fluidml_tvm.passes.memory.plan import FluidMLMemoryPlan

    planned = FluidMLMemoryPlan()(before)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot([v / 1e6 for v in memory_timeline(before, "main")], label="live, original order")
    ax.plot([v / 1e6 for v in memory_timeline(planned, "main")], label="live, planned order")
    ax.axhline(rep["stock"] / 1e6, color="red", ls="--", label="StaticPlanBlockMemory")
    ax.axhline(rep["planned"] / 1e6, color="green", ls=":", label="FluidML arena")
    ax.set_xlabel("binding")
    ax.set_ylabel("MB")
    ax.set_title(f"{name}: activation memory")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(plot_dir, exist_ok=True)
    fig.savefig(os.path.join(plot_dir, f"memory_timeline_{name}.png"), dpi=100)
    plt.close(fig)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heap_bytes() -> int:
    m = _libc.mallinfo2()
    return m.uordblks + m.hblkhd


def run_models() -> dict:
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "passes"))
    import memory_models as mm

    from fluidml_tvm.tools import zoo

    return {
        "bert_like(2x128x256)": mm.bert_like(layers=2, seq=128, hidden=256, heads=4, ffn=1024),
        "vgg_like(64px)": mm.vgg_like(size=64, cfg=(32, "M", 64, "M", 128, 128, "M"), fc=256),
        "gpt-neox(tiny)": zoo.build("gpt-neox", size="tiny", seed=0),
    }


def _feeds(model):
    from fluidml_tvm.tools import zoo

    try:
        return zoo.random_inputs(model, seed=0)
    except Exception:  # noqa: BLE001 - models of the tests have one float input "x"
        import numpy as np

        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        return {"x": np.random.default_rng(0).standard_normal(dims).astype("float32")}


def run_one(name, model, repeats: int = 9) -> dict:
    import numpy as np
    import onnxruntime as ort
    from tvm import relax

    from fluidml_tvm.pipeline import get_pipeline

    feeds = _feeds(model)
    names = [i.name for i in model.graph.input if i.name in feeds]
    target = tvm.target.Target({"kind": "llvm"})
    mod = from_onnx(model, keep_params_in_input=False)
    row = {"model": name, "threads": os.environ["TVM_NUM_THREADS"]}
    outs, timed = {}, {}
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(feeds[n]) for n in names]
    for label, memory in (("fluidml", True), ("stock", False)):
        opts = Options(schedule=False, layout=False, memory=memory, verify=memory)
        ex = tvm.compile(mod, target, relax_pipeline=get_pipeline(target, opts))
        vm = relax.VirtualMachine(ex, dev, memory_cfg="naive")
        st = {"base": None, "peak": 0}

        def instrument(func, sym, before, ret, *a, _st=st):
            h = heap_bytes()
            if _st["base"] is None:
                _st["base"] = h
            _st["peak"] = max(_st["peak"], h)
            return 0

        vm.set_instrument(instrument)
        peaks = []
        for _ in range(3):  # the first run also allocates lazily initialised state
            st["base"], st["peak"] = None, 0
            out = vm["main"](*args)
            peaks.append(st["peak"] - st["base"])
            outs[label] = out.numpy() if hasattr(out, "numpy") else out[0].numpy()
            del out
            gc.collect()
        row[f"{label}_measured_peak"] = min(peaks[1:])
        timed[label] = relax.VirtualMachine(ex, dev)
        timed[label]["main"](*args)
    # Interleave the two so that load from other processes hits both alike.
    times = {k: [] for k in timed}
    for _ in range(repeats):
        for label, vm in timed.items():
            t = time.perf_counter()
            vm["main"](*args)
            times[label].append(time.perf_counter() - t)
    for label in timed:
        row[f"{label}_latency_ms"] = round(1e3 * min(times[label]), 3)
    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = False
    so.intra_op_num_threads = int(os.environ["TVM_NUM_THREADS"])
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref = sess.run(None, feeds)[0]
    np.testing.assert_allclose(outs["fluidml"], ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(outs["stock"], ref, rtol=1e-3, atol=1e-3)
    stop, peak = threading.Event(), {"v": 0}

    def poll():
        while not stop.is_set():
            peak["v"] = max(peak["v"], heap_bytes())

    base = heap_bytes()
    th = threading.Thread(target=poll)
    th.start()
    t = time.perf_counter()
    sess.run(None, feeds)
    ort_ms = time.perf_counter() - t
    stop.set()
    th.join()
    row["ort_sampled_peak"] = max(0, peak["v"] - base)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    row["ort_latency_ms"] = round(1e3 * min(times + [ort_ms]), 3)
    row["latency_fluidml_over_stock"] = round(
        row["fluidml_latency_ms"] / row["stock_latency_ms"], 3
    )
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bert,gpt-neox,vgg11")
    ap.add_argument("--size", default="full", choices=["full", "tiny"])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "memory.json"))
    ap.add_argument(
        "--run", action="store_true", help="also execute smaller models (latency, peak)"
    )
    ap.add_argument("--plot", default=None, help="write memory timeline PNGs to this folder")
    ap.add_argument("--skip-plan", action="store_true", help="only the --run part")
    args = ap.parse_args(argv)
    rows = []
    runs = []
    if args.run:
        for name, model in run_models().items():
            r = run_one(name, model)
            runs.append(r)
            print(
                f"{name:22s} measured peak fluidml {r['fluidml_measured_peak'] / 1e6:.3f} MB, "
                f"stock {r['stock_measured_peak'] / 1e6:.3f} MB, ORT (sampled) "
                f"{r['ort_sampled_peak'] / 1e6:.3f} MB; latency fluidml "
                f"{r['fluidml_latency_ms']} ms, stock {r['stock_latency_ms']} ms "
                f"(x{r['latency_fluidml_over_stock']}), ORT "
                f"{r['ort_latency_ms']} ms; {r['threads']} threads",
                flush=True,
            )
    if args.skip_plan:
        args.models = ""
    for name in filter(None, args.models.split(",")):
        r = measure(name, args.size, args.plot)
        rows.append(r)
        mb = 1e6
        print(
            f"{name:10s} planned {r['planned'] / mb:8.3f} MB  "
            f"stock TVM {r['stock_tvm'] / mb:8.3f} MB "
            f"(same IR {r['stock'] / mb:.3f})  bound without split {r['bound_unsplit'] / mb:.3f}  "
            f"bound {r['bound_planned_order'] / mb:8.3f} MB  planned/stock "
            f"{r['planned_over_stock']:.3f}  planned/bound {r['planned_over_bound']:.3f}  "
            f"(one arena {r['planned_one_arena'] / mb:.3f} MB = "
            f"{r['planned_one_arena'] / r['stock_tvm']:.3f}x stock; est. run-time peak "
            f"{r['runtime_peak_estimate'] / mb:.3f} MB; {r['inplace']} in-place; "
            f"plan {r['plan_seconds']} s)",
            flush=True,
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"plans": rows, "runs": runs}, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
