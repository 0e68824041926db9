"""One engine, one fresh process: the run worker of the corpus scripts (corpus.py, run_corpus.py).

    python benchmarks/corpus_engines.py ARGS.json RESULT.json

Engines: ``ort`` (ONNX Runtime, CPUExecutionProvider, ``intra_op_num_threads``), ``openvino``
(CPU device, fp32 inference precision hint, ``INFERENCE_NUM_THREADS``, latency hint), and
``fluidml``/``tvm`` (a library from ``fluidml-tvm compile``, loaded with ``fluidml_tvm.load`` and
the TVM runtime alone, ``TVM_USE_RUNTIME_LIB=1``, ``TVM_NUM_THREADS``). Every engine is timed the
same way: one call whose outputs are kept (numpy in, numpy out), warm-up calls for
:data:`WARMUP_S` (at most :data:`WARMUP_CALLS`), then timed calls of the same kind: at least
``repeat`` and for at least :data:`MIN_SAMPLE_S`, within ``budget`` seconds (at least one; a
first call that alone exceeds the budget is taken as the sample, for stock TVM's seconds-long
runs). The median is reported. (Ten calls right after the first one, as before 2026-12-06, put
the first slow calls - page faults, the thread pool waking - into the median: one
MobileNetV3-Small library measured 2.2-2.9 ms median in six fresh processes, 1.82-1.92 ms
minimum.) Engine ``interleaved`` times several engines in one process, round by round
(:func:`_interleaved`, ``bench_option_ab.py --in-process``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time


def have_openvino() -> bool:
    return importlib.util.find_spec("openvino") is not None


WARMUP_S = 0.5
WARMUP_CALLS = 20
MIN_SAMPLE_S = 1.0


def _sample(run_once, first: float, repeat: int, budget: float) -> list:
    if first > budget:
        return [first]
    start = time.perf_counter()
    for _ in range(WARMUP_CALLS):
        if time.perf_counter() - start > min(WARMUP_S, budget / 4):
            break
        run_once()
    times, start = [], time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < MIN_SAMPLE_S:
        t0 = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return times


def _ort(args, inputs):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(args["threads"])
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(args["model"], so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return (lambda: sess.run(None, inputs)), names, {"onnxruntime": ort.__version__}


def _openvino(args, inputs):
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    core = ov.Core()
    config = {hints.inference_precision: ov.Type.f32,
              props.inference_num_threads: int(args["threads"]),
              hints.performance_mode: hints.PerformanceMode.LATENCY}
    compiled = core.compile_model(args["model"], "CPU", config)
    request = compiled.create_infer_request()
    outs = compiled.outputs
    names = [o.get_any_name() for o in outs]

    def once():
        res = request.infer(inputs)
        return [res[o] for o in outs]

    info = {"openvino": ov.__version__,
            "ov_threads": int(compiled.get_property(props.inference_num_threads)),
            "ov_precision": str(compiled.get_property(hints.inference_precision)),
            "ov_streams": int(compiled.get_property(props.num_streams))}
    return once, names, info


def _tvm(args, inputs):
    import fluidml_tvm

    model = fluidml_tvm.load(args["lib"], num_threads=int(args["threads"]))

    def once():
        out = model.run(inputs)
        return [out[n] for n in model.output_names]

    return once, list(model.output_names), {"tvm_threads": model.num_threads}


def _open(args: dict, inputs: dict):
    """``(once, output names, info)`` of ``args["engine"]`` (fluidml/tvm: a library)."""
    return {"ort": _ort, "openvino": _openvino}.get(args["engine"], _tvm)(args, inputs)


def _save_outputs(path: str, outputs) -> None:
    import numpy as np

    np.savez(path, **{f"out{i:03d}": np.asarray(o) for i, o in enumerate(outputs)})


ROUND_S = 0.7  # one member's timed calls in a round of the interleaved engine


def _interleaved(args: dict, inputs: dict) -> dict:
    """Engine ``interleaved``: the ``members`` (engine args without ``inputs``) in this one
    process, timed in ``rounds`` rounds (the order reversed every other round): per round and
    member, 3 warm-up calls, then calls for :data:`ROUND_S`, their median. On a host whose
    speed drifts in phases of a minute or so (the 2-core AMD host here: the same library 4.5 or
    8 ms), the members of one round share the phase, where fresh processes one after the other
    do not."""
    import numpy as np

    members = []
    for m in args["members"]:
        once, names, info = _open(dict(m, threads=args["threads"]), inputs)
        _save_outputs(m["outputs"], once())
        members.append((once, {"ok": True, "engine": m["engine"], "outputs": m["outputs"],
                               "output_names": names, "rounds_ms": [], **info}))
    for r in range(int(args["rounds"])):
        for once, res in (members if r % 2 == 0 else members[::-1]):
            for _ in range(3):
                once()
            times, end = [], time.perf_counter() + ROUND_S
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                once()
                times.append(time.perf_counter() - t0)
            res["rounds_ms"].append(float(np.median(times)) * 1e3)
    return {"ok": True, "engine": "interleaved", "members": [res for _, res in members]}


def run(args: dict) -> dict:
    import numpy as np

    with np.load(args["inputs"]) as data:
        inputs = {k: data[k] for k in data.files}
    engine = args["engine"]
    if engine == "interleaved":
        return _interleaved(args, inputs)
    t0 = time.perf_counter()
    once, names, info = _open(args, inputs)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outputs = once()
    first = time.perf_counter() - t0
    times = _sample(once, first, int(args["repeat"]), float(args["budget"]))
    _save_outputs(args["outputs"], outputs)
    t = np.array(times) * 1e3
    return {"ok": True, "engine": engine, "threads": int(args["threads"]), "output_names": names,
            "outputs": args["outputs"], "load_seconds": round(load_s, 3),
            "first_ms": first * 1e3, "latencies_ms": t.tolist(), "median_ms": float(np.median(t)),
            "min_ms": float(t.min()), "max_ms": float(t.max()), "samples": len(t), **info}


def spawn(args: dict, workdir: str, tag: str, timeout: float = 1800) -> dict:
    """Run ``args`` in a fresh process with the engine's thread settings; never raises."""
    os.makedirs(workdir, exist_ok=True)
    arg_path = os.path.join(workdir, f"{tag}.args.json")
    out_path = os.path.join(workdir, f"{tag}.result.json")
    if os.path.exists(out_path):
        os.remove(out_path)
    with open(arg_path, "w") as f:
        json.dump(args, f)
    threads = str(args.get("threads", 2))
    env = dict(os.environ, TVM_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
    if args["engine"] in ("fluidml", "tvm") or any(
            m["engine"] in ("fluidml", "tvm") for m in args.get("members", [])):
        env["TVM_USE_RUNTIME_LIB"] = "1"
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), arg_path, out_path],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "engine": args["engine"], "error": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0 or not os.path.exists(out_path):
        tail = [x for x in (proc.stderr or proc.stdout).strip().splitlines() if x.strip()][-3:]
        return {"ok": False, "engine": args["engine"],
                "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    with open(out_path) as f:
        return json.load(f)


# ---- per-kernel profile of a fluidml library (``fluidml-tvm run --profile``) ----------------
def parse_profile(text: str) -> list:
    """Rows of the table ``fluidml-tvm run --profile`` prints: ``kernel``, ``calls``,
    ``total_ms``, ``share`` (percent of the profiled run) and, where the library carries its
    kernels' work, ``gflops``, ``gbps`` and ``roof`` (the share of the host's roofline, None for
    "-"); the summary lines keep their label (``(N more kernels)``, ``(VM builtins: ...)``) as
    kernel name."""
    rows = []
    for line in text.splitlines():
        if line.startswith(("kernel ", "roof:")) or "%" not in line:
            continue
        name, rest = line[:48].strip(), line[48:].split()
        if not name or len(rest) < 3 or not rest[0].isdigit():
            continue
        row = {"kernel": name, "calls": int(rest[0]), "total_ms": float(rest[1])}
        if name.startswith("("):  # calls, total, share
            row["share"] = float(rest[2].rstrip("%"))
        else:  # calls, total, mean, share [, GFLOP/s, GB/s, roof]
            row["share"] = float(rest[3].rstrip("%"))
            if len(rest) >= 7:
                row["gflops"], row["gbps"] = float(rest[4]), float(rest[5])
                row["roof"] = None if rest[6] == "-" else float(rest[6].rstrip("%")) / 100
        rows.append(row)
    return rows


def profile(lib: str, inputs: str, threads: int, top: int = 10, number: int = 3,
            timeout: float = 1800) -> dict:
    """``python -m fluidml_tvm.cli run LIB --profile TOP`` in a subprocess; parsed rows."""
    cmd = [sys.executable, "-m", "fluidml_tvm.cli", "run", lib, "--inputs", inputs,
           "--num-threads", str(threads), "--profile", str(top), "--number", str(number),
           "--outputs", lib + ".profile-outputs.npz"]
    env = dict(os.environ, TVM_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = [x for x in proc.stderr.strip().splitlines() if x.strip()][-3:]
        return {"ok": False, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return {"ok": True, "number": number, "rows": parse_profile(proc.stdout)}


def main(argv=None) -> int:
    arg_path, out_path = (sys.argv[1:] if argv is None else argv)
    with open(arg_path) as f:
        args = json.load(f)
    result = run(args)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
