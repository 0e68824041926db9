"""This host's measured peaks (schedules/peaks.py): measured once, cached, only where runnable."""

from __future__ import annotations

import numpy as np
import tvm

from fluidml_tvm.schedules import peaks


def test_host_peak_is_measured_once_and_cached(tmp_path):
    from fluidml_tvm.options import Options
    from fluidml_tvm.schedules.target_info import host_target

    opts = Options(cache_dir=str(tmp_path))
    first = peaks.host_peak(host_target(), opts)
    assert first and first["gflops"] > 1 and first["gbps"] > 0.1
    again = peaks.host_peak(host_target(), opts)
    assert again is not None and np.isfinite(again["gflops"])
    assert peaks.host_peak(host_target(), Options(cost="analytic")) is None
    assert peaks.host_peak(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}),
                           opts) is None  # not runnable here


def test_peaks_come_out_of_the_tune_budget(tmp_path):
    """Measuring the peaks is measuring: a first compile keeps the seconds for it (reserve), a
    spent budget leaves it to the next compile, and what it took is charged."""
    from fluidml_tvm.options import Options
    from fluidml_tvm.schedules.target_info import host_target
    from fluidml_tvm.tuning import TuneSession

    opts = Options(cache_dir=str(tmp_path))
    spent = TuneSession(0)
    assert peaks.host_peak(host_target(), opts, spent) is None  # nothing to measure with
    session = TuneSession(5)
    peaks.reserve(host_target(), opts, session)
    assert session.reserved == {"peak": peaks.SECONDS}
    got = peaks.host_peak(host_target(), opts, session)
    assert got and got["gflops"] > 1 and "peak" not in session.reserved
    assert session.stats["peak"][0] == 1 and 0 < session.spent == session.stats["peak"][2] < 5
    again = TuneSession(5)
    peaks.reserve(host_target(), opts, again)  # cached now: nothing kept back
    assert again.reserved == {} and peaks.host_peak(host_target(), opts, again) == got
    assert again.spent == 0


def test_a_kernel_faster_than_the_stored_peak_raises_it(tmp_path):
    """A peak stored low (measured beside a busy neighbour the load probe missed) is raised to
    the rate a kernel was timed at, and stored; rates within the margin leave it as it is."""
    from fluidml_tvm import costdb
    from fluidml_tvm.options import Options
    from fluidml_tvm.schedules.target_info import cpu_info, host_target

    target, opts = host_target(), Options(cache_dir=str(tmp_path))
    db = costdb.CostDB(opts.cache_dir)
    tkey = costdb.target_key(target, cpu_info(target).key())
    low = {"gflops": 100.0, "gbps": 20.0}
    db.choose(tkey, peaks._PEAK_RULE, peaks._PEAK_VERSION, low, 0.01, trials=1, noisy=False)
    db.close()
    assert peaks.host_peak(target, opts) == low
    assert peaks.reconcile(low, [50.0, 104.0], target, opts) == low  # within the margin
    assert peaks.reconcile(None, [500.0], target, opts) is None  # no peak: nothing to raise
    raised = peaks.reconcile(low, [50.0, 0.0, 180.04], target, opts)
    assert raised == {"gflops": 180.0, "gbps": 20.0}
    assert peaks.host_peak(target, opts) == raised  # stored: the next compile reads it
