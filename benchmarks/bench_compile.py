"""Compile time as a new user meets it (issue 14): stock TVM, fluidml cold, warm, with imported
tuning records, and the latency of the budgeted library against an unbounded search.

    python benchmarks/bench_compile.py                       # zoo tiny + full, corpus models
    python benchmarks/bench_compile.py --models zoo:resnet50:full --corpus ''

Per model, each compile is a fresh ``python -m fluidml_tvm.cli compile`` process (wall time of
the process: interpreter, imports, model, compile, export - what a user waits for):

* ``stock``: ``--pass-config fluidml=0`` (TVM's own pipeline);
* ``cold``: fluidml with the default budget (``fluidml.tune_budget``) and a new, empty cache
  (``FLUIDML_TVM_CACHE``); it saves the tuning records it used;
* ``warm``: the same command again on that cache;
* ``records``: another new cache, ``--tuning-records`` from the cold compile;
* ``unbounded``: another new cache, ``--tune-budget -1`` (every kernel worth it measured);

then the cold (budgeted) and the unbounded libraries are loaded in one process and timed in
interleaved rounds (median of the per-round ratios, quartiles). ``TVM_NUM_THREADS`` is set for
every process (default 2). The machine's load average is recorded with every step: on a shared
machine the numbers compare variants, they are not headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ZOO = [f"zoo:{m}:{s}" for s in ("tiny", "full")
       for m in ("bert", "gpt-neox", "vgg11", "resnet50", "mobilenet")]
CORPUS_DIR = os.path.join(os.path.expanduser("~"), ".cache", "fluidml-tvm", "corpus")
CORPUS = "mobilenet_v3_small,resnet18,efficientnet_b0,distilbert"


def load() -> float:
    return os.getloadavg()[0]


def corpus_models(names: str) -> list[tuple[str, str | None]]:
    """``[(path, input shapes)]`` of the corpus models named (exported by the corpus work)."""
    out = []
    for name in [n for n in names.split(",") if n]:
        path = os.path.join(CORPUS_DIR, f"{name}.onnx")
        meta = os.path.join(CORPUS_DIR, f"{name}.json")
        if not os.path.exists(path):
            print(f"corpus model {name} not found under {CORPUS_DIR}; skipped", file=sys.stderr)
            continue
        shapes = None
        if os.path.exists(meta):
            with open(meta) as f:
                shapes = json.load(f).get("input_shapes")  # "image:[1,3,224,224]"
        out.append((path, shapes))
    return out


def compile_once(model, shapes, lib, cache, extra, threads, timeout) -> dict:
    """One compile in a fresh process; its wall time, the library's compile_seconds and the
    --timing table."""
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), FLUIDML_TVM_CACHE=cache,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "fluidml_tvm.cli", "compile", model, "-o", lib, "-q",
           "--timing", *extra]
    if shapes:
        cmd += ["--input-shapes", shapes]
    before = load()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    meta = json.load(open(os.path.splitext(lib)[0] + ".json"))
    timing = [ln for ln in p.stderr.splitlines() if ln.startswith("  ") and " s" in ln]
    return {"wall_s": round(wall, 2), "compile_s": meta.get("compile_seconds"),
            "load_before": round(before, 2), "load_after": round(load(), 2),
            "timing": timing[:24]}


def latency_ratio(lib_a: str, lib_b: str, threads: int, rounds: int) -> dict:
    """Median per-round latency ratio a/b, timed interleaved in this process."""
    import fluidml_tvm
    from fluidml_tvm.layout_verify import ratio_summary, time_rounds

    a = fluidml_tvm.load(lib_a, num_threads=threads)
    b = fluidml_tvm.load(lib_b, num_threads=threads)
    ta, tb = time_rounds([a, b], rounds, repeat=10)
    ratio, q25, q75 = ratio_summary(ta, tb)
    return {"ratio": round(ratio, 4), "q25": round(q25, 4), "q75": round(q75, 4),
            "a_ms": round(statistics.median(ta) * 1e3, 3),
            "b_ms": round(statistics.median(tb) * 1e3, 3), "rounds": rounds}


def bench_model(model, shapes, work, args) -> dict:
    name = os.path.basename(model).replace(":", "_").replace(".onnx", "")
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    records = os.path.join(d, "records.jsonl")
    budget = ["--tune-budget", str(args.budget)] if args.budget is not None else []
    caches = {k: tempfile.mkdtemp(prefix=f"{name}-{k}-", dir=d)
              for k in ("stock", "cold", "records", "unbounded")}
    row = {"model": model, "shapes": shapes}

    def step(key, cache, extra):
        print(f"  {name}: {key} ...", file=sys.stderr, flush=True)
        r = compile_once(model, shapes, os.path.join(d, f"{key}.so"), cache, extra,
                         args.threads, args.timeout)
        print(f"  {name}: {key} {r['wall_s']:.1f} s (load {r['load_before']})", file=sys.stderr,
              flush=True)
        row[key] = r

    step("stock", caches["stock"], ["--pass-config", "fluidml=0"])
    step("cold", caches["cold"], [*budget, "--save-tuning-records", records])
    step("warm", caches["cold"], budget)
    step("records", caches["records"], [*budget, "--tuning-records", records])
    if not args.no_unbounded:
        step("unbounded", caches["unbounded"], ["--tune-budget", "-1"])
        row["latency_budgeted_vs_unbounded"] = latency_ratio(
            os.path.join(d, "cold.so"), os.path.join(d, "unbounded.so"), args.threads,
            args.rounds)
    with open(records) as f:
        row["records"]["count"] = sum(1 for _ in f)
    stock = row["stock"]["wall_s"]
    row["ratios"] = {k: round(row[k]["wall_s"] / stock, 2)
                     for k in ("cold", "warm", "records", "unbounded") if k in row}
    return row


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                              capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        return "?"


def _load_note(rows, threads) -> str:
    """Quiet or loaded, from the 1-min load average before each step: a compile itself keeps
    up to ``threads`` cores busy, so a load up to threads + 0.5 is this benchmark's own."""
    loads = [r[k]["load_before"] for r in rows for k in ("stock", "cold", "warm", "records",
                                                          "unbounded") if k in r]
    if not loads:
        return ""
    if max(loads) <= threads + 0.5:
        return (f"**Quiet machine**: 1-min load {min(loads):.2f}-{max(loads):.2f} before the "
                "steps, the benchmark's own compiles.")
    return (f"**Loaded machine** (1-min load up to {max(loads):.2f}; per step in the JSON): the "
            "seconds compare variants run back to back, they are not headline numbers.")


def _budget(row) -> str:
    """The cold compile's tune budget, from its --timing table ("tune budget 5 s (auto), ...")."""
    for line in row.get("cold", {}).get("timing", []):
        if "tune budget" in line:
            return line.split("tune budget", 1)[1].split(",")[0].strip()
    return "-"


def markdown(rows, args, started) -> str:
    date = time.strftime("%Y-%m-%d")
    budget = ("the default (auto: each model's in the budget column)" if args.budget is None
              else f"{args.budget} s")
    out = [f"# Compile time: stock TVM vs fluidml cold / warm / with records ({date})",
           "",
           f"Host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
           f"TVM_NUM_THREADS={args.threads}, tune budget "
           f"{budget}; commit "
           f"`{_commit()}`. {_load_note(rows, args.threads)} Wall time of a fresh "
           "`fluidml-tvm compile` process each (`benchmarks/bench_compile.py`).",
           "",
           "| model | stock s | budget s | cold s (x stock) | warm s (x) | records s (x) "
           "| unbounded s (x) | latency budgeted / unbounded (p25-p75) | load |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | error: {r['error'][:80]} ||||||||")
            continue
        def cell(k, r=r):
            return f"{r[k]['wall_s']:.1f} ({r['ratios'][k]:.2f}x)" if k in r else "-"

        lat = r.get("latency_budgeted_vs_unbounded")
        lat = f"{lat['ratio']:.3f} ({lat['q25']:.3f}-{lat['q75']:.3f})" if lat else "-"
        loads = [r[k]["load_before"] for k in ("stock", "cold", "warm", "records") if k in r]
        out.append(f"| {os.path.basename(r['model'])} | {r['stock']['wall_s']:.1f} | "
                   f"{_budget(r)} | {cell('cold')} | {cell('warm')} | {cell('records')} | "
                   f"{cell('unbounded')} "
                   f"| {lat} | {min(loads):.1f}-{max(loads):.1f} |")
    out += ["", f"Total benchmark time {time.time() - started:.0f} s.", ""]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo specs or .onnx")
    p.add_argument("--corpus", default=CORPUS,
                   help=f"comma-separated corpus models under {CORPUS_DIR} ('' for none)")
    p.add_argument("--budget", type=int, default=None, help="--tune-budget (default: the default)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds")
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--no-unbounded", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--name", default=None)
    p.add_argument("--keep-work", action="store_true",
                   help="keep the libraries and caches of every compile (several GB for the "
                        "whole corpus) in the work folder named on stderr")
    args = p.parse_args(argv)
    started = time.time()
    models = [(m, None) for m in args.models.split(",") if m] + corpus_models(args.corpus)
    work = tempfile.mkdtemp(prefix="bench-compile-")
    print(f"work folder {work} ({'kept' if args.keep_work else 'deleted at the end'})",
          file=sys.stderr)
    rows = []
    stem = args.name or f"{time.strftime('%Y-%m-%d')}-compile-time"
    try:
        for model, shapes in models:
            try:
                rows.append(bench_model(model, shapes, work, args))
            except Exception as err:  # noqa: BLE001 - one model's failure is a row, not the end
                rows.append({"model": model, "error": str(err)})
            with open(os.path.join(args.out, stem + ".json"), "w") as f:
                json.dump({"rows": rows, "threads": args.threads, "budget": args.budget}, f,
                          indent=1)
            with open(os.path.join(args.out, stem + ".md"), "w") as f:
                f.write(markdown(rows, args, started))
    finally:
        # each model's four caches and libraries: ~12 GB for the 26 zoo and corpus models
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(rows, args, started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
