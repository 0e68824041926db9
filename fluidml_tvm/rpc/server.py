"""The board side: ``fluidml-tvm rpc-server``, a ``tvm.rpc.Server`` that also offers
per-kernel timings (:func:`fluidml_tvm.runtime.profile.kernel_times`) and the board's machine and
thread count to its clients."""

from __future__ import annotations

import json
import os
import platform
import time

from ..errors import FluidMLError
from ..runtime.profile import kernel_times
from .client import BOARD_INFO, KERNEL_TIMES, last_line, parse_address


def register_board_functions() -> None:
    """Register what ``fluidml-tvm rpc-server`` offers its clients (idempotent)."""
    import tvm_ffi

    if tvm_ffi.get_global_func(KERNEL_TIMES, allow_missing=True) is None:
        tvm_ffi.register_global_func(KERNEL_TIMES, kernel_times)
    if tvm_ffi.get_global_func(BOARD_INFO, allow_missing=True) is None:
        tvm_ffi.register_global_func(BOARD_INFO, _board_info)


def _board_info() -> str:
    return json.dumps({"machine": platform.machine(), "cpu": cpu_model(),
                       "cores": os.cpu_count(), "num_threads": os.environ.get("TVM_NUM_THREADS"),
                       "server": "fluidml-tvm rpc-server"})


def cpu_model() -> str:
    """The CPU as ``/proc/cpuinfo`` names it: ``model name`` (x86), else the board's ``Model``
    (Raspberry Pi), else the ARM implementer and part numbers; ``unknown`` without it. The
    same rule as ``scripts/board_server.cc``: both key a board's timings by it."""
    found = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                found.setdefault(name.strip(), value.strip())
    except OSError:
        return "unknown"
    if found.get("model name"):
        return found["model name"]
    if found.get("Model"):
        return found["Model"]
    if found.get("CPU part"):
        return f"implementer {found.get('CPU implementer', '')} part {found['CPU part']}"
    return "unknown"


def _server_init():
    """``server_init_callback`` of :func:`start_server`: runs in the server process; sessions are
    forked from it and inherit the functions."""
    register_board_functions()


def start_server(host: str = "127.0.0.1", port: int = 9090, port_end: int = 9199,
                 tracker: str | None = None, key: str = "", num_threads: int | None = None,
                 custom_addr: str | None = None, silent: bool = True):
    """Start a ``tvm.rpc.Server`` (in a child process) offering per-kernel timings.

    ``num_threads`` sets ``TVM_NUM_THREADS`` for the sessions (default: every core; TVM's own
    default is half of them). Stop it with :func:`stop_server`, which also ends the session
    processes it leaves behind.
    """
    from tvm import rpc

    tracker_addr = parse_address(tracker, "--tracker") if tracker else None
    if tracker_addr and not key:
        raise FluidMLError("a server registered with a tracker needs --key (e.g. rasp4b)")
    # The server process inherits the environment when it starts: set the count only for it.
    saved = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(num_threads or os.cpu_count() or 1)
    try:
        server = rpc.Server(host=host, port=port, port_end=port_end, tracker_addr=tracker_addr,
                            key=key, custom_addr=custom_addr, silent=silent,
                            server_init_callback=_server_init)
    except Exception as err:  # noqa: BLE001 - e.g. no free port in the range
        raise FluidMLError(f"cannot start the RPC server on {host}:{port}-{port_end}: "
                           f"{last_line(err)}") from None
    finally:
        if saved is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = saved
    server.num_threads = int(num_threads or os.cpu_count() or 1)
    return server


def stop_server(server) -> None:
    """Stop a server from :func:`start_server`, a ``tvm.rpc.Server`` or a
    ``tvm.rpc.tracker.Tracker``, and every process under it (session processes included)."""
    popen = getattr(getattr(server, "proc", None), "_proc", None)
    kill_tree(popen.pid if popen is not None else None)
    server.terminate()


def kill_tree(pid: int | None, timeout: float = 3.0) -> None:
    """End process ``pid`` and all its descendants, by PID (``popen_worker`` sessions included)."""
    if pid is None:
        return
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)


def serve_forever(host: str, port: int, port_end: int, tracker: str | None, key: str,
                  num_threads: int | None, custom_addr: str | None = None) -> int:
    """The ``fluidml-tvm rpc-server`` command: start a server, print where, wait for Ctrl-C."""
    import signal
    import sys

    def _stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    server = start_server(host, port, port_end, tracker, key, num_threads, custom_addr,
                          silent=False)
    where = f"{host}:{server.port}"
    reg = f", registered at tracker {tracker} with key {key!r}" if tracker else ""
    print(f"[fluidml-tvm] RPC server listening on {where}{reg} "
          f"(TVM_NUM_THREADS={server.num_threads}); Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        while server.proc is not None and server.proc.is_alive():
            time.sleep(0.5)
        print("[fluidml-tvm] the RPC server process exited", file=sys.stderr)
        return 1
    finally:
        stop_server(server)

