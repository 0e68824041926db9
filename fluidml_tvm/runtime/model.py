"""A loaded library: :class:`Model` (``run``, ``time``) and :func:`load`."""

from __future__ import annotations

import os

import numpy as np

from ..errors import FluidMLError, names
from . import backend
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
        rng = np.random.default_rng(seed)
        out = {}
        for spec in self.metadata["inputs"]:
            shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
            if fill_mode == "zeros":
                out[spec["name"]] = np.zeros(shape, dtype)
            elif fill_mode == "ones":
                out[spec["name"]] = np.ones(shape, dtype)
            elif fill_mode == "random":
                if dtype.kind in "iu":
                    out[spec["name"]] = rng.integers(0, 2, size=shape).astype(dtype)
                elif dtype.kind == "b":
                    out[spec["name"]] = rng.integers(0, 2, size=shape).astype(bool)
                else:
                    out[spec["name"]] = rng.standard_normal(shape).astype(dtype)
            else:
                raise FluidMLError(f"--fill-mode must be random, zeros or ones, got {fill_mode!r}")
        return out

    def _arrays(self, inputs) -> list:
        if inputs is None:
            inputs = self.random_inputs()
        if not isinstance(inputs, dict):
            inputs = dict(zip(self.input_names, inputs))
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise FluidMLError(
                f"missing input(s) {names(missing)}; the model takes {names(self.input_names)}"
            )
        extra = [n for n in inputs if n not in self.input_names]
        if extra:
            raise FluidMLError(
                f"unknown input(s) {names(extra)}; the model takes {names(self.input_names)}"
            )
        arrays = []
        for spec in self.metadata["inputs"]:
            a = np.asarray(inputs[spec["name"]])
            if tuple(a.shape) != tuple(spec["shape"]):
                raise FluidMLError(
                    f"input {spec['name']} has shape {list(a.shape)}, the model was compiled for "
                    f"{spec['shape']}"
                )
            if a.dtype != np.dtype(spec["dtype"]):
                a = a.astype(spec["dtype"])
            arrays.append(backend.tensor(a, self.device))
        return arrays + self.weights

    # ---- execution ------------------------------------------------------------------------------
    def run(self, inputs=None) -> dict:
        result = self.vm["main"](*self._arrays(inputs))
        outs = _flatten(result)
        return {name: backend.to_numpy(o) for name, o in zip(self.output_names, outs)}

    def time(self, inputs=None, repeat: int = 10, number: int = 1, warmup: int = 1) -> list:
        """Seconds per run, ``repeat`` samples (each the mean of ``number`` runs)."""
        args = self._arrays(inputs)
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
