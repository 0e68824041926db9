"""NCHW depthwise kernels: tiles of several output rows (``depthwise_tiles.row_tile``) against the
one-row tile they are built on and the flat kernel, on the depthwise layers of MobileNetV2/V3,
EfficientNet-B0, MNASNet and ConvNeXt (the shapes of ``bench_depthwise_tiles.py``).

Per shape (depthwise conv2d + bias + ReLU, NCHW, the rule's analysis): the rule's first
candidate (the row-tiled tile where one applies), the same tile over one row, and the flat kernel
where it applies. Each is built with the FluidML schedule and timed in interleaved rounds two
ways: warm (the same input every call: ``measure_funcs``, best quiet round) and cold (24 input
sets in turn, ~ the input a model's previous kernel left in another core's cache, 5
interleaved rounds, best round). Prints, and writes ``results/DATE-depthwise-rows.{md,json}``:
us per variant and rows / one row.

    TVM_NUM_THREADS=2 python benchmarks/bench_depthwise_rows.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_depthwise_tiles import QUICK, SHAPES, depthwise_func, shape_cell  # noqa: E402


def cold_us(fns, arg_sets, rounds: int = 5, calls: int = 480) -> list[float]:
    """Per function, the best round's us per call with its argument sets used in turn; the
    functions interleaved round by round."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, (fn, sets) in enumerate(zip(fns, arg_sets)):
            for a in sets:
                fn(*a)
            t0 = time.perf_counter()
            n = 0
            while n < calls:
                for a in sets:
                    fn(*a)
                n += len(sets)
            best[i] = min(best[i], (time.perf_counter() - t0) / n * 1e6)
    return best


def bench_shape(shape, target, cpu, options, rounds):
    import tvm

    from fluidml_tvm.schedules.measure import measure_funcs, random_args
    from fluidml_tvm.schedules.rules import depthwise
    from fluidml_tvm.schedules.rules.base import Context

    rule = depthwise.DepthwiseRule()
    ctx = Context("k", target, cpu, options, const_args={1: True, 2: True})
    fn = depthwise_func(*shape, "NCHW")
    m, _ = rule.analyze(fn, ctx)
    first = rule.candidates(m, ctx)[0]
    variants = [("first", first)]
    if "mr" in first:
        variants.append(("one row", {k: v for k, v in first.items() if k != "mr"}))
    if m.flat:
        variants.append(("flat", {"nv": 0, "flat": 1}))
    built = [rule.build(fn, m, c, ctx) for _, c in variants]
    warm = measure_funcs(built, target, min_repeat_ms=30, repeat=rounds)
    dev = tvm.cpu()
    libs = [tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}),
                        target=target).jit()["main"] for f in built]
    sets = [[random_args(f, dev, seed=i) for i in range(24)] for f in built]
    cold = cold_us(libs, sets)
    rows = [{"variant": v, "config": c, "warm_us": round(w.seconds * 1e6, 1),
             "cold_us": round(t, 1)} for (v, c), w, t in zip(variants, warm, cold)]
    get = {r["variant"]: r for r in rows}
    out = {"shape": shape, "rows": rows, "first": first}
    if "one row" in get:
        out["warm_ratio"] = round(get["first"]["warm_us"] / get["one row"]["warm_us"], 3)
        out["cold_ratio"] = round(get["first"]["cold_us"] / get["one row"]["cold_us"], 3)
    return out


def cfg_str(c: dict) -> str:
    if c.get("flat"):
        return "flat"
    s = f"nv{c['nv']}" + (f"/{c['vl']}" if "vl" in c else "")
    return (f"{c['mr']} rows x " + s) if "mr" in c else s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 shapes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    from run_corpus import kernel_bench_shapes, write_md_json

    results, host = kernel_bench_shapes(
        HERE, QUICK if args.quick else SHAPES, bench_shape, args.rounds,
        lambda shape, r: f"{shape} " + " ".join(
            f"{x['variant']} {cfg_str(x['config'])}: {x['warm_us']} / {x['cold_us']} us"
            for x in r["rows"]))
    date = datetime.date.today().isoformat()
    name = args.name or f"{date}-depthwise-rows"
    tiled = [r for r in results if "warm_ratio" in r]
    g_w = statistics.geometric_mean([r["warm_ratio"] for r in tiled]) if tiled else None
    g_c = statistics.geometric_mean([r["cold_ratio"] for r in tiled]) if tiled else None
    lines = [f"# NCHW depthwise kernels: tiles of several rows vs one row ({date})", "",
             host,
             "- method: `benchmarks/bench_depthwise_rows.py`; depthwise conv2d + bias + ReLU, "
             f"constant weight; warm: {args.rounds} interleaved rounds of 30 ms, best quiet "
             "round; cold: 24 input sets in turn, 5 interleaved rounds, best round",
             f"- {len(tiled)} of {len(results)} shapes take a row tile; geometric mean rows / "
             f"one row: warm {g_w:.3f}, cold {g_c:.3f}" if tiled else "- no row tiles", "",
             "| C, map, kernel/stride | first tile | warm us | cold us | one row warm | cold | "
             "flat warm | cold | rows/one row warm | cold |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        get = {x_["variant"]: x_ for x_ in r["rows"]}
        one, flat = get.get("one row", {}), get.get("flat", {})
        lines.append(
            f"| {shape_cell(r['shape'])} | {cfg_str(r['first'])} | {get['first']['warm_us']} "
            f"| {get['first']['cold_us']} | {one.get('warm_us', '-')} | {one.get('cold_us', '-')}"
            f" | {flat.get('warm_us', '-')} | {flat.get('cold_us', '-')} | "
            f"{r.get('warm_ratio', '-')} | {r.get('cold_ratio', '-')} |")
    print(write_md_json(args.out, name, lines, {"host": host, "results": results}))


if __name__ == "__main__":
    main()
