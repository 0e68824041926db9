"""Run and time exported libraries on a remote board through TVM RPC.

The board runs an RPC server: ``fluidml-tvm rpc-server`` (this package, full TVM) or, on a board
with only the TVM runtime, ``python -m tvm.exec.rpc_server``. The workstation either connects to the
server directly (``--rpc-server HOST:PORT``) or asks a tracker for any free board registered under a
key (``--rpc-tracker HOST:PORT --rpc-key KEY``); with a farm of boards the tracker spreads
measurements over them (:func:`benchmark_many` times many libraries on all free boards at once, as
meta-schedule's ``RPCRunner`` does for kernels).

Every network step has a bound and every failure is a one-line :class:`FluidMLError`:

===============================  =================================================================
failure                          behaviour
===============================  =================================================================
tracker/server not listening     fails at once (connection refused) or after ``connect_timeout``
no server has the key            fails at once, listing the keys the tracker knows
every server with the key busy   waits ``wait`` seconds for one to become free, then fails
direct server busy               waits ``wait`` seconds for it to accept the session, then fails
session longer than allowed      the server ends it after ``session_timeout`` s; the call fails
library for another machine      fails before upload (fluidml-tvm servers report their machine)
                                 or when the board cannot load it, naming both architectures
===============================  =================================================================

Per-kernel timings need code on the board: ``fluidml-tvm rpc-server`` registers
``fluidml.rpc.kernel_times`` (a ``vm.set_instrument`` callback timing every VM call), because a
client-side Python callback cannot be passed over RPC ("Cannot pass type ffi.Function as an argument
to the remote"). Against a stock ``tvm.exec.rpc_server`` only whole-model timings are available.

================  ================================================================================
module            what it holds
================  ================================================================================
``client``        :func:`connect`, :class:`Tracker` (bounded), :class:`Session`,
                  :func:`parse_address`
``remote``        :class:`RemoteModel`, :func:`load_remote`, :func:`benchmark_many`,
                  :func:`load_for_cli`
``server``        the board server: :func:`start_server`, :func:`stop_server`,
                  :func:`serve_forever`, :func:`cpu_model`
``board_worker``  a measuring process of :mod:`fluidml_tvm.measure_remote` (one board)
================  ================================================================================

Examples
--------
>>> from fluidml_tvm import rpc
>>> with rpc.connect(tracker="10.0.0.5:9190", key="rasp4b") as session:
...     model = rpc.load_remote("bert_rasp4b.so", session)
...     outputs = model.run(inputs)
...     seconds = model.time(inputs, repeat=10)
"""

from .client import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SESSION_TIMEOUT,
    DEFAULT_WAIT,
    Session,
    Tracker,
    connect,
    parse_address,
)
from .remote import RemoteModel, benchmark_many, load_for_cli, load_remote
from .server import kill_tree, register_board_functions, serve_forever, start_server, stop_server

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_SESSION_TIMEOUT",
    "DEFAULT_WAIT",
    "RemoteModel",
    "Session",
    "Tracker",
    "benchmark_many",
    "connect",
    "kill_tree",
    "load_for_cli",
    "load_remote",
    "parse_address",
    "register_board_functions",
    "serve_forever",
    "start_server",
    "stop_server",
]
