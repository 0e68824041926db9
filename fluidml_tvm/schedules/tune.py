"""The schedule stage's measuring, for all kernels of a module at once, within the tune budget.

The stage first finds each kernel's rule and candidates (:class:`Pending`), then :func:`tune`
decides every measuring rule's config:

1. identical kernels (same cache key, :func:`.choose.key`: structure, shapes and dtypes, not
   names) form one workload, decided once for all of them;
2. a workload the cache knows (this model before, another model, imported tuning records) takes
   the cached choice: nothing measured;
3. the rest that are worth measuring (:func:`.choose.worth`) are ranked by their share of the
   modelled run time (:meth:`Pending.modelled_seconds`: FLOPs at the target's peak or bytes at
   memory speed, whichever is slower, times the calls per run) per predicted second of
   measuring (:meth:`fluidml_tvm.tuning.TuneSession.estimate`: a build and timing per
   candidate, plus random inputs in proportion to the kernel's bytes), and measured in that
   order while the budget affords the next one. (VGG-11's classifier, 411 MB of weight, has the
   largest modelled share but took 14 s to measure, all but 0.1 s making its random inputs: it
   came first and took the whole budget; ranked per second, its convolutions go first);
4. what is left takes the rule's analytic first candidate, marked ``budget`` in its decision
   and remembered in the cache (a warm compile decides the same without measuring; a compile
   with ``--retune`` or without a budget limit measures it).

Progress (kernels done / total, budget left) goes through the session.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import tvm
from tvm import relax

from ..costdb import target_key
from . import fast_math
from .choose import (
    Choice,
    left_to_model,
    lookup,
    measure_candidates,
    param_bytes,
    timed,
    worth,
)

log = logging.getLogger("fluidml_tvm.schedules")

# The roofline of the ranking model: fp32 FLOPs per cycle and core (two FMA units, a vector
# each) at a nominal clock, and a streaming bandwidth. Only the order of kernels depends on it.
_CLOCK_HZ = 3e9
_BANDWIDTH = 10e9
_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


@dataclass
class Pending:
    """A kernel whose rule applies and has candidates, before its config is chosen."""

    kernel: str
    func: object
    rule: object
    rule_index: int
    match: object
    candidates: list
    ctx: object
    reasons: list = field(default_factory=list)  # why each better rule did not apply
    flops: float = 0.0
    workload: str = ""  # the cache key (choose.key)
    calls: int = 1
    choice: Choice | None = None
    shared_with: str = ""  # another kernel of the same workload that was decided for both

    def build(self, config: dict):
        """A candidate as it will run: with the fast exp/erf when they are on."""
        built = self.rule.build(self.func, self.match, config, self.ctx)
        return fast_math.apply(built) if self.ctx.options.fast_math else built

    def nbytes(self) -> int:
        return param_bytes(self.func)

    def modelled_seconds(self) -> float:
        """The ranking model's time of the kernel in one run: FLOPs at the CPU's vector peak or
        its parameters' bytes at streaming bandwidth, whichever is slower, times its calls."""
        cpu = self.ctx.cpu
        peak = cpu.lanes(32) * 4 * _CLOCK_HZ * max(1, cpu.num_cores or 1)
        return max(self.flops / peak, self.nbytes() / _BANDWIDTH) * max(1, self.calls)


def call_counts(mod) -> dict[str, int]:
    """``call_tir`` sites per PrimFunc name in the module's Relax functions."""
    out: dict[str, int] = {}
    for _, f in mod.functions_items():
        if not isinstance(f, relax.Function):
            continue

        def visit(e):
            if isinstance(e, relax.Call) and e.op.same_as(_CALL_TIR):
                name = e.args[0].name_hint
                out[name] = out.get(name, 0) + 1

        relax.analysis.post_order_visit(f, visit)
    return out


def tune(pending: list[Pending], session, measure_ok: bool) -> None:
    """Set ``choice`` of every :class:`Pending` (see the module docstring)."""
    if not pending:
        return
    first = pending[0].ctx
    tkey = target_key(first.target, first.cpu.key())
    db = first.db
    groups: dict[tuple, list[Pending]] = {}
    for p in pending:
        groups.setdefault((p.rule.name, p.workload), []).append(p)
    todo = []
    for (rule, wkey), ps in groups.items():
        session.use("choices", tkey, rule, wkey)
        found = lookup(tkey, rule, wkey, db, session)
        if found is None and measure_ok and worth(ps[0].flops, ps[0].candidates):
            todo.append(ps)
            continue
        _assign(ps, found or Choice(ps[0].candidates[0]))
    share = {id(ps): sum(p.modelled_seconds() for p in ps) for ps in todo}

    def cost(ps):  # the predicted seconds of measuring a workload
        return session.estimate(len(timed(ps[0].candidates, session)), nbytes=ps[0].nbytes())

    todo.sort(key=lambda ps: -share[id(ps)] / cost(ps))
    total = len(todo)
    for done, ps in enumerate(todo):
        p = ps[0]
        n = len(timed(p.candidates, session))
        if not session.affords(cost(ps)):
            log.info("%s: tune budget spent; the analytic choice", p.kernel)
            _assign(ps, left_to_model(tkey, p.rule.name, p.workload, p.candidates, db, session))
            session.cover("schedule", 0.0, share[id(ps)])
            continue
        session.progress(done, total, f"measuring {p.kernel} ({n} candidates of {p.rule.name})")
        got = measure_candidates(p.kernel, p.rule.name, tkey, p.workload, p.candidates, p.build,
                                 p.flops, p.ctx.target, db, session, nbytes=p.nbytes())
        _assign(ps, got or Choice(p.candidates[0]))
        session.cover("schedule", share[id(ps)], share[id(ps)])
    if total:
        session.progress(total, total, "done")


def _assign(ps: list[Pending], choice: Choice) -> None:
    """One choice for every kernel of a workload; only the first counts the measuring."""
    ps[0].choice = choice
    for p in ps[1:]:
        p.shared_with = ps[0].kernel
        p.choice = Choice(choice.config, 0, choice.seconds, choice.note,
                          source=choice.source if choice.source != "measured" else "cached",
                          rank=choice.rank)
