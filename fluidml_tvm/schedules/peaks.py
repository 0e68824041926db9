"""This host's measured peaks, for the roofline view (:mod:`fluidml_tvm.roofline`; each kernel's
work is :func:`.work.kernel_work`).

``host_peak`` measures,
once per (target, CPU, threads) and cached in the measurement database, the fp32 throughput of a
1024x512x512 matmul with a constant weight under FluidML's matmul rule, its analytic first choice
(what this project's kernels reach on big matmuls: the practical compute peak) and the bandwidth
of a large parallel, vectorized elementwise kernel (the practical memory peak). A measurement on
a loaded machine is provisional and measured again by the next compile. It is measuring like any
other and comes out of the compile's tune budget (:data:`SECONDS` of it); a compile whose budget
is spent leaves it to the next one (the roofline view then says the peak is not measured).
:mod:`fluidml_tvm.roofline` compares.
"""

from __future__ import annotations

import logging

import tvm
from tvm import te, tirx

log = logging.getLogger("fluidml_tvm.schedules")

_PEAK_RULE = "host_peak"
_PEAK_VERSION = "v1"
# What measuring the peaks takes (2-core host: ~0.2 s building, ~0.4 s timing, ~0.1 s inputs).
SECONDS = 1.0
# A kernel this much faster than the stored compute peak raises it (:func:`reconcile`): above
# timing noise, below the 2x a peak measured beside another busy process comes out low by.
MARGIN = 0.05


def _matmul_module(m: int, n: int, k: int) -> tvm.IRModule:
    """``x @ W`` with a constant ``W``, legalized: the matmul rule then packs W offline, as it
    does for every model's weights."""
    import numpy as np
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), "float32"))
    w = relax.const(np.random.default_rng(0).standard_normal((k, n)).astype("float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, w))
        bb.emit_func_output(out)
    return relax.transform.LegalizeOps()(bb.get())


def _copy(n: int) -> tirx.PrimFunc:
    a = te.placeholder((n,), name="A")
    b = te.compute((n,), lambda i: a[i] + 1.0, name="B")
    return te.create_prim_func([a, b])


def reserve(target, options, session) -> None:
    """Keep :data:`SECONDS` of the ``session``'s budget for the peaks when this host's are not
    cached yet (the first compile measures them, so its roofline view has them)."""
    from .. import costdb
    from .measure import can_measure
    from .target_info import cpu_info

    if session is None or options.cost != "measured" or not options.cache_dir \
            or not can_measure(target):
        return
    db = costdb.CostDB(options.cache_dir)
    try:
        if db.best(costdb.target_key(target, cpu_info(target).key()), _PEAK_RULE,
                   _PEAK_VERSION) is None:
            session.reserve("peak", SECONDS)
    finally:
        db.close()


def host_peak(target, options, session=None) -> dict | None:
    """This host's measured fp32 peaks ``{"gflops", "gbps"}`` for ``target`` (None when the
    target cannot be timed here, measuring is off, or the tune ``session``'s budget does not
    afford it). Cached: measured once per target, CPU and thread count."""
    import contextlib
    import dataclasses

    from .. import costdb
    from .measure import can_measure, measure_funcs
    from .stage import FluidMLSchedule
    from .target_info import cpu_info

    if options.cost != "measured" or not options.cache_dir or not can_measure(target):
        return None
    db = costdb.CostDB(options.cache_dir)
    tkey = costdb.target_key(target, cpu_info(target).key())
    try:
        known = db.best(tkey, _PEAK_RULE, _PEAK_VERSION)
        if known is not None:
            return dict(known[0])
        if session is not None:
            session.release("peak")
        if session is not None and not session.affords(SECONDS):
            log.info("host peak not measured: the tune budget is spent")
            return None
        m, n, k, size = 1024, 512, 512, 1 << 24
        with session.measuring("peak") if session is not None else contextlib.nullcontext():
            mod = _matmul_module(m, n, k)
            mod["copy"] = _copy(size)
            with target:  # the rule's analytic choice: no nested measuring
                mod = FluidMLSchedule(target, dataclasses.replace(options, cost="analytic"))(mod)
            funcs = {gv.name_hint: f for gv, f in mod.functions_items()
                     if isinstance(f, tirx.PrimFunc)}
            mm = next(f for name, f in funcs.items() if name.startswith("matmul"))
            t_mm, t_copy = measure_funcs([mm, funcs["copy"]], target, min_repeat_ms=20, repeat=2)
        if not t_mm.seconds or not t_copy.seconds:
            return None
        peak = {"gflops": round(2.0 * m * n * k / t_mm.seconds / 1e9, 1),
                "gbps": round(2 * 4 * size / t_copy.seconds / 1e9, 1)}
        noisy = not (t_mm.quiet and t_copy.quiet)  # a loaded machine: measured again next time
        db.choose(tkey, _PEAK_RULE, _PEAK_VERSION, peak, t_mm.seconds, trials=1, noisy=noisy)
        log.info("host peak: %s%s", peak, " (loaded machine: provisional)" if noisy else "")
        return peak
    except Exception as err:  # noqa: BLE001 - the roofline is a view: never fail a compile on it
        log.info("host peak not measured: %s", err)
        return None
    finally:
        db.close()


def reconcile(peak: dict | None, rates_gflops, target, options) -> dict | None:
    """``peak`` with its compute peak raised to the fastest of ``rates_gflops`` (the fp32 rates
    this compile's kernels were timed at) where one beats it by more than :data:`MARGIN`, and
    the raised peak stored: the peak is what this project's kernels reach here, and load only
    ever slows a measurement, so a kernel faster than the stored peak proves that peak low.
    (Seen on a 2-core AMD EPYC: a peak stored at 108.6 GFLOP/s from a first compile that ran
    beside another process, kernels timed at 220-228, a quiet peak measurement 223-227.)"""
    from .. import costdb
    from .target_info import cpu_info

    fastest = max((r for r in rates_gflops if r), default=0.0)
    if not peak or not peak.get("gflops") or fastest <= peak["gflops"] * (1 + MARGIN):
        return peak
    raised = dict(peak, gflops=round(fastest, 1))
    log.info("host peak raised from %.1f to %.1f GFLOP/s: a kernel was timed at that rate",
             peak["gflops"], raised["gflops"])
    if options.cache_dir:
        db = costdb.CostDB(options.cache_dir)
        try:
            tkey = costdb.target_key(target, cpu_info(target).key())
            row = db.choice(tkey, _PEAK_RULE, _PEAK_VERSION)
            db.choose(tkey, _PEAK_RULE, _PEAK_VERSION, raised,
                      row["seconds"] if row else 0.0, trials=1, noisy=False)
        finally:
            db.close()
    return raised
