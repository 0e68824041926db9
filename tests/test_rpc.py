"""TVM RPC: a REAL tracker and REAL servers on 127.0.0.1, a tiny model uploaded, run and timed
remotely and checked against ONNX Runtime; every network failure is one line in bounded time.

Processes started here (all on 127.0.0.1, never 0.0.0.0):
* a ``tvm.rpc.tracker.Tracker``;
* ``fluidml-tvm rpc-server --tracker ... --key fluidml-test`` as a subprocess with the TVM runtime
  alone (what a board runs);
* a stock ``tvm.rpc.Server`` without tracker, with the TVM runtime alone (what
  ``python -m tvm.exec.rpc_server`` runs on a board).
Each fixture's finalizer ends its process tree by PID (servers leave ``popen_worker`` children)
and checks that none of those processes is left.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from cross_models import assert_close_to_ort, tiny_conv, tiny_conv_inputs

import fluidml_tvm
from fluidml_tvm import cli, cross, rpc, zoo
from fluidml_tvm.errors import FluidMLError

HOST = "127.0.0.1"
KEY = "fluidml-test"
BOUND = 6.0  # seconds any failing network case may take (the waits below are 1-1.5 s)


def _free_port_range(width: int = 40) -> int:
    """A base port with ``width`` free ports above it, chosen at random to avoid other runs."""
    for _ in range(50):
        base = random.randrange(20000, 60000 - width)
        with socket.socket() as s:
            try:
                s.bind((HOST, base))
            except OSError:
                continue
        return base
    raise RuntimeError("no free port range on 127.0.0.1")


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _assert_gone(procs: list[psutil.Process]):
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline()[-3:])}")
        except psutil.NoSuchProcess:
            pass
    assert not left, f"processes left running: {left}"


def _stop(server):
    popen = getattr(getattr(server, "proc", None), "_proc", None)
    procs = _tree(popen.pid) if popen is not None else []
    rpc.stop_server(server)
    _assert_gone(procs)


def _wait_free(tracker_addr: str, key: str = KEY, timeout: float = 30.0):
    """Until a server with ``key`` is registered and free at the tracker."""
    host, port = rpc.parse_address(tracker_addr)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with rpc.Tracker(host, port) as trk:
            if trk.summary().get("queue_info", {}).get(key, {}).get("free", 0) > 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"no free server with key {key} at {tracker_addr} after {timeout} s")


@contextlib.contextmanager
def _runtime_only():
    """Child processes started inside import only the TVM runtime (faster; what a board has)."""
    saved = os.environ.get("TVM_USE_RUNTIME_LIB")
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TVM_USE_RUNTIME_LIB")
        else:
            os.environ["TVM_USE_RUNTIME_LIB"] = saved


@pytest.fixture(scope="module")
def tracker():
    from tvm.rpc.tracker import Tracker

    base = _free_port_range()
    with _runtime_only():
        trk = Tracker(host=HOST, port=base, port_end=base + 40, silent=True)
    yield f"{HOST}:{trk.port}"
    _stop(trk)


@pytest.fixture(scope="module")
def board_process(tracker):
    """``fluidml-tvm rpc-server`` registered with the tracker, in its own process (started here,
    waited for in ``board``, so that it boots while ``bert`` compiles)."""
    base = _free_port_range()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluidml_tvm.cli", "rpc-server", "--host", HOST, "--port",
         str(base), "--port-end", str(base + 40), "--tracker", tracker, "--key", KEY,
         "--num-threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})  # a board needs only the runtime
    try:
        yield proc
    finally:
        procs = _tree(proc.pid)
        rpc.kill_tree(proc.pid)
        proc.stderr.close()
        proc.wait(5)
        _assert_gone(procs)


@pytest.fixture(scope="module")
def board(board_process, bert, tracker):
    line = ""
    deadline = time.monotonic() + 60
    while "listening on" not in line and time.monotonic() < deadline:
        line = board_process.stderr.readline()
        if not line and board_process.poll() is not None:
            break
    assert "listening on" in line, f"rpc-server did not start: {line!r}"
    _wait_free(tracker)
    return board_process


@pytest.fixture(scope="module")
def stock_server():
    """A stock TVM server (no tracker, no fluidml functions) importing only the TVM runtime:
    what ``python -m tvm.exec.rpc_server`` runs on a board with the runtime alone."""
    from tvm import rpc as tvm_rpc

    base = _free_port_range()
    with _runtime_only():
        srv = tvm_rpc.Server(host=HOST, port=base, port_end=base + 40, silent=True)
    yield f"{HOST}:{srv.port}"
    _stop(srv)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """tiny BERT compiled for this machine, its inputs (also as .npz) and the ONNX model.

    Stock pipeline (fluidml=0): these tests are about RPC, not the optimizer (test_cross.py and
    the external-weights test below run FluidML's pipeline)."""
    model = zoo.build("bert", size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    d = tmp_path_factory.mktemp("rpc")
    lib = str(d / "bert_tiny.so")
    fluidml_tvm.compile(model, target="x86", pass_config=["fluidml=0"]).export(lib)
    np.savez(d / "inputs.npz", **feeds)
    return {"lib": lib, "model": model, "feeds": feeds, "npz": str(d / "inputs.npz"), "dir": d}


@pytest.fixture(scope="module")
def aarch64_lib(tmp_path_factory):
    missing = cross.cross_compiler_missing()
    if missing:
        pytest.skip(f"no aarch64 toolchain: {missing}")
    lib = str(tmp_path_factory.mktemp("rpc-a64") / "conv_rasp4b.so")
    fluidml_tvm.compile(tiny_conv(), target="rasp4b").export(lib)
    return lib


# ---- remote runs ----------------------------------------------------------------------------
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
    _wait_free(tracker)


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
    _wait_free(tracker)


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
    second = rpc.start_server(HOST, port=_free_port_range(), port_end=60999, tracker=tracker,
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
        _stop(second)
    assert [len(r["seconds"]) for r in rows[:2]] == [3, 3], rows
    assert len({r["board"] for r in rows[:2]}) == 2, rows  # two boards measured at once
    assert "library not found" in rows[2]["error"] and rows[2]["board"] is None, rows
    _wait_free(tracker)


# ---- failures: one line, bounded time ----------------------------------------------------------
def _fails_fast(match: str, **connect_kwargs) -> str:
    t0 = time.monotonic()
    with pytest.raises(FluidMLError, match=match) as info:
        rpc.connect(**connect_kwargs)
    assert time.monotonic() - t0 < BOUND
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_tracker_unreachable():
    port = _free_port_range()  # nothing listens there
    _fails_fast("cannot reach the RPC tracker", tracker=f"{HOST}:{port}", key=KEY)


def test_cli_tracker_unreachable_exits_2(bert, capsys):
    port = _free_port_range()
    t0 = time.monotonic()
    assert cli.main(["run", bert["lib"], "--rpc-tracker", f"{HOST}:{port}", "--rpc-key", KEY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fluidml-tvm: error: cannot reach the RPC tracker") and "\n" not in err
    assert time.monotonic() - t0 < BOUND


def test_server_unreachable():
    port = _free_port_range()
    _fails_fast("cannot reach the RPC server", server=f"{HOST}:{port}")


def test_bad_address_and_missing_key():
    _fails_fast("HOST:PORT", server="localhost")
    _fails_fast("--rpc-key", tracker=f"{HOST}:9190")
    _fails_fast("either", tracker=f"{HOST}:9190", server=f"{HOST}:9090", key=KEY)


def test_no_server_with_that_key(tracker, board):
    msg = _fails_fast("no RPC server with key 'no-such-board'", tracker=tracker,
                      key="no-such-board")
    assert KEY in msg  # the keys the tracker does know


def test_no_free_device_within_the_wait(tracker, board):
    _wait_free(tracker)
    held = rpc.connect(tracker=tracker, key=KEY, session_timeout=30)  # the only board, now busy
    try:
        _fails_fast("no free device for key 'fluidml-test' within 1.5 s", tracker=tracker,
                    key=KEY, wait=1.5)
    finally:
        held.close()
    _wait_free(tracker)


def test_session_timeout(tracker, board, bert):
    _wait_free(tracker)
    session = rpc.connect(tracker=tracker, key=KEY, session_timeout=2)
    connected = time.monotonic()
    with pytest.raises(FluidMLError, match="timed out after 2 s") as info:
        model = rpc.load_remote(bert["lib"], session)  # normally well within the 2 s
        time.sleep(max(0.0, connected + 2.5 - time.monotonic()))  # the server ends it at 2 s
        model.run(bert["feeds"])
    assert time.monotonic() - connected < 2.5 + BOUND
    assert "\n" not in str(info.value)
    session.close()
    _wait_free(tracker)


def test_library_for_another_architecture_on_the_board(tracker, board, aarch64_lib):
    with rpc.connect(tracker=tracker, key=KEY, session_timeout=30) as session:
        t0 = time.monotonic()
        with pytest.raises(FluidMLError, match=f"built for aarch64 but the board .* is "
                                               f"{cross.host_machine()}"):
            rpc.load_remote(aarch64_lib, session)
        assert time.monotonic() - t0 < BOUND
    _wait_free(tracker)


def test_library_for_another_architecture_on_a_stock_server(stock_server, aarch64_lib, capsys):
    t0 = time.monotonic()
    assert cli.main(["run", aarch64_lib, "--rpc-server", stock_server]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot load conv_rasp4b.so, built for aarch64" in err and "\n" not in err, err
    assert time.monotonic() - t0 < BOUND


def test_rpc_server_command_refuses_a_tracker_without_key(capsys):
    assert cli.main(["rpc-server", "--host", HOST, "--tracker", f"{HOST}:9190"]) == 2
    assert "needs --key" in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("FLUIDML_TVM_DEBUG") == "keep", reason="debugging")
def test_kill_tree_ends_children():
    proc = subprocess.Popen([sys.executable, "-c",
                             "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c',"
                             " 'import time; time.sleep(60)']); time.sleep(60)"])
    time.sleep(0.5)
    procs = _tree(proc.pid)
    rpc.kill_tree(proc.pid)
    proc.wait(5)
    _assert_gone(procs)


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
        if not remote.metadata.get("weights"):
            pytest.skip("this pipeline kept the weights inside the library")
        assert len(remote.weights) >= 2
        assert_close_to_ort(model, remote.run(feeds), feeds)
