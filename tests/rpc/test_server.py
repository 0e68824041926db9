"""The board side (:mod:`fluidml_tvm.rpc.server`): the ``rpc-server`` command, the functions it
registers for its clients, and ending a server's whole process tree by PID."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import pytest
from rpc_helpers import HOST, assert_gone, process_tree

from fluidml_tvm import cli, rpc
from fluidml_tvm.rpc import server


def test_rpc_server_command_refuses_a_tracker_without_key(capsys):
    assert cli.main(["rpc-server", "--host", HOST, "--tracker", f"{HOST}:9190"]) == 2
    assert "needs --key" in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("FLUIDML_TVM_DEBUG") == "keep", reason="debugging")
def test_kill_tree_ends_children():
    proc = subprocess.Popen([sys.executable, "-c",
                             "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c',"
                             " 'import time; time.sleep(60)']); time.sleep(60)"])
    time.sleep(0.5)
    procs = process_tree(proc.pid)
    rpc.kill_tree(proc.pid)
    proc.wait(5)
    assert_gone(procs)


def test_board_functions_are_registered_once():
    """What ``fluidml-tvm rpc-server`` offers: the board's machine and thread count, and the
    per-kernel timer; registering twice is a no-op (a fresh process: the registry is global)."""
    code = ("import json, tvm_ffi\n"
            "from fluidml_tvm.rpc import server\n"
            "server.register_board_functions()\n"
            "server.register_board_functions()\n"
            "assert tvm_ffi.get_global_func('fluidml.rpc.kernel_times', allow_missing=True)\n"
            "print(tvm_ffi.get_global_func('fluidml.rpc.board_info')())\n")
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1", TVM_NUM_THREADS="3")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"machine": platform.machine(), "num_threads": "3", "cpu": server.cpu_model(),
                    "cores": os.cpu_count(), "server": "fluidml-tvm rpc-server"}
    assert info["cpu"] != "unknown"  # /proc/cpuinfo names this host's CPU


def test_cpu_model_reads_what_boards_write(tmp_path, monkeypatch):
    """x86 ``model name``, a Raspberry Pi's ``Model``, else ARM implementer/part numbers."""
    import builtins

    samples = {"model name\t: AMD EPYC 9R14\nflags\t: avx\n": "AMD EPYC 9R14",
               "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n"
               "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n": "Raspberry Pi 4 Model B Rev 1.4",
               "CPU implementer\t: 0x41\nCPU part\t: 0xd08\n": "implementer 0x41 part 0xd08",
               "": "unknown"}
    real_open = builtins.open
    for text, want in samples.items():
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(builtins, "open", lambda f, *a, p=path, **k: real_open(
            p if f == "/proc/cpuinfo" else f, *a, **k))
        assert server.cpu_model() == want
        monkeypatch.setattr(builtins, "open", real_open)
