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
