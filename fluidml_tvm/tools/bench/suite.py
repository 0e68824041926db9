"""Orchestration: each model on each engine, every measurement in its own process
(:mod:`.worker`), rounds interleaved; :func:`run_suite` writes the JSON, the table and the plots."""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile

import numpy as np

from ...errors import FluidMLError
from . import rss
from .report import markdown_table, plots

ENGINES = ("fluidml", "tvm", "ort")


def _spawn(mode: str, args: dict, workdir: str, tag: str, timeout: float) -> dict:
    arg_path = os.path.join(workdir, f"{tag}.args.json")
    out_path = os.path.join(workdir, f"{tag}.result.json")
    with open(arg_path, "w") as f:
        json.dump(args, f)
    env = dict(os.environ)
    env["TVM_NUM_THREADS"] = str(args.get("threads", 1))
    env["OMP_NUM_THREADS"] = str(args.get("threads", 1))
    cmd = [sys.executable, "-m", "fluidml_tvm.tools.bench", mode, arg_path, out_path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0 or not os.path.exists(out_path):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{tag} failed (exit {proc.returncode}): {' | '.join(tail)}")
    with open(out_path) as f:
        return json.load(f)


def _prepare_model(spec: str, workdir: str, input_shapes=None):
    """(onnx path, inputs npz path, display name, size) for a zoo spec or an .onnx path."""
    import onnx

    from ... import frontend
    from .. import zoo

    if spec.startswith("zoo:"):
        model, _ = zoo.resolve(spec)
        parts = spec.split(":")
        name = parts[1] + (f":{parts[2]}" if len(parts) > 2 else "")
        path = os.path.join(workdir, name.replace(":", "_") + ".onnx")
        onnx.save(model, path)
        inputs = zoo.random_inputs(model, seed=0)
    else:
        if not os.path.exists(spec):
            raise FluidMLError(f"model file not found: {spec}")
        path, name = spec, os.path.splitext(os.path.basename(spec))[0]
        proto = frontend.load_model(spec)
        shapes = frontend.parse_input_shapes(input_shapes) if isinstance(input_shapes, str) \
            else input_shapes
        rng = np.random.default_rng(0)
        inputs = {}
        for s in frontend.input_specs(proto, shapes):
            dt = np.dtype(s.dtype)
            inputs[s.name] = (rng.integers(0, 2, s.shape).astype(dt) if dt.kind in "iub"
                              else rng.standard_normal(s.shape).astype(dt))
    npz = os.path.join(workdir, name.replace(":", "_") + ".inputs.npz")
    np.savez(npz, **inputs)
    return path, npz, name


def benchmark_model(spec: str, engines=ENGINES, threads: int = 2, repeat: int = 10,
                    rounds: int = 3, budget: float = 20.0, workdir: str | None = None,
                    input_shapes=None, pass_config=None, log=print, timeout: float = 3600) -> dict:
    """Measure one model on ``engines``; returns one result row (see module docstring)."""
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="fluidml-bench-")
    path, npz, name = _prepare_model(spec, workdir, input_shapes)
    row = {"model": name, "threads": threads, "engines": {}}
    libs = {}
    for e in engines:
        if e == "ort":
            row["engines"][e] = {"compile_seconds": None, "planned_bytes": None,
                                 "bound_bytes": None}
            continue
        tag = f"{name.replace(':', '_')}.{e}"
        libs[e] = os.path.join(workdir, tag + ".so")
        log(f"  {name}: compiling with {e} ...")
        info = _spawn("compile", {"engine": e, "model": path, "lib": libs[e], "threads": threads,
                                  "input_shapes": input_shapes,
                                  "pass_config": pass_config if e == "fluidml" else None},
                      workdir, tag + ".compile", timeout)
        row["engines"][e] = info
        log(f"  {name}: {e} compiled in {info['compile_seconds']:.1f} s")
    samples = {e: [] for e in engines}
    for r in range(rounds):
        order = list(engines[r % len(engines):]) + list(engines[: r % len(engines)])
        for e in order:
            tag = f"{name.replace(':', '_')}.{e}.run{r}"
            res = _spawn("run", {"engine": e, "model": path, "lib": libs.get(e), "inputs": npz,
                                 "threads": threads, "repeat": repeat, "budget": budget,
                                 "outputs": os.path.join(workdir, tag + ".npz")},
                         workdir, tag, timeout)
            samples[e].extend(res["latencies"])
            eng = row["engines"][e]
            for key in ("peak_activation_bytes", "peak_activation_bytes_second_run"):
                if res.get(key) is not None:
                    eng[key] = max(eng.get(key) or 0, res[key])
            if res.get("options"):
                eng["options"] = res["options"]
            # peak RSS of a separate process running the model as a user does (rss.py); stock
            # TVM takes seconds per run: once
            peak = rss.measure(e, path, libs.get(e), npz, threads, 1 if e == "tvm" else 3,
                               timeout)
            eng["peak_rss_bytes"] = max(eng.get("peak_rss_bytes") or 0, peak)
            eng["outputs_file"] = os.path.join(workdir, tag + ".npz")
        log(f"  {name}: round {r + 1}/{rounds}: " + ", ".join(
            f"{e} {np.median(samples[e]) * 1e3:.2f} ms" for e in engines))
    ref = None
    if "ort" in engines:
        with np.load(row["engines"]["ort"]["outputs_file"]) as d:
            ref = [d[k] for k in sorted(d.files, key=lambda s: int(s[3:]))]
    for e in engines:
        eng = row["engines"][e]
        t = np.array(samples[e]) * 1e3
        eng.update(median_ms=float(np.median(t)), min_ms=float(t.min()), max_ms=float(t.max()),
                   samples=len(t))
        if ref is not None:
            with np.load(eng.pop("outputs_file")) as d:
                got = [d[k] for k in sorted(d.files, key=lambda s: int(s[3:]))]
            eng["max_abs_diff_vs_ort"] = max(
                float(np.abs(g.astype(np.float64) - r).max()) if g.size else 0.0
                for g, r in zip(got, ref))
        else:
            eng.pop("outputs_file", None)
    eng_ms = {e: row["engines"][e]["median_ms"] for e in engines}
    row["ratios"] = {}
    for a, b in (("fluidml", "ort"), ("fluidml", "tvm"), ("tvm", "ort")):
        if a in eng_ms and b in eng_ms:
            row["ratios"][f"{a}/{b}"] = eng_ms[a] / eng_ms[b]
    if own:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return row


_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "amx_tile", "asimd", "sve")


def _cpuinfo() -> tuple[str, list[str]]:
    """(CPU model, the ISA extensions of :data:`_ISA_FLAGS` it has) from /proc/cpuinfo."""
    cpu, flags = platform.processor() or "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not cpu:
                    cpu = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return cpu, [f for f in _ISA_FLAGS if f in flags]


def commit_of_checkout() -> str:
    """``git describe --always --dirty=+dirty`` of the checkout this package runs from."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    try:
        proc = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty=+dirty"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not runnable)"
    return proc.stdout.strip() if proc.returncode == 0 else "unknown (not a git checkout)"


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (what else ran on the machine)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


MEMORY_METHOD = (
    "peak activation memory: the growth of glibc's in-use heap (mallinfo2 uordblks + hblkhd) "
    "over each engine's first run after loading, minus the heap just before it, for every "
    "engine (the run that allocates what the model needs); TVM runs it with memory_cfg=naive "
    "(each buffer freed at once) and samples the heap before and after every kernel call, ONNX "
    "Runtime is read at the end of the run (its arena keeps the run's peak); outputs included")


def host_info(threads: int) -> dict:
    """Where and how a benchmark ran: host, CPU model and ISA, threads, versions, the commit of
    this checkout, the load average, the memory method."""
    import onnxruntime
    import tvm
    from tvm.target import codegen

    from ... import __version__

    cpu, isa = _cpuinfo()
    return {"host": socket.gethostname(), "cpu": cpu, "isa": isa, "arch": platform.machine(),
            "llvm_cpu": str(codegen.llvm_get_system_cpu()), "cores": os.cpu_count(),
            "threads": threads, "tvm": tvm.__version__, "onnxruntime": onnxruntime.__version__,
            "fluidml_tvm": __version__, "commit": commit_of_checkout(),
            "load_before": load_average(), "memory_method": MEMORY_METHOD,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_suite(models, engines=ENGINES, threads=2, repeat=10, rounds=3, budget=20.0,
              outdir="benchmarks/results", stem=None, log=print, plot=True,
              input_shapes=None, pass_config=None) -> dict:
    """Benchmark ``models``; write ``<stem>.json``, ``<stem>.md`` and plots into ``outdir``."""
    os.makedirs(outdir, exist_ok=True)
    info = host_info(threads)
    stem = stem or f"{datetime.date.today().isoformat()}-{info['host']}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="fluidml-bench-") as work:
        for spec in models:
            log(f"[bench] {spec}")
            rows.append(benchmark_model(spec, engines, threads, repeat, rounds, budget,
                                        workdir=work, log=log, input_shapes=input_shapes,
                                        pass_config=pass_config))
    info["load_after"] = load_average()
    table = markdown_table(rows, info)
    written = plots(rows, outdir, stem) if plot else []
    for row in rows:  # timelines went to the plots; the JSON keeps their length
        for m in row["engines"].values():
            m["timeline_points"] = len(m.pop("timeline", None) or [])
    result = {"info": info, "rows": rows}
    json_path = os.path.join(outdir, f"{stem}.json")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=2)
    md_path = os.path.join(outdir, f"{stem}.md")
    with open(md_path, "w") as f:
        f.write(table)
    result["files"] = [json_path, md_path, *written]
    return result

