"""Schedule and layout decisions measured on boards: a farm behind an RPC tracker.

A compile for ``rasp4b`` or ``jetson-orin`` cannot time its candidate kernels on an x86 host, so
without boards it takes the analytic choices. Inside ``with boards(tracker, key):`` every
candidate batch the schedule and layout stages measure (:func:`fluidml_tvm.schedules.measure.
measure_funcs`) is cross-compiled here into one library, uploaded, and timed ON the boards
registered at the tracker under ``key``: one worker per free board, each taking the next
candidate from a shared queue (as meta-schedule's ``RPCRunner`` spreads candidates), so ``N``
boards time a batch about ``N`` times faster.

* The timings are kept in the cost database (:mod:`fluidml_tvm.costdb`) under the boards'
  identity, ``board=KEY/MACHINE/CPU/threads=N`` (what the board's server reports: ``fluidml-tvm
  rpc-server`` or ``scripts/board_server``), instead of this host's thread count; a second
  compile for the same boards finds them and measures nothing.
* A board that is lost mid-batch (killed, rebooted, unplugged) loses nothing: the candidate it
  held goes back to the queue and another board times it. A candidate no board could time (it
  failed on two, or every board is gone, or the batch ran past ``batch_timeout``) gets no timing
  and the stage decides it with its model; :attr:`BoardFarm.notices` says so. No step waits
  without a bound: tracker requests wait ``wait`` s, the server ends a session after
  ``session_timeout`` s, and a batch is abandoned after ``batch_timeout`` s.
* No board reachable (tracker down, no server under ``key``): nothing is measured, every choice
  is the analytic one, and a notice says why.

Examples
--------
>>> from fluidml_tvm import measure_remote
>>> with measure_remote.boards("10.0.0.5:9190", "rasp4b") as farm:
...     compiled = fluidml_tvm.compile("model.onnx", target="rasp4b")
>>> farm.attach(compiled)            # the notices join the schedule decisions (--report)
>>> farm.timings_by_board            # {"10.0.0.7:9090": 24, "10.0.0.8:9090": 23}

The command line does the same: ``fluidml-tvm compile model.onnx --target rasp4b
--rpc-tracker HOST:PORT --rpc-key rasp4b``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter

from . import cross, targets
from .costdb import MEASURED_ON
from .errors import FluidMLError
from .rpc.client import Tracker, connect, last_line, parse_address
from .schedules.measure import REMOTE, Timing, random_args

log = logging.getLogger("fluidml_tvm.measure_remote")

ATTEMPTS = 2  # boards a candidate may fail on before it is left to the model


class BoardFarm:
    """The boards registered at ``tracker`` under ``key``, as a measurer of candidate kernels.

    Parameters
    ----------
    tracker, key
        ``"HOST:PORT"`` of the RPC tracker and the key the boards registered with.
    wait
        Seconds a worker waits for a free board.
    session_timeout
        Seconds a board's server lets one session (one worker's share of a batch) live.
    batch_timeout
        Seconds one batch may take in all; candidates not timed by then are left to the model.
    cross_compiler
        Links the candidates' library (default: ``aarch64-linux-gnu-gcc`` for aarch64 targets on
        another host, else the host's compiler).
    """

    def __init__(self, tracker: str, key: str, wait: float = 30.0,
                 session_timeout: float = 300.0, batch_timeout: float = 600.0,
                 cross_compiler: str | None = None):
        if not tracker or not key:
            raise FluidMLError("measuring on boards needs both --rpc-tracker HOST:PORT and "
                               "--rpc-key KEY")
        self.tracker, self.key = tracker, key
        self.host, self.port = parse_address(tracker, "--rpc-tracker")
        self.wait, self.session_timeout = wait, session_timeout
        self.batch_timeout = batch_timeout
        self.cross_compiler = cross_compiler
        self.identity: str | None = None  # board=KEY/MACHINE/CPU/threads=N; None: no board
        self.machine: str | None = None
        self.notices: list[str] = []
        self.timings_by_board: Counter = Counter()
        self.batches = 0
        self._lock = threading.Lock()
        self._tmp = None
        self._tokens = []

    # ---- lifetime --------------------------------------------------------------------------------
    def __enter__(self):
        self._tmp = tempfile.mkdtemp(prefix="fluidml-farm-")
        self._probe()
        self._tokens = [REMOTE.set(self), MEASURED_ON.set(self.identity_for)]
        return self

    def __exit__(self, *exc):
        MEASURED_ON.reset(self._tokens.pop())
        REMOTE.reset(self._tokens.pop())
        shutil.rmtree(self._tmp, ignore_errors=True)
        if self.timings_by_board:
            where = ", ".join(f"{n} on {b}" for b, n in sorted(self.timings_by_board.items()))
            self.notice(f"candidates timed on the boards {self.identity} via tracker "
                        f"{self.tracker}: {where}", quiet=True)
        return False

    def attach(self, compiled) -> None:
        """Add the notices to ``compiled``'s schedule decisions (``--report``; data: the
        boards' identity and the timings per board)."""
        from .decisions import note

        for text in self.notices:
            compiled.decisions.setdefault("schedule", []).append(note(
                "schedule", text, boards=self.identity, tracker=self.tracker,
                timings=dict(self.timings_by_board)))

    def notice(self, text: str, quiet: bool = False) -> None:
        with self._lock:
            if text not in self.notices:
                self.notices.append(text)
        if not quiet:
            log.warning("%s", text)

    def _probe(self) -> None:
        """Find the boards and ask one who it is (its identity keys the cost database)."""
        try:
            with Tracker(self.host, self.port) as trk:
                if not trk.servers(self.key):
                    raise FluidMLError(f"no RPC server with key {self.key!r} is registered at "
                                       f"the tracker {self.tracker}")
            with connect(tracker=self.tracker, key=self.key, wait=self.wait,
                         session_timeout=60) as session:
                info = session.board_info()
        except FluidMLError as err:
            self.notice(f"no board reachable ({err}): schedule and layout choices for boards "
                        "are analytic (not measured)")
            return
        self.machine = cross.normalize_machine(info["machine"]) if info.get("machine") else None
        cpu = str(info.get("cpu") or "unknown-cpu").replace("|", "/")
        threads = info.get("num_threads") or "default"
        if not info:
            self.notice(f"the boards under {self.key!r} run a stock TVM RPC server, which does "
                        "not report its CPU: measurements are kept under the key alone")
        self.identity = f"board={self.key}/{self.machine or 'unknown'}/{cpu}/threads={threads}"

    # ---- the measurer interface of fluidml_tvm.schedules.measure --------------------------------
    def accepts(self, target) -> bool:
        """Whether the boards run ``target``'s code (an llvm target of their machine)."""
        if self.identity is None or target is None or target.kind.name != "llvm":
            return False
        triple = str(target.attrs.get("mtriple", "") or "")
        arch = cross.normalize_machine(triple.split("-")[0]) if triple else cross.host_machine()
        return self.machine is None or arch == self.machine

    def identity_for(self, target) -> str | None:
        """The cost database's key part for ``target`` (:data:`fluidml_tvm.costdb.MEASURED_ON`)."""
        return self.identity if self.accepts(target) else None

    def measure(self, funcs: list, target, min_repeat_ms: int = 40, repeat: int = 3) -> list:
        """:class:`~fluidml_tvm.schedules.measure.Timing` of each PrimFunc, timed on the boards
        (``Timing(None)`` where no board could time it)."""
        self.batches += 1
        results = [Timing(None) for _ in funcs]
        units = self._build(funcs, target)
        queue = [i for i in range(len(funcs)) if i in units]
        if not queue:
            return results
        batch = _Batch(funcs, units, queue, results, repeat, min_repeat_ms,
                       time.monotonic() + self.batch_timeout)
        for _ in range(2):  # a second round when every worker lost its board
            workers = [threading.Thread(target=self._worker, args=(batch,), daemon=True,
                                        name=f"fluidml-farm-{i}")
                       for i in range(min(len(batch.queue), self._free_boards()))]
            for w in workers:
                w.start()
            for w in workers:
                w.join(max(0.0, batch.deadline - time.monotonic()))
            if not batch.queue or time.monotonic() >= batch.deadline:
                break
        with batch.lock:
            left, batch.queue[:] = list(batch.queue) + sorted(batch.running), []
            batch.closed = True
        if time.monotonic() >= batch.deadline and left:
            self.notice(f"the boards did not time {len(left)} candidate(s) within "
                        f"{self.batch_timeout:g} s: the stage decided those by its model")
        elif left:
            self.notice(f"no board left to time {len(left)} candidate(s): the stage decided "
                        "those by its model")
        return results

    # ---- internals -------------------------------------------------------------------------------
    def _free_boards(self) -> int:
        try:
            with Tracker(self.host, self.port) as trk:
                queue = trk.summary().get("queue_info", {}).get(self.key, {})
                return max(1, int(queue.get("free", 0)))
        except FluidMLError:
            return 1

    def _build(self, funcs, target) -> dict:
        """``{candidate index: (library path, symbol)}``: all candidates in one library, or one
        library each when that fails (a candidate that does not build gets no timing)."""
        import tvm

        def export(items) -> str:
            mod = tvm.IRModule({f"k{i}": f.with_attr("global_symbol", f"k{i}")
                                for i, f in items})
            lib = tvm.compile(mod, target=target)
            path = os.path.join(self._tmp, f"batch{self.batches}_{items[0][0]}.so")
            cc = self.cross_compiler or targets.resolve(target)[1]
            kwargs = {"fcompile": tvm.support.cc.cross_compiler(cc)} if cc else {}
            lib.export_library(path, **kwargs)
            return path

        items = list(enumerate(funcs))
        try:
            path = export(items)
            return {i: (path, f"k{i}") for i, _ in items}
        except Exception:  # noqa: BLE001 - one bad candidate: build them one by one
            units = {}
            for item in items:
                try:
                    units[item[0]] = (export([item]), f"k{item[0]}")
                except Exception as err:  # noqa: BLE001
                    log.info("candidate %d does not build for the boards: %s", item[0],
                             last_line(err))
            return units

    def _worker(self, batch: _Batch) -> None:
        try:
            session = connect(tracker=self.tracker, key=self.key, wait=self.wait,
                              session_timeout=self.session_timeout)
        except FluidMLError as err:
            self.notice(f"a board could not be reached ({err})")
            return
        board, loaded = session.server, {}
        try:
            while (i := batch.take()) is not None:
                try:
                    seconds = self._time_one(session, loaded, batch, i)
                except Exception as err:  # noqa: BLE001 - a lost board or a failing candidate
                    lost = not _alive(session)
                    batch.give_back(i, lost)
                    if lost:
                        self.notice(f"board {board} was lost while timing candidates "
                                    f"({last_line(err)}): its candidates went to the other "
                                    "boards")
                        return
                    continue
                batch.done(i, Timing(seconds, 0.0, batch.repeat, batch.repeat))
                with self._lock:
                    self.timings_by_board[board] += 1
        finally:
            session.close()

    def _time_one(self, session, loaded: dict, batch: _Batch, i: int) -> float:
        path, symbol = batch.units[i]
        if path not in loaded:
            session.remote.upload(path)
            loaded[path] = session.remote.load_module(os.path.basename(path))
        dev = session.remote.cpu()
        args = random_args(batch.funcs[i], dev)
        timer = loaded[path].time_evaluator(symbol, dev, number=1, repeat=batch.repeat,
                                            min_repeat_ms=batch.min_repeat_ms)
        return float(min(timer(*args).results))


class _Batch:
    """One measure call's shared state: the queue of candidate indices, those being timed, the
    attempts per candidate and the results (every access under ``lock``)."""

    def __init__(self, funcs, units, queue, results, repeat, min_repeat_ms, deadline):
        self.funcs, self.units, self.queue, self.results = funcs, units, queue, results
        self.repeat, self.min_repeat_ms, self.deadline = repeat, min_repeat_ms, deadline
        self.running: set = set()
        self.failures: Counter = Counter()
        self.closed = False
        self.lock = threading.Lock()

    def take(self):
        """The next candidate; None when none is left and none is being timed (or the batch is
        over). While others are still timing, wait: their board may be lost."""
        while time.monotonic() < self.deadline:
            with self.lock:
                if self.closed:
                    return None
                if self.queue:
                    i = self.queue.pop(0)
                    self.running.add(i)
                    return i
                if not self.running:
                    return None
            time.sleep(0.02)
        return None

    def done(self, i: int, timing: Timing) -> None:
        with self.lock:
            self.running.discard(i)
            if not self.closed:
                self.results[i] = timing

    def give_back(self, i: int, lost: bool) -> None:
        """Candidate ``i`` failed: back to the queue, unless it failed on :data:`ATTEMPTS`
        boards that are still alive (then the kernel itself fails there)."""
        with self.lock:
            self.running.discard(i)
            if not lost:
                self.failures[i] += 1
            if not self.closed and self.failures[i] < ATTEMPTS:
                self.queue.append(i)



def _alive(session) -> bool:
    try:
        session.remote.cpu().exist  # noqa: B018 - a round trip
        return True
    except Exception:  # noqa: BLE001
        return False


@contextlib.contextmanager
def boards(tracker: str, key: str, **kwargs):
    """``with boards(tracker, key) as farm:`` compiles inside measure on the boards
    (:class:`BoardFarm`; keyword arguments go to it)."""
    with BoardFarm(tracker, key, **kwargs) as farm:
        yield farm


def for_cli(args):
    """The context ``fluidml-tvm compile`` runs in: a :class:`BoardFarm` with
    ``--rpc-tracker/--rpc-key``, else nothing."""
    if not (getattr(args, "rpc_tracker", None) or getattr(args, "rpc_key", None)):
        return contextlib.nullcontext()
    return BoardFarm(args.rpc_tracker, args.rpc_key, wait=args.rpc_wait,
                     cross_compiler=args.cross_compiler)
