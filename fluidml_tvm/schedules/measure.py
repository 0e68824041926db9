"""Compile one scheduled PrimFunc alone and time it on this machine.

Used to pick among candidate schedules. The timing is the minimum over a few repeats (the machine
is shared; the minimum is the least noisy statistic). Targets this host cannot run (another
architecture, a wider vector ISA) are not measured: :func:`can_measure` says so and the caller
falls back to its analytic first choice.
"""

from __future__ import annotations

import time

import numpy as np
import tvm

from .target_info import cpu_info, host_target

_RANK = {"generic": 0, "sse": 1, "neon": 1, "avx2": 2, "avx512": 3}


def can_measure(target) -> bool:
    """Whether kernels built for ``target`` run on this host."""
    t, h = cpu_info(target), cpu_info(host_target())
    if (t.isa == "neon") != (h.isa == "neon"):
        return False
    return _RANK[t.isa] <= _RANK[h.isa]


def random_args(func: tvm.tirx.PrimFunc, dev, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    args = []
    for p in func.params:
        ty = p.ty
        shape = [int(s) for s in ty.shape]
        dtype = str(ty.dtype)
        if dtype.startswith("float"):
            arr = rng.standard_normal(shape).astype(dtype)
        else:
            arr = np.zeros(shape, dtype)
        args.append(tvm.runtime.tensor(arr, dev))
    return args


def build(func: tvm.tirx.PrimFunc, target):
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, target=target).jit()


def time_funcs(funcs: list, target, min_repeat_ms: int = 40, repeat: int = 3) -> list:
    """Seconds per call of each PrimFunc (None where it failed), built in one LLVM module."""
    try:
        mod = tvm.IRModule(
            {f"k{i}": f.with_attr("global_symbol", f"k{i}") for i, f in enumerate(funcs)}
        )
        lib = tvm.compile(mod, target=target).jit()
    except Exception:  # noqa: BLE001 - one bad candidate: build them one by one
        out = []
        for f in funcs:
            try:
                out.append(time_func(f, target, min_repeat_ms, repeat))
            except Exception:  # noqa: BLE001
                out.append(None)
        return out
    dev = tvm.cpu()
    args_of = [random_args(f, dev) for f in funcs]  # packed layouts differ per candidate
    # interleave the candidates round by round, so a burst of load on a shared machine hits
    # all of them alike; keep each one's best round
    best = [float("inf")] * len(funcs)
    slowest = 0.0
    for i in range(len(funcs)):
        t0 = time.perf_counter()
        lib[f"k{i}"](*args_of[i])
        slowest = max(slowest, time.perf_counter() - t0)
    if slowest > 0.05:  # long kernels (big convolutions): one round each is enough signal
        repeat = 1
    for _ in range(repeat):
        for i in range(len(funcs)):
            te = lib.time_evaluator(f"k{i}", dev, number=1, repeat=1, min_repeat_ms=min_repeat_ms)
            best[i] = min(best[i], float(te(*args_of[i]).results[0]))
    return best


def time_func(func: tvm.tirx.PrimFunc, target, min_repeat_ms: int = 40, repeat: int = 3) -> float:
    """Seconds per call of ``func`` (min over ``repeat`` rounds of at least ``min_repeat_ms``)."""
    lib = build(func, target)
    dev = tvm.cpu()
    args = random_args(func, dev)
    lib["main"](*args)  # warm up, and fail early
    te = lib.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return float(min(te(*args).results))
