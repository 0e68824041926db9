"""Expected vs measured gain of a layout plan (``fluidml-tvm compile --report``).

*Expected*: the plan's modelled saving, all-default minus chosen, in the cost model the plan was
made with (measured kernels for ``fluidml.cost=measured``): :func:`expected_line`.

*Measured*: the same model compiled with ``fluidml.layout=1`` and ``=0`` in one process and timed
in interleaved rounds (:func:`fluidml_tvm.layout_verify.measure`); the median of the per-round
on/off ratios, with its spread, is stored in the measurement cache
(:class:`fluidml_tvm.costdb.CostDB`, rule
``layout_gain``) under the plan's id, so every later compile of the same plan reports it
(:func:`measured_line`). The id (:func:`plan_id`) hashes the graph's ops and shapes with the
chosen layouts: a new plan (other shapes, other measurements) is a new id and says it has not
been measured yet. ``benchmarks/bench_layout.py`` and ``fluidml-tvm compile --report
--measure-layout-gain`` fill it in.
"""

from __future__ import annotations

import hashlib
import json
import time

from ... import costdb

RULE = "layout_gain"


def plan_id(g, layouts: dict) -> str:
    """A stable id of (graph structure, chosen layouts): ops, shapes and dtypes, not weights."""
    h = hashlib.sha1()
    for n in g.nodes:
        shapes = [g.tensors[t].shape for t in (*n.inputs, n.output)]
        h.update(f"{n.op}{shapes}{g.tensors[n.output].dtype};".encode())
    h.update(repr(sorted(layouts.items())).encode())
    return h.hexdigest()[:16]


def target_key(target) -> str:
    return costdb.target_key(target)


def expected_line(plan) -> str:
    """The plan's modelled saving over the all-default layout."""
    if plan.default_cost <= 0:
        return "expected gain: none modelled"
    gain = plan.default_cost - plan.cost
    share = gain / plan.default_cost
    return (f"expected gain ({plan.model} model): {gain * 1e6:.1f}us of "
            f"{plan.default_cost * 1e6:.1f}us modelled ({share:.1%}), "
            f"modelled on/off {plan.cost / plan.default_cost:.3f}")


def lookup(db, tkey: str, pid: str) -> dict | None:
    """The latest stored end-to-end measurement of plan ``pid``, or None."""
    if db is None:
        return None
    rows = db.measured(tkey, RULE, pid)
    best = None
    for config, _seconds in rows.items():
        try:
            c = json.loads(config)
        except (TypeError, ValueError):
            continue
        if best is None or c.get("at", 0) > best.get("at", 0):
            best = c
    return best


def measured_line(db, tkey: str, pid: str, layouts: dict) -> str:
    return stored_line(lookup(db, tkey, pid) if layouts else None, layouts)


def stored_line(m: dict | None, layouts: dict) -> str:
    """The report line of a plan with ``layouts`` whose stored measurement is ``m``."""
    if not layouts:
        return ("measured gain: none to measure (all-default plan: the IR is the one "
                "fluidml.layout=0 compiles)")
    if m is None:
        return ("measured gain: not measured yet for this plan (fluidml-tvm compile --report "
                "--measure-layout-gain, or benchmarks/bench_layout.py)")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(m.get("at", 0)))
    return (f"measured gain: latency on/off {m['ratio']:.3f} (per-round ratios "
            f"{m['q25']:.3f}-{m['q75']:.3f}, {m['rounds']} interleaved rounds, "
            f"{m['threads']} threads, machine load {m.get('load', 'n/a')}, {when})")


def record(db, tkey: str, pid: str, result: dict) -> None:
    if db is None:
        return
    db.record(tkey, RULE, pid, dict(result), float(result["on_s"]))


# A plan is kept only if it measured clearly faster end to end: the median on/off ratio at least
# MIN_GAIN below 1 and three quarters of the rounds faster (q75 < 1). With a bare "median < 1"
# a plan of no real gain passed half the time: GPT-NeoX-small's (modelled gain 0.04%) passed a
# 5-round check at 0.998 and then measured 1.0035 (1.0011-1.0050) over 15 rounds.
MIN_GAIN = 0.005


def keeps(m: dict) -> bool:
    """Whether an end-to-end measurement (``ratio``, ``q75``) says: keep the plan."""
    return m["ratio"] <= 1.0 - MIN_GAIN and m["q75"] < 1.0


def keep_rule() -> str:
    return f"kept only if on/off <= {1 - MIN_GAIN:.3f} and 75% of rounds faster"


# A plan no end-to-end measurement has kept yet is applied only if the model expects at least
# this share of the run from it. Its kernels are timed alone, without the epilogues fusion adds,
# so a smaller modelled gain is within the model's error, and an unchecked plan (a tune budget
# too small for the check) can be far off: ConvNeXt-Tiny's plan of 0.2% modelled gain turned
# four matmul+residual kernels into an NCHW-output form no schedule rule matches (38 ms each,
# 1.1 ms in the default layouts) and ran 6.6x slower.
MIN_MODELLED_GAIN = 0.01


def too_small(plan) -> str | None:
    """Why an unmeasured ``plan`` is not applied (its modelled gain below
    :data:`MIN_MODELLED_GAIN`), or None."""
    if plan.default_cost <= 0:
        return None
    share = (plan.default_cost - plan.cost) / plan.default_cost
    if share >= MIN_MODELLED_GAIN:
        return None
    return (f"NOT APPLIED: modelled gain {share:.1%} < {MIN_MODELLED_GAIN:.0%} of the modelled "
            "run, within the model's error (its kernels timed alone) and not measured end to "
            "end; the function keeps the default layouts")
