"""Schedule and layout decisions measured on boards: a farm behind an RPC tracker.

A compile for ``rasp4b`` or ``jetson-orin`` cannot time its candidate kernels on an x86 host, so
without boards it takes the analytic choices. Inside ``with boards(tracker, key):`` every
candidate batch the schedule and layout stages measure (:func:`fluidml_tvm.schedules.measure.
measure_funcs`) is cross-compiled here into one library, uploaded, and timed ON the boards
registered at the tracker under ``key``: one worker per board, each taking the next candidate
from a shared queue (as meta-schedule's ``RPCRunner`` spreads candidates), so ``N`` boards time
a batch about ``N`` times faster. Each worker talks to its board from a process of its own
(:mod:`fluidml_tvm.rpc.board_worker`, TVM runtime alone, one session kept for the compile): a
board that hangs can then stop only that process, which is killed, never the compile.

* The timings are kept in the cost database (:mod:`fluidml_tvm.costdb`) under the boards'
  identity, ``board=KEY/MACHINE/CPU/threads=N`` (what the board's server reports: ``fluidml-tvm
  rpc-server`` or ``scripts/board_server``), instead of this host's thread count; a second
  compile for the same boards finds them and measures nothing.
* A board that is lost mid-batch (killed, rebooted, unplugged) loses nothing: the candidate it
  held goes back to the queue and another board times it; one that stalls (its candidate still
  running after ``candidate_timeout`` s) has that candidate timed again by an idle board, the
  first timing to arrive counts. A candidate no board could time (it
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

from .batch import ATTEMPTS, Batch, Worker
from .farm import BoardFarm


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


__all__ = ["ATTEMPTS", "Batch", "BoardFarm", "Worker", "boards", "for_cli"]
