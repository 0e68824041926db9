"""measure.py: which targets this host can time, timing kernels built together, and the load
probe that tells a quiet timing round from a loaded one."""

from __future__ import annotations

import os

import tvm

from fluidml_tvm.schedules import host_target
from fluidml_tvm.schedules.measure import can_measure, measure_funcs

from .models import matmul_func


def test_can_measure_the_host_not_another_architecture():
    assert can_measure(host_target())
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    assert not can_measure(arm)


def test_measure_funcs_times_each_kernel():
    timings = measure_funcs([matmul_func(16, 16, 16), matmul_func(32, 32, 32)], host_target(),
                            min_repeat_ms=1, repeat=1)
    assert len(timings) == 2
    assert all(t.seconds is not None and t.seconds > 0 and t.rounds >= 1 for t in timings)


def test_cold_timing_flushes_before_every_call(monkeypatch):
    """measure_funcs(cold=True) (the layout variants' timing) asks TVM's time evaluator for
    COLD_CALLS single calls a round, each after ``cache_flush_cpu_non_first_arg``, and keeps the
    best; the default asks for one warm round of at least ``min_repeat_ms``."""
    from fluidml_tvm.schedules import measure

    asked = []
    real = tvm.runtime.Module.time_evaluator

    def spy(self, name, dev, **kw):
        asked.append(kw)
        return real(self, name, dev, **kw)

    monkeypatch.setattr(tvm.runtime.Module, "time_evaluator", spy)
    f = matmul_func(32, 32, 32)
    cold = measure_funcs([f], host_target(), min_repeat_ms=1, repeat=1, cold=True)
    assert cold[0].seconds is not None and cold[0].seconds > 0
    assert asked and all(kw.get("f_preproc") == "cache_flush_cpu_non_first_arg"
                         and kw["repeat"] == measure.COLD_CALLS and kw["number"] == 1
                         for kw in asked)
    asked.clear()
    measure_funcs([f], host_target(), min_repeat_ms=1, repeat=1)
    assert asked and all(not kw.get("f_preproc") and kw["min_repeat_ms"] == 1 for kw in asked)


def test_load_probe_sees_another_process():
    """The probe attributes CPU time of another busy process to 'others' (Linux only)."""
    import subprocess
    import sys
    import time

    from needs import require

    from fluidml_tvm.schedules.measure import LoadProbe

    require(None if os.path.exists("/proc/stat") else "no /proc/stat", "Linux's /proc/stat")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        with LoadProbe() as p:
            time.sleep(0.5)
    finally:
        busy.kill()
        busy.wait()
    assert p.load >= 0.8 / (os.cpu_count() or 1)
