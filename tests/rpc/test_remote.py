"""Models on a board (:mod:`fluidml_tvm.rpc.remote`): a tiny model uploaded to a REAL
``fluidml-tvm rpc-server`` (through a tracker) or a stock TVM server on 127.0.0.1, run, timed and
profiled remotely and checked against ONNX Runtime; a library built for another machine is
refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from cross_models import assert_close_to_ort, tiny_conv, tiny_conv_inputs
from rpc_helpers import BOUND, HOST, KEY, free_port_range, stop, wait_free

import fluidml_tvm
from fluidml_tvm import cli, cross, rpc
from fluidml_tvm.errors import FluidMLError


def test_via_tracker_run_time_and_kernels(tracker, board, bert):
    with rpc.connect(tracker=tracker, key=KEY, session_timeout=60) as session:
        assert session.machine() == cross.host_machine()
        model = rpc.load_remote(bert["lib"], session)
        assert model.num_threads == "2"
        assert_close_to_ort(bert["model"], model.run(bert["feeds"]), bert["feeds"])
        times = model.time(bert["feeds"], repeat=3, number=2)
        assert len(times) == 3 and all(0 < t < 1 for t in times)
        rows = model.kernel_times(bert["feeds"], number=2)
    kernels = [r for r in rows if not r["name"].startswith("vm.builtin")]
    assert kernels and all(r["calls"] >= 2 and r["total_ms"] > 0 for r in kernels)
    assert rows == sorted(rows, key=lambda r: -r["total_ms"])
    wait_free(tracker)


def test_cli_run_via_tracker(tracker, board, bert, capsys):
    out = str(bert["dir"] / "outputs_tracker.npz")
    code = cli.main(["run", bert["lib"], "--rpc-tracker", tracker, "--rpc-key", KEY,
                     "--inputs", bert["npz"], "--outputs", out, "--print-time", "--repeat", "3",
                     "--profile", "5", "--rpc-session-timeout", "60"])
    text = capsys.readouterr().out
    assert code == 0
    assert "Execution time summary (2 threads, 3 x 1 runs)" in text, text
    assert "Per-kernel times" in text and "fused_" in text, text
    with np.load(out) as data:
        assert_close_to_ort(bert["model"], {k: data[k] for k in data.files}, bert["feeds"])
    wait_free(tracker)


def test_cli_run_via_tracker_in_a_fresh_process(tracker, board, bert, tmp_path):
    """What a user types: the process keeps to the TVM runtime (no compiler library mapped)."""
    out = str(tmp_path / "outputs_fresh.npz")
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}
    code = ("import sys; from fluidml_tvm.cli import main; rc = main(sys.argv[1:]); "
            "maps = open('/proc/self/maps').read(); "
            "print('COMPILER MAPPED' if 'libtvm_compiler.so' in maps else 'runtime alone'); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "run", bert["lib"], "--rpc-tracker",
                           tracker, "--rpc-key", KEY, "--inputs", bert["npz"], "--outputs", out,
                           "--rpc-session-timeout", "60"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "runtime alone" in proc.stdout
    with np.load(out) as data:
        assert_close_to_ort(bert["model"], {k: data[k] for k in data.files}, bert["feeds"])
    wait_free(tracker)


def test_cli_run_on_a_stock_server_directly(stock_server, bert, capsys):
    out = str(bert["dir"] / "outputs_direct.npz")
    code = cli.main(["run", bert["lib"], "--rpc-server", stock_server, "--inputs", bert["npz"],
                     "--outputs", out, "--print-time", "--repeat", "2"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "Execution time summary" in text
    with np.load(out) as data:
        assert_close_to_ort(bert["model"], {k: data[k] for k in data.files}, bert["feeds"])


def test_stock_server_has_no_kernel_timings(stock_server, bert):
    with rpc.connect(server=stock_server, session_timeout=30) as session:
        assert session.machine() is None
        model = rpc.load_remote(bert["lib"], session)
        with pytest.raises(FluidMLError, match="fluidml-tvm rpc-server"):
            model.kernel_times(bert["feeds"])


def test_benchmark_many_spreads_over_boards(tracker, board, bert):
    second = rpc.start_server(HOST, port=free_port_range(), port_end=60999, tracker=tracker,
                              key=KEY, num_threads=1)
    try:
        deadline = time.monotonic() + 30
        host, port = rpc.parse_address(tracker)
        while time.monotonic() < deadline:
            with rpc.Tracker(host, port) as trk:
                if trk.summary()["queue_info"].get(KEY, {}).get("free", 0) >= 2:
                    break
            time.sleep(0.2)
        missing = str(bert["dir"] / "no_such_library.so")
        rows = rpc.benchmark_many([bert["lib"], bert["lib"], missing], tracker, KEY,
                                  inputs=bert["feeds"], repeat=3, number=2, wait=20)
    finally:
        stop(second)
    assert [len(r["seconds"]) for r in rows[:2]] == [3, 3], rows
    assert len({r["board"] for r in rows[:2]}) == 2, rows  # two boards measured at once
    assert "library not found" in rows[2]["error"] and rows[2]["board"] is None, rows
    wait_free(tracker)


def test_library_for_another_architecture_on_the_board(tracker, board, aarch64_lib):
    with rpc.connect(tracker=tracker, key=KEY, session_timeout=30) as session:
        t0 = time.monotonic()
        with pytest.raises(FluidMLError, match=f"built for aarch64 but the board .* is "
                                               f"{cross.host_machine()}"):
            rpc.load_remote(aarch64_lib, session)
        assert time.monotonic() - t0 < BOUND
    wait_free(tracker)


def test_library_for_another_architecture_on_a_stock_server(stock_server, aarch64_lib, capsys):
    t0 = time.monotonic()
    assert cli.main(["run", aarch64_lib, "--rpc-server", stock_server]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot load conv_rasp4b.so, built for aarch64" in err and "\n" not in err, err
    assert time.monotonic() - t0 < BOUND


def test_cli_num_threads_is_local_only(bert, capsys):
    assert cli.main(["run", bert["lib"], "--rpc-server", f"{HOST}:1", "--num-threads", "2"]) == 2
    assert "--num-threads sets this machine's runtime" in capsys.readouterr().err


def test_external_weights_over_rpc(stock_server, tmp_path):
    """fluidml.weights=external: the weights are copied to the board once, passed on every run."""
    lib = str(tmp_path / "conv_ext.so")
    model = tiny_conv(channels=64, classes=32)
    # schedule=0: externalizing weights does not depend on schedules; measuring them costs seconds
    fluidml_tvm.compile(model, target="x86",
                        pass_config=["fluidml.weights=external", "fluidml.schedule=0"]).export(lib)
    feeds = tiny_conv_inputs()
    with rpc.connect(server=stock_server, session_timeout=30) as session:
        remote = rpc.load_remote(lib, session)
        assert remote.metadata.get("weights"), "fluidml.weights=external kept them inside"
        assert len(remote.weights) >= 2
        assert_close_to_ort(model, remote.run(feeds), feeds)
