"""A loaded library: :class:`Model` (``run``, ``time``) and :func:`load`."""

from __future__ import annotations

import os

from ..errors import FluidMLError, notice
from . import backend
from . import inputs as inputs_mod
from .metadata import read_metadata
from .weights import load_weights


def set_num_threads(num_threads: int | None) -> int:
    """Make TVM's runtime use ``num_threads`` threads (0/None: all cores); returns the count.

    TVM sizes its thread pool from ``TVM_NUM_THREADS`` when the pool first starts (it otherwise uses
    half the hardware threads: 1 on a 2-vCPU machine), so this must run before the first kernel.
    An explicit ``TVM_NUM_THREADS`` in the environment wins over the default.
    """
    if num_threads:
        os.environ["TVM_NUM_THREADS"] = str(int(num_threads))
    elif "TVM_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(os.cpu_count() or 1)
    return int(os.environ["TVM_NUM_THREADS"])


class Model:
    """A loaded model: ``run({name: array}) -> {name: array}`` and ``time(...)``."""

    def __init__(self, vm, device, metadata: dict, num_threads: int, weights=()):
        self.vm = vm
        self.device = device
        self.weights = list(weights)  # TVM tensors appended to the inputs (external weights)
        self.metadata = metadata
        self.num_threads = num_threads
        self.input_names = [i["name"] for i in metadata["inputs"]]
        self.output_names = [o["name"] for o in metadata["outputs"]]
        self._noticed: set[str] = set()

    @classmethod
    def from_executable(cls, executable, metadata, device=None, num_threads=None, weights=None):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        n = set_num_threads(num_threads)
        device = device or tvm.cpu()
        tensors = [tvm.runtime.tensor(a, device) for _, a in weights or []]
        return cls(VirtualMachine(executable, device), device, metadata, n, tensors)

    # ---- inputs ---------------------------------------------------------------------------------
    def random_inputs(self, fill_mode: str = "random", seed: int = 0) -> dict:
        """Inputs of the right shapes/dtypes: ``random``, ``zeros`` or ``ones`` (tvmc's modes)."""
        return inputs_mod.fill(self.metadata["inputs"], fill_mode, seed)

    def complete_inputs(self, inputs=None, fill_mode: str = "random") -> dict:
        """Every input, checked: missing ones filled in ``fill_mode`` and same-kind dtypes cast,
        each with a notice on stderr (once per model); unknown names, wrong shapes and casts
        across kinds are errors (:mod:`fluidml_tvm.runtime.inputs`)."""
        return inputs_mod.complete(self.metadata["inputs"], inputs, fill_mode, self._say)

    def _say(self, message: str) -> None:
        if message not in self._noticed:
            self._noticed.add(message)
            notice(message)

    def _arrays(self, inputs, fill_mode: str = "random") -> list:
        feeds = self.complete_inputs(inputs, fill_mode)
        return [backend.tensor(a, self.device) for a in feeds.values()] + self.weights

    # ---- execution ------------------------------------------------------------------------------
    def run(self, inputs=None, fill_mode: str = "random") -> dict:
        """``{output name: array}`` for ``inputs`` (``{name: array}``, a list in input order, or
        None): inputs left out are made in ``fill_mode``, with a notice."""
        result = self.vm["main"](*self._arrays(inputs, fill_mode))
        outs = _flatten(result)
        return {name: backend.to_numpy(o) for name, o in zip(self.output_names, outs)}

    def time(self, inputs=None, repeat: int = 10, number: int = 1, warmup: int = 1,
             fill_mode: str = "random") -> list:
        """Seconds per run, ``repeat`` samples (each the mean of ``number`` runs); ``inputs`` as
        for :meth:`run`."""
        args = self._arrays(inputs, fill_mode)
        for _ in range(warmup):
            self.vm["main"](*args)
        timer = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return list(timer(*args).results)


def _flatten(result) -> list:
    if hasattr(result, "numpy") or hasattr(result, "__dlpack__"):
        return [result]
    out = []
    for item in result:
        out.extend(_flatten(item))
    return out


def load(path: str, device=None, num_threads: int | None = None, memory_cfg=None,
         runtime_only: bool | None = None) -> Model:
    """Load ``path`` (a library from :meth:`CompiledModel.export`) with its metadata.

    ``memory_cfg="naive"`` makes the VM free each buffer at once instead of pooling it (used to
    measure peak activation memory); the default pools.

    ``runtime_only`` (default: yes, unless ``FLUIDML_TVM_RUNTIME_ONLY=0``): in a process that has
    not imported TVM, load with the TVM runtime library alone, through ``tvm_ffi``
    (:mod:`.backend`): no compiler is mapped, and this process cannot compile afterwards. A
    process that imported TVM already uses it as it is.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FluidMLError(f"library not found: {path}")
    meta = read_metadata(path)
    n = set_num_threads(num_threads)
    cuda = meta.get("target_kind") == "cuda"
    backend.ensure(runtime_only, python_api=cuda)  # CUDA: TVM's Python package, runtime alone
    if cuda:
        import tvm

        from ..cuda import load_runtime

        driver = load_runtime()  # TVM's CUDA runtime, before loading a module with GPU code
        if device is None:
            device = tvm.cuda(0)
            if "stub" in driver or not device.exist:
                raise FluidMLError(
                    f"{path} was compiled for CUDA, and this machine has no usable NVIDIA GPU "
                    "(or driver); run it on one, or over RPC with --rpc-tracker/--rpc-server"
                )
    try:
        lib = backend.load_module(os.path.abspath(path))
    except Exception as err:
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else type(err).__name__
        raise FluidMLError(f"cannot load {path}: {reason}") from None
    device = device or backend.cpu()
    weights = load_weights(path, meta, device)
    vm = backend.virtual_machine(lib, device, memory_cfg)
    return Model(vm, device, meta, n, weights)
