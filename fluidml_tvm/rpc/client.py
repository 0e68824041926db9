"""The client side of TVM RPC: a bounded tracker client, sessions on a board, :func:`connect`.

Every network step has a bound and every failure is one line (the table in
:mod:`fluidml_tvm.rpc`).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import weakref

from .. import cross
from ..errors import FluidMLError

DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds to open a TCP connection / finish a handshake
DEFAULT_WAIT = 60.0  # seconds to wait for a free board
DEFAULT_SESSION_TIMEOUT = 600.0  # seconds the server lets one session live (0: unlimited)

# Functions that ``fluidml-tvm rpc-server`` registers on the board (fluidml_tvm.rpc.server).
KERNEL_TIMES = "fluidml.rpc.kernel_times"
BOARD_INFO = "fluidml.rpc.board_info"


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
        msg = last_line(result["error"])
        if f"Connect to {host}:{port} failed" in msg:
            raise FluidMLError(f"cannot reach the RPC server at {where}: connection refused "
                               "(is it running, and listening on that address?)")
        if "matches key" in msg or "mismatch" in msg.lower():
            msg += (" (a server registered with a tracker only accepts sessions through the "
                    "tracker: use --rpc-tracker/--rpc-key; a standalone server started with a key "
                    "needs the same --rpc-key)")
        raise FluidMLError(f"cannot open an RPC session with {where}: {msg}")
    return result["session"]


def last_line(err) -> str:
    """The last non-empty line of an exception's message (TVM's carry a traceback)."""
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
        """``{"machine": uname -m, "cpu", "cores", "num_threads": TVM_NUM_THREADS, "server"}``
        when the board's server is ``fluidml-tvm rpc-server`` or ``scripts/board_server``;
        ``{}`` for a stock server."""
        try:
            func = self.remote.get_function(BOARD_INFO)
        except Exception:  # noqa: BLE001 - a stock server has no such function
            return {}
        return json.loads(func())

    def machine(self) -> str | None:
        """The board's machine (``aarch64``, ``x86_64``...), None if its server cannot tell."""
        machine = self.board_info().get("machine")
        return cross.normalize_machine(machine) if machine else None

    def error(self, err, doing: str) -> FluidMLError:
        """Turn an exception raised over RPC into one line."""
        msg = last_line(err)
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
