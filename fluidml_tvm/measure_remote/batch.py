"""The two moving parts of a board farm: :class:`Batch`, the shared queue of one batch of
candidates, and :class:`Worker`, a measuring process that holds one board
(:mod:`fluidml_tvm.rpc.board_worker`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

from ..errors import FluidMLError
from ..rpc.server import kill_tree
from ..schedules.measure import Timing

ATTEMPTS = 2  # boards a candidate may fail on before it is left to the model


class Worker:
    """A :mod:`fluidml_tvm.rpc.board_worker` process: JSON lines in and out, started on the
    first call, again after it was killed. One thread at a time drives it (``busy``): a call
    still waiting for its answer (a slow board) keeps it out of the next batch."""

    def __init__(self):
        self.proc = None
        self.board = None  # "host:port" of its last board
        self.busy = threading.Lock()  # held by the one thread that drives it

    def call(self, request: dict, timeout: float | None = None) -> dict:
        """The answer to ``request``; :class:`FluidMLError` when the process ends first (or,
        with ``timeout``, does not answer in time: it is killed)."""
        if not self.alive():
            self.board = None
            env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")  # a client needs the runtime only
            logs = os.environ.get("FLUIDML_TVM_FARM_LOGS")  # a directory: each worker's stderr
            err = open(os.path.join(logs, f"worker-{time.time():.3f}.log"), "w") if logs \
                else subprocess.DEVNULL
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fluidml_tvm.rpc.board_worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
            if logs:
                err.close()
        proc = self.proc
        timer = threading.Timer(timeout, self.kill) if timeout else None
        try:
            if timer:
                timer.start()
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()  # blocks without the GIL; EOF when the process ends
        except (OSError, ValueError):
            line = ""
        finally:
            if timer:
                timer.cancel()
        if not line:
            self.kill()
            raise FluidMLError("its process ended" + (f" or did not answer within {timeout:g} s"
                                                      if timeout else ""))
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            kill_tree(proc.pid)
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except (OSError, ValueError):
                    pass
            proc.wait()


class Batch:
    """One measure call's shared state (every access under ``lock``): the queue of candidate
    indices, those being timed (``running``: index -> (worker, since)), the failures per
    candidate, the results, and the candidates taken over from a worker that had them longer
    than ``candidate_timeout`` (``stale``: index -> that worker)."""

    def __init__(self, funcs, units, queue, results, repeat, min_repeat_ms, deadline,
                 candidate_timeout=60.0):
        self.funcs, self.units, self.queue, self.results = funcs, units, queue, results
        self.repeat, self.min_repeat_ms, self.deadline = repeat, min_repeat_ms, deadline
        self.candidate_timeout = candidate_timeout
        self.running: dict = {}
        self.stale: dict = {}
        self.failures: Counter = Counter()
        self.closed = False
        self.lock = threading.Lock()

    def take(self, worker=None):
        """The next candidate for ``worker``; None when none is left and none is being timed
        (or the batch is over). While others are still timing, wait: their board may be lost,
        or stall (a candidate running longer than ``candidate_timeout`` elsewhere is taken
        over, once)."""
        while time.monotonic() < self.deadline:
            with self.lock:
                if self.closed:
                    return None
                now = time.monotonic()
                if self.queue:
                    i = self.queue.pop(0)
                    self.running[i] = (worker, now)
                    return i
                if not self.running:
                    return None
                for i, (other, since) in self.running.items():
                    if other is not worker and i not in self.stale and \
                            now - since > self.candidate_timeout:
                        self.stale[i] = other
                        self.running[i] = (worker, now)
                        return i
            time.sleep(0.02)
        return None

    def finished(self) -> bool:
        with self.lock:
            return not self.queue and not self.running

    def done(self, i: int, timing: Timing) -> None:
        with self.lock:
            self.running.pop(i, None)
            if not self.closed and self.results[i].seconds is None:
                self.results[i] = timing

    def give_back(self, i: int, worker=None, lost: bool = False) -> None:
        """``worker`` failed candidate ``i``: back to the queue (if it still held it), unless it
        failed on :data:`ATTEMPTS` boards that are still alive (the kernel itself fails)."""
        with self.lock:
            if self.running.get(i, (worker,))[0] is not worker:
                return  # taken over by another worker meanwhile
            self.running.pop(i, None)
            if not lost:
                self.failures[i] += 1
            if not self.closed and self.failures[i] < ATTEMPTS and \
                    self.results[i].seconds is None:
                self.queue.append(i)
