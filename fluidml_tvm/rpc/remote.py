"""A library loaded on a board over TVM RPC: :class:`RemoteModel`, :func:`load_remote`,
:func:`benchmark_many` (many libraries on all free boards at once) and the CLI's
:func:`load_for_cli`."""

from __future__ import annotations

import json
import os

from .. import cross
from ..errors import FluidMLError
from ..runtime import inputs as runtime_inputs
from ..runtime.metadata import read_metadata
from ..runtime.weights import load_weights
from .client import (
    DEFAULT_SESSION_TIMEOUT,
    DEFAULT_WAIT,
    KERNEL_TIMES,
    Session,
    Tracker,
    connect,
    last_line,
    parse_address,
)


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
        self._noticed: set[str] = set()

    def close(self):
        """Drop the remote VM, weights and device (the session stays open until it is closed)."""
        self.vm = None
        self.weights = []
        self.device = None

    def random_inputs(self, fill_mode: str = "random", seed: int = 0) -> dict:
        return runtime_inputs.fill(self.metadata["inputs"], fill_mode, seed)

    def complete_inputs(self, inputs=None, fill_mode: str = "random") -> dict:
        """As :meth:`fluidml_tvm.runtime.Model.complete_inputs` (the same checks and notices)."""
        from ..runtime import Model

        return Model.complete_inputs(self, inputs, fill_mode)

    def _say(self, message: str) -> None:
        from ..runtime import Model

        Model._say(self, message)

    def _set_inputs(self, inputs, fill_mode: str = "random"):
        import tvm

        arrays = list(self.complete_inputs(inputs, fill_mode).values())
        try:
            remote_arrays = [tvm.runtime.tensor(a, self.device) for a in arrays]
            self.vm.set_input("main", *remote_arrays, *self.weights)
        except Exception as err:  # noqa: BLE001 - every RPC failure becomes one line
            raise self.session.error(err, "sending the inputs") from None

    def run(self, inputs=None, fill_mode: str = "random") -> dict:
        """Run once on the board (``set_input`` + ``invoke_stateful`` + ``get_outputs``)."""
        self._set_inputs(inputs, fill_mode)
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
            func = self.session.remote.get_function(KERNEL_TIMES)
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
    from tvm.runtime.vm import VirtualMachine

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
        reason = last_line(err).split(" is false: ")[-1]
        raise FluidMLError(
            f"{session.description} cannot load {name}, built for {built} ({reason}); "
            "compile it for the board's target (fluidml-tvm targets)"
        ) from None
    # A CUDA library (cuda, jetson-orin) runs on the board's GPU; the VM adds the CPU for shapes.
    device = session.remote.cuda(0) if meta.get("target_kind") == "cuda" else session.remote.cpu()
    try:
        vm = VirtualMachine(rlib, device)
    except Exception as err:  # noqa: BLE001
        raise session.error(err, f"starting the VM for {name}") from None
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



def load_for_cli(args) -> RemoteModel:
    """``fluidml-tvm run LIB --rpc-tracker/--rpc-server``: connect, upload and load."""
    if getattr(args, "num_threads", None):
        raise FluidMLError("--num-threads sets this machine's runtime; the board's thread count "
                           "is its server's (fluidml-tvm rpc-server --num-threads N, or "
                           "TVM_NUM_THREADS=N for python -m tvm.exec.rpc_server)")
    session = connect(tracker=args.rpc_tracker, key=args.rpc_key, server=args.rpc_server,
                      session_timeout=args.rpc_session_timeout, wait=args.rpc_wait)
    return load_remote(args.library, session)

