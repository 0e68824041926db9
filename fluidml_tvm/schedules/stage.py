"""``FluidMLSchedule``: give every PrimFunc of a module a CPU schedule.

Runs after LegalizeOps/FuseOps/FuseTIR, in three steps over all kernels of the module:

1. :func:`plan_kernel`: for each PrimFunc not yet marked ``tirx.is_scheduled`` the rules of
   :data:`.rules.RULES` are tried in order (matmul, conv2d_nchwc, conv_pool, conv2d, depthwise,
   reduction, injective); the first whose ``analyze`` matches and that has ``candidates`` wins;
2. :func:`.tune.tune`: every measuring rule's config, for all kernels at once: identical kernels
   decided once, cached choices taken, the rest measured in the order of their share of the
   modelled run time while the tune budget lasts (:mod:`fluidml_tvm.tuning`), then analytic;
3. :func:`finish`: ``apply``; a rule that fails there leaves the kernel to the next rules.

A rule that measures keeps its choice in the measurement database (:mod:`fluidml_tvm.costdb`)
under (target, CPU, threads, kernel structural hash, shape), so a second compile measures
nothing. When a rule packs a constant parameter (matmul's B, a conv weight), the Relax callers'
constants are packed here, at compile time (:mod:`.constants`).

Every decision is a :class:`fluidml_tvm.decisions.Decision` (stage ``schedule``, subject the
kernel, choice the rule, ``data`` = ``{"config", "measured", "seconds"}`` and, for measuring
rules, ``source``: measured, cached, analytic or budget, and ``rank``: the chosen candidate's
place in the rule's order), kept in :attr:`FluidMLSchedule.decisions` and left on the module
(``fluidml.decisions.schedule``). The reason of a fallback rule (reduction, injective) also says
why each better rule did not apply. A PrimFunc that no rule schedules is reported by name
(``warnings.warn`` and the ``fluidml_tvm.schedules`` logger), never silently left naive.
Dynamic-shape kernels fall to the generic rules.
"""

from __future__ import annotations

import logging
import warnings

import tvm
from tvm import tirx

from .. import tuning
from ..decisions import Decision, attach
from ..options import Options
from . import fast_math, work
from .choose import Choice, key
from .common import inline_plain_copies, no_vector_form
from .constants import constant_args, pack_constants
from .measure import can_measure
from .rules import RULES, Context, Unrelated
from .target_info import cpu_info
from .tune import Pending, call_counts, tune

log = logging.getLogger("fluidml_tvm.schedules")

STAGE = "schedule"


@tvm.transform.module_pass(opt_level=0, name="FluidMLSchedule")
class FluidMLSchedule:
    """Schedule every unscheduled PrimFunc of an IRModule for a CPU target.

    Parameters
    ----------
    target
        The llvm target (a ``Target`` or its dict/tag); ``None`` uses ``Target.current()``.
    options
        :class:`fluidml_tvm.options.Options` (``tune_trials``, ``tune_budget``, ``retune``,
        ``cost``, ``cache_dir``, ``schedule_off``).

    Reads PrimFuncs and the Relax functions calling them (to know which arguments are
    constants); rewrites the PrimFuncs and, for packed weights, the constants passed at their
    call sites. Non-llvm targets are left alone (GPU kernels need GPU schedules). Measures within
    the active :class:`fluidml_tvm.tuning.TuneSession` (a compile's), else its own budget.
    """

    def __init__(self, target=None, options: Options | None = None):
        self.target = target
        self.options = options or Options()
        self.decisions: list[Decision] = []

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        target = self.target
        if target is None:
            target = tvm.target.Target.current(allow_none=False)
        elif not isinstance(target, tvm.target.Target):
            target = tvm.target.Target(target)
        if target.kind.name != "llvm":
            log.warning("FluidMLSchedule: target %s is not a CPU (llvm) target; skipped", target)
            return mod
        cpu = cpu_info(target)
        self.decisions = []
        consts = constant_args(mod)
        calls = call_counts(mod)
        db = None
        # "measured": look up, else measure and record. "learned": no model is trained yet, so
        # earlier measurements are used where the cache has them, the analytic choice elsewhere.
        # "analytic": the first candidate, no database.
        if self.options.cost in ("measured", "learned") and self.options.cache_dir:
            from ..costdb import CostDB

            db = CostDB(self.options.cache_dir)
        measure_ok = self.options.cost == "measured" and can_measure(target)
        session = tuning.for_options(self.options)
        kernels = []  # (gv, func, ctx, Pending | None, reasons)
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            name = gv.name_hint
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                how = func.attrs.get("fluidml.scheduled_as")  # a kernel written scheduled
                self.decisions.append(_decision(name, str(how).split(":")[0] if how else "skipped",
                                                str(how) if how else "already scheduled"))
                continue
            why = no_vector_form(func)
            if why:  # left as stock TVM leaves it: TVM cannot lower it vectorized
                self.decisions.append(_decision(name, "skipped", why))
                continue
            ctx = Context(name, target, cpu, self.options, consts.get(name, {}), db, measure_ok)
            func = inline_plain_copies(func)  # e.g. a conv's padding stage of no padding
            p, reasons = plan_kernel(func, ctx)
            if p is not None:
                p.calls = calls.get(name, 1)
            kernels.append((gv, func, ctx, p, reasons))
        tune([k[3] for k in kernels if k[3] is not None and k[3].rule.measures], session,
             measure_ok)
        packs: dict[str, tuple] = {}
        updates = {}
        for gv, func, ctx, p, reasons in kernels:
            new, dec, pack = finish(func, ctx, p, reasons, session)
            dec.data.update(work.kernel_work(func))  # flops, bytes: the roofline view
            if new is not None and self.options.fast_math:
                new = fast_math.apply(new)  # vectorizable exp/erf in FluidML's kernels only
            self.decisions.append(dec)
            if new is None:
                msg = (f"FluidMLSchedule: no rule schedules kernel {gv.name_hint!r} "
                       f"({dec.reason}); naive")
                warnings.warn(msg, stacklevel=2)
                log.warning(msg)
                continue
            log.info("%s", dec)
            new = new.with_attr("tirx.is_scheduled", True)
            if pack is not None:  # the signature changes: a new GlobalVar, callers rewritten
                packs[gv.name_hint] = (new, pack)
            else:
                updates[gv] = new
        for gv, func in updates.items():
            mod[gv] = func
        if packs:
            mod = pack_constants(mod, packs)
        if db is not None:
            db.close()
        # the per-kernel decisions travel with the module (read them with a pass instrument)
        return attach(mod, STAGE, self.decisions)


def plan_kernel(func: tirx.PrimFunc, ctx: Context, start: int = 0, reasons=None):
    """``(Pending | None, reasons)``: the first rule of :data:`.rules.RULES` (from ``start``)
    that matches ``func`` and has candidates, and why each better rule did not apply."""
    reasons = list(reasons or [])
    for index in range(start, len(RULES)):
        rule = RULES[index]
        if rule.optional and not ctx.options.rule_on(rule.name):
            continue
        try:
            match, why = rule.analyze(func, ctx)
            if match is None:
                if not isinstance(why, Unrelated):
                    reasons.append(f"{rule.name}: {why}")
                continue
            cands = rule.candidates(match, ctx)
            if not cands:
                why = rule.no_candidates(match, ctx)
                if not isinstance(why, Unrelated):
                    reasons.append(f"{rule.name}: {why}")
                continue
            p = Pending(ctx.kernel, func, rule, index, match, cands, ctx, reasons)
            if rule.measures:
                p.flops = rule.flops(match)
                p.workload = key(func, rule.workload(match, cands, ctx))
            return p, reasons
        except Exception as err:  # noqa: BLE001 - a rule that fails leaves the kernel to the next
            reasons.append(f"{rule.name}: {type(err).__name__}: {str(err)[:200]}")
    return None, reasons


def schedule_kernel(func: tirx.PrimFunc, ctx: Context, start: int = 0, reasons=None,
                    session=None):
    """``(scheduled PrimFunc | None, Decision, pack | None)`` for one kernel: the first rule of
    :data:`.rules.RULES` that applies. ``pack``: ``{param index: (roles, nr)}`` of constant
    parameters the kernel now reads packed (:func:`.constants.pack_constants`)."""
    session = session or tuning.for_options(ctx.options)
    p, reasons = plan_kernel(func, ctx, start, reasons)
    if p is not None and p.rule.measures:
        tune([p], session, ctx.measure_ok)
    return finish(func, ctx, p, reasons, session)


def finish(func, ctx: Context, p: Pending | None, reasons, session):
    """Apply the chosen config of ``p``; a rule whose apply fails leaves the kernel to the next
    rules (:func:`schedule_kernel` from there)."""
    if p is None:
        return None, _decision(ctx.kernel, "none", "; ".join(reasons)), None
    choice = p.choice if p.rule.measures and p.choice is not None else Choice(p.candidates[0])
    try:
        new, reason, pack = p.rule.apply(func, p.match, choice.config, ctx)
    except Exception as err:  # noqa: BLE001 - a rule that fails leaves the kernel to the next
        why = [*p.reasons, f"{p.rule.name}: {type(err).__name__}: {str(err)[:200]}"]
        return schedule_kernel(func, ctx, p.rule_index + 1, why, session)
    if p.rule.measures:
        reason += f" {choice.how(p.flops)}"
    if p.shared_with:
        reason += f" [the same kernel as {p.shared_with}: decided once]"
    if p.rule.generic and p.reasons:  # say why the better rules did not apply
        reason += " | not " + "; not ".join(p.reasons)
    config = p.rule.config_of(choice.config)
    dec = _decision(ctx.kernel, p.rule.name, reason, config, choice if p.rule.measures else None)
    return new, dec, pack


def _decision(kernel: str, rule: str, reason: str, config: dict | None = None,
              choice: Choice | None = None) -> Decision:
    measured = choice.measured if choice is not None else 0
    seconds = choice.seconds if choice is not None else 0.0
    if measured:
        reason += f" [measured {measured} candidates]"
    data = {"config": config or {}, "measured": measured, "seconds": seconds}
    if choice is not None:
        data["source"] = choice.source
        data["rank"] = choice.rank
    return Decision(STAGE, kernel, rule, reason, data)


def schedule_passes(target, options) -> list:
    """Passes of the pipeline's schedule slot: :class:`FluidMLSchedule` for CPU (llvm)
    targets (run after FuseTIR, inside ``with target:``)."""
    return [FluidMLSchedule(target, options)]
