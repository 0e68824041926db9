"""Cross-compiled libraries: which machine a library is for, and running aarch64 ones under qemu.

A library exported for ``rasp4b`` or ``jetson-orin`` is an aarch64 ELF shared object. On an x86-64
workstation it cannot be loaded (``dlopen`` reports a misleading "No such file or directory");
:func:`check_loadable` reads the ELF header first and says what the library was built for.

:func:`run_under_qemu` runs such a library on this machine with Debian's ``qemu-user`` and the
aarch64 TVM runtime (``scripts/install-aarch64-runtime.sh`` installs both, plus a small C++ runner,
under ``~/.cache/fluidml-tvm/aarch64``). That is how the tests check that cross-compiled code
computes the same outputs as ONNX Runtime without a board. :func:`start_board_under_qemu` runs
the same runtime as an RPC server (``scripts/board_server.cc``) registered at a tracker: an
emulated board farm for the board-measured compile (:mod:`fluidml_tvm.measure_remote`).

Examples
--------
>>> from fluidml_tvm import cross
>>> cross.elf_machine("bert_rasp4b.so")
'aarch64'
>>> outs, times = cross.run_under_qemu("bert_rasp4b.so", feeds, repeat=3)
"""

from __future__ import annotations

import os
import platform
import shutil
import struct
import subprocess
import tempfile
import time

import numpy as np

from .errors import FluidMLError

# ELF e_machine values (the ones our users meet).
_MACHINES = {3: "x86", 8: "mips", 20: "powerpc", 21: "powerpc64", 40: "arm", 62: "x86_64",
             183: "aarch64", 243: "riscv"}
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "armv7l": "arm", "armv6l": "arm",
            "i686": "x86", "i386": "x86"}
QEMU_SYSROOT = "/usr/aarch64-linux-gnu"
INSTALL_HINT = "run scripts/install-aarch64-runtime.sh"


def elf_machine(path: str) -> str | None:
    """The machine an ELF file is built for (``"x86_64"``, ``"aarch64"``...), None if not ELF."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "<" if head[5] == 1 else ">"
    (machine,) = struct.unpack(order + "H", head[18:20])
    return _MACHINES.get(machine, f"e_machine={machine}")


def normalize_machine(name: str) -> str:
    """``uname -m`` spellings (``arm64``, ``amd64``, ``armv7l``) as :func:`elf_machine` names."""
    name = str(name).strip().lower()
    return _ALIASES.get(name, name)


def host_machine() -> str:
    return normalize_machine(platform.machine())


def check_loadable(path: str, machine: str | None = None, where: str = "this machine") -> None:
    """Raise :class:`FluidMLError` if the library at ``path`` is built for another machine.

    ``machine`` defaults to this host's (``uname -m``); pass a remote's to check it before upload.
    """
    built = elf_machine(path)
    want = normalize_machine(machine) if machine else host_machine()
    if built is None or built == want:
        return
    hint = ""
    if machine:
        hint = " Compile it for the board's target (fluidml-tvm targets)."
    elif built == "aarch64":
        hint = (" Run it on the board (fluidml-tvm run --rpc-tracker/--rpc-server), or here under "
                f"qemu with fluidml_tvm.cross.run_under_qemu ({INSTALL_HINT}).")
    elif built == "x86_64":
        hint = " Compile it for the board's target (e.g. --target rasp4b) instead."
    raise FluidMLError(
        f"{path} is built for {built} but {where} is {want}: it cannot be loaded there.{hint}"
    )


def runtime_home() -> str:
    """Where ``scripts/install-aarch64-runtime.sh`` put the aarch64 runtime and runner."""
    env = os.environ.get("FLUIDML_TVM_AARCH64_HOME")
    if env:
        return env
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "fluidml-tvm", "aarch64")


def qemu_missing() -> str | None:
    """Why :func:`run_under_qemu` cannot work here, or None when everything is installed."""
    if shutil.which("qemu-aarch64") is None:
        return f"qemu-aarch64 not found ({INSTALL_HINT}, or apt-get install qemu-user)"
    if not os.path.exists(os.path.join(QEMU_SYSROOT, "lib", "ld-linux-aarch64.so.1")):
        return f"no aarch64 sysroot at {QEMU_SYSROOT} (apt-get install g++-aarch64-linux-gnu)"
    if not os.access(os.path.join(runtime_home(), "bin", "vm_runner"), os.X_OK):
        return f"no aarch64 TVM runner under {runtime_home()} ({INSTALL_HINT})"
    return None


def board_server_missing() -> str | None:
    """Why :func:`start_board_under_qemu` cannot work here, or None."""
    missing = qemu_missing()
    if missing:
        return missing
    if not os.access(os.path.join(runtime_home(), "bin", "board_server"), os.X_OK):
        return f"no aarch64 board_server under {runtime_home()} ({INSTALL_HINT})"
    return None


def start_board_under_qemu(tracker: str, key: str, host: str = "127.0.0.1", port: int = 9090,
                           port_end: int = 9199, threads: int = 1, timeout: float = 60.0):
    """Start ``scripts/board_server`` (an RPC server with the aarch64 TVM runtime alone) under
    qemu-aarch64, registered at ``tracker`` under ``key``: an emulated board, to test what runs
    on a farm of real ones. Returns ``(process, "host:port")`` once it listens; end it with
    :func:`fluidml_tvm.rpc.kill_tree` on the process id (its sessions are child processes).
    """
    missing = board_server_missing()
    if missing:
        raise FluidMLError(f"cannot start an emulated board: {missing}")
    log = tempfile.NamedTemporaryFile("w+", prefix="fluidml-board-", suffix=".log", delete=False)
    cmd = ["qemu-aarch64", "-L", QEMU_SYSROOT, os.path.join(runtime_home(), "bin", "board_server"),
           "--host", host, "--port", str(port), "--port-end", str(port_end), "--tracker", tracker,
           "--key", key, "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log.name) as f:
            text = f.read()
        line = text.split("listening on ", 1)[1] if "listening on " in text else ""
        if "\n" in line:  # the whole line is written
            log.close()
            os.remove(log.name)
            return proc, line.split("\n")[0].split(",")[0].strip()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    log.close()
    with open(log.name) as f:
        last = (f.read().strip().splitlines() or ["no output"])[-1]
    os.remove(log.name)
    raise FluidMLError(f"the emulated board did not start within {timeout:g} s: {last}")


def cross_compiler_missing(cc: str = "aarch64-linux-gnu-gcc") -> str | None:
    """Why ``cc`` cannot link a library here, or None."""
    if shutil.which(cc) is None:
        return f"{cc} not found (apt-get install gcc-aarch64-linux-gnu, or {INSTALL_HINT})"
    return None


def run_under_qemu(lib_path: str, inputs: dict, repeat: int = 0, number: int = 1,
                   num_threads: int | None = None, timeout: float = 300.0):
    """Run an aarch64 library on this machine under ``qemu-aarch64``.

    Parameters
    ----------
    lib_path
        A library written by ``fluidml-tvm compile --target rasp4b`` (its ``.json`` beside it).
    inputs
        ``{input name: array}`` for every model input.
    repeat, number
        After the run that produces the outputs, time ``repeat`` samples of ``number`` runs each.
        Emulated time says nothing about a real board; it only shows that timing works.
    num_threads
        ``TVM_NUM_THREADS`` for the emulated runtime (default 1).
    timeout
        Seconds before the emulated run is killed (a :class:`FluidMLError`).

    Returns
    -------
    (outputs, times_ms)
        ``{output name: array}`` in the metadata's order, and the list of timed samples in ms.
    """
    from .runtime import read_metadata

    missing = qemu_missing()
    if missing:
        raise FluidMLError(f"cannot run {lib_path} under qemu: {missing}")
    built = elf_machine(lib_path)
    if built != "aarch64":
        raise FluidMLError(f"{lib_path} is built for {built}, not aarch64")
    meta = read_metadata(lib_path)
    home = runtime_home()
    with tempfile.TemporaryDirectory(prefix="fluidml-qemu-") as tmp:
        cmd = ["qemu-aarch64", "-L", QEMU_SYSROOT, os.path.join(home, "bin", "vm_runner"),
               os.path.abspath(lib_path), "--output-dir", tmp, "--threads", str(num_threads or 1)]
        for i, spec in enumerate(meta["inputs"]):
            if spec["name"] not in inputs:
                raise FluidMLError(f"missing input {spec['name']}")
            arr = np.asarray(inputs[spec["name"]], dtype=spec["dtype"], order="C")  # keeps 0-d
            if list(arr.shape) != list(spec["shape"]):
                raise FluidMLError(f"input {spec['name']} has shape {list(arr.shape)}, the model "
                                   f"was compiled for {spec['shape']}")
            path = os.path.join(tmp, f"input_{i}.bin")
            arr.tofile(path)
            dims = "x".join(str(d) for d in spec["shape"])
            cmd += ["--input", f"{spec['dtype']}:{dims}:{path}"]
        if meta.get("weights"):  # external weights follow the inputs, read from NAME.weights
            from .runtime.weights import weights_path

            wpath = os.path.abspath(weights_path(lib_path))
            if not os.path.exists(wpath):
                raise FluidMLError(f"{lib_path} keeps its weights in {wpath}, which is missing")
            for entry in meta["weights"]["index"]:
                dims = "x".join(str(d) for d in entry["shape"])
                cmd += ["--input", f"{entry['dtype']}:{dims}:{wpath}@{entry['offset']}"]
        if repeat:
            cmd += ["--repeat", str(repeat), "--number", str(number)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FluidMLError(f"{lib_path} did not finish within {timeout:g} s under qemu") \
                from None
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit code {proc.returncode}"
            raise FluidMLError(f"{lib_path} failed under qemu: {last}")
        outputs, times = {}, []
        names = [o["name"] for o in meta["outputs"]]
        for line in proc.stdout.splitlines():
            parts = line.split()
            if parts and parts[0] == "output":
                i, dtype, shape = int(parts[1]), parts[2], parts[3] if len(parts) > 3 else ""
                dims = [int(d) for d in shape.split(",") if d]
                data = np.fromfile(os.path.join(tmp, f"output_{i}.bin"), dtype=dtype)
                name = names[i] if i < len(names) else f"output_{i}"
                outputs[name] = data.reshape(dims)
            elif parts and parts[0] == "time_ms":
                times = [float(t) for t in parts[1:]]
    return outputs, times
