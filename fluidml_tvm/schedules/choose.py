"""Which candidate schedule a kernel gets: from the measurement cache, by measuring, or the first.

The policy every measuring rule goes through (the stage batches it, :mod:`.tune`; :func:`choose`
is the one-kernel form):

* the cache key (:func:`key`): the target as measured now (:func:`fluidml_tvm.costdb.target_key`
  with the CPU facts and ``TVM_NUM_THREADS``), the rule, and the workload: the kernel's
  structural hash (buffer, block and kernel names do not count, nor the ``global_symbol`` a
  kernel built alone carries) and the rule's own shape string; so the same kernel in another
  model, or imported from tuning records (:mod:`fluidml_tvm.records`), is looked up;
* :func:`lookup`: a cached choice is taken as it is (nothing measured); one made on a loaded
  machine (provisional) too, unless the session re-tunes (``--retune``); one an earlier
  compile's budget left to the analytic model too, unless the session re-tunes or has no
  budget limit;
* :func:`measure_candidates`: the rule's candidates come best guess first (its analytic model);
  within a bounded budget only the first :data:`TIME_TOP` are timed, all of them in one module,
  :data:`ROUNDS` interleaved rounds (a third while one saw only loaded rounds), the fastest
  taken. Every timing is recorded; a choice from loaded rounds is provisional. (There is no
  separate confirmation of close candidates: it rebuilt them, and building is ~60% of a
  measurement here - 2 cores, LLVM code generation - so on a loaded host, where few winners
  are clear after one round, it cost more than two rounds of everything.)
* else the first candidate: the rule's analytic best guess (:func:`left_to_model` when the
  budget did not reach it: remembered, so a warm compile measures nothing).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import tvm
import tvm_ffi

from ..costdb import REMEASURE_ATTEMPTS, target_key
from .measure import QUIET_LOAD, measure_funcs

log = logging.getLogger("fluidml_tvm.schedules")

# Kernels smaller than this (2*64^3 FLOPs) take the analytic first choice: measuring them costs
# more compile time than any choice could save at run time.
MEASURE_MIN_FLOPS = 2 * 64**3
# Candidates timed per kernel within a bounded budget (the rule's best guesses; all of
# fluidml.tune_trials when the budget is unbounded). ResNet-50's 23 conv kernels, every
# candidate measured (loaded 2-core host): the winner was the rule's 1st/2nd/3rd/4th candidate
# 5/9/8/1 times; timing only the first 3 lost 0.03% of kernel time, the first 2 10%, the
# analytic first alone 15%.
TIME_TOP = 3
# How candidates are timed: ROUNDS interleaved rounds of at least ROUND_MS of calls each (the
# minimum per candidate counts), one more round while a candidate saw only loaded ones.
ROUNDS = 2
ROUND_MS = 20


@dataclass
class Choice:
    """The chosen config, how many candidates were timed for it now (0: cached or analytic),
    its seconds per call (0.0: never measured) and ``note``: where a choice from loaded
    measurements stands. ``source`` (cached, measured, analytic, budget: analytic because the
    tune budget was spent) and ``rank`` (the chosen candidate's place in the rule's order) do not
    take part in comparisons."""

    config: dict
    measured: int = 0
    seconds: float = 0.0
    note: str = ""
    source: str = field(default="analytic", compare=False)
    rank: int = field(default=0, compare=False)

    def how(self, flops: float) -> str:
        """``(measured|cached|analytic)[, X GFLOP/s]`` and the note, for the decision's reason."""
        how = "measured" if self.measured else ("cached" if self.seconds else "analytic")
        if self.source == "budget":
            how = "analytic: tune budget spent"
        rate = f", {flops / self.seconds / 1e9:.1f} GFLOP/s" if self.seconds else ""
        return f"({how}){rate}{self.note}"


def key(func, workload: str) -> str:
    """The cache's workload key of PrimFunc ``func`` under the rule's ``workload`` string."""
    if func.attrs is not None and "global_symbol" in func.attrs:
        func = func.without_attr("global_symbol")
    return f"{tvm_ffi.structural_hash(func) & 0xFFFFFFFFFFFF:012x}:{workload}"


def lookup(tkey: str, rule: str, wkey: str, db, session=None) -> Choice | None:
    """The cached choice of a workload, or None when it must be (re)measured: never measured,
    or provisional (loaded machine) while the session re-tunes."""
    if db is None:
        return None
    prior = db.choice(tkey, rule, wkey)
    if prior is None:
        return None
    if prior["analytic"]:  # an earlier compile's budget left it to the model
        if session is not None and session.revisits:
            return None
        return Choice(prior["config"], 0, 0.0, ", as an earlier compile's tune budget left it "
                      "(--retune measures it)", source="budget")
    if prior["provisional"] and session is not None and session.retune:
        return None
    note = ", loaded machine" if prior["noisy"] else ""
    return Choice(prior["config"], 0, prior["seconds"], note, source="cached")


def left_to_model(tkey: str, rule: str, wkey: str, candidates: list, db, session) -> Choice:
    """The analytic choice of a workload the budget does not reach, remembered in the cache so
    the next compile decides the same without measuring."""
    if session is not None:
        session.skip("schedule")
    if db is not None:
        db.choose(tkey, rule, wkey, candidates[0], 0.0, 0, analytic=True)
    return Choice(candidates[0], source="budget")


def worth(flops: float, candidates: list) -> bool:
    """Whether measuring can pay: a kernel big enough, more than one candidate."""
    return flops >= MEASURE_MIN_FLOPS and len(candidates) > 1


def timed(candidates: list, session) -> list:
    """The candidates a measurement times: all within an unbounded budget, else the first
    :data:`TIME_TOP` (the rule's analytic order decides the rest)."""
    return candidates if session is None or session.unbounded else candidates[:TIME_TOP]


def measure_candidates(kernel: str, rule: str, tkey: str, wkey: str, candidates: list[dict], build,
                       flops: float, target, db=None, session=None,
                       nbytes: int = 0) -> Choice | None:
    """Time the candidates (see the module docstring), record every timing, store the choice.
    None when no candidate could be built or timed. ``nbytes``: the kernel's parameter bytes
    (the session learns the cost of a measurement from them)."""
    cands = timed(candidates, session)
    built = []
    for i, cfg in enumerate(cands):
        try:
            built.append((i, cfg, build(cfg)))
        except Exception as err:  # noqa: BLE001 - a candidate that does not apply
            log.info("%s: candidate %s failed: %s", kernel, cfg, err)
    if not built:
        return None
    log.info("measuring %s: %d candidates of %s", kernel, len(built), rule)
    if session is not None:
        with session.measuring("schedule", kernels=1, candidates=len(built), nbytes=nbytes):
            timings = race([f for _, _, f in built], target)
    else:
        timings = race([f for _, _, f in built], target)
    results = {}  # config json -> (seconds, load, rank)
    for (i, cfg, _), tm in zip(built, timings):
        if tm.seconds is None:
            continue
        log.info("  %s %s: %.1f GFLOP/s (others' load %.2f)", kernel, cfg,
                 flops / tm.seconds / 1e9, tm.load)
        results[_dump(cfg)] = (tm.seconds, tm.load, i)
        if db is not None:
            db.record(tkey, rule, wkey, cfg, tm.seconds, flops, load=tm.load)
    if not results:
        return None
    measured = len(results)
    prior = db.choice(tkey, rule, wkey) if db is not None else None
    if prior is not None:  # a re-measure (--retune): earlier rounds count too
        for c, (s, ld) in db.measured(tkey, rule, wkey, with_load=True).items():
            if c in results:
                results[c] = (s, ld, results[c][2])
    best = min(results, key=lambda c: results[c][0])
    seconds, _, rank = results[best]
    noisy = any(ld > QUIET_LOAD for _, ld, _ in results.values())
    config = cands[rank]
    if db is not None:
        db.choose(tkey, rule, wkey, config, seconds, measured, noisy=noisy)
    note = ""
    if noisy:
        note = ", loaded machine: provisional (--retune measures it again)"
        if prior is not None and prior["attempts"] + 1 >= REMEASURE_ATTEMPTS:
            note = f", loaded machine in {REMEASURE_ATTEMPTS} measurements: kept"
    return Choice(config, measured, seconds, note, source="measured", rank=rank)


def race(funcs: list, target) -> list:
    """:class:`~.measure.Timing` of each PrimFunc: :data:`ROUNDS` interleaved rounds of
    :data:`ROUND_MS` each, one more while some candidate saw only loaded rounds (see the module
    docstring for why there is no separate confirmation pass)."""
    return measure_funcs(funcs, target, min_repeat_ms=ROUND_MS, repeat=ROUNDS, extra_rounds=1)


def choose(kernel: str, func, rule: str, workload: str, candidates: list[dict], build,
           flops: float, target, cpu, db=None, measure: bool = False,
           session=None) -> Choice:
    """Pick one of ``candidates`` (config dicts, best guess first) for PrimFunc ``func``: cached,
    else measured when ``measure`` and the session's budget affords it, else the first.

    ``build(config) -> PrimFunc`` gives a candidate's kernel for timing (a candidate whose build
    fails is left out). ``db``: a :class:`~fluidml_tvm.costdb.CostDB` or None. ``kernel`` names
    the kernel in logs. ``session``: the :class:`~fluidml_tvm.tuning.TuneSession` (None: no
    budget limit).
    """
    tkey = target_key(target, cpu.key())
    wkey = key(func, workload)
    if session is not None:
        session.use("choices", tkey, rule, wkey)
    found = lookup(tkey, rule, wkey, db, session)
    if found is not None:
        return found
    if not (measure and worth(flops, candidates)):
        return Choice(candidates[0])
    nbytes = param_bytes(func)
    if session is not None and not session.affords(
            session.estimate(len(timed(candidates, session)), nbytes=nbytes)):
        return left_to_model(tkey, rule, wkey, candidates, db, session)
    got = measure_candidates(kernel, rule, tkey, wkey, candidates, build, flops, target, db,
                             session, nbytes)
    return got or Choice(candidates[0])


def param_bytes(func) -> int:
    """Bytes of a PrimFunc's parameters (static dims; 4 bytes an element): what its random
    inputs cost when it is timed."""
    nbytes = 0
    for p in func.params:
        shape = getattr(getattr(p, "ty", None), "shape", None)
        if shape is None:
            continue
        n = 1
        for d in shape:
            n *= int(d) if isinstance(d, (int, tvm.tirx.IntImm)) else 1
        nbytes += n * 4
    return nbytes


def _dump(config: dict) -> str:
    return json.dumps(config, sort_keys=True)  # the cache's key of a config (costdb._dump)
