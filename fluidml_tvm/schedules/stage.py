"""``FluidMLSchedule``: give every PrimFunc of a module a CPU schedule.

Runs after LegalizeOps/FuseOps/FuseTIR. For each PrimFunc not yet marked ``tirx.is_scheduled``
the rules of :data:`.rules.RULES` are tried in order (matmul, conv2d_nchwc, conv_pool, conv2d,
depthwise, reduction, injective); the first that applies wins. For each rule, in one guarded
step: ``analyze`` (does it apply, else why not), ``candidates``, the choice among them
(:func:`.choose.choose`: cached, measured on this host, or the analytic first one) and ``apply``.

A rule that measures keeps its choice in the measurement database (:mod:`fluidml_tvm.costdb`)
under (target, CPU, threads, kernel structural hash, shape), so a second compile measures
nothing. When a rule packs a constant parameter (matmul's B, a conv weight), the Relax callers'
constants are packed here, at compile time (:mod:`.constants`).

Every decision is a :class:`fluidml_tvm.decisions.Decision` (stage ``schedule``, subject the
kernel, choice the rule, ``data`` = ``{"config", "measured", "seconds"}``), kept in
:attr:`FluidMLSchedule.decisions` and left on the module (``fluidml.decisions.schedule``). The
reason of a fallback rule (reduction, injective) also says why each better rule did not apply.
A PrimFunc that no rule schedules is reported by name (``warnings.warn`` and the
``fluidml_tvm.schedules`` logger), never silently left naive. Dynamic-shape kernels fall to the
generic rules.
"""

from __future__ import annotations

import logging
import warnings

import tvm
from tvm import tirx

from ..decisions import Decision, attach
from ..options import Options
from . import fast_math, work
from .choose import Choice, choose, progress
from .common import no_vector_form
from .constants import constant_args, pack_constants
from .measure import can_measure
from .rules import RULES, Context, Unrelated
from .target_info import cpu_info

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
        :class:`fluidml_tvm.options.Options` (``tune_trials``, ``cost``, ``cache_dir``,
        ``schedule_off``).

    Reads PrimFuncs and the Relax functions calling them (to know which arguments are
    constants); rewrites the PrimFuncs and, for packed weights, the constants passed at their
    call sites. Non-llvm targets are left alone (GPU kernels need GPU schedules).
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
        db = None
        # "measured": look up, else measure and record. "learned": no model is trained yet, so
        # earlier measurements are used where the cache has them, the analytic choice elsewhere.
        # "analytic": the first candidate, no database.
        if self.options.cost in ("measured", "learned") and self.options.cache_dir:
            from ..costdb import CostDB

            db = CostDB(self.options.cache_dir)
        measure_ok = self.options.cost == "measured" and can_measure(target)
        packs: dict[str, tuple] = {}
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            name = gv.name_hint
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                self.decisions.append(_decision(name, "skipped", "already scheduled"))
                continue
            why = no_vector_form(func)
            if why:  # left as stock TVM leaves it: TVM cannot lower it vectorized
                self.decisions.append(_decision(name, "skipped", why))
                continue
            ctx = Context(name, target, cpu, self.options, consts.get(name, {}), db, measure_ok)
            new, dec, pack = schedule_kernel(func, ctx)
            dec.data.update(work.kernel_work(func))  # flops, bytes: the roofline view
            if new is not None and self.options.fast_math:
                new = fast_math.apply(new)  # vectorizable exp/erf in FluidML's kernels only
            self.decisions.append(dec)
            if new is None:
                msg = f"FluidMLSchedule: no rule schedules kernel {name!r} ({dec.reason}); naive"
                warnings.warn(msg, stacklevel=2)
                log.warning(msg)
                continue
            log.info("%s", dec)
            new = new.with_attr("tirx.is_scheduled", True)
            if pack is not None:  # the signature changes: a new GlobalVar, callers rewritten
                packs[name] = (new, pack)
            else:
                updates[gv] = new
        for gv, func in updates.items():
            mod[gv] = func
        if packs:
            mod = pack_constants(mod, packs)
        if db is not None:
            db.close()
        n = sum(1 for d in self.decisions if d.data["measured"])
        if n:
            progress(f"measured {n} kernels\n")
        # the per-kernel decisions travel with the module (read them with a pass instrument)
        return attach(mod, STAGE, self.decisions)


def schedule_kernel(func: tirx.PrimFunc, ctx: Context):
    """``(scheduled PrimFunc | None, Decision, pack | None)`` for one kernel: the first rule of
    :data:`.rules.RULES` that applies. ``pack``: ``{param index: (roles, nr)}`` of constant
    parameters the kernel now reads packed (:func:`.constants.pack_constants`)."""
    reasons = []  # why each better rule did not apply
    for rule in RULES:
        if rule.optional and not ctx.options.rule_on(rule.name):
            continue
        try:
            out = _try_rule(rule, func, ctx)
        except Exception as err:  # noqa: BLE001 - a rule that fails leaves the kernel to the next
            out = f"{type(err).__name__}: {str(err)[:200]}"
        if isinstance(out, str):
            if not isinstance(out, Unrelated):
                reasons.append(f"{rule.name}: {out}")
            continue
        new, reason, pack, choice = out
        if rule.generic and reasons:  # say why the better rules did not apply
            reason += " | not " + "; not ".join(reasons)
        config = rule.config_of(choice.config)
        return new, _decision(ctx.kernel, rule.name, reason, config, choice), pack
    return None, _decision(ctx.kernel, "none", "; ".join(reasons)), None


def _try_rule(rule, func, ctx: Context):
    """``(PrimFunc, reason, pack, Choice)`` when ``rule`` schedules ``func``, else the reason
    it does not (a ``str``)."""
    match, why = rule.analyze(func, ctx)
    if match is None:
        return why
    cands = rule.candidates(match, ctx)
    if not cands:
        return rule.no_candidates(match, ctx)
    if not rule.measures:
        choice = Choice(cands[0])
        new, reason, pack = rule.apply(func, match, choice.config, ctx)
        return new, reason, pack, choice
    flops = rule.flops(match)
    def build(cfg):  # a candidate as it will run: with the fast exp/erf when they are on
        built = rule.build(func, match, cfg, ctx)
        return fast_math.apply(built) if ctx.options.fast_math else built

    choice = choose(ctx.kernel, func, rule.name, rule.workload(match, cands, ctx), cands, build,
                    flops, ctx.target, ctx.cpu, ctx.db, ctx.measure_ok)
    new, reason, pack = rule.apply(func, match, choice.config, ctx)
    return new, f"{reason} {choice.how(flops)}", pack, choice


def _decision(kernel: str, rule: str, reason: str, config: dict | None = None,
              choice: Choice | None = None) -> Decision:
    measured = choice.measured if choice is not None else 0
    seconds = choice.seconds if choice is not None else 0.0
    if measured:
        reason += f" [measured {measured} candidates]"
    data = {"config": config or {}, "measured": measured, "seconds": seconds}
    return Decision(STAGE, kernel, rule, reason, data)


def schedule_passes(target, options) -> list:
    """Passes of the pipeline's schedule slot: :class:`FluidMLSchedule` for CPU (llvm)
    targets (run after FuseTIR, inside ``with target:``)."""
    return [FluidMLSchedule(target, options)]
