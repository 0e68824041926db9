"""Depthwise kernels, channels innermost (NHWC) vs columns innermost (NCHW): the column tiles of
:func:`fluidml_tvm.schedules.rules.depthwise.nhwc_candidates` against the row-parallel NHWC
kernel they replace (``{"nv": n}`` without ``mr``, still built by ``schedule_depthwise``) and the
NCHW kernel, on the depthwise layers of MobileNetV2/V3, EfficientNet-B0, MNASNet and ConvNeXt.

Each shape (depthwise conv2d + bias + ReLU, constant weight) is built with the FluidML schedule
per candidate and timed interleaved (:func:`fluidml_tvm.schedules.measure.measure_funcs`, 3
rounds of 30 ms, best quiet round). Prints, and writes ``results/DATE-depthwise-nhwc.{md,json}``:
per shape the NCHW first tile, the old NHWC first tile, the new NHWC first tile and the fastest
new one, in us, and new-first / old-first.

    TVM_NUM_THREADS=2 python benchmarks/bench_depthwise_tiles.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (channels, output map, kernel, stride)
SHAPES = [
    (32, 112, 3, 1), (96, 56, 3, 2), (144, 56, 3, 1), (144, 28, 3, 2), (192, 28, 3, 1),
    (384, 14, 3, 1), (576, 14, 3, 1), (960, 7, 3, 1),  # MobileNetV2
    (48, 56, 3, 2), (72, 56, 3, 1), (72, 28, 5, 2), (120, 28, 5, 1), (240, 14, 5, 2),
    (480, 14, 5, 1), (480, 14, 3, 1), (576, 7, 5, 2), (1152, 7, 5, 1), (1152, 7, 3, 1),  # MNASNet
    (672, 14, 5, 1), (240, 28, 5, 1),  # EfficientNet-B0
    (96, 56, 7, 1), (192, 28, 7, 1), (384, 14, 7, 1), (768, 7, 7, 1),  # ConvNeXt-Tiny
    (88, 28, 3, 1), (16, 112, 3, 2),  # MobileNetV3-Small
]
QUICK = [(32, 112, 3, 1), (96, 56, 3, 2), (72, 28, 5, 2), (480, 14, 5, 1), (1152, 7, 5, 1),
         (768, 7, 7, 1)]


def shape_cell(shape) -> str:
    """A results table's first cell: ``C, map, kernel/stride``."""
    c, x, k, s = shape
    return f"{c}, {x}x{x}, {k}x{k}/{s}"


def depthwise_func(c, x, k, s, layout):
    from tvm import te, topi

    if layout == "NCHW":
        d = te.placeholder((1, c, x * s, x * s), "float32", "data")
        w = te.placeholder((c, 1, k, k), "float32", "weight")
        b = te.placeholder((1, c, 1, 1), "float32", "bias")
        y = topi.nn.group_conv2d_nchw(d, w, (s, s), (k // 2, k // 2), (1, 1), c)
    else:
        d = te.placeholder((1, x * s, x * s, c), "float32", "data")
        w = te.placeholder((k, k, c, 1), "float32", "weight")
        b = te.placeholder((1, 1, 1, c), "float32", "bias")
        y = topi.nn.depthwise_conv2d_nhwc(d, w, (s, s), (k // 2, k // 2), (1, 1))
    return te.create_prim_func([d, w, b, topi.nn.relu(topi.add(y, b))])


def bench_shape(shape, target, cpu, options, rounds):
    from fluidml_tvm.schedules.measure import measure_funcs
    from fluidml_tvm.schedules.rules import depthwise
    from fluidml_tvm.schedules.rules.base import Context

    rule = depthwise.DepthwiseRule()
    ctx = Context("k", target, cpu, options, const_args={1: True, 2: True})
    variants = []  # (label, func, match, config)
    fn = depthwise_func(*shape, "NCHW")
    m, _ = rule.analyze(fn, ctx)
    variants.append(("nchw", fn, m, rule.candidates(m, ctx)[0]))
    fn = depthwise_func(*shape, "NHWC")
    m, _ = rule.analyze(fn, ctx)
    variants.append(("old", fn, m, {"nv": depthwise.candidates(m, cpu, 1)[0]}))
    for i, c in enumerate(rule.candidates(m, ctx)):
        variants.append(("new" if i == 0 else "new-other", fn, m, c))
    built = [rule.build(f, mm, c, ctx) for _, f, mm, c in variants]
    found = measure_funcs(built, target, min_repeat_ms=30, repeat=rounds)
    us = [round(t.seconds * 1e6, 1) if t.seconds else None for t in found]
    rows = [{"variant": v[0], "config": v[3], "us": u} for v, u in zip(variants, us)]
    new = [r for r in rows if r["variant"].startswith("new") and r["us"]]
    best = min(new, key=lambda r: r["us"])
    get = {r["variant"]: r for r in rows}
    return {"shape": shape, "rows": rows, "nchw_us": get["nchw"]["us"],
            "old_us": get["old"]["us"], "old": get["old"]["config"],
            "new_us": get["new"]["us"], "new": get["new"]["config"],
            "best_us": best["us"], "best": best["config"],
            "new_over_old": round(get["new"]["us"] / get["old"]["us"], 3),
            "new_over_nchw": round(get["new"]["us"] / get["nchw"]["us"], 3)}


def cfg_str(c: dict) -> str:
    s = f"{c.get('mr', '-')}x{c['nv']}" if "mr" in c else f"nv{c['nv']}"
    return s + (f"/{c['vl']}" if "vl" in c else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 shapes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, HERE)
    from run_corpus import kernel_bench_shapes, write_md_json

    results, host = kernel_bench_shapes(
        HERE, QUICK if args.quick else SHAPES, bench_shape, args.rounds,
        lambda shape, r: f"{shape}: nchw {r['nchw_us']} old {r['old_us']} new {r['new_us']} "
                         f"best {r['best_us']} us (new/old {r['new_over_old']})")
    date = datetime.date.today().isoformat()
    name = args.name or f"{date}-depthwise-nhwc"
    g_old = statistics.geometric_mean([r["new_over_old"] for r in results])
    g_nchw = statistics.geometric_mean([r["new_over_nchw"] for r in results])
    lines = [f"# Depthwise kernels: NHWC column tiles vs the row-parallel NHWC kernel and NCHW "
             f"({date})", "",
             host,
             f"- method: `benchmarks/bench_depthwise_tiles.py`, {args.rounds} interleaved rounds "
             "of 30 ms per kernel, best quiet round; depthwise conv2d + bias + ReLU, constant "
             "weight; tiles written columns x vectors[/lanes] (nv: the old kernel's vectors)",
             f"- geometric mean new first tile / old first tile: {g_old:.3f}; new / NCHW first "
             f"tile: {g_nchw:.3f}", "",
             "| C, map, kernel/stride | NCHW us | old NHWC | us | new NHWC first | us | "
             "fastest new | us | new/old | new/NCHW |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {shape_cell(r['shape'])} | {r['nchw_us']} | {cfg_str(r['old'])} | "
                     f"{r['old_us']} | {cfg_str(r['new'])} | {r['new_us']} | "
                     f"{cfg_str(r['best'])} | {r['best_us']} | {r['new_over_old']} | "
                     f"{r['new_over_nchw']} |")
    print(write_md_json(args.out, name, lines, {"host": host, "results": results}))


if __name__ == "__main__":
    main()
