"""A REAL tracker and REAL servers on 127.0.0.1 for the RPC tests, and a tiny BERT to send them.

Processes started here (all on 127.0.0.1, never 0.0.0.0):
* a ``tvm.rpc.tracker.Tracker``;
* ``fluidml-tvm rpc-server --tracker ... --key fluidml-test`` as a subprocess with the TVM runtime
  alone (what a board runs);
* a stock ``tvm.rpc.Server`` without tracker, with the TVM runtime alone (what
  ``python -m tvm.exec.rpc_server`` runs on a board).
Each fixture's finalizer ends its process tree by PID (servers leave ``popen_worker`` children)
and checks that none of those processes is left.

The fixtures are session-scoped: this directory is not a Python package, so pytest has no
package scope for it, and the servers and the compiled model are shared by every test file here
(a fixture is only started when a test asks for it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from cross_models import tiny_conv
from needs import require
from rpc_helpers import (
    HOST,
    KEY,
    assert_gone,
    free_port_range,
    process_tree,
    runtime_only,
    stop,
    wait_free,
)

import fluidml_tvm
from fluidml_tvm import cross, rpc
from fluidml_tvm.tools import zoo


@pytest.fixture(scope="session")
def tracker():
    from tvm.rpc.tracker import Tracker

    base = free_port_range()
    with runtime_only():
        trk = Tracker(host=HOST, port=base, port_end=base + 40, silent=True)
    yield f"{HOST}:{trk.port}"
    stop(trk)


@pytest.fixture(scope="session")
def board_process(tracker):
    """``fluidml-tvm rpc-server`` registered with the tracker, in its own process (started here,
    waited for in ``board``, so that it boots while ``bert`` compiles)."""
    base = free_port_range()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluidml_tvm.cli", "rpc-server", "--host", HOST, "--port",
         str(base), "--port-end", str(base + 40), "--tracker", tracker, "--key", KEY,
         "--num-threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})  # a board needs only the runtime
    try:
        yield proc
    finally:
        procs = process_tree(proc.pid)
        rpc.kill_tree(proc.pid)
        proc.stderr.close()
        proc.wait(5)
        assert_gone(procs)


@pytest.fixture(scope="session")
def board(board_process, bert, tracker):
    line = ""
    deadline = time.monotonic() + 60
    while "listening on" not in line and time.monotonic() < deadline:
        line = board_process.stderr.readline()
        if not line and board_process.poll() is not None:
            break
    assert "listening on" in line, f"rpc-server did not start: {line!r}"
    wait_free(tracker)
    return board_process


@pytest.fixture(scope="session")
def stock_server():
    """A stock TVM server (no tracker, no fluidml functions) importing only the TVM runtime:
    what ``python -m tvm.exec.rpc_server`` runs on a board with the runtime alone."""
    from tvm import rpc as tvm_rpc

    base = free_port_range()
    with runtime_only():
        srv = tvm_rpc.Server(host=HOST, port=base, port_end=base + 40, silent=True)
    yield f"{HOST}:{srv.port}"
    stop(srv)


@pytest.fixture(scope="session")
def bert(tmp_path_factory):
    """tiny BERT compiled for this machine, its inputs (also as .npz) and the ONNX model.

    Stock pipeline (fluidml=0): these tests are about RPC, not the optimizer (test_cross.py and
    the external-weights test in test_remote.py run FluidML's pipeline)."""
    model = zoo.build("bert", size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    d = tmp_path_factory.mktemp("rpc")
    lib = str(d / "bert_tiny.so")
    fluidml_tvm.compile(model, target="x86", pass_config=["fluidml=0"]).export(lib)
    np.savez(d / "inputs.npz", **feeds)
    return {"lib": lib, "model": model, "feeds": feeds, "npz": str(d / "inputs.npz"), "dir": d}


@pytest.fixture(scope="session")
def aarch64_lib(tmp_path_factory):
    require(cross.cross_compiler_missing(), "the aarch64 cross compiler")
    lib = str(tmp_path_factory.mktemp("rpc-a64") / "conv_rasp4b.so")
    fluidml_tvm.compile(tiny_conv(), target="rasp4b").export(lib)
    return lib
