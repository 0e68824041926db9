"""The board farm: :class:`BoardFarm`, the measurer that times candidate kernels on the boards
behind an RPC tracker (see :mod:`fluidml_tvm.measure_remote`)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter

from .. import cross, targets
from ..costdb import MEASURED_ON
from ..errors import FluidMLError
from ..rpc.client import Tracker, last_line, parse_address
from ..schedules.measure import REMOTE, Timing
from .batch import Batch, Worker

log = logging.getLogger("fluidml_tvm.measure_remote")

class BoardFarm:
    """The boards registered at ``tracker`` under ``key``, as a measurer of candidate kernels.

    Parameters
    ----------
    tracker, key
        ``"HOST:PORT"`` of the RPC tracker and the key the boards registered with.
    wait
        Seconds a worker waits for a free board.
    session_timeout
        Seconds a board's server lets one session live (a worker renews its session at half).
    batch_timeout
        Seconds one batch may take in all; candidates not timed by then are left to the model.
    candidate_timeout
        Seconds after which a candidate still running on one board (a board that stalls) is
        timed again on another, idle one (the stalled board's worker is killed).
    cross_compiler
        Links the candidates' library (default: ``aarch64-linux-gnu-gcc`` for aarch64 targets on
        another host, else the host's compiler).
    listener
        Called as ``listener(event, board, candidate)`` with ``"dispatch"`` before a candidate
        goes to a board and ``"timed"`` when its timing is back (progress displays, tests).
    """

    def __init__(self, tracker: str, key: str, wait: float = 30.0,
                 session_timeout: float = 600.0, batch_timeout: float = 900.0,
                 candidate_timeout: float = 60.0, cross_compiler: str | None = None,
                 listener=None):
        if not tracker or not key:
            raise FluidMLError("measuring on boards needs both --rpc-tracker HOST:PORT and "
                               "--rpc-key KEY")
        self.tracker, self.key = tracker, key
        self.host, self.port = parse_address(tracker, "--rpc-tracker")
        self.wait, self.session_timeout = wait, session_timeout
        self.batch_timeout, self.candidate_timeout = batch_timeout, candidate_timeout
        self.cross_compiler = cross_compiler
        self.listener = listener or (lambda event, board, candidate: None)
        self.identity: str | None = None  # board=KEY/MACHINE/CPU/threads=N; None: no board
        self.machine: str | None = None
        self.notices: list[str] = []
        self.timings_by_board: Counter = Counter()
        self.batches = 0
        self.bad_boards: set = set()  # "host:port" of boards lost or stalled in this compile
        self._seen: set = set()  # boards registered at the last look
        self._workers: list[Worker] = []
        self._closing = False
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
        self._closing = True
        for w in self._workers:  # their sessions end with them: the boards are free again
            w.kill()
        self._workers = []
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._closing = False
        if self.timings_by_board:
            where = ", ".join(f"{n} on {b}" for b, n in sorted(self.timings_by_board.items()))
            self.notice(f"candidates timed on the boards {self.identity} via tracker "
                        f"{self.tracker}: {where}", quiet=True)
        return False

    def attach(self, compiled) -> None:
        """Add the notices to ``compiled``'s schedule decisions (``--report``; data: the
        boards' identity and the timings per board)."""
        from ..decisions import note

        for text in self.notices:
            compiled.decisions.setdefault("schedule", []).append(note(
                "schedule", text, boards=self.identity, tracker=self.tracker,
                timings=dict(self.timings_by_board)))

    def notice(self, text: str, quiet: bool = False) -> None:
        if self._closing:  # a worker killed at the end of the compile is no news
            return
        with self._lock:
            if text not in self.notices:
                self.notices.append(text)
        if not quiet:
            log.warning("%s", text)

    def _request(self, op: str, **fields) -> dict:
        return {"op": op, "tracker": self.tracker, "key": self.key, "wait": self.wait,
                "session_timeout": self.session_timeout, **fields}

    def _probe(self) -> None:
        """Find the boards and ask one who it is (its identity keys the cost database)."""
        try:
            if not self._boards():
                raise FluidMLError(f"no RPC server with key {self.key!r} is registered at "
                                   f"the tracker {self.tracker}")
            worker = self._idle_workers(1)[0]
            with worker.busy:
                answer = worker.call(self._request("info"), timeout=self.wait + 30)
            if "error" in answer:
                raise FluidMLError(answer["error"])
        except FluidMLError as err:
            self.notice(f"no board reachable ({err}): schedule and layout choices for boards "
                        "are analytic (not measured)")
            return
        info = answer["info"]
        self.machine = cross.normalize_machine(info["machine"]) if info.get("machine") else None
        cpu = str(info.get("cpu") or "unknown-cpu").replace("|", "/")
        threads = info.get("num_threads") or "default"
        if not info:
            self.notice(f"the boards under {self.key!r} run a stock TVM RPC server, which does "
                        "not report its CPU: measurements are kept under the key alone")
        self.identity = f"board={self.key}/{self.machine or 'unknown'}/{cpu}/threads={threads}"
        worker.board = answer.get("board")
        self._connect(len(self._boards()))

    def _connect(self, count: int) -> None:
        """A worker with a session on each of ``count`` boards before the first batch: a short
        batch is then shared by all boards at once (a board's first session - a process start,
        seconds under qemu - would otherwise come after the batch was over, and one board would
        time every candidate). A board not reached here is tried again by the first batch."""

        def connect(worker):
            with worker.busy:
                try:
                    answer = worker.call(self._request("info"), timeout=self.wait + 30)
                except FluidMLError:
                    return
                worker.board = answer.get("board")

        fresh = [w for w in self._idle_workers(count) if w.board is None]
        threads = [threading.Thread(target=connect, args=(w,), daemon=True) for w in fresh]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.wait + 30)

    # ---- the measurer interface of fluidml_tvm.schedules.measure --------------------------------
    def accepts(self, target) -> bool:
        """Whether the boards run ``target``'s code (an llvm target of their machine)."""
        if self.identity is None or target is None or target.kind.name != "llvm":
            return False
        triple = str(target.attrs.get("mtriple", "") or "")
        arch = cross.normalize_machine(triple.split("-")[0]) if triple else cross.host_machine()
        if self.machine is None or arch == self.machine:
            return True
        self.notice(f"the boards are {self.machine}, the target {arch}: its kernels are not "
                    "measured on them")
        return False

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
        batch = Batch(funcs, units, queue, results, repeat, min_repeat_ms,
                       time.monotonic() + self.batch_timeout, self.candidate_timeout)
        for _ in range(2):  # a second round when every worker lost its board
            count = min(len(batch.queue), max(1, len(self._boards())))
            threads = [threading.Thread(target=self._drive, args=(w, batch), daemon=True,
                                        name=f"fluidml-farm-{n}")
                       for n, w in enumerate(self._idle_workers(count))]
            for t in threads:
                t.start()
            # until every candidate has its timing (a worker stuck on a stalled board is left)
            while (time.monotonic() < batch.deadline and not batch.finished()
                   and any(t.is_alive() for t in threads)):
                time.sleep(0.02)
            for t in threads:  # they end at once when all is timed; not one stuck on a board
                t.join(0.5)
            if batch.finished() or time.monotonic() >= batch.deadline:
                break
        with batch.lock:
            left = sorted(set(batch.queue) | set(batch.running))
            batch.closed = True
        for worker in batch.stale.values():
            self.notice(f"board {worker.board} did not finish a candidate within "
                        f"{self.candidate_timeout:g} s: it was timed again on another board")
            self.bad_boards.add(worker.board)
            worker.kill()  # the stalled session goes with its process
        if time.monotonic() >= batch.deadline and left:
            self.notice(f"the boards did not time {len(left)} candidate(s) within "
                        f"{self.batch_timeout:g} s: the stage decided those by its model")
        elif left:
            self.notice(f"no board left to time {len(left)} candidate(s): the stage decided "
                        "those by its model")
        return results

    # ---- internals -------------------------------------------------------------------------------
    def _boards(self) -> set:
        """``host:port`` of the boards registered under the key, less those lost or stalled in
        this compile; a board seen before and gone now gets a notice."""
        try:
            with Tracker(self.host, self.port) as trk:
                servers = trk.servers(self.key)
        except FluidMLError:
            return set()
        found = {"{}:{}".format(*s.get("addr", ("", ""))) for s in servers} - self.bad_boards
        for gone in sorted(self._seen - found - self.bad_boards):
            self.notice(f"board {gone} left the tracker during the compile: the other "
                        f"{len(found)} board(s) time the candidates")
        self._seen = found
        return found

    def _idle_workers(self, count: int) -> list:
        """``count`` workers no thread drives now (new ones where too few are idle), those that
        hold a session on a board not lost or stalled first: a worker without one asks the
        tracker for a board, and a board held by another worker is not free there (after a
        stalled board's worker was killed, a batch given only that worker found no board)."""
        idle = [w for w in self._workers if not w.busy.locked()]
        idle.sort(key=lambda w: not (w.alive() and w.board and w.board not in self.bad_boards))
        idle = idle[:count]
        while len(idle) < count:
            idle.append(Worker())
            self._workers.append(idle[-1])
        return idle

    def _build(self, funcs, target) -> dict:
        """``{candidate index: (library path, symbol)}``: all candidates in one library, or one
        library each when that fails (a candidate that does not build gets no timing)."""
        import tvm

        from ..schedules.stack_buffers import pipeline_name

        tir = pipeline_name(target)  # as the compile builds them (fluidml.stack_buffers)

        def export(items) -> str:
            mod = tvm.IRModule({f"k{i}": f.with_attr("global_symbol", f"k{i}")
                                for i, f in items})
            lib = tvm.compile(mod, target=target, tir_pipeline=tir)
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

    def _drive(self, worker: Worker, batch: Batch) -> None:
        """One worker's share of a batch: the next candidate, timed on its board, until none
        is left; a lost board ends it (its candidate goes back to the queue)."""
        if not worker.busy.acquire(blocking=False):
            return
        try:
            self._drive_locked(worker, batch)
        finally:
            worker.busy.release()

    def _drive_locked(self, worker: Worker, batch: Batch) -> None:
        if not worker.alive() or worker.board is None:  # a fresh process: on which board?
            try:
                answer = worker.call(self._request("info"), timeout=self.wait + 30)
            except FluidMLError as err:
                answer = {"error": str(err)}
            if "error" in answer:
                self.notice(f"a board could not be reached ({answer['error']})")
                return
            worker.board = answer["board"]
        while (i := batch.take(worker)) is not None:
            path, symbol = batch.units[i]
            params = [([int(d) for d in p.ty.shape], str(p.ty.dtype))
                      for p in batch.funcs[i].params]
            req = self._request("time", lib=path, symbol=symbol, params=params,
                                repeat=batch.repeat, min_repeat_ms=batch.min_repeat_ms)
            self.listener("dispatch", worker.board, i)
            try:
                answer = worker.call(req)
            except FluidMLError as err:  # the process died (killed as stalled, or crashed)
                batch.give_back(i, worker, lost=True)
                if worker not in batch.stale.values():
                    self.notice(f"a measuring process ended ({err})")
                return
            if "seconds" not in answer:  # an error (or, never expected, a stray answer)
                answer.setdefault("error", f"unexpected answer {answer}")
                answer.setdefault("lost", True)
                batch.give_back(i, worker, lost=answer["lost"])
                if answer["lost"]:
                    where = f"board {answer['board']}" if answer.get("board") else "a board"
                    if answer.get("board"):
                        self.bad_boards.add(answer["board"])
                    self.notice(f"{where} was lost while timing candidates ({answer['error']}): "
                                "its candidates went to the other boards")
                    return
                continue
            worker.board = answer["board"]
            batch.done(i, Timing(answer["seconds"], 0.0, batch.repeat, batch.repeat))
            with self._lock:
                self.timings_by_board[answer["board"]] += 1
            self.listener("timed", answer["board"], i)
