"""Timed rounds under the load probe, shared by the kernel benchmarks (bench_matmul.py,
bench_conv_rules.py, bench_tails.py): :func:`timed_round` and :func:`pick`."""

from __future__ import annotations

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
