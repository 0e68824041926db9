"""The measuring process: one engine, one model, in a fresh process.

``run`` loads a library with the TVM runtime alone (``fluidml_tvm.load`` in a process that never
imports the compiler) or an ONNX Runtime session, samples latencies within a time budget, and probes
peak activation memory (glibc ``mallinfo2`` around every kernel call) and peak RSS; ``compile``
compiles and exports a library and reports compile time and planned memory.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time

import numpy as np


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
        result["options"] = {"providers": sess.get_providers(), "intra_op_num_threads": threads,
                             "inter_op_num_threads": 1,
                             "graph_optimization_level": str(so.graph_optimization_level)}
        before = heap_bytes()
        outputs = sess.run(None, inputs)  # the first run: its arena keeps what the run needed
        result["peak_activation_bytes"] = heap_bytes() - before if before >= 0 else None
        names = [o.name for o in sess.get_outputs()]
        result["latencies"] = _sample_times(lambda: sess.run(None, inputs), args["repeat"],
                                            args["budget"])
    else:
        os.environ["TVM_NUM_THREADS"] = str(threads)
        from ...runtime import backend, load

        probe = load(args["lib"], num_threads=threads, memory_cfg="naive")
        arrays = probe._arrays(inputs)
        peaks = []
        for _ in range(2):  # the first run (what every engine reports), then a second one
            base = heap_bytes()
            peak = [base]

            def instrument(*_a, peak=peak, **_k):
                peak[0] = max(peak[0], heap_bytes())
                return 0  # VMInstrumentReturnKind.NO_OP

            probe.vm.set_instrument(instrument)
            probe.vm["main"](*arrays)
            peaks.append(peak[0] - base if base >= 0 else None)
        # ONNX Runtime's number is its first run's: so is this one (see suite.MEMORY_METHOD);
        # the second run's is kept beside it (TVM only) to show what the first run adds.
        result["peak_activation_bytes"] = peaks[0]
        result["peak_activation_bytes_second_run"] = peaks[1]
        del probe
        model = load(args["lib"], num_threads=threads)
        arrays = model._arrays(inputs)
        t0 = time.perf_counter()
        out = model.vm["main"](*arrays)  # the warm-up run; its outputs are the ones compared
        first = time.perf_counter() - t0
        from ...runtime.model import _flatten

        outputs = [backend.to_numpy(o) for o in _flatten(out)]
        names = model.output_names

        def once():
            model.vm["main"](*arrays)

        if first > args["budget"]:  # seconds per run (stock TVM): the warm-up is the sample
            result["latencies"] = [first]
        else:
            result["latencies"] = _sample_times(once, args["repeat"], args["budget"])
        result["tvm_runtime_only"] = backend.compile_blocker() is not None
    np.savez(args["outputs"], **{f"out{i}": o for i, o in enumerate(outputs)})
    result["output_names"] = names
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def _worker_compile(args: dict) -> dict:
    from ...compiler import compile as compile_model

    t0 = time.perf_counter()
    pass_config = ([f"fluidml={1 if args['engine'] == 'fluidml' else 0}"]
                   + list(args.get("pass_config") or []))
    compiled = compile_model(args["model"], target="x86", input_shapes=args.get("input_shapes"),
                             pass_config=pass_config)
    compiled.export(args["lib"])
    return {
        "pass_config": pass_config,
        "options": compiled.options.to_dict(),
        "compile_seconds": time.perf_counter() - t0,
        "planned_bytes": sum((compiled.planned_memory or {}).values()),
        "bound_bytes": sum((compiled.memory_bound or {}).values()),
        "timeline": compiled.memory_timeline,
    }


def worker_main(argv=None) -> int:
    """One measurement process: ``python -m fluidml_tvm.tools.bench MODE ARGS.json RESULT.json``
    (``MODE``: ``run`` or ``compile``)."""
    argv = sys.argv[1:] if argv is None else argv
    mode, arg_path, out_path = argv
    with open(arg_path) as f:
        args = json.load(f)
    result = _worker_run(args) if mode == "run" else _worker_compile(args)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0

