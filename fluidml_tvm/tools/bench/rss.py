"""Whole-process peak RSS of running a model the way a user does, per engine.

fluidml and stock TVM: the process is ``fluidml-tvm run LIB --inputs IN.npz --repeat N
--num-threads T`` itself (the runtime alone, as a user's run loads it). ONNX Runtime: a process
that imports numpy and onnxruntime, opens an ``InferenceSession`` with the same thread count and
runs it ``N + 1`` times on the same inputs (:data:`ORT_SCRIPT`). The peak is the child's
``ru_maxrss`` from ``wait4`` (its ``VmHWM`` when it exits), so nothing of the measuring process is
counted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

ORT_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort
model, npz, threads, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
with np.load(npz) as data:
    feeds = {k: data[k] for k in data.files}
for _ in range(repeat + 1):
    sess.run(None, feeds)
"""


def run_command(engine: str, model: str, lib: str | None, inputs: str, threads: int,
                repeat: int) -> list[str]:
    """The command whose peak RSS is measured for ``engine`` (``fluidml``, ``tvm`` or ``ort``)."""
    if engine == "ort":
        return [sys.executable, "-c", ORT_SCRIPT, model, inputs, str(threads), str(repeat)]
    return [sys.executable, "-m", "fluidml_tvm.cli", "run", lib, "--inputs", inputs,
            "--repeat", str(repeat), "--num-threads", str(threads)]


def peak_rss(cmd: list[str], env: dict | None = None, timeout: float = 3600.0) -> int:
    """Peak RSS in bytes of ``cmd`` run to completion (``ru_maxrss`` of the child).

    Raises ``RuntimeError`` (with the last lines of its stderr) when it fails or times out.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            raise RuntimeError(f"{' '.join(cmd[:4])} ... did not finish within {timeout:g} s")
        time.sleep(0.05)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}): {tail}")
    return int(usage.ru_maxrss) * 1024  # Linux reports kilobytes


def measure(engine: str, model: str, lib: str | None, inputs: str, threads: int, repeat: int,
            timeout: float = 3600.0) -> int:
    """Peak RSS in bytes of one user-style run of ``engine`` (a fresh process)."""
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    env.pop("TVM_USE_RUNTIME_LIB", None)  # the run decides, as it does for a user
    return peak_rss(run_command(engine, model, lib, inputs, threads, repeat), env, timeout)
