"""Helpers of the RPC tests: free loopback ports, process trees, waiting for a free board.

Every process these tests start listens on 127.0.0.1 (never 0.0.0.0) and is ended by PID.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time

import psutil

from fluidml_tvm import rpc

HOST = "127.0.0.1"
KEY = "fluidml-test"
BOUND = 6.0  # seconds any failing network case may take (the waits below are 1-1.5 s)


def free_port_range(width: int = 40) -> int:
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


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def assert_gone(procs: list[psutil.Process]):
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline()[-3:])}")
        except psutil.NoSuchProcess:
            pass
    assert not left, f"processes left running: {left}"


def stop(server):
    """Stop a server or tracker and check that none of its processes is left."""
    popen = getattr(getattr(server, "proc", None), "_proc", None)
    procs = process_tree(popen.pid) if popen is not None else []
    rpc.stop_server(server)
    assert_gone(procs)


def wait_free(tracker_addr: str, key: str = KEY, timeout: float = 30.0):
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
def runtime_only():
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
