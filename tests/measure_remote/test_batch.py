"""The farm's moving parts without boards: :class:`Batch` (retries, lost boards, stalled
candidates taken over) and :class:`Worker` (a measuring process: one-line errors, killed when it
does not answer in time)."""

from __future__ import annotations

import time

import pytest
from rpc_helpers import HOST, free_port_range

from fluidml_tvm.errors import FluidMLError
from fluidml_tvm.measure_remote import ATTEMPTS, Batch, Worker
from fluidml_tvm.schedules.measure import Timing


def batch_of(n: int, candidate_timeout: float = 60.0) -> Batch:
    results = [Timing(None) for _ in range(n)]
    return Batch([None] * n, {i: i for i in range(n)}, list(range(n)), results, 1, 1,
                 time.monotonic() + 5, candidate_timeout)


def test_a_failing_candidate_is_retried_then_left_to_the_model():
    """Given back after a failure on a live board, dropped after :data:`ATTEMPTS` of them; a
    lost board's candidate always goes back."""
    batch = batch_of(2)
    assert batch.take() == 0 and batch.take() == 1
    batch.give_back(0, lost=True)  # board lost: back in the queue, not counted
    batch.done(1, Timing(1e-3))
    for _ in range(ATTEMPTS):
        assert batch.take() == 0
        batch.give_back(0, lost=False)
    assert batch.take() is None  # nothing left, nothing running
    assert batch.results[0].seconds is None and batch.results[1].seconds == 1e-3


def test_a_stalled_candidate_is_taken_over_by_another_worker():
    batch = batch_of(1, candidate_timeout=0.05)
    a, b = object(), object()
    assert batch.take(a) == 0
    t0 = time.monotonic()
    assert batch.take(b) == 0 and time.monotonic() - t0 >= 0.04  # after the timeout
    assert batch.stale == {0: a}
    batch.give_back(0, a, lost=True)  # the stalled worker, killed later: no longer its candidate
    assert not batch.queue and 0 in batch.running
    batch.done(0, Timing(2e-3))  # b's timing
    assert batch.finished() and batch.results[0].seconds == 2e-3
    batch.done(0, Timing(9.0))  # a late one is ignored
    assert batch.results[0].seconds == 2e-3


def test_a_worker_says_in_one_line_that_no_board_is_reachable():
    worker = Worker()
    try:
        answer = worker.call({"op": "info", "tracker": f"{HOST}:{free_port_range()}",
                              "key": "nobody", "wait": 1, "session_timeout": 10}, timeout=60)
    finally:
        worker.kill()
    assert answer["lost"] and "cannot reach the RPC tracker" in answer["error"]
    assert "\n" not in answer["error"]


def test_a_worker_that_does_not_answer_in_time_is_killed():
    """A "tracker" that takes the connection and never answers: the worker would wait 10 s for
    the handshake; the call's 1 s bound kills it first."""
    import socket

    import psutil

    silent = socket.socket()
    silent.bind((HOST, 0))
    silent.listen(8)  # connections complete in the backlog; nothing is ever sent back
    worker = Worker()
    try:
        t0 = time.monotonic()
        with pytest.raises(FluidMLError, match="did not answer within 1 s"):
            worker.call({"op": "info", "tracker": "{}:{}".format(*silent.getsockname()),
                         "key": "k", "wait": 1, "session_timeout": 10}, timeout=1)
        assert time.monotonic() - t0 < 8 and not worker.alive()
    finally:
        worker.kill()
        silent.close()
    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "board_worker" in " ".join(p.cmdline()):
                alive.append(p.pid)
        except psutil.Error:
            pass
    assert alive == []


class _Running:
    """A process that is still running, for :meth:`Worker.alive`."""

    def poll(self):
        return None


def test_a_batch_goes_first_to_workers_that_hold_a_good_board():
    """After a stalled board's worker was killed, the next batch (one worker: one good board
    left) must go to the worker holding the good board: a fresh process would ask the tracker,
    which has no free board (the good one is held by that very worker). CI stop 21 lost a
    kernel's candidates when the killed worker came first in the list."""
    from fluidml_tvm.measure_remote import BoardFarm

    farm = BoardFarm("127.0.0.1:9190", "k")
    killed, stalled, good = Worker(), Worker(), Worker()
    killed.board = "127.0.0.1:1"  # its process was killed: proc is None
    stalled.proc, stalled.board = _Running(), "127.0.0.1:2"
    good.proc, good.board = _Running(), "127.0.0.1:3"
    farm._workers = [killed, stalled, good]
    farm.bad_boards = {"127.0.0.1:1", "127.0.0.1:2"}
    assert farm._idle_workers(1) == [good]
    assert farm._idle_workers(3)[0] is good and len(farm._idle_workers(4)) == 4
    good.busy.acquire()  # driven by another thread: not idle, the others come in their order
    try:
        assert good not in farm._idle_workers(3)
    finally:
        good.busy.release()
    for w in farm._workers:
        w.proc = None
