"""Building CUDA libraries on a machine without a GPU: compiled kernels, not CUDA source.

TVM compiles a CUDA target's kernels into a binary only when three things hold (checked with
apache-tvm 0.27.0.post1):

1. ``libtvm_runtime_cuda.so`` is loaded. It links ``libcuda.so.1`` (the driver), which a machine
   without an NVIDIA driver lacks; ``import tvm`` then skips it silently, and codegen falls back to
   a CUDA-*source* module that must be compiled where it is loaded (impossible with the runtime
   alone). Nothing in it calls the driver while building, so when no ``libcuda.so.1`` can be
   loaded, :func:`ensure_build_support` builds a stub (9 functions returning
   ``CUDA_ERROR_NO_DEVICE``, compiled with the host ``gcc`` into
   ``~/.cache/fluidml-tvm/cuda-stub/libcuda.so.1``), loads it, then loads the CUDA runtime. The
   stub only ever serves this build process; on the GPU machine the real driver is used.
2. The compile callback uses ``nvcc`` (``TVM_CUDA_COMPILE_MODE=nvcc``; the default NVRTC path needs
   the ``cuda-bindings`` package): its output is a fatbin (magic ``0xBA55ED50``).
3. The callback knows the architecture. TVM's reads ``Target.current()``, which is unset unless
   ``tvm.compile`` runs inside ``with target:``; :func:`ensure_build_support` records the target
   being built and registers a callback that falls back to it.

The fatbin holds SASS for the target's ``arch`` and its PTX, so a library for ``sm_80`` also runs
(PTX JIT-compiled by the driver at load) on newer GPUs such as sm_90.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import threading

from .errors import FluidMLError

FATBIN_MAGIC = 0xBA55ED50
_DRIVER_SYMBOLS = ["cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString",
                   "cuLaunchKernelEx", "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload",
                   "cuTensorMapEncodeTiled"]
_state = threading.local()
_lock = threading.Lock()
_callback_installed = False


def stub_dir() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "fluidml-tvm", "cuda-stub")


def runtime_loaded() -> bool:
    """Whether TVM's CUDA runtime (and so binary CUDA codegen) is available in this process."""
    from tvm.base import _LOADED_LIBS

    return "tvm_runtime_cuda" in _LOADED_LIBS


def _driver_symbols(runtime_so: str) -> list[str]:
    """The ``cu*`` driver functions ``libtvm_runtime_cuda.so`` imports (nm, else a known list)."""
    nm = shutil.which("nm")
    if nm:
        proc = subprocess.run([nm, "-D", "--undefined-only", runtime_so], capture_output=True,
                              text=True)
        found = sorted({line.split()[-1].split("@")[0] for line in proc.stdout.splitlines()
                        if line.split() and line.split()[-1].startswith("cu")
                        and not line.split()[-1].startswith("cuda")})
        if proc.returncode == 0 and found:
            return found
    return list(_DRIVER_SYMBOLS)


def _build_stub(runtime_so: str) -> str:
    path = os.path.join(stub_dir(), "libcuda.so.1")
    if os.path.exists(path):
        return path
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise FluidMLError("building for CUDA without an NVIDIA driver needs a C compiler (gcc) "
                           "to make a build-time libcuda.so.1 stub")
    os.makedirs(stub_dir(), exist_ok=True)
    lines = ["/* Build-time stand-in for the NVIDIA driver, made by fluidml-tvm: never used to run",
             "   kernels; every call reports CUDA_ERROR_NO_DEVICE (100). */"]
    for sym in _driver_symbols(runtime_so):
        if sym == "cuGetErrorName":
            lines.append('int cuGetErrorName(int e, const char** s) '
                         '{ *s = "CUDA_ERROR_NO_DEVICE"; return 0; }')
        elif sym == "cuGetErrorString":
            lines.append('int cuGetErrorString(int e, const char** s) '
                         '{ *s = "no NVIDIA driver (fluidml-tvm build-time stub)"; return 0; }')
        else:
            lines.append(f"int {sym}(void) {{ return 100; }}")
    src = os.path.join(stub_dir(), "libcuda_stub.c")
    with open(src, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    tmp = f"{path}.{os.getpid()}.tmp"
    proc = subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", tmp, src],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise FluidMLError(f"cannot build the libcuda.so.1 stub: {proc.stderr.strip()[-200:]}")
    os.replace(tmp, path)
    return path


def load_runtime() -> str:
    """Load TVM's CUDA runtime into this process; returns which driver library it got.

    Uses the real ``libcuda.so.1`` when one loads, else the build-time stub.
    """
    from pathlib import Path

    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    if runtime_loaded():
        return "libcuda.so.1"
    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    runtime_so = str(runtime_dir / "libtvm_runtime_cuda.so")
    if not os.path.exists(runtime_so):
        raise FluidMLError(f"this TVM has no CUDA runtime ({runtime_so} is missing)")
    try:
        ctypes.CDLL("libcuda.so.1", ctypes.RTLD_GLOBAL)
        driver = "libcuda.so.1"
    except OSError:
        driver = _build_stub(runtime_so)
        ctypes.CDLL(driver, ctypes.RTLD_GLOBAL)
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir],
            mode="RTLD_LOCAL")
    except (OSError, RuntimeError) as err:
        raise FluidMLError(f"cannot load TVM's CUDA runtime ({runtime_so}): {err}") from None
    return driver


def _compile_callback(code):
    """``tvm_callback_cuda_compile``: nvcc -> fatbin with SASS + PTX for the target's arch."""
    from tvm.support import nvcc
    from tvm.target import Target

    target = Target.current(allow_none=True)
    if target is None and getattr(_state, "target", None) is not None:
        with _state.target:  # nvcc.py reads Target.current() in several places
            return _compile_callback(code)
    if os.environ.get("TVM_CUDA_COMPILE_MODE", "nvcc").lower() == "nvrtc":
        return nvcc.compile_cuda(code, target_format="cubin", compiler="nvrtc")
    arch = str(target.attrs.get("arch", "")) if target is not None else ""
    if not arch.startswith("sm_"):
        raise FluidMLError("CUDA target without an arch (e.g. {\"kind\": \"cuda\", \"arch\": "
                           "\"sm_80\"}): there is no GPU here to detect it from")
    num = arch[3:]
    gencode = ["-gencode", f"arch=compute_{num},code=sm_{num}",
               "-gencode", f"arch=compute_{num},code=compute_{num}"]
    return nvcc.compile_cuda(code, target_format="fatbin", arch=gencode, compiler="nvcc")


def find_nvcc() -> str | None:
    """The ``nvcc`` CUDA builds use: the one on PATH, else the one the ``cuda`` extra installs
    (PyPI's ``nvidia-cuda-nvcc``: ``site-packages/nvidia/cu13/bin``), whose directory is then put
    on PATH for TVM's nvcc driver. None when there is neither."""
    found = shutil.which("nvcc")
    if found:
        return found
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for sub in sorted(os.listdir(root), reverse=True):  # cu13 before cu12
            cand = os.path.join(root, sub, "bin", "nvcc")
            if sub.startswith("cu") and os.access(cand, os.X_OK):
                os.environ["PATH"] = os.path.dirname(cand) + os.pathsep + os.environ["PATH"]
                return cand
    return None


def ensure_build_support(target) -> None:
    """Make ``tvm.compile(mod, target)`` emit compiled CUDA kernels (see the module docstring).

    Call it before building for a CUDA ``target``; raises :class:`FluidMLError` when ``nvcc`` is
    missing or the CUDA runtime cannot be loaded.
    """
    global _callback_installed
    import tvm_ffi

    if os.environ.get("TVM_CUDA_COMPILE_MODE", "nvcc").lower() != "nvrtc" \
            and find_nvcc() is None:
        raise FluidMLError("compiling for CUDA needs nvcc: pip install 'fluidml-tvm[cuda]' (nvcc "
                           "from PyPI), or the CUDA toolkit's bin directory on PATH")
    with _lock:
        load_runtime()
        if not _callback_installed:
            tvm_ffi.register_global_func("tvm_callback_cuda_compile", _compile_callback,
                                         override=True)
            _callback_installed = True
    _state.target = target


def kernel_binary(lib_path: str) -> dict:
    """What an exported library holds for its GPU code: ``{"format", "compiled", "fatbin",
    "bytes"}``.

    Reads the library's embedded module blob: ``format`` is what TVM recorded for the CUDA module
    (``cubin``, also for nvcc's fatbin output, or ``ptx``: compiled; ``cuda``: source left for the
    device to compile), ``fatbin`` whether the blob holds the fatbin magic, ``entries`` what the
    fatbin holds (:func:`fatbin_entries`). ``{}`` when the library has no CUDA module.
    """
    with open(lib_path, "rb") as f:
        data = f.read()
    key = struct.pack("<Q", 4) + b"cuda"
    pos = data.find(key)
    while pos >= 0:
        at = pos + len(key) + 8  # skip the module blob's length
        (n,) = struct.unpack_from("<Q", data, at)
        if 0 < n < 16:
            fmt = data[at + 8: at + 8 + n].decode("ascii", "replace")
            magic = struct.pack("<I", FATBIN_MAGIC)
            (blob_len,) = struct.unpack_from("<Q", data, pos + len(key))
            blob = data[pos + len(key) + 8: pos + len(key) + 8 + blob_len]
            start = blob.find(magic)
            return {"format": fmt, "compiled": fmt in ("cubin", "fatbin", "ptx"),
                    "fatbin": start >= 0, "bytes": blob_len,
                    "entries": fatbin_entries(blob, start) if start >= 0 else []}
        pos = data.find(key, pos + 1)
    return {}


def fatbin_entries(data: bytes, offset: int = 0) -> list[str]:
    """The entries of the fatbin at ``offset``: ``["sm_80 sass", "sm_80 ptx"]``.

    Layout (as written by nvcc's ``fatbinary``): a 16-byte header (magic, version, header size,
    payload size), then entries each with a header (kind: 1 PTX, 2 ELF/SASS; header size; padded
    payload size; ... the SM version at byte 28) followed by its payload.
    """
    magic, _, header, size = struct.unpack_from("<IHHQ", data, offset)
    if magic != FATBIN_MAGIC:
        return []
    pos, end, out = offset + header, offset + header + size, []
    while pos + 32 <= min(end, len(data)):
        kind, _, entry_header, padded = struct.unpack_from("<HHII", data, pos)
        (sm,) = struct.unpack_from("<I", data, pos + 28)
        out.append(f"sm_{sm} {({1: 'ptx', 2: 'sass'}).get(kind, f'kind{kind}')}")
        if entry_header == 0:
            break
        pos += entry_header + padded
    return out
