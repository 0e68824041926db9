"""Whole-process peak RSS of running a model the way a user does, per engine.

fluidml and stock TVM: the process runs ``fluidml-tvm run LIB --inputs IN.npz --repeat N
--num-threads T`` (the CLI's ``main``, in a fresh interpreter: the runtime alone, as a user's run
loads it). ONNX Runtime: a process that imports numpy and onnxruntime, opens an
``InferenceSession`` with the same thread count and runs it ``N + 1`` times on the same inputs.
Each reports its own ``VmHWM`` when done (:data:`REPORT`): the child's ``ru_maxrss`` from
``wait4`` would not do, Linux carries the spawning process's RSS at ``exec`` into it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

# Appended to each measured program: write this process's VmHWM (bytes) to the file named by
# the environment variable FLUIDML_TVM_RSS_OUT.
REPORT = """
def _report_peak():
    import os
    with open("/proc/self/status") as f:
        kb = [int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")][0]
    with open(os.environ["FLUIDML_TVM_RSS_OUT"], "w") as f:
        f.write(str(kb * 1024))
"""

FLUIDML_SCRIPT = REPORT + """
import sys
from fluidml_tvm.cli import main
rc = main(sys.argv[1:])
_report_peak()
sys.exit(rc)
"""

ORT_SCRIPT = REPORT + """
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
_report_peak()
"""


def run_command(engine: str, model: str, lib: str | None, inputs: str, threads: int,
                repeat: int) -> list[str]:
    """The command whose peak RSS is measured for ``engine`` (``fluidml``, ``tvm`` or ``ort``)."""
    if engine == "ort":
        return [sys.executable, "-c", ORT_SCRIPT, model, inputs, str(threads), str(repeat)]
    return [sys.executable, "-c", FLUIDML_SCRIPT, "run", lib, "--inputs", inputs,
            "--repeat", str(repeat), "--num-threads", str(threads)]


def peak_rss(cmd: list[str], env: dict | None = None, timeout: float = 3600.0) -> int:
    """Peak RSS in bytes (``VmHWM``) that ``cmd``, one of :func:`run_command`'s, reports.

    Raises ``RuntimeError`` (with the last lines of its stderr) when it fails or times out.
    """
    fd, out = tempfile.mkstemp(prefix="fluidml-rss-")
    os.close(fd)
    try:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=timeout, env={**(env or os.environ),
                                                    "FLUIDML_TVM_RSS_OUT": out})
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"{' '.join(cmd[:2])} ... failed (exit {proc.returncode}): {tail}")
        with open(out) as f:
            return int(f.read())
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(cmd[:2])} ... did not finish within {timeout:g} s") \
            from None
    finally:
        os.remove(out)


def measure(engine: str, model: str, lib: str | None, inputs: str, threads: int, repeat: int,
            timeout: float = 3600.0) -> int:
    """Peak RSS in bytes of one user-style run of ``engine`` (a fresh process)."""
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    env.pop("TVM_USE_RUNTIME_LIB", None)  # the run decides, as it does for a user
    return peak_rss(run_command(engine, model, lib, inputs, threads, repeat), env, timeout)
