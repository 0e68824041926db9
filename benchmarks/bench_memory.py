"""Planned activation memory: FluidML arena vs stock StaticPlanBlockMemory vs live-set bound.

For each model: import with ``relax.frontend.onnx.from_onnx`` (weights as constants), run the
``fluidml`` pipeline up to its memory slot (schedules and layout off: they do not change which
tensors exist), then plan with ``FluidMLMemoryPlan`` (verified) and with the stock planner.

Numbers are bytes of ``R.memory.alloc_storage`` in the planned IR (what the VM allocates for
intermediates); the bound is the max over program points of the live intermediate bytes in the
binding order the planner uses (inputs, weights and outputs excluded). Nothing is executed.

Usage::

    python benchmarks/bench_memory.py [--models bert,gpt-neox,vgg11] [--size full|tiny]
        [--out benchmarks/results/memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import tvm
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm.options import Options
from fluidml_tvm.passes.memory_analysis import lower_to_memory_slot, memory_report

HERE = os.path.dirname(os.path.abspath(__file__))


def build_model(name: str, size: str):
    """A zoo model if ``fluidml_tvm.zoo`` has it, else the small builders of the tests."""
    try:
        from fluidml_tvm import zoo

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


def measure(name: str, size: str) -> dict:
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
    rep.update(
        model=name,
        size=size,
        source=source,
        planned_over_stock=rep["planned"] / rep["stock"] if rep["stock"] else None,
        planned_over_bound=(
            rep["planned"] / rep["bound_planned_order"] if rep["bound_planned_order"] else None
        ),
        bound_over_stock=rep["bound_planned_order"] / rep["stock"] if rep["stock"] else None,
        lower_seconds=round(t1 - t0, 1),
        plan_seconds=round(t2 - t1, 1),
    )
    rep["fallback"] = rep["fallback"][:10]
    return rep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bert,gpt-neox,vgg11")
    ap.add_argument("--size", default="full", choices=["full", "tiny"])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "memory.json"))
    args = ap.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        r = measure(name, args.size)
        rows.append(r)
        mb = 1e6
        print(
            f"{name:10s} planned {r['planned'] / mb:8.3f} MB  stock {r['stock'] / mb:8.3f} MB  "
            f"bound {r['bound_planned_order'] / mb:8.3f} MB  planned/stock "
            f"{r['planned_over_stock']:.3f}  planned/bound {r['planned_over_bound']:.3f}  "
            f"({r['strategy']}; plan {r['plan_seconds']} s)",
            flush=True,
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
