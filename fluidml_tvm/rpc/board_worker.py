"""A measuring process of :mod:`fluidml_tvm.measure_remote`: one session on one board.

``python -m fluidml_tvm.rpc.board_worker`` (TVM runtime alone) reads one JSON request per line
on stdin and answers one JSON line on stdout:

* ``{"op": "info", "tracker", "key", "wait", "session_timeout"}`` -> the board's
  ``board_info`` and ``"board"`` (its ``host:port``);
* ``{"op": "time", ..., "lib", "symbol", "params": [[shape, dtype], ...], "repeat",
  "min_repeat_ms"}`` -> ``{"seconds", "board"}``: the library is uploaded and loaded once per
  session, the kernel timed ON the board with random arguments (as
  :func:`fluidml_tvm.schedules.measure.random_args` makes them).

A failure is ``{"error": one line, "lost": whether the session is gone}``. The session is kept
between requests (one board per process, for a whole compile) and renewed before the board's
server would end it. Why a process: a remote object freed while its board hangs blocks in TVM's
destructor with Python's GIL held, which would stop every thread of the compiling process; here
it stops only this process, which the compile then kills.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from ..errors import FluidMLError
from .client import connect, last_line


class _Board:
    def __init__(self):
        self.session = None
        self.opened = 0.0
        self.loaded = {}  # library path -> remote module

    def open(self, req):
        fresh = self.session is not None and \
            time.monotonic() - self.opened < 0.5 * float(req["session_timeout"])
        if fresh:
            return self.session
        self.close()
        self.session = connect(tracker=req["tracker"], key=req["key"], wait=req["wait"],
                               session_timeout=req["session_timeout"])
        self.opened = time.monotonic()
        return self.session

    def close(self):
        if self.session is not None:
            self.loaded = {}
            self.session.close()
            self.session = None

    def alive(self) -> bool:
        try:  # a round trip that raises on a broken session (cpu().exist only says False)
            self.session.remote.get_function("tvm.rpc.server.upload")
            return True
        except Exception:  # noqa: BLE001
            return False


def handle(req: dict, board: _Board) -> dict:
    session = board.open(req)
    if req["op"] == "info":
        return {"info": session.board_info(), "board": session.server}
    import tvm

    try:
        lib = req["lib"]
        if lib not in board.loaded:
            session.remote.upload(lib)
            board.loaded[lib] = session.remote.load_module(os.path.basename(lib))
        dev = session.remote.cpu()
        rng = np.random.default_rng(0)
        args = []
        for shape, dtype in req["params"]:
            arr = rng.standard_normal(shape).astype(dtype) if dtype.startswith("float") \
                else np.zeros(shape, dtype)
            args.append(tvm.runtime.tensor(arr, dev))
        timer = board.loaded[lib].time_evaluator(req["symbol"], dev, number=1,
                                                 repeat=int(req["repeat"]),
                                                 min_repeat_ms=int(req["min_repeat_ms"]))
        return {"seconds": float(min(timer(*args).results)), "board": session.server}
    except Exception as err:  # noqa: BLE001 - one line back to the compile
        lost = not board.alive()
        server = session.server
        if lost:
            board.close()
        return {"error": last_line(err), "lost": lost, "board": server}


def main() -> int:
    out = os.fdopen(os.dup(1), "w")  # the answers; anything printed goes to stderr instead
    os.dup2(2, 1)
    board = _Board()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            answer = handle(req, board)
        except Exception as err:  # noqa: BLE001 - no board (FluidMLError) or a broken session
            answer = {"error": str(err) if isinstance(err, FluidMLError) else last_line(err),
                      "lost": True, "board": None}
            board.close()
        out.write(json.dumps(answer) + "\n")
        out.flush()
    board.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
