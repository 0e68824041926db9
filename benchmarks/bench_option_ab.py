"""A/B of one fluidml option on corpus models: the same code, ``--pass-config KEY=A`` vs
``KEY=B``, interleaved.

    python benchmarks/bench_option_ab.py fluidml.vector_reductions 0 1 \
        --models whisper_tiny_encoder,vit_b_16,distilbert,t5_small_encoder

For each model, both variants are compiled with one fresh cost database (the first compile
measures; the second takes the same cached choices, so the option is the only difference), then
timed in ``--rounds`` rounds, each a fresh process per variant (``corpus_engines.py``, numpy in
and out, as ``run_corpus.py`` times), the order alternating between rounds; ONNX Runtime is
timed in every round too and both variants' outputs are compared with it (``--in-process``: one
process times the variants and ORT, interleaved round by round - on a host whose speed drifts
in phases, fresh processes one after the other land in different phases). Writes
``results/DATE-ab-KEY.{md,json}``: median ms per variant, B/A (median of the per-round ratios),
each variant vs ORT, load before/after each model.

Before/after a code change: ``KEY`` ``src`` and two source trees (git worktrees of the two
commits) as the values. Each variant is compiled by its own tree (``PYTHONPATH``) with its own
fresh cost database (the same kernel keys would otherwise hand B the choices A measured); the
libraries are timed as above.

    python benchmarks/bench_option_ab.py src /work/before /work/after --models resnet18
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import corpus  # noqa: E402
import corpus_engines  # noqa: E402
import run_corpus  # noqa: E402
from rounds import cpu_skew, skew_text  # noqa: E402

SRC = "src"  # the key of a before/after A/B of two source trees


def check_tree(tree: str, env: dict, cwd: str) -> None:
    """Raise unless a compile run with ``env`` in ``cwd`` imports fluidml_tvm from ``tree``."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", "import fluidml_tvm; print(fluidml_tvm.__file__)"],
                         capture_output=True, text=True, env=dict(os.environ, **env), cwd=cwd)
    got = os.path.realpath(out.stdout.strip())
    if not got.startswith(os.path.realpath(tree) + os.sep):
        raise SystemExit(f"src {tree}: the compile would import fluidml_tvm from "
                         f"{got or out.stderr}")


def bench_model(spec, args, key, values, work) -> dict:
    name = spec.name
    onnx_path = os.path.join(args.corpus, f"{name}.onnx")
    with open(os.path.join(args.corpus, f"{name}.json")) as f:
        manifest = json.load(f)
    inputs = os.path.join(args.corpus, f"{name}.inputs.npz")
    row = {"model": name, "loadavg_before": list(os.getloadavg()), "cpu_skew_before": cpu_skew(),
           "variants": {}}
    libs = {}
    for i, v in enumerate(values):
        lib = os.path.join(work, f"{name}-{i}.so")
        if key == SRC:  # v: a source tree; its own fresh cache
            cfg, env = list(args.pass_config), {
                "PYTHONPATH": os.path.abspath(v),
                "FLUIDML_TVM_CACHE": os.path.join(work, f"cache-{name}-{i}")}
            check_tree(v, env, work)
        else:
            cfg, env = [f"{key}={v}", *args.pass_config], None
        # cwd: `python -m` puts the working directory first on sys.path, before PYTHONPATH
        res = run_corpus._compile("fluidml", manifest, onnx_path, lib, args.threads, cfg,
                                  args.compile_timeout, env, cwd=work)
        res.pop("schedule", None)
        row["variants"][v] = {"compile": res, "ms": [], "vs_ort": None}
        print(f"[ab] {name}: {key}={v} compiled in {res.get('compile_seconds')} s"
              + ("" if res["ok"] else f" FAILED {res.get('error')}"), file=sys.stderr, flush=True)
        if res["ok"]:
            libs[v] = lib
    ort_ms, outputs = [], {}

    def tag(v):  # file names: a variant's index (a value may be a path)
        return "ort" if v == "ort" else str(values.index(v))
    if args.in_process:  # one process, the variants and ORT interleaved round by round
        members = [v for v in values if v in libs] + ["ort"]
        res = corpus_engines.spawn({
            "engine": "interleaved", "inputs": inputs, "threads": args.threads,
            "rounds": args.rounds, "members": [
                {"engine": "fluidml" if v != "ort" else "ort", "model": onnx_path,
                 "lib": libs.get(v), "outputs": os.path.join(work, f"{name}-{tag(v)}.out.npz")}
                for v in members]}, work, f"{name}-interleaved")
        if not res.get("ok"):
            row.setdefault("errors", []).append(res.get("error"))
        for v, m in zip(members, res.get("members", [])):
            (ort_ms if v == "ort" else row["variants"][v]["ms"]).extend(m["rounds_ms"])
            outputs[v] = m["outputs"]
        print(f"[ab] {name}: rounds in one process: " + ", ".join(
            f"{v} {statistics.median(m['rounds_ms']):.2f} ms"
            for v, m in zip(members, res.get("members", []))), file=sys.stderr, flush=True)
    for r in range(0 if args.in_process else args.rounds):
        order = list(values) if r % 2 == 0 else list(reversed(values))
        for v in order + ["ort"]:
            if v != "ort" and v not in libs:
                continue
            a = {"engine": "fluidml" if v != "ort" else "ort", "model": onnx_path,
                 "lib": libs.get(v), "inputs": inputs, "threads": args.threads,
                 "repeat": args.repeat, "budget": args.budget,
                 "outputs": os.path.join(work, f"{name}-{tag(v)}.out.npz")}
            res = corpus_engines.spawn(a, work, f"{name}-{tag(v)}-r{r}")
            if not res.get("ok"):
                row.setdefault("errors", []).append(f"{v}: {res.get('error')}")
                continue
            (ort_ms if v == "ort" else row["variants"][v]["ms"]).append(res["median_ms"])
            outputs[v] = res["outputs"]
        done = [f"{v} {row['variants'][v]['ms'][-1]:.2f} ms" for v in values
                if row["variants"][v]["ms"]] + ([f"ort {ort_ms[-1]:.2f} ms"] if ort_ms else [])
        print(f"[ab] {name}: round {r + 1}/{args.rounds}: " + ", ".join(done), file=sys.stderr,
              flush=True)
    ref = corpus._load_npz_list(outputs["ort"]) if "ort" in outputs else None
    for v in values:
        var = row["variants"][v]
        if ref is not None and v in outputs:
            var["vs_ort"] = corpus._diff_lists(corpus._load_npz_list(outputs[v]), ref)
        if var["ms"]:
            var["median_ms"] = statistics.median(var["ms"])
    a, b = (row["variants"][v]["ms"] for v in values)
    if a and b and len(a) == len(b):
        row["b_over_a"] = statistics.median(y / x for x, y in zip(a, b))
    row["ort_ms"] = statistics.median(ort_ms) if ort_ms else None
    row["loadavg_after"] = list(os.getloadavg())
    row["cpu_skew_after"] = cpu_skew()
    return row


def markdown(rows, info, key, values, opts) -> str:
    va, vb = values
    lines = [f"# A/B: `{key}={va}` vs `{key}={vb}` (fluidml, corpus models)", "",
             (f"- commit `{info['commit']}`; {info['date']}" if key != SRC else
              f"- A = tree `{va}` at `{run_corpus.git_commit(va, True, False)}`, B = tree "
              f"`{vb}` at `{run_corpus.git_commit(vb, True, False)}` (each compiled by its own "
              f"tree with its own fresh cost database); {info['date']}"),
             f"- host `{info['host']}`: {info['cpu']} ({info['cores']} cores; ISA "
             f"{', '.join(info['isa'])}), {info['threads']} threads per engine",
             f"- other options: `{' '.join(opts['pass_config']) or '(defaults)'}`; rounds "
             f"{opts['rounds']} (order alternating), " + (
                 "0.7 s of calls per variant a round; " if opts.get("in_process") else
                 f"repeat {opts['repeat']}, budget {opts['budget']} s per process; ") + (
                 "one fresh cost database per run (the second compile of a model takes the "
                 "first one's measured choices)" if key != SRC else "the default tune budget"),
             "- method: `benchmarks/bench_option_ab.py` " + (
                 "--in-process (the variants and ONNX Runtime in one process, interleaved "
                 "round by round, numpy in and out; B/A: median of the per-round ratios)"
                 if opts.get("in_process") else "(each variant and ONNX Runtime in a fresh "
                 "process per round, numpy in and out)"), "- " + run_corpus.SKEW_NOTE, "",
             f"| model | load before/after | CPU skew before/after | {key}={va} ms | {key}={vb} ms "
             "| B/A | A/ORT | B/ORT | ORT ms | A diff vs ORT | B diff vs ORT |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        A, B = r["variants"][va], r["variants"][vb]
        ort = r.get("ort_ms")

        def ms(x):
            return f"{x['median_ms']:.2f}" if x.get("median_ms") else "FAILED"

        def rel(x, ort=ort):
            return f"{x['median_ms'] / ort:.2f}x" if x.get("median_ms") and ort else "-"

        def diff(x):
            d = x.get("vs_ort") or {}
            return f"{d['max_abs']:.1e} (rel {d['rel']:.1e})" if d.get("max_abs") is not None \
                else "-"

        ba = f"**{r['b_over_a']:.3f}**" if r.get("b_over_a") else "-"
        lb, la = r["loadavg_before"][0], r["loadavg_after"][0]
        sk = skew_text(r.get("cpu_skew_before"), r.get("cpu_skew_after"))
        head = f"| {r['model']} | {lb:.2f}/{la:.2f} | {sk} | {ms(A)} | {ms(B)} | {ba} "
        lines.append(head + f"| {rel(A)} | {rel(B)} | {ort:.2f} | {diff(A)} | {diff(B)} |"
                     if ort else head + f"| - | - | - | {diff(A)} | {diff(B)} |")
    gm = run_corpus.geomean(r.get("b_over_a") for r in rows)
    if gm:
        lines += ["", f"Geometric mean of B/A: **{gm:.3f}**."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("key", help="a fluidml.* option")
    p.add_argument("a", help="value A (the baseline)")
    p.add_argument("b", help="value B")
    p.add_argument("--models", required=True, help="comma-separated corpus names")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--in-process", action="store_true",
                   help="time the variants and ORT in one process, interleaved round by round "
                        "(rounds of 0.7 s each; for hosts whose speed drifts in phases)")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--budget", type=float, default=5.0)
    p.add_argument("--pass-config", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--compile-timeout", type=float, default=1800.0)
    p.add_argument("--corpus", default=corpus.DEFAULT_OUT)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    values = [args.a, args.b]
    specs = corpus.select(args.models)
    info = run_corpus.host_info(args.threads)
    opts = {"pass_config": args.pass_config, "rounds": args.rounds, "repeat": args.repeat,
            "budget": args.budget, "in_process": args.in_process}
    stem = args.name or (f"{datetime.date.today().isoformat()}-ab-"
                         f"{args.key.replace('fluidml.', '').replace('.', '-')}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fluidml-ab-") as work:
        os.environ["FLUIDML_TVM_CACHE"] = os.path.join(work, "cache")  # fresh, for both
        for s in specs:
            rows.append(bench_model(s, args, args.key, values, work))
            os.makedirs(args.out, exist_ok=True)  # after every model: nothing lost
            with open(os.path.join(args.out, stem + ".json"), "w") as f:
                json.dump({"info": info, "key": args.key, "values": values, "options": opts,
                           "rows": rows}, f, indent=2)
            with open(os.path.join(args.out, stem + ".md"), "w") as f:
                f.write(markdown(rows, info, args.key, values, opts))
    print(markdown(rows, info, args.key, values, opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
