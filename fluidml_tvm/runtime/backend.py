"""The TVM runtime a loaded model runs on: ``libtvm_runtime.so`` through ``tvm_ffi`` alone, or
TVM's own Python classes when this process imported ``tvm`` already.

Why not ``import tvm``: it maps the 259 MB compiler library (278 MB peak RSS before any model).
With ``TVM_USE_RUNTIME_LIB=1`` it maps only the runtime, yet still imports ~300 Python modules of
the compiler's API (IR, TIR, targets): 89 MB, against ONNX Runtime's 48 MB for
``import onnxruntime``. Everything a loaded model needs is a global function of the runtime
library (load a module, ``vm_load_executable``, allocate and copy a tensor, ``RPCTimeEvaluator``),
which ``tvm_ffi`` (TVM's FFI package, 49 MB with numpy) calls directly: 51 MB in all.

========  ==========================================================================================
mode      when
========  ==========================================================================================
``ffi``   the first load in a process that has not imported ``tvm`` (``fluidml-tvm run``,
          ``fluidml_tvm.load``): ``libtvm_runtime.so`` is loaded by path, ``TVM_USE_RUNTIME_LIB=1``
          is set so that a later ``import tvm`` maps that same runtime and not the compiler; the
          process cannot compile any more (:func:`compile_blocker` says why, in one line)
``tvm``   ``tvm`` was imported before the load, or the load asked for it (``runtime_only=False``,
          or ``FLUIDML_TVM_RUNTIME_ONLY=0`` in the environment: the opt-out)
========  ==========================================================================================

Both modes hand the same runtime objects around (``tvm_ffi`` types; ``tvm`` registers subclasses),
so a model and its tensors work whichever mode made them.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import struct
import sys

import numpy as np

from ..errors import FluidMLError

OPT_OUT = "FLUIDML_TVM_RUNTIME_ONLY"  # "0": load and run with the full ``import tvm``
_STATE = {"runtime_lib": None, "runtime_only_load": False}
NAIVE_ALLOCATOR, POOLED_ALLOCATOR = 1, 2  # relax.VirtualMachine's allocator kinds


class _NoTorch:
    """An import hook that refuses ``torch``: see :func:`_without_torch`."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name == "torch_c_dlpack_ext":
            raise ModuleNotFoundError(f"fluidml-tvm: {name} is not imported on the run path")
        return None


@contextlib.contextmanager
def _without_torch():
    """``tvm_ffi`` imports ``torch`` whenever it is installed (a workaround for a symbol clash on
    Windows, and its optional DLPack bridge): 470 MB more peak RSS for a process that only runs
    a model (measured: 524 MB with torch 2.14 installed, 51 MB without). The runtime never hands
    torch tensors around, so while the runtime is imported, ``torch`` cannot be; a process that
    imported torch itself keeps it, and may import it afterwards as usual."""
    if "torch" in sys.modules:
        yield
        return
    hook = _NoTorch()
    sys.meta_path.insert(0, hook)
    try:
        yield
    finally:
        sys.meta_path.remove(hook)


def runtime_only_default() -> bool:
    """Whether loading a model keeps to the runtime (default yes; ``FLUIDML_TVM_RUNTIME_ONLY=0``
    opts out)."""
    return os.environ.get(OPT_OUT, "1").strip().lower() not in ("0", "false", "no", "off")


def prefer_runtime_only() -> None:
    """For a process that only runs models (``fluidml-tvm run``, ``rpc-server``): a later
    ``import tvm`` maps the runtime alone. Call it before anything imports TVM."""
    if "tvm" not in sys.modules and runtime_only_default():
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"


def tvm_imported() -> bool:
    return "tvm" in sys.modules


def ensure(runtime_only: bool | None = None, python_api: bool = False) -> str:
    """Make the runtime callable; returns the mode, ``"ffi"`` or ``"tvm"`` (module docstring).

    ``python_api``: the caller needs TVM's Python package (CUDA libraries): ``import tvm``, with
    the runtime alone unless ``runtime_only`` is False.
    """
    if tvm_imported():
        return "tvm"
    if runtime_only is None:
        runtime_only = runtime_only_default()
    if not runtime_only:
        import tvm  # noqa: F401 - the full TVM, compiler included

        return "tvm"
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"  # a later import tvm: this runtime, no compiler
    _STATE["runtime_only_load"] = True
    if python_api:
        with _without_torch():
            import tvm  # noqa: F401,F811 - the runtime alone

        return "tvm"
    if _STATE["runtime_lib"] is None:
        with _without_torch():
            import tvm_ffi  # noqa: F401 - loads libtvm_ffi.so, which the runtime library links to

        _STATE["runtime_lib"] = ctypes.CDLL(runtime_library_path(), ctypes.RTLD_GLOBAL)
    return "ffi"


def runtime_library_path() -> str:
    """``libtvm_runtime.so`` of the installed apache-tvm, found without importing ``tvm`` (the
    places ``tvm.libinfo.package_lib_paths`` searches: ``TVM_LIBRARY_PATH``, then the wheel)."""
    dirs = [os.environ["TVM_LIBRARY_PATH"]] if os.environ.get("TVM_LIBRARY_PATH") else []
    spec = importlib.util.find_spec("tvm")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(os.path.join(list(spec.submodule_search_locations)[0], "lib"))
    for d in dirs:
        path = os.path.join(d, "libtvm_runtime.so")
        if os.path.exists(path):
            return path
    raise FluidMLError("the TVM runtime library (libtvm_runtime.so) was not found: install "
                       "apache-tvm (pip install apache-tvm==0.27.0.post1), or set "
                       "TVM_LIBRARY_PATH to its directory")


def compile_blocker() -> str | None:
    """Why this process cannot compile (it holds the TVM runtime alone), or None."""
    if tvm_imported():
        import tvm

        if not getattr(tvm.base, "_RUNTIME_ONLY", False):
            return None
    elif not _STATE["runtime_only_load"]:
        return None
    if not _STATE["runtime_only_load"]:
        return ("this process imported TVM with TVM_USE_RUNTIME_LIB=1 (the runtime alone, no "
                "compiler): compile in a process without it")
    return ("this process loaded a model with the TVM runtime alone (fluidml_tvm.load and "
            "fluidml-tvm run never map the compiler), so it cannot compile: compile in another "
            f"process, or load with fluidml_tvm.load(..., runtime_only=False) (or {OPT_OUT}=0) "
            "before compiling")


# ---- what a loaded model calls ------------------------------------------------------------------
def _func(name: str):
    import tvm_ffi

    return tvm_ffi.get_global_func(name)


def cpu():
    import tvm_ffi

    return tvm_ffi.device("cpu", 0)


def load_module(path: str):
    """The library at ``path`` as a runtime module."""
    if tvm_imported():
        import tvm

        return tvm.runtime.load_module(path)
    import tvm_ffi

    return tvm_ffi.load_module(path)


def tensor(array, device):
    """A runtime tensor on ``device`` holding a copy of ``array`` (``tvm.runtime.tensor``)."""
    a = np.asarray(array)
    if not a.flags.c_contiguous:  # np.ascontiguousarray would make a 0-d array 1-d
        a = a.copy(order="C")
    out = _func("runtime.TVMTensorAllocWithScope")(tuple(int(d) for d in a.shape),
                                                   str(a.dtype), device, None)
    _func("runtime.TVMTensorCopyFromBytes")(out, a.ctypes.data_as(ctypes.c_void_p), a.nbytes)
    return out


def from_dlpack(array):
    """A tensor sharing ``array``'s memory (CPU)."""
    import tvm_ffi

    return tvm_ffi.from_dlpack(array)


def to_numpy(value) -> np.ndarray:
    """A runtime tensor's values as a numpy array of its own."""
    if hasattr(value, "numpy"):
        return value.numpy()
    return np.array(np.from_dlpack(value), copy=True)


def virtual_machine(lib, device, memory_cfg: str | None = None):
    """``relax.VirtualMachine(lib, device, memory_cfg)``: TVM's class when ``tvm`` is imported,
    else :class:`VirtualMachine`."""
    if tvm_imported():
        from tvm.runtime.vm import VirtualMachine as TVMVirtualMachine

        return TVMVirtualMachine(lib, device, memory_cfg=memory_cfg)
    return VirtualMachine(lib, device, memory_cfg)


class VirtualMachine:
    """The part of ``tvm.runtime.vm.VirtualMachine`` a loaded model uses, on ``tvm_ffi`` alone:
    ``vm[name]``, ``module``, ``set_input``, ``set_instrument`` and ``time_evaluator`` (CPU)."""

    def __init__(self, lib, device, memory_cfg: str | None = None):
        if memory_cfg not in (None, "naive", "pooled"):
            raise ValueError(f"memory_cfg must be 'naive' or 'pooled', got {memory_cfg!r}")
        alloc = NAIVE_ALLOCATOR if memory_cfg == "naive" else POOLED_ALLOCATOR
        self.module = lib["vm_load_executable"]()
        self.module["vm_initialization"](device.dlpack_device_type(), device.index, alloc)

    def __getitem__(self, name: str):
        return self.module[name]

    def set_input(self, func_name: str, *args) -> None:
        self.module["set_input"](func_name, *args)

    def set_instrument(self, instrument) -> None:
        import tvm_ffi

        self.module["set_instrument"](None if instrument is None else
                                      tvm_ffi.convert(instrument))

    def time_evaluator(self, func_name: str, device, number: int = 10, repeat: int = 1,
                       min_repeat_ms: int = 0):
        """Like TVM's: a function of the arguments returning an object whose ``results`` are
        ``repeat`` mean times (seconds) of ``number`` runs each, after one discarded run."""
        feval = _func("runtime.RPCTimeEvaluator")(
            self.module, func_name, device.dlpack_device_type(), device.index, number, repeat,
            min_repeat_ms, 100, 0, 1, 0, "")

        def evaluate(*args):
            return _Timings(struct.unpack("@" + "d" * repeat, feval(*args)))

        return evaluate


class _Timings:
    def __init__(self, results):
        self.results = list(results)
        self.mean = sum(self.results) / len(self.results) if self.results else 0.0
