"""The roofline view (roofline.py, schedules/work.py, schedules/peaks.py): each kernel's work,
the host's measured peaks, and a warning by name for a conv/matmul kernel far below them."""

from __future__ import annotations

import json

import pytest

import fluidml_tvm
from fluidml_tvm import roofline
from fluidml_tvm.runtime.profile import format_kernel_table
from fluidml_tvm.schedules import peaks
from fluidml_tvm.tools import zoo

PEAK = {"gflops": 200.0, "gbps": 50.0}


def test_fraction_is_the_roofline_time_over_the_time_taken():
    compute = {"flops": 2e9, "bytes": 1e6}  # 10 ms at 200 GFLOP/s; bytes negligible
    memory = {"flops": 1e6, "bytes": 1e9}  # 20 ms at 50 GB/s
    assert roofline.fraction(compute, 0.010, PEAK) == pytest.approx(1.0)
    assert roofline.fraction(compute, 0.040, PEAK) == pytest.approx(0.25)
    assert roofline.fraction(memory, 0.040, PEAK) == pytest.approx(0.5)
    assert roofline.fraction(compute, 0.01, None) is None
    rec = dict(compute, rule="reduction")
    assert "(a generic fallback)" in roofline.warning("fused_conv2d_add", rec, 0.040, PEAK)
    assert roofline.warning("fused_conv2d_add", rec, 0.020, PEAK) is None  # 50%: fine
    assert roofline.warning("softmax", rec, 0.040, PEAK) is None  # not a conv/matmul kernel


def test_profile_table_shows_rates_and_warns_by_name():
    rows = [{"name": "fused_matmul_add_packed", "calls": 1, "total_ms": 40.0, "mean_us": 40e3},
            {"name": "softmax", "calls": 1, "total_ms": 1.0, "mean_us": 1e3}]
    meta = {"host_peak": PEAK,
            "kernels": {"fused_matmul_add": {"rule": "matmul", "flops": 2e9, "bytes": 1e6},
                        "softmax": {"rule": "reduction", "flops": 1e6, "bytes": 4e6}}}
    text = format_kernel_table(rows, metadata=meta)
    assert "GFLOP/s" in text.splitlines()[0]
    line = next(x for x in text.splitlines() if x.startswith("fused_matmul_add_packed"))
    assert "50.0" in line and "25%" in line  # 2e9 flops in 40 ms, a quarter of the roofline
    assert text.splitlines()[-1].startswith("warning: fused_matmul_add_packed reaches 25%")
    assert "warning" not in format_kernel_table(rows)  # without metadata: the plain table


def test_compile_records_work_and_peak_and_report_names_slow_kernels(tmp_path, monkeypatch):
    """A depthwise convolution switched to the generic fallback, against an (injected) peak it
    cannot reach: --report and run --profile both name it; the metadata carries the data."""
    monkeypatch.setattr(peaks, "host_peak",
                        lambda target, options, session=None: {"gflops": 1e5, "gbps": 1e5})
    model = zoo.build("mobilenet", size="tiny", seed=0)
    out = tmp_path / "m.so"
    compiled = fluidml_tvm.compile(model, pass_config=["fluidml.schedule_off=depthwise,conv1x1",
                                                       f"fluidml.cache_dir={tmp_path}"])
    kernels = compiled.kernels()
    assert kernels and all(r["flops"] >= 0 and r["bytes"] > 0 for r in kernels.values())
    assert any(r["rule"] == "reduction" and "conv2d" in n for n, r in kernels.items())
    report = compiled.report()
    assert "## roofline\nhost peak: 100000.0 GFLOP/s" in report
    compiled.export(str(out))
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["host_peak"] == {"gflops": 1e5, "gbps": 1e5} and meta["kernels"] == kernels
    from fluidml_tvm.cli import main

    monkeypatch.setattr("sys.argv", ["fluidml-tvm"])
    assert main(["run", str(out), "--profile", "50"]) == 0


def test_profile_cli_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(peaks, "host_peak",
                        lambda target, options, session=None: {"gflops": 1e5, "gbps": 1e5})
    model = zoo.build("mobilenet", size="tiny", seed=0)
    out = tmp_path / "m.so"
    fluidml_tvm.compile(model, pass_config=["fluidml.schedule_off=depthwise,conv1x1",
                                            f"fluidml.cache_dir={tmp_path}"]).export(str(out))
    from fluidml_tvm.cli import main

    assert main(["run", str(out), "--profile", "50"]) == 0
    text = capsys.readouterr().out
    assert "GFLOP/s" in text
    # at least 10 profiled runs (PROFILE_RUNS): every kernel's calls a multiple of 10
    assert "Per-kernel times (summed over 10 run(s)):" in text
    rows = [x.split() for x in text.splitlines() if x.startswith("fused_conv2d")]
    assert rows and all(int(r[1]) % 10 == 0 for r in rows)
    warned = [x for x in text.splitlines() if x.startswith("warning: ")]
    assert warned and all("of this host's roofline" in w for w in warned)
    assert any("conv2d" in w and "(a generic fallback)" in w for w in warned)


