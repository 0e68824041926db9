"""Every register tile of the conv2d rule, timed on a family of conv shapes: where the analytic
first choice loses to another candidate, and by how much.

For each shape (NCHW conv2d with a constant weight, the kernel LegalizeOps makes: ``topi``'s
``conv2d_nchw``, plus bias and ReLU as FuseOps fuses them), the conv2d rule's candidates
(every dividing tile, the reduction-blocked ones, the padded ones) are built with the FluidML
schedule and timed interleaved (:func:`fluidml_tvm.schedules.measure.measure_funcs`, 3 rounds
of 40 ms, best quiet round). Prints, and writes ``results/DATE-conv-tiles.{md,json}``: per shape
the analytic first candidate, the fastest, their times, and each candidate's accumulator count.

    TVM_NUM_THREADS=2 python benchmarks/bench_conv_tiles.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (C in, F out, X map, kernel, stride): the conv layers of common CNN families (ResNet stages,
# VGG, 1x1 projections, a 7x7 stem, odd channel counts, 5x5 windows)
SHAPES = [
    (64, 64, 56, 3, 1), (128, 128, 28, 3, 1), (256, 256, 14, 3, 1), (512, 512, 7, 3, 1),
    (64, 128, 56, 3, 2), (128, 256, 28, 3, 2), (256, 512, 14, 3, 2),
    (32, 32, 112, 3, 1), (96, 96, 28, 3, 1), (192, 192, 14, 3, 1), (384, 384, 14, 3, 1),
    (48, 48, 28, 3, 1), (160, 160, 7, 3, 1),
    (64, 256, 56, 1, 1), (256, 64, 56, 1, 1), (128, 512, 28, 1, 1), (512, 128, 28, 1, 1),
    (256, 1024, 14, 1, 1), (1024, 256, 14, 1, 1), (512, 2048, 7, 1, 1), (256, 256, 14, 1, 1),
    (3, 64, 224, 7, 2), (64, 64, 28, 5, 1), (128, 128, 14, 5, 1),
]
QUICK = [(64, 64, 56, 3, 1), (128, 128, 28, 3, 1), (256, 256, 14, 3, 1), (512, 512, 7, 3, 1),
         (256, 1024, 14, 1, 1), (64, 64, 28, 5, 1)]


def conv_func(c, f, x, k, s):
    from tvm import te, topi

    data = te.placeholder((1, c, x * s, x * s), "float32", "data")
    w = te.placeholder((f, c, k, k), "float32", "weight")
    b = te.placeholder((1, f, 1, 1), "float32", "bias")
    y = topi.nn.conv2d_nchw(data, w, (s, s), (k // 2, k // 2), (1, 1))
    out = topi.nn.relu(topi.add(y, b))
    return te.create_prim_func([data, w, b, out])


def tile_of(cfg: dict, lanes: int) -> str:
    vl = cfg.get("vl", lanes)
    acc = cfg["mr"] * cfg["nv"]
    s = f"{cfg['mr']}x{cfg['nv']}" + (f"/{vl}" if vl != lanes else "")
    s += f" rb{cfg['rb']}" if cfg.get("rb") else ""
    s += " p" if cfg.get("p") else ""
    s += " cols" if cfg.get("cols") else ""
    return f"{s} ({acc} acc)"


def bench_shape(shape, target, cpu, options, rounds):
    from fluidml_tvm.schedules.measure import measure_funcs
    from fluidml_tvm.schedules.rules.base import Context
    from fluidml_tvm.schedules.rules.conv2d import (
        Conv2dRule,
        candidates,
        padded_candidates,
    )

    func = conv_func(*shape)
    rule = Conv2dRule()
    ctx = Context("k", target, cpu, options, const_args={1: True, 2: True})
    m, why = rule.analyze(func, ctx)
    if m is None:
        return {"shape": shape, "error": why}
    ranked = rule.candidates(m, ctx)  # the rule's own order, as the stage takes it
    lanes = cpu.lanes(32)
    extra = [{"mr": t[0], "nv": t[1], "rb": t[2]} for t in candidates(m, cpu, 99)]
    extra += [dict({"mr": t[0], "nv": t[1], "rb": t[2]}, **({"vl": t[3]} if t[3] != lanes
                                                            else {}))
              for t in padded_candidates(m, cpu, 6)]
    cfgs = list(ranked) + [c for c in extra if c not in ranked]
    built, kept = [], []
    for c in cfgs:
        try:
            built.append(rule.build(func, m, c, ctx))
            kept.append(c)
        except Exception as err:  # noqa: BLE001 - a tile that does not apply to this shape
            print(f"  {shape} {c}: {type(err).__name__}", file=sys.stderr)
    found = measure_funcs(built, target, min_repeat_ms=40, repeat=rounds)
    flops = m.flops
    rows = [{"config": c, "tile": tile_of(c, lanes), "rank": (ranked.index(c) if c in ranked
                                                              else None),
             "us": round(t.seconds * 1e6, 1) if t.seconds else None,
             "gflops": round(flops / t.seconds / 1e9, 1) if t.seconds else None,
             "load": round(t.load, 2)} for c, t in zip(kept, found)]
    ok = [r for r in rows if r["us"]]
    best = min(ok, key=lambda r: r["us"])
    first = next(r for r in rows if r["rank"] == 0)
    return {"shape": shape, "rows": rows, "first": first["tile"], "first_us": first["us"],
            "best": best["tile"], "best_us": best["us"],
            "first_over_best": round(first["us"] / best["us"], 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 shapes")
    ap.add_argument("--shapes", default=None,
                    help="'C,F,X,K,S;...' (in, out channels, output map, kernel, stride) instead "
                         "of the built-in set")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default=None)
    ap.add_argument("--target", default=None,
                    help="an llvm target this host can run, as JSON (default: the host's), "
                         "e.g. '{\"kind\": \"llvm\", \"mcpu\": \"haswell\"}' (AVX2)")
    args = ap.parse_args(argv)

    from fluidml_tvm.options import Options

    sys.path.insert(0, HERE)
    from run_corpus import kernel_bench_setup, write_md_json

    target, cpu, threads, commit, load0 = kernel_bench_setup(HERE, args.target)
    options = Options()
    results = []
    with target:
        shapes = QUICK if args.quick else SHAPES
        if args.shapes:
            shapes = [tuple(int(v) for v in sh.split(",")) for sh in args.shapes.split(";")]
        for shape in shapes:
            r = bench_shape(shape, target, cpu, options, args.rounds)
            results.append(r)
            print(f"{shape}: first {r.get('first')} {r.get('first_us')} us, best {r.get('best')} "
                  f"{r.get('best_us')} us ({r.get('first_over_best')})", flush=True)
    load1 = os.getloadavg()[0]
    date = datetime.date.today().isoformat()
    name = args.name or f"{date}-conv-tiles"
    head = [f"# conv2d register tiles: the analytic first choice vs the fastest ({date})", "",
            f"- commit `{commit}`; host {cpu.key()} ({os.cpu_count()} cores), "
            f"TVM_NUM_THREADS={threads}; 1-min load {load0:.2f} before, {load1:.2f} after",
            f"- method: `benchmarks/bench_conv_tiles.py`, {args.rounds} interleaved rounds of "
            "40 ms per candidate, best quiet round; conv2d NCHW + bias + ReLU, constant weight "
            "packed as the rule packs it", "",
            "| C->F, map, kernel/stride | analytic first | us | fastest | us | first/fastest "
            "| all candidates (us) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            head.append(f"| {r['shape']} | not matched: {r['error']} ||||||")
            continue
        c, f, x, k, s = r["shape"]
        allc = "; ".join(f"{row['tile']}: {row['us']}" for row in r["rows"])
        head.append(f"| {c}->{f}, {x}x{x}, {k}x{k}/{s} | {r['first']} | {r['first_us']} | "
                    f"{r['best']} | {r['best_us']} | {r['first_over_best']} | {allc} |")
    print(write_md_json(args.out, name, head, {
        "commit": commit, "host": cpu.key(), "threads": threads, "load": [load0, load1],
        "results": results}))


if __name__ == "__main__":
    main()
