"""The measuring instrument: FluidML vs stock TVM vs ONNX Runtime, latency and memory.

Method (benchmarks/README.md says the same for readers):

- every engine runs in its own fresh process with the same thread count (``TVM_NUM_THREADS`` and
  ONNX Runtime's ``intra_op_num_threads``), on the same seeded inputs;
- TVM engines are compiled once in a separate process (compile time), exported, then loaded by
  the run process with the runtime alone (``TVM_USE_RUNTIME_LIB=1``), as on a board;
- each run process warms up, then times runs; the rounds of all engines are interleaved (engine
  order rotated each round) so machine drift hits all of them; the median over all samples is
  reported with min and max. A run process stops sampling once it has spent ``budget`` seconds
  (stock TVM takes seconds per run), after at least one timed run;
- peak activation memory is measured: TVM with ``memory_cfg="naive"`` (no pooling) and glibc's
  ``mallinfo2`` (``uordblks + hblkhd``) sampled before and after every kernel call through
  ``vm.set_instrument`` during a second run, minus the baseline before it (outputs included);
  ONNX Runtime as the growth of the same counter over its first run (its arena keeps what the run
  needed);
- whole-process peak RSS is ``VmHWM`` of the run process (load + runs);
- planned activation memory comes from the IR after the planner, with the live-set lower bound.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from .errors import FluidMLError

ENGINES = ("fluidml", "tvm", "ort")


# ---- measurement helpers (used inside worker processes) ----------------------------------------
class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def heap_bytes() -> int:
    """Bytes in use by malloc (glibc ``mallinfo2``: ``uordblks + hblkhd``); -1 if unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):
        return -1
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def peak_rss_bytes() -> int:
    """``VmHWM`` of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1


def _sample_times(run_once, repeat: int, budget: float) -> list:
    """Up to ``repeat`` timed runs, stopping once ``budget`` seconds are spent (at least one)."""
    times, start = [], time.perf_counter()
    while len(times) < repeat:
        t0 = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return times


def _worker_run(args: dict) -> dict:
    """One engine, one fresh process: returns latencies, memory, and writes outputs."""
    threads = int(args["threads"])
    with np.load(args["inputs"]) as data:
        inputs = {k: data[k] for k in data.files}
    result = {"engine": args["engine"], "threads": threads}
    if args["engine"] == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(args["model"], so, providers=["CPUExecutionProvider"])
        before = heap_bytes()
        outputs = sess.run(None, inputs)
        result["peak_activation_bytes"] = heap_bytes() - before if before >= 0 else None
        names = [o.name for o in sess.get_outputs()]
        result["latencies"] = _sample_times(lambda: sess.run(None, inputs), args["repeat"],
                                            args["budget"])
    else:
        os.environ["TVM_NUM_THREADS"] = str(threads)
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"
        import tvm

        from .runtime import load

        probe = load(args["lib"], num_threads=threads, memory_cfg="naive")
        arrays = probe._arrays(inputs)
        probe.vm["main"](*arrays)  # first call: one-time initialisation is not activation memory
        base = heap_bytes()
        peak = [base]

        def instrument(*_a, **_k):
            peak[0] = max(peak[0], heap_bytes())
            return 0  # VMInstrumentReturnKind.NO_OP

        probe.vm.set_instrument(instrument)
        probe.vm["main"](*arrays)
        result["peak_activation_bytes"] = peak[0] - base if base >= 0 else None
        del probe
        model = load(args["lib"], num_threads=threads)
        arrays = model._arrays(inputs)
        t0 = time.perf_counter()
        out = model.vm["main"](*arrays)  # the warm-up run; its outputs are the ones compared
        first = time.perf_counter() - t0
        from .runtime import _flatten

        outputs = [o.numpy() for o in _flatten(out)]
        names = model.output_names

        def once():
            model.vm["main"](*arrays)

        if first > args["budget"]:  # seconds per run (stock TVM): the warm-up is the sample
            result["latencies"] = [first]
        else:
            result["latencies"] = _sample_times(once, args["repeat"], args["budget"])
        result["tvm_runtime_only"] = bool(getattr(tvm, "_RUNTIME_ONLY", False))
    np.savez(args["outputs"], **{f"out{i}": o for i, o in enumerate(outputs)})
    result["output_names"] = names
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def _worker_compile(args: dict) -> dict:
    from .compiler import compile as compile_model

    t0 = time.perf_counter()
    compiled = compile_model(args["model"], target="x86", input_shapes=args.get("input_shapes"),
                             pass_config=[f"fluidml={1 if args['engine'] == 'fluidml' else 0}"]
                             + list(args.get("pass_config") or []))
    compiled.export(args["lib"])
    return {
        "compile_seconds": time.perf_counter() - t0,
        "planned_bytes": sum((compiled.planned_memory or {}).values()),
        "bound_bytes": sum((compiled.memory_bound or {}).values()),
        "timeline": compiled.memory_timeline,
    }


def worker_main(argv=None) -> int:
    """``python -m fluidml_tvm.bench MODE ARGS.json RESULT.json`` (one measurement process)."""
    argv = sys.argv[1:] if argv is None else argv
    mode, arg_path, out_path = argv
    with open(arg_path) as f:
        args = json.load(f)
    result = _worker_run(args) if mode == "run" else _worker_compile(args)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


# ---- orchestration ------------------------------------------------------------------------------
def _spawn(mode: str, args: dict, workdir: str, tag: str, timeout: float) -> dict:
    arg_path = os.path.join(workdir, f"{tag}.args.json")
    out_path = os.path.join(workdir, f"{tag}.result.json")
    with open(arg_path, "w") as f:
        json.dump(args, f)
    env = dict(os.environ)
    env["TVM_NUM_THREADS"] = str(args.get("threads", 1))
    env["OMP_NUM_THREADS"] = str(args.get("threads", 1))
    proc = subprocess.run([sys.executable, "-m", "fluidml_tvm.bench", mode, arg_path, out_path],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0 or not os.path.exists(out_path):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{tag} failed (exit {proc.returncode}): {' | '.join(tail)}")
    with open(out_path) as f:
        return json.load(f)


def _prepare_model(spec: str, workdir: str, input_shapes=None):
    """(onnx path, inputs npz path, display name, size) for a zoo spec or an .onnx path."""
    import onnx

    from . import frontend, zoo

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
            for key in ("peak_activation_bytes", "peak_rss_bytes"):
                if res.get(key) is not None:
                    eng[key] = max(eng.get(key) or 0, res[key])
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


def host_info(threads: int) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import onnxruntime
    import tvm

    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "threads": threads,
            "tvm": tvm.__version__, "onnxruntime": onnxruntime.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _mb(x):
    return "-" if x is None else f"{x / 1e6:.2f}"


def _ratio(engines: dict, a: str, b: str, key: str) -> str:
    x, y = engines.get(a, {}).get(key), engines.get(b, {}).get(key)
    return f"{x / y:.2f}x" if x and y else "-"


def markdown_table(rows: list, info: dict) -> str:
    lines = [f"Host: {info['cpu']}, {info['cores']} cores, {info['threads']} threads per engine; "
             f"TVM {info['tvm']}, ONNX Runtime {info['onnxruntime']}; {info['date']}", "",
             "| model | engine | median ms (min-max, n) | compile s | planned MB | bound MB | "
             "peak act. MB | peak RSS MB | max abs diff vs ORT |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for e, m in row["engines"].items():
            cs = m.get("compile_seconds")
            diff = m.get("max_abs_diff_vs_ort")
            lines.append(
                f"| {row['model']} | {e} | {m['median_ms']:.2f} ({m['min_ms']:.2f}-"
                f"{m['max_ms']:.2f}, {m['samples']}) | {'-' if cs is None else f'{cs:.1f}'} | "
                f"{_mb(m.get('planned_bytes'))} | {_mb(m.get('bound_bytes'))} | "
                f"{_mb(m.get('peak_activation_bytes'))} | {_mb(m.get('peak_rss_bytes'))} | "
                f"{'-' if diff is None else f'{diff:.2e}'} |")
    lines += ["", "| model | fluidml/ort | fluidml/tvm | tvm/ort | planned fluidml/tvm | "
              "peak RSS fluidml/ort |", "|---|---|---|---|---|---|"]
    for row in rows:
        r, en = row["ratios"], row["engines"]
        lines.append(
            f"| {row['model']} | "
            + " | ".join(f"{r[k]:.3g}x" if k in r else "-"
                         for k in ("fluidml/ort", "fluidml/tvm", "tvm/ort"))
            + f" | {_ratio(en, 'fluidml', 'tvm', 'planned_bytes')} | "
              f"{_ratio(en, 'fluidml', 'ort', 'peak_rss_bytes')} |")
    return "\n".join(lines) + "\n"


def plots(rows: list, outdir: str, stem: str) -> list:
    """Bar chart of ratios per model and a memory timeline per model (PNG, needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    names = [r["model"] for r in rows]
    keys = [k for k in ("fluidml/ort", "fluidml/tvm", "tvm/ort") if any(k in r["ratios"]
                                                                         for r in rows)]
    if keys:
        fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(names)), 4))
        width = 0.8 / len(keys)
        for i, k in enumerate(keys):
            vals = [r["ratios"].get(k, np.nan) for r in rows]
            ax.bar(np.arange(len(names)) + i * width, vals, width, label=f"latency {k}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(names)) + width * (len(keys) - 1) / 2)
        ax.set_xticklabels(names, rotation=20)
        ax.set_ylabel("ratio (lower is better for the first engine)")
        ax.legend()
        fig.tight_layout()
        path = os.path.join(outdir, f"{stem}-ratios.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    for row in rows:
        series = {e: m.get("timeline") for e, m in row["engines"].items() if m.get("timeline")}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for e, tl in series.items():
            (line,) = ax.plot(np.array(tl) / 1e6, label=f"{e}: live bytes")
            m, color = row["engines"][e], line.get_color()
            if m.get("planned_bytes"):
                ax.axhline(m["planned_bytes"] / 1e6, ls="--", lw=1, color=color,
                           label=f"{e}: planned {m['planned_bytes'] / 1e6:.3g} MB")
            if m.get("bound_bytes"):
                ax.axhline(m["bound_bytes"] / 1e6, ls=":", lw=1.5, color=color,
                           label=f"{e}: bound {m['bound_bytes'] / 1e6:.3g} MB")
        ax.set_xlabel("binding (program point)")
        ax.set_ylabel("MB")
        ax.set_title(f"{row['model']}: activation memory")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(outdir, f"{stem}-{row['model'].replace(':', '_')}-memory.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def run_suite(models, engines=ENGINES, threads=2, repeat=10, rounds=3, budget=20.0,
              outdir="benchmarks/results", stem=None, log=print, plot=True,
              input_shapes=None) -> dict:
    """Benchmark ``models``; write ``<stem>.json``, ``<stem>.md`` and plots into ``outdir``."""
    os.makedirs(outdir, exist_ok=True)
    info = host_info(threads)
    stem = stem or f"{datetime.date.today().isoformat()}-{info['host']}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="fluidml-bench-") as work:
        for spec in models:
            log(f"[bench] {spec}")
            rows.append(benchmark_model(spec, engines, threads, repeat, rounds, budget,
                                        workdir=work, log=log, input_shapes=input_shapes))
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


if __name__ == "__main__":
    sys.exit(worker_main())
