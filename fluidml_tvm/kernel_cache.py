"""Compiled kernels kept between compiles: a compile links the object code an earlier compile
generated for the same kernel instead of generating it again.

After the cost database has made a warm compile's decisions cheap, code generation is most of
what is left: GoogLeNet's warm compile spent 10.3 s lowering and optimizing its kernels with
LLVM and 3.5 s emitting and linking objects, of 16.9 s (stock TVM: 7.1 s in all; 2026-12-07
compile-time results). So the kernels (the scheduled PrimFuncs at the end of the relax
pipeline) are built one module each, and each module's object file is kept under
``cache_dir/objects/KEY.o``. ``KEY`` is the SHA-256 of everything the object depends on: the
kernel's TVM JSON (every statement, buffer, annotation and attribute, its symbol name
included), the target, the TVM build (TVM and tvm-ffi versions, the compiler library's file:
its path, size and modification time stand for the LLVM it was built with) and the
PassContext's configuration (TVM's keys: what ``tvm.tirx.build``'s lowering reads; the
``fluidml.*`` options shape the IR, already in the key). A kernel found there
is not built again; the executable links every kernel's object as a static library (TVM links
those at export, and :meth:`.CompiledModel.load` and ``export`` always export).

What is not found is built in this process, one module per kernel (an object per kernel is what
the cache can keep), on worker threads: TVM's lowering and LLVM release the GIL, and each
worker enters its own PassContext (the compile's optimization level and configuration, none of
its instruments: PassContext and Target are thread-local) and target. GoogLeNet's 104 kernels,
2-core AVX-512 host: one module for all 9.9 s to build + 3.0 s to write the object; one module
each, one after another, 12.0 + 4.5 s; on two threads 7.1 s in all. A target carrying LLVM
command-line options (``cl-opt``, process-wide state LLVM codegen sets and restores) is built on
one thread. Only host LLVM compiles use it (a cross compile or a GPU target builds as
``tvm.compile`` does), only with FluidML on: ``fluidml=0`` is stock TVM's own build. Kill
switch: ``fluidml.kernel_cache=0``. An object written half-way is never seen: it is written
under a temporary name and renamed. A cache directory that cannot be written (read-only, full)
is no error: the kernels are built into a temporary one. The folder is kept under
:data:`MAX_BYTES` (1 GiB), the least recently used objects deleted first.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

OBJECTS = "objects"
#: the objects folder is pruned to 3/4 of this, least recently used first, when a compile adds
#: to it beyond it (a kernel is ~5-50 KB: GoogLeNet's 104 take 2.5 MB)
MAX_BYTES = 1 << 30


def identity(target, config) -> str:
    """What, besides a kernel's own IR, its object code depends on."""
    import tvm
    import tvm_ffi

    lib = tvm.base._LOADED_LIBS.get("tvm_compiler")  # its LLVM: the wheel's build, by its file
    path = getattr(lib, "_name", "") or ""
    stat = os.stat(path) if path and os.path.exists(path) else None
    build = f"{path}:{stat.st_size}:{stat.st_mtime_ns}" if stat else "?"
    # TVM's own keys: the fluidml.* options shape the kernel's IR (in the key already), not
    # its lowering, and a budget or cache path of their own must not miss the cache
    cfg = sorted((str(k), str(v)) for k, v in dict(config).items()
                 if not str(k).startswith("fluidml"))
    return "\n".join([tvm.__version__, tvm_ffi.__version__, build, str(target), repr(cfg)])


def kernel_key(name: str, func, ident: str) -> str:
    """The cache key of kernel ``name`` (a PrimFunc) under :func:`identity` ``ident``."""
    import tvm

    h = hashlib.sha256()
    for part in (ident, name, tvm.ir.save_json(func)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _symbol(gvar, func) -> str:
    sym = func.attrs.get("global_symbol") if func.attrs is not None else None
    return str(sym) if sym is not None else gvar.name_hint


class Stats:
    """How many kernels a compile found in the cache and how many it built."""

    def __init__(self):
        self.found = 0
        self.built = 0


def build_jobs(target) -> int:
    """Worker threads for the kernels a compile builds: the cores (at most 8), one for a target
    with LLVM command-line options."""
    if target.attrs.get("cl-opt"):
        return 1
    return max(1, min(8, os.cpu_count() or 1))


def _build_one(one, target, path, opt_level, config, tir_pipeline="default") -> None:
    """Build the one-kernel module ``one`` and write its object to ``path`` (via a temporary
    name in the same folder: a reader never sees half a file)."""
    import tvm

    with tvm.transform.PassContext(opt_level=opt_level, config=config), target:
        lib = tvm.tirx.build(one, target=target, pipeline=tir_pipeline)
    fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".o", dir=os.path.dirname(path))
    os.close(fd)
    try:
        lib.write_to_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def kernel_objects(tir_mod, target, cache_dir: str, stats: Stats | None = None,
                   keep: bool = True, tir_pipeline: str = "default") -> list:
    """One static-library module per kernel of ``tir_mod``, each the kernel's object file from
    ``cache_dir`` (built and added there when missing) by the TIR pipeline ``tir_pipeline``
    (part of the key). ``keep`` False: ``cache_dir`` is this compile's temporary folder
    (nothing to fall back to when it cannot be written)."""
    import tvm

    stats = stats if stats is not None else Stats()
    ctx = tvm.transform.PassContext.current()
    config = dict(ctx.config)
    ident = identity(target, config) + f"\ntir pipeline {tir_pipeline}"
    folder = os.path.join(cache_dir, OBJECTS)
    try:
        os.makedirs(folder, exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:
        writable = False
    if not writable and keep:  # a read-only cache: build everything, for this compile only
        return _uncached(tir_mod, target, stats, tir_pipeline)
    kernels, missing = [], []
    for gvar, func in tir_mod.functions.items():
        path = os.path.join(folder, kernel_key(gvar.name_hint, func, ident) + ".o")
        kernels.append((path, _symbol(gvar, func)))
        if os.path.exists(path):
            stats.found += 1
            try:
                os.utime(path)  # its modification time: when a compile last used it
            except OSError:
                pass
        else:
            missing.append((tvm.IRModule({gvar: func}, attrs=tir_mod.attrs), path))
    if missing:
        try:
            with ThreadPoolExecutor(min(build_jobs(target), len(missing))) as pool:
                done = [pool.submit(_build_one, one, target, path, ctx.opt_level, config,
                                    tir_pipeline) for one, path in missing]
                for fut in done:
                    fut.result()  # a failed build raises here, as tvm.compile's would
        except OSError as err:  # the cache could not take an object (a full disk): not kept
            if not keep:
                from .errors import FluidMLError

                raise FluidMLError(f"could not write the compiled kernels to {folder}: "
                                   f"{err}") from err
            stats.found -= len(kernels) - len(missing)
            return _uncached(tir_mod, target, stats, tir_pipeline)
        stats.built += len(missing)
    out = [tvm.runtime.load_static_library(path, [sym]) for path, sym in kernels]  # read now
    if missing:
        prune(folder)
    return out


def _uncached(tir_mod, target, stats: Stats, tir_pipeline: str = "default") -> list:
    """:func:`kernel_objects` through a temporary folder, deleted after (the objects are read
    into the modules): for a cache that cannot be written."""
    import shutil

    tmp = tempfile.mkdtemp(prefix="fluidml-tvm-objects-")
    try:
        return kernel_objects(tir_mod, target, tmp, stats, keep=False, tir_pipeline=tir_pipeline)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prune(folder: str, max_bytes: int = MAX_BYTES) -> int:
    """Delete the least recently used objects of ``folder`` until they take at most 3/4 of
    ``max_bytes``, when they take more than ``max_bytes``; returns how many were deleted."""
    entries = []
    for name in os.listdir(folder):
        if name.endswith(".o") and not name.startswith(".part-"):
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:  # deleted by a concurrent compile's prune
                continue
            entries.append((st.st_mtime_ns, st.st_size, name))
    total = sum(e[1] for e in entries)
    if total <= max_bytes:
        return 0
    removed = 0
    for _, size, name in sorted(entries):
        if total <= max_bytes * 3 // 4:
            break
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            continue
        total -= size
        removed += 1
    return removed


def compile(mod, target, pipeline, cache_dir: str, stats: Stats | None = None,  # noqa: A001
            tir_pipeline: str = "default"):
    """``tvm.compile(mod, target, relax_pipeline=pipeline, tir_pipeline=tir_pipeline)`` for a
    host LLVM target, with the kernels' objects from (and into) ``cache_dir``: relax.build's own
    steps (the pipeline under the target, VM code generation, linking), the TIR build
    replaced."""
    import tvm
    from tvm import relax
    from tvm.relax import vm_build

    with target:
        mod = pipeline(mod)
    attrs = dict(mod.attrs) if mod.attrs else {}
    ext_libs = list(attrs.get("external_mods", []))
    params = dict(attrs.get("const_name_to_constant", {}))
    builder = relax.ExecBuilder()
    mod = vm_build._vmcodegen(builder, mod, "bytecode")
    tir_mod = vm_build._filter_tir(mod)
    libs = kernel_objects(tir_mod, target, cache_dir, stats, tir_pipeline=tir_pipeline) \
        if tir_mod is not None else []
    lib = tvm.relax._ffi_api.VMLink(builder, target, None, libs + ext_libs, params)
    return relax.VMExecutable(lib)
