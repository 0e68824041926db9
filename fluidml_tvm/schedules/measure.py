"""Compile one scheduled PrimFunc alone and time it on this machine.

Used to pick among candidate schedules. The timing is the minimum over a few repeats (the machine
is shared; the minimum is the least noisy statistic). Targets this host cannot run (another
architecture, a wider vector ISA) are not measured: :func:`can_measure` says so and the caller
falls back to its analytic first choice.

Load guard: every timing round runs under a :class:`LoadProbe`, which reads how much CPU time
*other* processes (and the hypervisor: steal time) took during the round from ``/proc/stat`` minus
this process's own CPU time. A round where others took more than :data:`QUIET_LOAD` of the
machine is "loaded"; a candidate's time is its best quiet round, and when a candidate got no
quiet round within the extra rounds allowed, its :class:`Timing` says so (``quiet=False``), so the
caller can keep such a choice provisional (re-measured by a later compile, see
:mod:`fluidml_tvm.costdb`).
"""

from __future__ import annotations

import contextvars
import os
import time
from dataclasses import dataclass

import numpy as np
import tvm

from ..costdb import NOISY_LOAD
from .target_info import cpu_info, host_target

_RANK = {"generic": 0, "sse": 1, "neon": 1, "avx2": 2, "avx512": 3}


# Kernels timed on other machines: a measurer (fluidml_tvm.measure_remote.BoardFarm: its
# ``accepts(target)`` and ``measure(funcs, target, min_repeat_ms, repeat)``) set for the compile
# that runs inside ``with farm:``. Targets it accepts are measured there, never on this host.
REMOTE: contextvars.ContextVar = contextvars.ContextVar("fluidml_remote_measurer", default=None)


def measures_here(target=None) -> bool:
    """``target`` (default: the current one) is an LLVM target this host times itself, with no
    remote measurer active: what a compile's end-to-end layout check needs."""
    target = target or tvm.target.Target.current(allow_none=True)
    if target is not None and not isinstance(target, tvm.target.Target):
        target = tvm.target.Target(target)
    return (target is not None and target.kind.name == "llvm" and REMOTE.get() is None
            and can_measure(target))


def can_measure(target) -> bool:
    """Whether kernels built for ``target`` can be timed: on this host, or on the boards of an
    active remote measurer (:data:`REMOTE`)."""
    remote = REMOTE.get()
    if remote is not None and remote.accepts(target):
        return True
    t, h = cpu_info(target), cpu_info(host_target())
    if (t.isa == "neon") != (h.isa == "neon"):
        return False
    return _RANK[t.isa] <= _RANK[h.isa]


# Others' share of the machine's CPU time above which a timing round counts as loaded.
QUIET_LOAD = NOISY_LOAD
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_NCPU = os.cpu_count() or 1


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy (incl. steal) since boot; None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / _HZ


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class LoadProbe:
    """``with LoadProbe() as p: ...`` then ``p.load``: the fraction of the machine's CPU time
    that other processes took meanwhile (0.0 where ``/proc/stat`` is not available)."""

    load = 0.0

    def __enter__(self):
        self._t, self._b, self._s = time.perf_counter(), _busy_seconds(), _own_seconds()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._t
        busy = _busy_seconds()
        if busy is None or self._b is None or wall <= 0:
            self.load = 0.0
            return False
        foreign = (busy - self._b) - (_own_seconds() - self._s)
        self.load = min(1.0, max(0.0, foreign / (wall * _NCPU)))
        return False


@dataclass
class Timing:
    """One candidate's measurement: ``seconds`` per call (None: failed), the others' load in
    the round it came from, the number of quiet rounds, and whether it came from a quiet one."""

    seconds: float | None
    load: float = 0.0
    quiet_rounds: int = 0
    rounds: int = 0

    @property
    def quiet(self) -> bool:
        return self.quiet_rounds > 0


def random_args(func: tvm.tirx.PrimFunc, dev, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    args = []
    for p in func.params:
        ty = p.ty
        shape = [int(s) for s in ty.shape]
        dtype = str(ty.dtype)
        if dtype.startswith("float"):  # uniform [0, 1) float32: 8x faster than normal + astype
            arr = rng.random(shape, dtype=np.float32).astype(dtype, copy=False)
        else:
            arr = np.zeros(shape, dtype)
        args.append(tvm.runtime.tensor(arr, dev))
    return args


def build(func: tvm.tirx.PrimFunc, target):
    from .stack_buffers import pipeline_name

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, target=target, tir_pipeline=pipeline_name(target)).jit()


def time_funcs(funcs: list, target, min_repeat_ms: int = 40, repeat: int = 3) -> list:
    """Seconds per call of each PrimFunc (None where it failed), built in one LLVM module."""
    return [t.seconds for t in measure_funcs(funcs, target, min_repeat_ms, repeat)]


# Calls a round of a cold measurement (measure_funcs(cold=True)), each after a cache flush.
COLD_CALLS = 5


def measure_funcs(
    funcs: list, target, min_repeat_ms: int = 40, repeat: int = 3, extra_rounds: int | None = None,
    cold: bool = False,
) -> list[Timing]:
    """:class:`Timing` of each PrimFunc, built in one LLVM module, timed round by round
    (interleaved). Each candidate keeps its best quiet round; while some candidate has none,
    up to ``extra_rounds`` more rounds (default ``repeat``) are run. With an active remote
    measurer that accepts ``target`` (:data:`REMOTE`), the boards time them instead (warm).

    ``cold``: every call starts with all arguments but the first flushed from the caches
    (TVM's ``cache_flush_cpu_non_first_arg``; :data:`COLD_CALLS` calls a round, the best
    counted), as a kernel runs inside a model: its input just written by the kernel before, its
    output buffer last touched a whole run ago. What a kernel's write pattern costs shows only
    so: SqueezeNet's first conv writing NCHW ran 283 us warm, 809 us flushed, 578 us in the
    model; writing NHWC 194 / 219 us."""
    from .stack_buffers import pipeline_name

    remote = REMOTE.get()
    if remote is not None and remote.accepts(target):
        return remote.measure(funcs, target, min_repeat_ms, repeat)
    try:
        mod = tvm.IRModule(
            {f"k{i}": f.with_attr("global_symbol", f"k{i}") for i, f in enumerate(funcs)}
        )
        lib = tvm.compile(mod, target=target, tir_pipeline=pipeline_name(target)).jit()
    except Exception:  # noqa: BLE001 - one bad candidate: build them one by one
        out = []
        for f in funcs:
            try:
                with LoadProbe() as p:
                    t = time_func(f, target, min_repeat_ms, repeat, cold)
                q = int(p.load <= QUIET_LOAD)
                out.append(Timing(t, p.load, q, repeat))
            except Exception:  # noqa: BLE001
                out.append(Timing(None))
        return out
    dev = tvm.cpu()
    args_of = [random_args(f, dev) for f in funcs]  # packed layouts differ per candidate
    # interleave the candidates round by round, so a burst of load on a shared machine hits
    # all of them alike; keep each one's best quiet round (else its best round)
    n = len(funcs)
    best = [(float("inf"), 1.0)] * n  # (seconds, load) of the best round
    best_quiet = [(float("inf"), 1.0)] * n
    quiet = [0] * n
    slowest = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        lib[f"k{i}"](*args_of[i])
        slowest = max(slowest, time.perf_counter() - t0)
    if slowest > 0.05:  # long kernels (big convolutions): one round each is enough signal
        repeat = 1
    extra = repeat if extra_rounds is None else extra_rounds
    rounds = 0
    while rounds < repeat or (rounds < repeat + extra and not all(quiet)):
        rounds += 1
        for i in range(n):
            if cold:
                te = lib.time_evaluator(f"k{i}", dev, number=1, repeat=COLD_CALLS,
                                        f_preproc="cache_flush_cpu_non_first_arg")
            else:
                te = lib.time_evaluator(f"k{i}", dev, number=1, repeat=1,
                                        min_repeat_ms=min_repeat_ms)
            with LoadProbe() as p:
                t = float(min(te(*args_of[i]).results))
            if t < best[i][0]:
                best[i] = (t, p.load)
            if p.load <= QUIET_LOAD:
                quiet[i] += 1
                if t < best_quiet[i][0]:
                    best_quiet[i] = (t, p.load)
    out = []
    for i in range(n):
        t, load = best_quiet[i] if quiet[i] else best[i]
        out.append(Timing(t, load, quiet[i], rounds))
    return out


def time_func(func: tvm.tirx.PrimFunc, target, min_repeat_ms: int = 40, repeat: int = 3,
              cold: bool = False) -> float:
    """Seconds per call of ``func`` (min over ``repeat`` rounds of at least ``min_repeat_ms``;
    ``cold``: of ``repeat`` x :data:`COLD_CALLS` calls, each after a cache flush, as
    :func:`measure_funcs` times them)."""
    lib = build(func, target)
    dev = tvm.cpu()
    args = random_args(func, dev)
    lib["main"](*args)  # warm up, and fail early
    if cold:
        te = lib.time_evaluator("main", dev, number=1, repeat=repeat * COLD_CALLS,
                                f_preproc="cache_flush_cpu_non_first_arg")
    else:
        te = lib.time_evaluator("main", dev, number=1, repeat=repeat,
                                min_repeat_ms=min_repeat_ms)
    return float(min(te(*args).results))
