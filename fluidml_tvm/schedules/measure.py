"""Compile one scheduled PrimFunc alone and time it on this machine.

Used to pick among candidate schedules. The timing is the minimum over a few repeats (the machine
is shared; the minimum is the least noisy statistic). Targets this host cannot run (another
architecture, a wider vector ISA) are not measured: :func:`can_measure` says so and the caller
falls back to its analytic first choice.
"""

from __future__ import annotations

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


def time_func(func: tvm.tirx.PrimFunc, target, min_repeat_ms: int = 40, repeat: int = 3) -> float:
    """Seconds per call of ``func`` (min over ``repeat`` rounds of at least ``min_repeat_ms``)."""
    lib = build(func, target)
    dev = tvm.cpu()
    args = random_args(func, dev)
    lib["main"](*args)  # warm up, and fail early
    te = lib.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return float(min(te(*args).results))
