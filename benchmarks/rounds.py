"""Timed rounds under the load probe, shared by the kernel benchmarks (bench_matmul.py,
bench_conv_rules.py, bench_tails.py): :func:`timed_round` and :func:`pick`; the per-CPU speed
probe of the model benchmarks (run_corpus.py, bench_option_ab.py): :func:`cpu_skew`."""

from __future__ import annotations

import os
import statistics
import time

from fluidml_tvm.schedules.measure import QUIET_LOAD, LoadProbe


def timed_round(fn, seconds):
    """(seconds per call over a round of at least ``seconds``, the others' load meanwhile);
    one untimed call first."""
    fn()
    n, t0 = 0, time.perf_counter()
    with LoadProbe() as probe:
        while True:
            fn()
            n += 1
            el = time.perf_counter() - t0
            if el >= seconds:
                break
    return el / n, probe.load


def pick(rounds):
    """Best quiet round (else best round), quiet rounds, the highest load of any round."""
    quiet = [t for t, ld in rounds if ld <= QUIET_LOAD]
    return min(quiet or [t for t, _ in rounds]), len(quiet), max(ld for _, ld in rounds)


def _spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def cpu_skew(n: int = 300_000, reps: int = 3) -> dict:
    """Each CPU this process may run on, timed alone on one fixed scalar loop (the calling
    thread pinned to it in turn, then unpinned): ``{"ms": [median ms per CPU], "skew": slowest /
    fastest}``. The load average does not see a host that gives one of its vCPUs less time:
    on the 2-core cloud host the first vCPU ran this loop 1.5-2x slower than the second for
    minutes at a time while the load average read ~1, and a kernel whose parallel loop is split
    evenly among the threads (TVM's) waits for the slow one, where ONNX Runtime's threads share
    the work out as they finish (MNASNet, 2 threads: 0.97x ONNX Runtime in a quiet minute, 1.14x
    with one vCPU 1.5x slower). A skew near 1 does not prove a quiet host: its other slow phase
    leaves this scalar loop alone and slows vector kernels (benchmarks/README.md)."""
    cpus = sorted(os.sched_getaffinity(0))
    per = []
    try:
        for c in cpus:
            os.sched_setaffinity(0, {c})
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                _spin(n)
                ts.append((time.perf_counter() - t) * 1e3)
            per.append(statistics.median(ts))
    finally:
        os.sched_setaffinity(0, set(cpus))
    return {"ms": [round(x, 2) for x in per], "skew": round(max(per) / min(per), 2)}


def skew_text(before: dict | None, after: dict | None) -> str:
    """``1.05/1.62``: the CPU skew before and after a model (``-`` where not probed)."""
    def one(d):
        return f"{d['skew']:.2f}" if d else "-"
    return f"{one(before)}/{one(after)}"
