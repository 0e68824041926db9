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

Examples
--------
>>> from fluidml_tvm import rpc
>>> with rpc.connect(tracker="10.0.0.5:9190", key="rasp4b") as session:
...     model = rpc.load_remote("bert_rasp4b.so", session)
...     outputs = model.run(inputs)
...     seconds = model.time(inputs, repeat=10)
"""

from __future__ import annotations

import json
import os
import platform
import socket
import struct
import threading
import time
import weakref

import numpy as np

from . import cross
from .errors import FluidMLError

DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds to open a TCP connection / finish a handshake
DEFAULT_WAIT = 60.0  # seconds to wait for a free board
DEFAULT_SESSION_TIMEOUT = 600.0  # seconds the server lets one session live (0: unlimited)

_KERNEL_TIMES = "fluidml.rpc.kernel_times"
_BOARD_INFO = "fluidml.rpc.board_info"


def parse_address(text: str, flag: str = "address") -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; a clear error otherwise."""
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FluidMLError(f"{flag} wants HOST:PORT (e.g. 127.0.0.1:9190), got {text!r}")
    return host.strip("[]"), int(port)


def _open_socket(host: str, port: int, timeout: float, what: str) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise FluidMLError(f"cannot reach the {what} at {host}:{port}: connection refused "
                           "(is it running, and listening on that address?)") from None
    except socket.timeout:
        raise FluidMLError(f"cannot reach the {what} at {host}:{port}: no answer within "
                           f"{timeout:g} s") from None
    except OSError as err:
        raise FluidMLError(f"cannot reach the {what} at {host}:{port}: {err.strerror or err}") \
            from None


def _tracker_call(sock: socket.socket, message: list):
    from tvm.rpc import base

    base.sendjson(sock, message)
    return base.recvjson(sock)


class Tracker:
    """A bounded client of a TVM RPC tracker (``tvm.rpc.connect_tracker`` retries for 60 s and
    waits forever for a free board; this one does neither)."""

    def __init__(self, host: str, port: int, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT):
        from tvm.rpc import base

        self.host, self.port = host, port
        self.connect_timeout = connect_timeout
        self.last_server = None  # "host:port" of the server the last request got
        self._sock = _open_socket(host, port, connect_timeout, "RPC tracker")
        try:
            self._sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(self._sock, 4))[0]
        except (OSError, struct.error):
            self.close()
            raise FluidMLError(f"{host}:{port} did not answer as an RPC tracker within "
                               f"{connect_timeout:g} s") from None
        if magic != base.RPC_TRACKER_MAGIC:
            self.close()
            raise FluidMLError(f"{host}:{port} is not a TVM RPC tracker")

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def summary(self) -> dict:
        """The tracker's ``{"queue_info": {key: {free, pending}}, "server_info": [...]}``."""
        from tvm.rpc import base

        try:
            value = _tracker_call(self._sock, [base.TrackerCode.SUMMARY])
        except (OSError, ValueError) as err:
            raise FluidMLError(f"the RPC tracker at {self.host}:{self.port} stopped answering: "
                               f"{err}") from None
        return value[1]

    def servers(self, key: str | None = None) -> list[dict]:
        """Registered servers (``{"key": "server:KEY", "addr": [host, port]}``), for ``key``."""
        info = self.summary().get("server_info", [])
        if key is None:
            return info
        return [s for s in info if s.get("key", "").split(":", 1)[-1] == key]

    def request(self, key: str, wait: float = DEFAULT_WAIT, priority: int = 1,
                session_timeout: float = DEFAULT_SESSION_TIMEOUT):
        """A session on a free server registered under ``key``, waiting at most ``wait`` s."""
        from tvm.rpc import base

        summary = self.summary()
        servers = [s for s in summary.get("server_info", [])
                   if s.get("key", "").split(":", 1)[-1] == key]
        if not servers:
            keys = sorted({s.get("key", "").split(":", 1)[-1]
                           for s in summary.get("server_info", [])})
            known = ", ".join(keys) if keys else "none"
            raise FluidMLError(f"no RPC server with key {key!r} is registered at the tracker "
                               f"{self.host}:{self.port} (keys there: {known})")
        deadline = time.monotonic() + wait
        self._sock.settimeout(max(wait, 0.001))
        try:
            base.sendjson(self._sock, [base.TrackerCode.REQUEST, key, "", priority])
            value = base.recvjson(self._sock)
        except socket.timeout:
            queue = summary.get("queue_info", {}).get(key, {})
            # Closing our connection withdraws the pending request at the tracker.
            self.close()
            raise FluidMLError(
                f"no free device for key {key!r} within {wait:g} s: {len(servers)} server(s) "
                f"registered at {self.host}:{self.port}, all busy "
                f"({queue.get('pending', 0)} other request(s) were waiting)"
            ) from None
        except (OSError, ValueError) as err:
            self.close()
            raise FluidMLError(f"the RPC tracker at {self.host}:{self.port} dropped the "
                               f"request: {err}") from None
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.connect_timeout)
        if value[0] != base.TrackerCode.SUCCESS:
            raise FluidMLError(f"the RPC tracker refused the request for {key!r}: {value}")
        host, port, matchkey = value[1]
        self.last_server = f"{host}:{port}"
        remaining = max(deadline - time.monotonic(), self.connect_timeout)
        return _connect_server(host, port, matchkey, session_timeout, remaining,
                               via=f"tracker {self.host}:{self.port}")


def _connect_server(host, port, key, session_timeout, wait, via=None):
    """``tvm.rpc.connect`` with a bound: a busy server accepts only after its current session."""
    from tvm import rpc

    # No TCP probe first: a server registered with a tracker treats a connection that closes
    # before the handshake as a tracker failure and re-registers under a new match key.
    result = {}

    def _run():
        try:
            result["session"] = rpc.connect(host, port, key=key, session_timeout=session_timeout)
        except Exception as err:  # noqa: BLE001 - reported below
            result["error"] = err

    worker = threading.Thread(target=_run, name="fluidml-rpc-connect", daemon=True)
    worker.start()
    worker.join(wait)
    where = f"{host}:{port}" + (f" (assigned by the {via})" if via else "")
    if worker.is_alive():
        raise FluidMLError(f"the RPC server at {where} did not start a session within {wait:g} s "
                           "(unreachable, or busy with another client)")
    if "error" in result:
        msg = _last_line(result["error"])
        if f"Connect to {host}:{port} failed" in msg:
            raise FluidMLError(f"cannot reach the RPC server at {where}: connection refused "
                               "(is it running, and listening on that address?)")
        if "matches key" in msg or "mismatch" in msg.lower():
            msg += (" (a server registered with a tracker only accepts sessions through the "
                    "tracker: use --rpc-tracker/--rpc-key; a standalone server started with a key "
                    "needs the same --rpc-key)")
        raise FluidMLError(f"cannot open an RPC session with {where}: {msg}")
    return result["session"]


def _last_line(err) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


class Session:
    """An open RPC session (``.remote`` is the ``tvm.rpc.RPCSession``); use it as a context."""

    def __init__(self, remote, description: str, session_timeout: float,
                 server: str | None = None):
        self.remote = remote
        self.description = description
        self.server = server  # "host:port" of the board's server
        self.session_timeout = session_timeout
        self.started = time.monotonic()
        self._models = weakref.WeakSet()  # no cycle: a dropped model frees the session

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """End the session: the server is free again once every remote object is dropped, so
        this also releases the models loaded through it."""
        import gc

        for model in list(self._models):
            model.close()
        self.remote = None
        gc.collect()  # remote objects caught in reference cycles would keep the board busy

    def board_info(self) -> dict:
        """``{"machine": uname -m, "num_threads": TVM_NUM_THREADS}`` when the board's server is
        ``fluidml-tvm rpc-server``; ``{}`` for a stock server."""
        try:
            func = self.remote.get_function(_BOARD_INFO)
        except Exception:  # noqa: BLE001 - a stock server has no such function
            return {}
        return json.loads(func())

    def machine(self) -> str | None:
        """The board's machine (``aarch64``, ``x86_64``...), None if its server cannot tell."""
        machine = self.board_info().get("machine")
        return cross.normalize_machine(machine) if machine else None

    def error(self, err, doing: str) -> FluidMLError:
        """Turn an exception raised over RPC into one line."""
        msg = _last_line(err)
        if "RPCSessionTimeoutError" in str(err) or (
            self.session_timeout
            and time.monotonic() - self.started >= 0.95 * self.session_timeout
        ):
            return FluidMLError(f"the RPC session with {self.description} timed out after "
                                f"{self.session_timeout:g} s while {doing} "
                                "(raise --rpc-session-timeout)")
        return FluidMLError(f"{doing} on {self.description} failed: {msg}")


def connect(tracker: str | None = None, key: str | None = None, server: str | None = None,
            session_timeout: float = DEFAULT_SESSION_TIMEOUT, wait: float = DEFAULT_WAIT,
            connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, priority: int = 1) -> Session:
    """Open a session on a board, through a tracker (``tracker`` + ``key``) or directly.

    Parameters
    ----------
    tracker, key
        ``"HOST:PORT"`` of an RPC tracker and the key the board registered with.
    server
        ``"HOST:PORT"`` of an RPC server to use directly (``key``: the server's key, if any).
    session_timeout
        Seconds the server lets the session live (0: no limit); a run that is still going then
        fails with a "timed out" error instead of hanging.
    wait
        Seconds to wait for a free board (tracker) or for a busy server to accept.
    connect_timeout
        Seconds to open a TCP connection.
    """
    if bool(tracker) == bool(server):
        raise FluidMLError("give either --rpc-tracker HOST:PORT with --rpc-key KEY, or "
                           "--rpc-server HOST:PORT")
    if tracker:
        if not key:
            raise FluidMLError("--rpc-tracker needs --rpc-key (the key the board registered with)")
        host, port = parse_address(tracker, "--rpc-tracker")
        with Tracker(host, port, connect_timeout) as trk:
            remote = trk.request(key, wait=wait, priority=priority,
                                 session_timeout=session_timeout)
        return Session(remote, f"{key} at {trk.last_server} via tracker {host}:{port}",
                       session_timeout, trk.last_server)
    host, port = parse_address(server, "--rpc-server")
    remote = _connect_server(host, port, key or "", session_timeout, wait)
    return Session(remote, f"RPC server {host}:{port}", session_timeout, f"{host}:{port}")


class RemoteModel:
    """A library loaded on a remote board: ``run``, ``time`` and ``kernel_times`` like
    :class:`fluidml_tvm.runtime.Model`, with every call going over RPC."""

    def __init__(self, session: Session, vm, device, metadata: dict, lib_name: str,
                 num_threads="the board's default", weights=()):
        self.session = session
        self.num_threads = num_threads
        self.weights = list(weights)  # remote tensors appended to the inputs (external weights)
        self.vm = vm
        self.device = device
        self.metadata = metadata
        self.lib_name = lib_name
        self.input_names = [i["name"] for i in metadata["inputs"]]
        self.output_names = [o["name"] for o in metadata["outputs"]]

    def close(self):
        """Drop the remote VM, weights and device (the session stays open until it is closed)."""
        self.vm = None
        self.weights = []
        self.device = None

    def random_inputs(self, fill_mode: str = "random", seed: int = 0) -> dict:
        from .runtime import Model

        return Model.random_inputs(self, fill_mode, seed)

    def _set_inputs(self, inputs):
        import tvm

        if inputs is None:
            inputs = self.random_inputs()
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise FluidMLError(f"missing input(s) {', '.join(missing)}; the model takes "
                               f"{', '.join(self.input_names)}")
        arrays = []
        for spec in self.metadata["inputs"]:
            a = np.ascontiguousarray(np.asarray(inputs[spec["name"]], dtype=spec["dtype"]))
            if list(a.shape) != list(spec["shape"]):
                raise FluidMLError(f"input {spec['name']} has shape {list(a.shape)}, the model "
                                   f"was compiled for {spec['shape']}")
            arrays.append(a)
        try:
            remote_arrays = [tvm.runtime.tensor(a, self.device) for a in arrays]
            self.vm.set_input("main", *remote_arrays, *self.weights)
        except Exception as err:  # noqa: BLE001 - every RPC failure becomes one line
            raise self.session.error(err, "sending the inputs") from None

    def run(self, inputs=None) -> dict:
        """Run once on the board (``set_input`` + ``invoke_stateful`` + ``get_outputs``)."""
        self._set_inputs(inputs)
        try:
            self.vm.invoke_stateful("main")
            outs = _outputs(self.vm.module, "main")
            return {name: o.numpy() for name, o in zip(self.output_names, outs)}
        except Exception as err:  # noqa: BLE001
            raise self.session.error(err, "running the model") from None

    def time(self, inputs=None, repeat: int = 10, number: int = 1) -> list:
        """Seconds per run measured ON the board by ``time_evaluator`` (one discarded warm-up)."""
        self._set_inputs(inputs)
        try:
            timer = self.vm.time_evaluator("invoke_stateful", self.device, number=number,
                                           repeat=repeat)
            return list(timer("main").results)
        except Exception as err:  # noqa: BLE001
            raise self.session.error(err, "timing the model") from None

    def kernel_times(self, inputs=None, number: int = 1) -> list[dict]:
        """Per-kernel timings measured on the board (needs ``fluidml-tvm rpc-server`` there).

        Returns rows ``{"name", "calls", "total_ms", "mean_us"}`` sorted by total time, summed
        over ``number`` runs after one warm-up; raises :class:`FluidMLError` on a stock server.
        """
        self._set_inputs(inputs)
        try:
            func = self.session.remote.get_function(_KERNEL_TIMES)
        except Exception:  # noqa: BLE001
            raise FluidMLError(
                f"{self.session.description} cannot time single kernels: start the board's "
                "server with 'fluidml-tvm rpc-server' (a stock tvm.exec.rpc_server cannot run "
                "the vm.set_instrument callback it needs)"
            ) from None
        try:
            return json.loads(func(self.vm.module, "main", number))
        except Exception as err:  # noqa: BLE001
            raise self.session.error(err, "timing the kernels") from None


def _outputs(vm_module, func_name: str, idx: tuple = ()) -> list:
    """The flattened outputs of the last ``invoke_stateful``. Same as
    ``VirtualMachine.get_outputs``, whose recursive closure makes a reference cycle that keeps the
    remote VM, and so the RPC session and the board, busy until the garbage collector runs."""
    arity = vm_module["get_output_arity"](func_name, *idx)
    if arity == -1:
        return [vm_module["get_output"](func_name, *idx)]
    out = []
    for i in range(arity):
        out.extend(_outputs(vm_module, func_name, idx + (i,)))
    return out


def load_remote(lib_path: str, session: Session) -> RemoteModel:
    """Upload ``lib_path`` (with its metadata read locally) and load it on the board."""
    from tvm import relax

    from .runtime import read_metadata

    lib_path = os.fspath(lib_path)
    if not os.path.exists(lib_path):
        raise FluidMLError(f"library not found: {lib_path}")
    meta = read_metadata(lib_path)
    machine = session.machine()
    if machine:
        cross.check_loadable(lib_path, machine, where=f"the board ({session.description})")
    name = os.path.basename(lib_path)
    try:
        session.remote.upload(lib_path)
    except Exception as err:  # noqa: BLE001
        raise session.error(err, f"uploading {name}") from None
    try:
        rlib = session.remote.load_module(name)
    except Exception as err:  # noqa: BLE001
        if "RPCSessionTimeoutError" in str(err):
            raise session.error(err, f"loading {name}") from None
        built = cross.elf_machine(lib_path) or "an unknown machine"
        reason = _last_line(err).split(" is false: ")[-1]
        raise FluidMLError(
            f"{session.description} cannot load {name}, built for {built} ({reason}); "
            "compile it for the board's target (fluidml-tvm targets)"
        ) from None
    # A CUDA library (cuda, jetson-orin) runs on the board's GPU; the VM adds the CPU for shapes.
    device = session.remote.cuda(0) if meta.get("target_kind") == "cuda" else session.remote.cpu()
    try:
        vm = relax.VirtualMachine(rlib, device)
    except Exception as err:  # noqa: BLE001
        raise session.error(err, f"starting the VM for {name}") from None
    from .weights import load_weights

    try:  # external weights are copied to the board once, then passed with every run's inputs
        weights = load_weights(lib_path, meta, device)
    except FluidMLError:
        raise
    except Exception as err:  # noqa: BLE001
        raise session.error(err, f"sending the weights of {name}") from None
    threads = session.board_info().get("num_threads") or "the board's default"
    model = RemoteModel(session, vm, device, meta, name, threads, weights)
    session._models.add(model)
    return model


def benchmark_many(libraries: list, tracker: str, key: str, inputs=None, repeat: int = 10,
                   number: int = 1, parallel: int | None = None, wait: float = DEFAULT_WAIT,
                   session_timeout: float = DEFAULT_SESSION_TIMEOUT) -> list[dict]:
    """Time many libraries on the boards registered under ``key``, several boards at once.

    Each library gets its own session from the tracker, so ``N`` free boards measure ``N``
    libraries at the same time (model variants, layout candidates...). ``inputs``: one dict for
    all, a ``{library: dict}``, or None for random inputs. ``parallel`` defaults to the number of
    boards registered under ``key``.

    Returns one row per library, in order: ``{"library", "board", "seconds"}`` or, when that
    library failed, ``{"library", "board", "error"}`` (one line; the other rows still complete).
    """
    from concurrent.futures import ThreadPoolExecutor

    host, port = parse_address(tracker, "tracker")
    if parallel is None:
        with Tracker(host, port) as trk:
            parallel = max(1, len(trk.servers(key)))

    per_library = isinstance(inputs, dict) and inputs and \
        all(isinstance(v, dict) for v in inputs.values())

    def one(lib):
        feeds = inputs.get(lib) if per_library else inputs
        board = None
        if not os.path.exists(lib):  # no board is taken for nothing
            return {"library": lib, "board": None, "error": f"library not found: {lib}"}
        try:
            with connect(tracker=tracker, key=key, wait=wait,
                         session_timeout=session_timeout) as session:
                board = session.server
                model = load_remote(lib, session)
                feeds = model.random_inputs() if feeds is None else feeds
                return {"library": lib, "board": board,
                        "seconds": model.time(feeds, repeat=repeat, number=number)}
        except FluidMLError as err:
            return {"library": lib, "board": board, "error": str(err)}

    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="fluidml-rpc") as pool:
        return list(pool.map(one, [os.fspath(p) for p in libraries]))


# ---- board side ---------------------------------------------------------------------------
def kernel_times(vm_module, func_name: str = "main", number: int = 1) -> str:
    """Time every VM call of ``func_name`` with ``vm.set_instrument``; JSON rows, slowest first.

    ``vm_module`` is the module behind ``relax.VirtualMachine.module`` whose inputs were set with
    ``set_input``. Runs once to warm up, then ``number`` timed runs. The callback's own cost (a few
    microseconds per call) is included in each kernel's time. Kernels on a GPU run
    asynchronously: the device of the call's first GPU tensor is synchronized before and after the
    call (not verified on a GPU yet).
    """
    import tvm_ffi

    totals: dict[str, list] = {}
    stack: list[float] = []

    def sync(args):
        for a in args:
            dev = getattr(a, "device", None)
            if dev is not None and dev.dlpack_device_type() != 1:  # 1: kDLCPU
                dev.sync()
                return

    def instrument(func, name, before_run, ret_value, *args):
        sync(args)
        if before_run:
            stack.append(time.perf_counter())
        else:
            elapsed = time.perf_counter() - stack.pop()
            row = totals.setdefault(str(name), [0, 0.0])
            row[0] += 1
            row[1] += elapsed
        return 0

    vm_module["invoke_stateful"](func_name)
    vm_module["set_instrument"](tvm_ffi.convert(instrument))
    try:
        for _ in range(max(1, int(number))):
            vm_module["invoke_stateful"](func_name)
    finally:
        # None removes the callback; a no-op one would still cost ~8x on later timings.
        vm_module["set_instrument"](None)
    rows = [{"name": n, "calls": c, "total_ms": t * 1e3, "mean_us": t * 1e6 / c}
            for n, (c, t) in totals.items()]
    rows.sort(key=lambda r: -r["total_ms"])
    return json.dumps(rows)


def register_board_functions() -> None:
    """Register what ``fluidml-tvm rpc-server`` offers its clients (idempotent)."""
    import tvm_ffi

    if tvm_ffi.get_global_func(_KERNEL_TIMES, allow_missing=True) is None:
        tvm_ffi.register_global_func(_KERNEL_TIMES, kernel_times)
    if tvm_ffi.get_global_func(_BOARD_INFO, allow_missing=True) is None:
        tvm_ffi.register_global_func(_BOARD_INFO, _board_info)


def _board_info() -> str:
    return json.dumps({"machine": platform.machine(),
                       "num_threads": os.environ.get("TVM_NUM_THREADS")})


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
                           f"{_last_line(err)}") from None
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


# ---- command line helpers ------------------------------------------------------------------------
def load_for_cli(args) -> RemoteModel:
    """``fluidml-tvm run LIB --rpc-tracker/--rpc-server``: connect, upload and load."""
    if getattr(args, "num_threads", None):
        raise FluidMLError("--num-threads sets this machine's runtime; the board's thread count "
                           "is its server's (fluidml-tvm rpc-server --num-threads N, or "
                           "TVM_NUM_THREADS=N for python -m tvm.exec.rpc_server)")
    session = connect(tracker=args.rpc_tracker, key=args.rpc_key, server=args.rpc_server,
                      session_timeout=args.rpc_session_timeout, wait=args.rpc_wait)
    return load_remote(args.library, session)


def local_kernel_times(model, inputs, number: int = 1) -> list[dict]:
    """:func:`kernel_times` for a model loaded in this process (``fluidml_tvm.runtime.load``)."""
    arrays = model._arrays(inputs)
    model.vm.set_input("main", *arrays)
    return json.loads(kernel_times(model.vm.module, "main", number))


def format_kernel_table(rows: list[dict], top: int | None = None) -> str:
    """The per-kernel table ``fluidml-tvm run --profile`` prints: the ``top`` slowest kernels,
    the rest summed, and the VM's own builtins (allocations, shape checks) on one line."""
    total = sum(r["total_ms"] for r in rows) or 1.0
    kernels = [r for r in rows if not r["name"].startswith("vm.builtin.")]
    builtins = [r for r in rows if r["name"].startswith("vm.builtin.")]
    shown = kernels[:top] if top else kernels
    lines = [f"{'kernel':<48} {'calls':>6} {'total (ms)':>11} {'mean (us)':>10} {'share':>6}"]
    for r in shown:
        lines.append(f"{r['name'][:48]:<48} {r['calls']:>6d} {r['total_ms']:>11.4f} "
                     f"{r['mean_us']:>10.2f} {100 * r['total_ms'] / total:>5.1f}%")

    def summed(label, group):
        ms = sum(r["total_ms"] for r in group)
        calls = sum(r["calls"] for r in group)
        lines.append(f"{label[:48]:<48} {calls:>6d} {ms:>11.4f} {'':>10} {100 * ms / total:>5.1f}%")

    if len(shown) < len(kernels):
        summed(f"({len(kernels) - len(shown)} more kernels)", kernels[len(shown):])
    if builtins:
        summed(f"(VM builtins: {len(builtins)} kinds)", builtins)
    return "\n".join(lines)
