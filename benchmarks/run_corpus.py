"""Time the corpus (benchmarks/corpus.py) on fluidml, stock TVM, ONNX Runtime and OpenVINO.

    python benchmarks/run_corpus.py                      # every corpus model, 3 rounds
    python benchmarks/run_corpus.py --quick              # 2 small models, 1 round (smoke test)
    python benchmarks/run_corpus.py --models resnet50,distilbert --rounds 5

Per model: fluidml (default options, plus ``--pass-config``) and stock TVM (``fluidml=0``) are
compiled once with ``fluidml-tvm compile`` in their own processes; then in every round each
engine runs in a fresh process (benchmarks/corpus_engines.py), engine order rotated per round as
benchmarks/run_zoo.py does (``--in-process``: all engines in one process, interleaved round by
round, for a host whose speed drifts in phases), all with the same thread count and the same
seeded inputs. OpenVINO is
optional: without the package it is skipped with a notice. Outputs are compared with ONNX
Runtime's. The fluidml library's slowest kernels come from ``fluidml-tvm run --profile``.
Writes ``benchmarks/results/<stem>.json`` and ``.md`` (commit, options, host, ISA, threads,
load average before/after, medians, ratios, geometric means, slowest kernels).

Engines are run through worker processes of our own rather than ``fluidml-tvm benchmark``: that
command has no OpenVINO engine and cannot interleave a fourth engine with its rounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import corpus  # noqa: E402
import corpus_engines  # noqa: E402
from rounds import cpu_skew, skew_text  # noqa: E402

ENGINES = ("fluidml", "tvm", "ort", "openvino")
SKEW_NOTE = ("CPU skew: the slowest CPU's time over the fastest's on one fixed scalar loop, each "
             "CPU alone (benchmarks/rounds.py cpu_skew), before and after the model; a quiet "
             "host reads ~1.0-1.2. Above that one vCPU is getting less of the host, which the "
             "load average does not show: TVM splits a parallel loop evenly among its threads "
             "and waits for the slow one, ONNX Runtime and OpenVINO share the work out as "
             "threads finish, so fluidml's ratios are worse in those minutes.")
RATIOS = (("fluidml", "ort"), ("fluidml", "openvino"), ("tvm", "ort"))


# ---- host and provenance (no torch/tvm import) -----------------------------------------------
def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def host_info(threads: int) -> dict:
    cpu, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not cpu:
                    cpu = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    cpu = cpu or platform.processor()
    isa = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                       "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd") if f in flags]
    return {"host": socket.gethostname(), "cpu": cpu, "isa": isa, "cores": os.cpu_count(),
            "machine": platform.machine(), "threads": threads, "commit": git_commit(HERE),
            "versions": {d: _version(d) for d in ("apache-tvm", "fluidml-tvm", "onnxruntime",
                                                  "openvino", "torch", "torchvision",
                                                  "transformers", "onnx")},
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def geomean(values) -> float | None:
    vals = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def git_commit(path: str, short: bool = False, untracked: bool = True) -> str:
    """The git commit of the tree at ``path``, ``-dirty`` when files differ from it (untracked
    ones too unless ``untracked`` is False); "" outside git."""
    def git(*a):
        return subprocess.run(["git", "-C", path, *a], capture_output=True, text=True).stdout

    try:
        commit = git("rev-parse", *(["--short"] if short else []), "HEAD").strip()
        status = git("status", "--porcelain", *([] if untracked else ["--untracked-files=no"]))
    except OSError:
        return ""
    return commit + ("-dirty" if commit and status.strip() else "")


def kernel_bench_setup(here: str, target_json: str | None = None):
    """What a kernel benchmark (bench_conv_tiles, bench_depthwise_tiles) states and runs on:
    ``(target, cpu, threads, commit, load before)``; ``target_json``: an llvm target this host
    can run (default: the host's)."""
    import tvm

    from fluidml_tvm.schedules.target_info import cpu_info, host_target

    target = tvm.target.Target(json.loads(target_json)) if target_json else host_target()
    return (target, cpu_info(target), os.environ.get("TVM_NUM_THREADS", "(unset)"),
            git_commit(here, short=True), os.getloadavg()[0])


def kernel_bench_shapes(here: str, shapes: list, bench, rounds: int, show) -> tuple[list, str]:
    """A kernel benchmark's run over ``shapes`` on this host: ``bench(shape, target, cpu,
    Options(), rounds)`` each, ``show(shape, result)`` printed after each; ``(results, the
    results file's host line: commit, host, threads, load before and after)``."""
    from fluidml_tvm.options import Options

    target, cpu, threads, commit, load0 = kernel_bench_setup(here)
    results = []
    with target:
        for shape in shapes:
            results.append(bench(shape, target, cpu, Options(), rounds))
            print(show(shape, results[-1]), flush=True)
    return results, (f"- commit `{commit}`; host {cpu.key()} ({os.cpu_count()} cores), "
                     f"TVM_NUM_THREADS={threads}; 1-min load {load0:.2f} before, "
                     f"{os.getloadavg()[0]:.2f} after")


def write_md_json(out_dir: str, name: str, md_lines: list, data: dict) -> str:
    """``out_dir/name.md`` (the lines) and ``out_dir/name.json`` (``data``); the .md path."""
    os.makedirs(out_dir, exist_ok=True)
    md = os.path.join(out_dir, name + ".md")
    with open(md, "w") as fh:
        fh.write("\n".join(md_lines) + "\n")
    with open(os.path.join(out_dir, name + ".json"), "w") as fh:
        json.dump(data, fh, indent=1)
    return md


# ---- one model ----------------------------------------------------------------------------------
def _compile(engine: str, manifest: dict, onnx_path: str, lib: str, threads: int,
             pass_config: list, timeout: float, env: dict | None = None,
             cwd: str | None = None) -> dict:
    cfg = ["fluidml=1" if engine == "fluidml" else "fluidml=0"]
    cfg += list(pass_config) if engine == "fluidml" else []
    cmd = [sys.executable, "-m", "fluidml_tvm.cli", "compile", onnx_path, "-o", lib, "-q",
           "--input-shapes", manifest["input_shapes"]] + (["--report"] if engine == "fluidml"
                                                         else [])
    for kv in cfg:
        cmd += ["--pass-config", kv]
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), **(env or {}))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=cwd)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"compile timeout after {timeout:.0f} s"}
    res = {"ok": proc.returncode == 0 and os.path.exists(lib), "pass_config": cfg,
           "compile_seconds": round(time.perf_counter() - t0, 1)}
    if not res["ok"]:
        tail = [x for x in proc.stderr.strip().splitlines() if x.strip()][-3:]
        res["error"] = f"exit {proc.returncode}: {' | '.join(tail)}"
    elif engine == "fluidml":  # the schedule rule of every kernel, for the profile table
        with open(lib + ".report.md", "w") as f:
            f.write(proc.stdout)
        res["report"] = lib + ".report.md"
        res["schedule"] = corpus.parse_schedule(proc.stdout)
    return res


def annotate(profile_rows: list, schedule: list) -> list:
    """Add each profiled kernel's schedule rule and reason (the profile truncates names to 48
    characters: a unique prefix match is taken)."""
    out = []
    for r in profile_rows:
        hits = _match(r["kernel"], schedule)
        extra = {"rule": hits[0]["rule"], "reason": hits[0]["reason"]} if len(hits) == 1 else {}
        out.append({**r, **extra})
    return out


def _match(name: str, schedule: list) -> list:
    """Report rows for a profiled kernel name: exact, or with the ``_packed`` suffix the schedule
    stage gives a kernel whose weight it packs, or a profile name cut at 48 characters."""
    exact = [s for s in schedule if name in (s["kernel"], s["kernel"] + "_packed")]
    if exact:
        return exact
    prefix = [s for s in schedule if s["kernel"].startswith(name)]
    if prefix or len(name) < 48:
        return prefix
    return [s for s in schedule if name.startswith(s["kernel"] + "_")
            and "_packed".startswith(name[len(s["kernel"]):])]


def benchmark_model(spec, corpus_dir: str, workdir: str, engines, threads: int, rounds: int,
                    repeat: int, budget: float, pass_config: list, profile_top: int,
                    compile_timeout: float, log=print, in_process: bool = False) -> dict:
    """Compile, run in interleaved rounds, compare with ORT, profile; one result row.
    ``in_process``: the engines in one process, a median of calls each a round, the ratios
    medians of the per-round ratios (``corpus_engines`` engine ``interleaved``)."""
    row = {"model": spec.name, "description": spec.description, "loadavg_before":
           list(os.getloadavg()), "cpu_skew_before": cpu_skew(), "engines": {}}
    manifest_path = os.path.join(corpus_dir, f"{spec.name}.json")
    if not os.path.exists(manifest_path):
        log(f"[corpus] {spec.name}: not exported yet, exporting into {corpus_dir}")
        try:
            corpus.export(spec, corpus_dir, log=log)
        except ImportError as err:
            raise SystemExit(f"{spec.name} is not exported in {corpus_dir} and exporting needs "
                             f"the 'corpus' extra (pip install -e '.[corpus]'): {err}") from None
    manifest = corpus.read_manifest(corpus_dir, spec.name)
    onnx_path = os.path.join(corpus_dir, manifest["onnx"])
    inputs = os.path.join(corpus_dir, f"{spec.name}.inputs.npz")
    row["inputs"] = manifest["input_shapes"]
    libs = {}
    for e in engines:
        if e in ("fluidml", "tvm"):
            libs[e] = os.path.join(workdir, f"{spec.name}.{e}.so")
            log(f"[corpus] {spec.name}: compiling with {e} ...")
            row["engines"][e] = _compile(e, manifest, onnx_path, libs[e], threads, pass_config,
                                         compile_timeout)
            c = row["engines"][e]
            log(f"[corpus] {spec.name}: {e} " + (f"compiled in {c['compile_seconds']:.0f} s"
                                                if c["ok"] else f"compile FAILED: {c['error']}"))
        else:
            row["engines"][e] = {"ok": True}
    live = [e for e in engines if row["engines"][e]["ok"]]
    samples = {e: [] for e in live}
    outputs = {}
    if in_process and live:  # one process, the engines interleaved round by round
        res = corpus_engines.spawn(
            {"engine": "interleaved", "inputs": inputs, "threads": threads, "rounds": rounds,
             "members": [{"engine": e, "model": onnx_path, "lib": libs.get(e),
                          "outputs": os.path.join(workdir, f"{spec.name}.{e}.npz")}
                         for e in live]}, workdir, f"{spec.name}.interleaved",
            timeout=compile_timeout)
        if not res.get("ok"):
            for e in live:
                row["engines"][e].update(ok=False, error=res.get("error"))
        for e, m in zip(live, res.get("members", [])):
            samples[e] = m["rounds_ms"]
            outputs[e] = m["outputs"]
        per_round = {}
        for a, b in RATIOS:
            if samples.get(a) and samples.get(b):
                per_round[f"{a}/{b}"] = _median([x / y for x, y in zip(samples[a], samples[b])])
        log(f"[corpus] {spec.name}: {rounds} rounds in one process: " + ", ".join(
            f"{e} {_median(samples[e]):.2f} ms" for e in live if samples[e]))
    for r in range(0 if in_process else rounds):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for e in order:
            tag = f"{spec.name}.{e}.round{r}"
            res = corpus_engines.spawn(
                {"engine": e, "model": onnx_path, "lib": libs.get(e), "inputs": inputs,
                 "threads": threads, "repeat": repeat, "budget": budget,
                 "outputs": os.path.join(workdir, tag + ".npz")}, workdir, tag,
                timeout=compile_timeout)
            eng = row["engines"][e]
            if not res.get("ok"):
                eng.update(ok=False, error=res.get("error"))
                continue
            samples[e].extend(res["latencies_ms"])
            outputs[e] = res["outputs"]
            for k in ("load_seconds", "first_ms", "ov_threads", "ov_precision", "ov_streams",
                      "tvm_threads"):
                if k in res:
                    eng[k] = res[k]
        log(f"[corpus] {spec.name}: round {r + 1}/{rounds}: " + ", ".join(
            f"{e} {_median(samples[e]):.2f} ms" for e in live if samples[e]))
    ref = corpus._load_npz_list(outputs["ort"]) if "ort" in outputs else None
    for e in live:
        eng = row["engines"][e]
        if not samples[e]:
            continue
        s = sorted(samples[e])
        eng.update(median_ms=_median(s), min_ms=s[0], max_ms=s[-1], samples=len(s))
        if ref is not None and e != "ort" and e in outputs:
            eng["vs_ort"] = corpus._diff_lists(corpus._load_npz_list(outputs[e]), ref)
    row["ratios"] = per_round if in_process and live else ratios(row["engines"])
    if profile_top and "fluidml" in libs and row["engines"]["fluidml"].get("ok"):
        prof = corpus_engines.profile(libs["fluidml"], inputs, threads, top=profile_top)
        if prof.get("ok"):
            prof["rows"] = annotate(prof["rows"], row["engines"]["fluidml"].get("schedule", []))
        row["fluidml_profile"] = prof
    row["loadavg_after"] = list(os.getloadavg())
    row["cpu_skew_after"] = cpu_skew()
    return row


def _median(xs) -> float:
    s = sorted(xs)
    n = len(s)
    return (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2) if n else float("nan")


def ratios(engines: dict) -> dict:
    out = {}
    for a, b in RATIOS:
        x = engines.get(a, {}).get("median_ms")
        y = engines.get(b, {}).get("median_ms")
        if x and y:
            out[f"{a}/{b}"] = x / y
    return out


# ---- the results files --------------------------------------------------------------------------
def _ms(m: dict) -> str:
    if not m.get("ok", True):
        return f"FAILED ({(m.get('error') or '')[:60]})"
    if "median_ms" not in m:
        return "-"
    return f"{m['median_ms']:.2f} ({m['min_ms']:.2f}-{m['max_ms']:.2f}, {m['samples']})"


def _diff(m: dict) -> str:
    d = m.get("vs_ort") or {}
    if d.get("max_abs") is None:
        return "-"
    rel = f", rel {d['rel']:.1e}" if d.get("rel") is not None else ""
    return f"{d['max_abs']:.1e}{rel}"


def _rate(k: dict, key: str) -> str:
    return f"{k[key]:.1f}" if k.get(key) is not None else "-"


def _roof(k: dict) -> str:
    return f"{k['roof']:.0%}" if k.get("roof") is not None else "-"


def markdown(rows: list, info: dict, options: dict) -> str:
    v = info["versions"]
    la = [r.get("loadavg_before") for r in rows] + [r.get("loadavg_after") for r in rows]
    la = [x for x in la if x]
    lines = [
        "# Corpus benchmark: fluidml vs stock TVM vs ONNX Runtime vs OpenVINO", "",
        f"- commit `{info['commit']}`; {info['date']}",
        f"- host `{info['host']}`: {info['cpu']} ({info['machine']}, {info['cores']} cores; "
        f"ISA {', '.join(info['isa']) or '?'})",
        f"- threads per engine: {info['threads']} (TVM_NUM_THREADS, ORT intra_op_num_threads, "
        "OpenVINO INFERENCE_NUM_THREADS with the latency hint and fp32 inference precision)",
        f"- options: fluidml `{' '.join(options.get('fluidml_pass_config') or ['(defaults)'])}`; "
        f"stock TVM `fluidml=0`; rounds {options.get('rounds')}, " + (
            "--in-process: the engines in one process, interleaved round by round (0.7 s of "
            "calls each a round; latency: median of the round medians; ratios: median of the "
            "per-round ratios)" if options.get("in_process") else
            f"repeat {options.get('repeat')}, budget {options.get('budget')} s per process")
        + (" (--quick)" if options.get("quick") else ""),
        "- versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x),
        "- machine load (os.getloadavg 1/5/15 min) over the run: "
        + (f"from {la[0][0]:.2f}/{la[0][1]:.2f}/{la[0][2]:.2f} "
           f"to {la[-1][0]:.2f}/{la[-1][1]:.2f}/{la[-1][2]:.2f}, "
           f"max 1-min {max(x[0] for x in la):.2f}" if la else "n/a"),
        "- " + SKEW_NOTE,
        "", "Latency: median ms (min-max, samples) over all rounds; each call is numpy in, numpy "
        "out. Diff: max abs difference of the outputs vs ONNX Runtime (rel: over max |ORT|).", "",
        "| model | load before/after | CPU skew before/after | fluidml ms | stock TVM ms | ORT ms "
        "| OpenVINO ms | fluidml diff | TVM diff | OpenVINO diff | fluidml compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        en = r["engines"]
        lb, lafter = r.get("loadavg_before") or [0], r.get("loadavg_after") or [0]
        cs = en.get("fluidml", {}).get("compile_seconds")
        lines.append(
            f"| {r['model']} | {lb[0]:.2f}/{lafter[0]:.2f} | "
            f"{skew_text(r.get('cpu_skew_before'), r.get('cpu_skew_after'))} | "
            + " | ".join(_ms(en[e]) if e in en else "skipped" for e in ENGINES) + " | "
            + " | ".join(_diff(en[e]) if e in en else "-" for e in ("fluidml", "tvm", "openvino"))
            + f" | {'-' if cs is None else cs} |")
    keys = [f"{a}/{b}" for a, b in RATIOS]
    lines += ["", "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(
            f"{r['ratios'][k]:.2f}x" if k in r["ratios"] else "-" for k in keys) + " |")
    gm = {k: geomean(r["ratios"].get(k) for r in rows) for k in keys}
    lines.append("| **geometric mean** | " + " | ".join(
        f"**{gm[k]:.2f}x**" if gm[k] else "-" for k in keys) + " |")
    prof = [r for r in rows if (r.get("fluidml_profile") or {}).get("ok")]
    if prof:
        lines += ["", "## Slowest fluidml kernels per model", "",
                  "From `fluidml-tvm run --profile` (share of the profiled run; GFLOP/s "
                  "achieved and roof: the share of this host's roofline, its peaks measured at "
                  "compile time), with each kernel's schedule rule and reason from "
                  "`fluidml-tvm compile --report`.", ""]
        for r in prof:
            p = r["fluidml_profile"]
            lines += [f"### {r['model']}", "",
                      "| kernel | calls | total ms | share | GFLOP/s | roof | rule "
                      "| reason (report) |",
                      "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {k['kernel']} | {k['calls']} | {k['total_ms']:.3f} | {k['share']:.1f}% "
                      f"| {_rate(k, 'gflops')} | {_roof(k)} "
                      f"| {k.get('rule', '')} | {k.get('reason', '').replace('|', '&#124;')} |"
                      for k in p["rows"]]
            lines.append("")
    notes = [f"- {r['model']} {e}: {m.get('error')}" for r in rows
             for e, m in r["engines"].items() if not m.get("ok", True)]
    if notes:
        lines += ["", "## Failures", ""] + notes
    return "\n".join(lines).rstrip() + "\n"


def write_results(rows: list, info: dict, options: dict, outdir: str, stem: str) -> list:
    """``<stem>.json`` (everything) and ``<stem>.md`` (tables) in ``outdir``."""
    os.makedirs(outdir, exist_ok=True)
    keys = [f"{a}/{b}" for a, b in RATIOS]
    summary = {k: geomean(r.get("ratios", {}).get(k) for r in rows) for k in keys}
    jp = os.path.join(outdir, f"{stem}.json")
    with open(jp, "w") as f:
        json.dump({"info": info, "options": options, "geomean": summary, "rows": rows}, f,
                  indent=2)
    mp = os.path.join(outdir, f"{stem}.md")
    with open(mp, "w") as f:
        f.write(markdown(rows, info, options))
    return [jp, mp]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated corpus names (default: all)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {', '.join(corpus.QUICK)}, 1 round, repeat 5, budget 5 s")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--budget", type=float, default=10.0,
                   help="seconds of timed runs per process (stock TVM gets fewer samples)")
    p.add_argument("--pass-config", action="append", default=[], metavar="KEY=VALUE",
                   help="extra fluidml pass config for the fluidml engine (repeatable)")
    p.add_argument("--in-process", action="store_true",
                   help="time the engines in one process, interleaved round by round (for "
                        "hosts whose speed drifts in phases; see bench_option_ab.py)")
    p.add_argument("--profile-top", type=int, default=10, help="slowest kernels to list (0: off)")
    p.add_argument("--compile-timeout", type=float, default=3600.0)
    p.add_argument("--corpus", default=corpus.DEFAULT_OUT, help="exported models (corpus.py)")
    p.add_argument("--work", default=None, help="libraries and outputs (default CORPUS/bench)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--name", default=None, help="file stem (default DATE-corpus[-quick])")
    p.add_argument("--from-json", default=None, metavar="JSON",
                   help="re-render the markdown of an earlier results JSON (no runs)")
    args = p.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
        for row in data["rows"]:
            fl, prof = row["engines"].get("fluidml", {}), row.get("fluidml_profile") or {}
            if prof.get("ok") and fl.get("report") and os.path.exists(fl["report"]):
                with open(fl["report"]) as f:
                    fl["schedule"] = corpus.parse_schedule(f.read())
                prof["rows"] = annotate(prof["rows"], fl["schedule"])
        stem = os.path.splitext(os.path.basename(args.from_json))[0]
        files = write_results(data["rows"], data["info"], data["options"],
                              os.path.dirname(os.path.abspath(args.from_json)), stem)
        print(f"wrote {', '.join(files)}", file=sys.stderr)
        return 0
    if args.quick:
        args.models = args.models or ",".join(corpus.QUICK)
        args.rounds, args.repeat, args.budget = 1, 5, 5.0
    engines = [e for e in args.engines.split(",") if e]
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        p.error(f"--engines takes a subset of {','.join(ENGINES)}")
    if "openvino" in engines and not corpus_engines.have_openvino():
        print("[corpus] openvino is not installed: the OpenVINO engine is skipped "
              "(pip install -e '.[corpus]')", file=sys.stderr)
        engines.remove("openvino")
    specs = corpus.select(args.models)
    work = args.work or os.path.join(args.corpus, "bench")
    os.makedirs(work, exist_ok=True)
    info = host_info(args.threads)
    options = {"fluidml_pass_config": args.pass_config, "rounds": args.rounds,
               "repeat": args.repeat, "budget": args.budget, "engines": engines,
               "quick": args.quick, "threads": args.threads, "in_process": args.in_process}
    stem = args.name or f"{datetime.date.today().isoformat()}-corpus" + (
        "-quick" if args.quick else "")
    rows = []
    t0 = time.time()
    for s in specs:
        def log(m):
            print(m, file=sys.stderr, flush=True)
        rows.append(benchmark_model(s, args.corpus, work, engines, args.threads, args.rounds,
                                    args.repeat, args.budget, args.pass_config, args.profile_top,
                                    args.compile_timeout, log=log,
                                    in_process=args.in_process))
        files = write_results(rows, info, options, args.out, stem)  # after every model
    with open(files[1]) as f:
        print(f.read())
    print(f"wrote {', '.join(files)} in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
