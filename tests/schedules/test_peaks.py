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
