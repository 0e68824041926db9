"""Which candidate schedule a kernel gets: from the measurement cache, by measuring, or the first.

:func:`choose` is the one policy every measuring rule goes through (no pass object needed):

* the cache (:class:`fluidml_tvm.costdb.CostDB`) is keyed by the target as measured now
  (:func:`fluidml_tvm.costdb.target_key` with the CPU facts and ``TVM_NUM_THREADS``), the rule,
  and the workload: the kernel's structural hash and the rule's own shape string;
* a final choice in the cache is taken as it is (nothing measured); a provisional one (measured
  on a loaded machine) is measured again when this host can measure;
* otherwise, when measuring is allowed and the kernel is worth it (:data:`MEASURE_MIN_FLOPS`,
  more than one candidate), every candidate is built and timed, the fastest
  :data:`CONFIRM_TOP` are timed again (:func:`confirm_top`), every timing is recorded and the
  fastest is chosen (provisional when some round was loaded);
* else the first candidate: the rule's analytic best guess.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass

import tvm_ffi

from ..costdb import REMEASURE_ATTEMPTS, target_key
from .measure import QUIET_LOAD, measure_funcs

log = logging.getLogger("fluidml_tvm.schedules")

# Kernels smaller than this (2*64^3 FLOPs) take the analytic first choice: measuring them costs
# more compile time than any choice could save at run time.
MEASURE_MIN_FLOPS = 2 * 64**3

# The fastest few candidates of a first pass are timed again, interleaved, before one is chosen:
# they are often within a few percent, where one lucky round decided (1024^3 on the AVX2 machine
# took a 2x4 tile at 0.83x ORT in one quiet run, a 4x2 one at 0.93-0.95x in the next two).
CONFIRM_TOP = 3
CONFIRM_ROUNDS = 4


@dataclass
class Choice:
    """The chosen config, how many candidates were timed for it now (0: cached or analytic),
    its seconds per call (0.0: never measured) and ``note``: where a choice from loaded
    measurements stands (provisional, or kept after :data:`REMEASURE_ATTEMPTS` compiles)."""

    config: dict
    measured: int = 0
    seconds: float = 0.0
    note: str = ""

    def how(self, flops: float) -> str:
        """``(measured|cached|analytic)[, X GFLOP/s]`` and the note, for the decision's reason."""
        how = "measured" if self.measured else ("cached" if self.seconds else "analytic")
        rate = f", {flops / self.seconds / 1e9:.1f} GFLOP/s" if self.seconds else ""
        return f"({how}){rate}{self.note}"


def choose(kernel: str, func, rule: str, workload: str, candidates: list[dict], build,
           flops: float, target, cpu, db=None, measure: bool = False) -> Choice:
    """Pick one of ``candidates`` (config dicts, best guess first) for PrimFunc ``func``.

    ``build(config) -> PrimFunc`` gives a candidate's kernel for timing (a candidate whose build
    fails is left out). ``db``: a :class:`~fluidml_tvm.costdb.CostDB` or None; ``measure``:
    whether kernels for ``target`` may be timed on this host. ``kernel`` names the kernel in logs.
    """
    tkey = target_key(target, cpu.key())
    workload = f"{tvm_ffi.structural_hash(func) & 0xFFFFFFFFFFFF:012x}:{workload}"
    prior = db.choice(tkey, rule, workload) if db is not None else None
    if prior is not None and (not prior["provisional"] or not measure):
        note = ", loaded machine" if prior["noisy"] else ""
        return Choice(prior["config"], 0, prior["seconds"], note)
    if not (measure and flops >= MEASURE_MIN_FLOPS and len(candidates) > 1):
        return Choice(candidates[0])
    built = []
    for cfg in candidates:
        try:
            built.append((cfg, build(cfg)))
        except Exception as err:  # noqa: BLE001 - a candidate that does not apply
            log.info("%s: candidate %s failed: %s", kernel, cfg, err)
    log.info("measuring %s: %d candidates", kernel, len(built))
    progress(f"measuring {kernel}: {len(built)} candidates of {rule}")
    timings = measure_funcs([f for _, f in built], target) if built else []
    timings = confirm_top(built, timings, target)
    measured = 0
    results = {}  # config json -> (seconds, load): this measurement, merged with earlier ones
    for (cfg, _), tm in zip(built, timings):
        if tm.seconds is None:
            continue
        measured += 1
        log.info("  %s %s: %.1f GFLOP/s (others' load %.2f)", kernel, cfg,
                 flops / tm.seconds / 1e9, tm.load)
        results[_dump(cfg)] = (tm.seconds, tm.load)
        if db is not None:
            db.record(tkey, rule, workload, cfg, tm.seconds, flops, load=tm.load)
    if not results:
        return Choice(candidates[0])
    if db is not None and prior is not None:  # a re-measure: earlier rounds count too
        for c, sl in db.measured(tkey, rule, workload, with_load=True).items():
            if c in results:
                results[c] = sl
    by_key = {_dump(c): c for c in candidates}
    key = min(results, key=lambda c: results[c][0])
    seconds, _ = results[key]
    noisy = any(ld > QUIET_LOAD for _, ld in results.values())
    if db is not None:
        db.choose(tkey, rule, workload, by_key[key], seconds, measured, noisy=noisy)
    note = ""
    if noisy:
        note = ", loaded machine: provisional, re-measured at the next compile"
        if prior is not None and prior["attempts"] + 1 >= REMEASURE_ATTEMPTS:
            note = f", loaded machine in {REMEASURE_ATTEMPTS} compiles: kept"
    return Choice(by_key[key], measured, seconds, note)


def confirm_top(built, timings, target):
    """``timings`` with the best :data:`CONFIRM_TOP` candidates re-timed (more rounds each; a
    candidate keeps its better timing, a quiet one before a loaded one)."""
    ranked = sorted((tm.seconds, i) for i, tm in enumerate(timings) if tm.seconds is not None)
    top = [i for _, i in ranked[:CONFIRM_TOP]]
    if len(top) < 2:
        return timings
    again = measure_funcs([built[i][1] for i in top], target, repeat=CONFIRM_ROUNDS,
                          extra_rounds=0)
    out = list(timings)
    for i, tm in zip(top, again):
        old = out[i]
        if tm.seconds is None:
            continue
        if (not tm.quiet, tm.seconds) < (not old.quiet, old.seconds):
            tm.quiet_rounds += old.quiet_rounds
            tm.rounds += old.rounds
            out[i] = tm
        else:
            old.quiet_rounds += tm.quiet_rounds
            old.rounds += tm.rounds
    return out


def _dump(config: dict) -> str:
    return json.dumps(config, sort_keys=True)  # the cache's key of a config (costdb._dump)


def progress(text: str) -> None:
    """One overwritten status line on an interactive terminal (measuring can take minutes)."""
    if sys.stderr.isatty():
        sys.stderr.write("\r[fluidml] " + text[:100].ljust(100))
        sys.stderr.flush()
