"""The layout stage's front door: ``FluidMLLayout`` plans every tensor's layout and rewrites the IR.

Runs on high-level Relax (``R.matmul``, ``R.permute_dims``, elementwise ops, ...) before
LegalizeOps/FoldConstant, inside ``with target:`` or with a target given. For each Relax function
it builds the operator graph (:mod:`.graph`), extracts sequences and plans layouts by DP and
voting (:mod:`.dp`, :mod:`.vote`) under a cost model (:mod:`.cost`, :mod:`.measure`,
:mod:`.learned`) and realizes the plan (:mod:`.rewrite`).

A plan is a model's prediction; ``fluidml.layout_verify`` (on by default) checks it: the first
compile of a plan times the model with the plan and without it (:mod:`fluidml_tvm.layout_verify`,
in ``fluidml_tvm.compile``) and caches the ratio under the plan's id; a plan measured no faster
(:func:`.gain.keeps`) is not applied, here, with the number in its decision.

Graph inputs, outputs and dynamic-shape tensors keep the default layout. ``apply=False`` only
records the plans (:attr:`FluidMLLayout.plans`) and leaves the IR unchanged. Every decision is a
:class:`fluidml_tvm.decisions.Decision` left on the module (stage ``layout``); :func:`report`
renders them. Kill switch: ``fluidml.layout=0``.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax

from ... import decisions as dec
from ... import tuning
from ...options import Options
from . import gain as layout_gain
from .conv import winograd_nodes, winograd_note
from .cost import AnalyticCost
from .dp import candidates
from .graph import build_graph
from .measure import MeasuredCost
from .rewrite import apply_plan
from .vote import plan_layouts

log = logging.getLogger("fluidml_tvm.layout")
STAGE = "layout"


def layout_passes(target, options: Options, apply=None) -> list:
    """Passes of the layout slot (before legalization): FluidML layout selection.

    The plan and the reason for every decision are always computed. The IR is rewritten only
    when the decisions come from measured kernels (``fluidml.cost=measured``, the default), and
    only to layouts that kernels absorb (transposes removed, none inserted); the analytic model's
    plan ran 1.33x slower on tiny BERT, so ``analytic``/``learned`` only report. ``apply``
    overrides the choice.
    """
    if apply is None:
        apply = options.cost == "measured"
    return [FluidMLLayout(target, options, apply=apply, explicit_transforms=False)]


@tvm.transform.module_pass(opt_level=0, name="FluidMLLayout")
class FluidMLLayout:
    """Plan (and by default apply) FluidML layouts on every Relax function of a module.

    Parameters
    ----------
    target
        The target the costs are for (``None``: ``Target.current()``, or analytic costs).
    options
        :class:`fluidml_tvm.options.Options`; ``cost`` selects the cost model (analytic /
        measured / learned, see :func:`.layout_measure.make_model`).
    apply
        Rewrite the IR (True) or only record the plans and reasons (False).
    model
        A cost model object overriding ``options.cost`` (tests, tutorials).
    explicit_transforms
        Allow plans that insert transposes around kernels that cannot absorb a layout (True:
        FluidML's full search). False keeps only layouts that kernels absorb, so the rewrite
        removes transpose kernels and never adds one (what the ``fluidml`` pipeline runs).
    """

    def __init__(self, target=None, options=None, apply: bool = True, model=None,
                 explicit_transforms: bool = True):
        self.target, self.apply, self.model = target, apply, model
        self.options = options if options is not None else Options()
        self.explicit_transforms = explicit_transforms
        self.plans: dict = {}
        self.decisions: list[dec.Decision] = []

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        penalty = 0.0 if self.explicit_transforms else 10.0  # seconds: never worth paying
        # a plan that is only reported uses cached measurements and spends no compile time
        model = self.model or make_model(self.target, self.options, penalty, measure=self.apply)
        out = mod
        self.decisions = []
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function) or (func.attrs and (
                    "Codegen" in func.attrs or "Primitive" in func.attrs)):
                continue
            g, exprs = build_graph(func)
            nchw = winograd_nodes(g, self.options, self._llvm_target())
            cands = candidates(g, matmul_transposes=self.explicit_transforms,
                               conv_layouts=self.options.layout_conv,
                               conv_block=self._conv_block(), nchw_only=nchw)
            seen_notes = len(getattr(model, "estimate_notes", ()))
            if hasattr(model, "keep_nchw"):
                model.keep_nchw(nchw)
            if hasattr(model, "prepare"):
                model.prepare(g, cands)
            plan = plan_layouts(g, model, cands=cands)
            # variants a bounded budget left to estimates are measured where the plan takes
            # them, then the plan is made again (MeasuredCost.refine)
            while hasattr(model, "refine") and model.refine(g, plan.layouts):
                plan = plan_layouts(g, model, cands=cands)
            plan.notes += getattr(model, "estimate_notes", [])[seen_notes:]
            plan.notes += [winograd_note(g, nchw)] if nchw else []
            if getattr(model, "conversion_penalty", 0.0):  # also record the unrestricted plan
                plan.notes.append(_unrestricted(g, model, plan))
            if not self.apply:
                plan.notes.append("analysis only: the IR is left in the default layouts")
            summary = self._summary(gv.name_hint, g, plan, model)
            self.plans[gv.name_hint] = plan
            self.decisions += [summary, *(dec.note(STAGE, n) for n in plan.notes),
                               *plan.decisions]
            log.info("layout plan of %s:\n%s", gv.name_hint, dec.render(self.decisions))
            if summary.data["applied"]:
                out = apply_plan(out, gv, func, g, exprs, plan.layouts)
        if out is not mod:
            out = relax.transform.DeadCodeElimination()(out)
        # the decisions travel with the module: read them after this pass (compile --report)
        return dec.attach(out, STAGE, self.decisions)

    def _llvm_target(self):
        """The CPU target the plan is for (None: no target, or not an LLVM one)."""
        target = self.target or tvm.target.Target.current(allow_none=True)
        if target is not None and not isinstance(target, tvm.target.Target):
            target = tvm.target.Target(target)
        return target if target is not None and target.kind.name == "llvm" else None

    def _conv_block(self) -> int:
        """The ``NCHW[b]c`` block of conv candidates: the target's fp32 vector lanes (0: none;
        ``fluidml.layout_blocked=0``, the default, or a non-CPU target)."""
        opts = self.options
        target = self._llvm_target()
        if not opts.layout_conv or not opts.layout_blocked or target is None:
            return 0
        from ...schedules.target_info import cpu_info

        lanes = cpu_info(target).lanes(32)
        return lanes if lanes >= 4 else 0

    def _summary(self, name: str, g, plan, model) -> dec.Decision:
        """The function's decision: the plan id, its expected (modelled) and measured (end to
        end, cached) gain, and whether it is applied. Adds the matching report lines to
        ``plan.notes``."""
        pid = layout_gain.plan_id(g, plan.layouts)
        plan.notes.append(f"plan id {pid}; " + layout_gain.expected_line(plan))
        data = {"plan_id": pid, "tensors": len(plan.layouts), "modelled_s": plan.cost,
                "modelled_default_s": plan.default_cost, "measured": None,
                "unmeasured": False, "applied": False}
        db = getattr(model, "db", None)
        if db is None and self.options.cache_dir:
            from ...costdb import CostDB

            db = CostDB(self.options.cache_dir)
        target = self.target or tvm.target.Target.current(allow_none=True)
        stored = None
        if not self.apply:
            plan.notes.append("measured gain: not applicable (plan reported, not applied)")
        elif db is not None and target is not None:
            stored = layout_gain.lookup(db, layout_gain.target_key(target), pid) \
                if plan.layouts else None
            plan.notes.append(layout_gain.stored_line(stored, plan.layouts))
            data["measured"] = stored
            data["unmeasured"] = bool(plan.layouts) and stored is None
        choice = "applied" if self.apply and plan.layouts else (
            "analysis only" if plan.layouts else "default layouts")
        if (self.apply and plan.layouts and stored is not None and self.options.layout_verify
                and not layout_gain.keeps(stored)):
            choice = "not applied"
            plan.notes.append(
                f"NOT APPLIED (fluidml.layout_verify): measured end to end on/off "
                f"{stored['ratio']:.3f} (rounds {stored['q25']:.3f}-{stored['q75']:.3f}; "
                f"{layout_gain.keep_rule()}); the function keeps the default layouts")
        elif choice == "applied" and data["unmeasured"] and (why := layout_gain.too_small(plan)):
            choice = "not applied"
            plan.notes.append(why)
        data["applied"] = choice == "applied"
        if data["applied"] and data["unmeasured"]:
            from ...schedules.measure import measures_here

            tuning.keep_for_layout_check(self.options, measures_here(self.target))
        return dec.Decision(STAGE, f"function {name}", choice,
                            f"{len(plan.layouts)} non-default tensors", data)


def _unrestricted(g, model, plan) -> str:
    """The report line of the plan the model finds when explicit transforms are allowed."""
    penalty = model.conversion_penalty
    object.__setattr__(model, "conversion_penalty", 0.0)
    free = plan_layouts(g, model, plan.chains)
    object.__setattr__(model, "conversion_penalty", penalty)
    extra = sorted(set(free.layouts.items()) - set(plan.layouts.items()))
    return (f"unrestricted plan (explicit transforms allowed, not applied): "
            f"{len(free.layouts)} non-default tensors, modelled {free.cost * 1e6:.1f}us; "
            + ("differs on: " + ", ".join(f"{t}{list(lay)}" for t, lay in extra[:12])
               if extra else "same layouts"))


def report(layout_pass: FluidMLLayout) -> str:
    """Chosen layouts with reasons, per function (for ``fluidml-tvm compile --report``)."""
    return dec.render(layout_pass.decisions)


def explain(mod: tvm.IRModule, target=None, options=None, model=None) -> str:
    """The layout report of ``mod`` (Relax, before legalization) without changing it."""
    p = FluidMLLayout(target, options, apply=False, model=model)
    if target is not None:
        with tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target:
            p(mod)
    else:
        p(mod)
    return report(p)


def make_model(target=None, options=None, conversion_penalty: float = 0.0, measure: bool = True):
    """The cost model ``options.cost`` names (``analytic`` when measuring is impossible).

    ``measure=False``: cached measurements only, analytic terms for the rest (no compile time
    spent timing kernels, e.g. when the plan is only reported).
    """
    from ...schedules.measure import can_measure

    options = options or Options()
    if options.cost == "analytic":
        return AnalyticCost(conversion_penalty=conversion_penalty)
    if target is None:
        target = tvm.target.Target.current(allow_none=True)
    elif not isinstance(target, tvm.target.Target):
        target = tvm.target.Target(target)
    if target is None or target.kind.name != "llvm" or not can_measure(target):
        log.info("layout: target cannot be measured here; analytic costs")
        return AnalyticCost(conversion_penalty=conversion_penalty)
    db = None
    if options.cache_dir:
        from ...costdb import CostDB

        db = CostDB(options.cache_dir)
    if options.cost == "learned":
        from .learned import LearnedCost

        return LearnedCost(target, options, db, measure, conversion_penalty=conversion_penalty)
    return MeasuredCost(target, options, db, measure, conversion_penalty=conversion_penalty)
