"""Layout plans checked end to end: time a compile with its layout plan against the same model
compiled with ``fluidml.layout=0``, interleaved, and store the ratio under the plan's id.

A driver above the compiler, not a pass: it takes two compiled models (the caller compiles
them) and the layout stage reads what it stored (:func:`fluidml_tvm.passes.layout.gain.lookup`)
the next time it sees the same plan. ``fluidml.layout_verify`` (:func:`fluidml_tvm.compile`)
runs it once per new plan; ``fluidml-tvm compile --measure-layout-gain`` and
``benchmarks/bench_layout.py`` run it on demand.
"""

from __future__ import annotations

import os
import statistics
import time

from .decisions import Decision
from .passes.layout import gain

STAGE = "layout_verify"
# The cache's rule of plans a tune budget left unchecked: the next compile of the plan keeps
# it so (a warm compile measures nothing); one that re-tunes or has no budget limit checks it.
UNCHECKED = "layout_unchecked"
#: the check of a new plan by a compile (``fluidml.layout_verify``): interleaved rounds, runs
#: of each build a round
CHECK_ROUNDS, CHECK_REPEAT = 5, 5


def loadavg() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def plans(compiled) -> list[Decision]:
    """The layout stage's per-function plan decisions of a compiled model."""
    return [d for d in compiled.decisions.get("layout", []) if "plan_id" in d.data]


def unmeasured(compiled) -> bool:
    """A plan was applied whose end-to-end effect nothing has measured yet."""
    return any(d.data.get("unmeasured") and d.data.get("applied") for d in plans(compiled))


def applied_ids(compiled) -> list[str]:
    """Ids of the layout plans a compiled model carries (a plan the stage dropped is not one)."""
    return [d.data["plan_id"] for d in plans(compiled) if d.data.get("applied")]


def time_rounds(models: list, rounds: int, repeat: int) -> list[list[float]]:
    """Interleaved timing of loaded models on the same inputs (the last model's random ones):
    per round the median of ``repeat`` runs of each, the order rotating from round to round.
    Returns each model's per-round medians."""
    inputs = models[-1].random_inputs()
    for m in models:
        m.time(inputs, repeat=2)
    per = [[] for _ in models]
    for r in range(rounds):
        for k in range(len(models)):
            j = (r + 1 + k) % len(models)
            per[j].append(statistics.median(models[j].time(inputs, repeat=repeat)))
    return per


def ratio_summary(a: list, b: list) -> tuple[float, float, float]:
    """Median and quartiles (25th, 75th) of the per-round ratios ``a / b``."""
    ratios = [x / y for x, y in zip(a, b)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(ratios), q[0], q[2]


def time_pair(on, off, rounds: int = 7, repeat: int = 10) -> dict:
    """Interleaved timing of two loaded models (order alternating), ratio on/off; returns the
    median ratio and its quartiles."""
    ons, offs = time_rounds([on, off], rounds, repeat)
    ratio, q25, q75 = ratio_summary(ons, offs)
    return {"ratio": ratio, "q25": q25, "q75": q75, "rounds": rounds,
            "on_s": statistics.median(ons), "off_s": statistics.median(offs)}


def check_seconds(latency: float) -> float:
    """What checking a plan (:data:`CHECK_ROUNDS` x :data:`CHECK_REPEAT`) measures for a model
    that runs in ``latency`` seconds: both builds' warm-up and timed runs, plus a second to load
    them."""
    return 1.0 + 2 * (2 + CHECK_ROUNDS * CHECK_REPEAT) * latency


def measure(on, off, rounds: int = 7, repeat: int = 10, threads: int | None = None,
            loaded_on=None) -> dict:
    """Time compiled models ``on`` (layouts on) and ``off`` (``fluidml.layout=0``) interleaved
    in this process and store the ratio under each plan ``on`` applied. Returns the measurement
    with ``ids`` (the plan ids stored). ``loaded_on``: ``on`` already loaded."""
    m_on = loaded_on or on.load(num_threads=threads)
    m_off = off.load(num_threads=threads)
    res = time_pair(m_on, m_off, rounds, repeat)
    res.update({"threads": m_on.num_threads, "load": loadavg(), "at": time.time()})
    ids = applied_ids(on)
    if on.options.cache_dir and ids:
        from .costdb import CostDB

        db = CostDB(on.options.cache_dir)
        for pid in ids:
            gain.record(db, gain.target_key(on.target), pid, res)
    res["ids"] = ids
    return res


def left_unchecked(compiled, mark: bool = False) -> bool:
    """Whether an earlier compile's budget left every plan of ``compiled`` unchecked; with
    ``mark``, remember that this compile leaves them so."""
    ids = applied_ids(compiled)
    if not compiled.options.cache_dir or not ids:
        return False
    from .costdb import CostDB

    db = CostDB(compiled.options.cache_dir)
    tkey = gain.target_key(compiled.target)
    try:
        if mark:
            for pid in ids:
                db.record(tkey, UNCHECKED, pid, {"plan": pid}, 0.0)
            return True
        return all(db.measured(tkey, UNCHECKED, pid) for pid in ids)
    finally:
        db.close()


def describe(res: dict) -> str:
    return (f"measured gain: latency on/off {res['ratio']:.3f} (per-round ratios "
            f"{res['q25']:.3f}-{res['q75']:.3f}, {res['rounds']} interleaved rounds, "
            f"{res['threads']} threads, load average {res['load']}; on {res['on_s'] * 1e3:.2f} ms,"
            f" off {res['off_s'] * 1e3:.2f} ms)")


def decision(res: dict) -> Decision:
    """The verification's decision: the plan kept or not, with the numbers."""
    ids = ", ".join(res.get("ids", [])) or "-"
    kept = gain.keeps(res)
    line = describe(res)
    if kept:
        reason = f"verified (fluidml.layout_verify): {line}"
    else:
        reason = (f"NOT APPLIED (fluidml.layout_verify): {line}; {gain.keep_rule()}: the "
                  "library is the compile without the plan, and later compiles of this plan "
                  "skip it")
    data = {k: v for k, v in res.items() if k not in ("off",)}
    return Decision(STAGE, f"plan {ids}", "kept" if kept else "not applied", reason, data)
