"""``FluidMLResidualOrder``: choose which kernel a residual sum of two projections is fused into.

Contract
--------
Runs on high-level Relax before legalization. It looks for sums of two branches::

    s1 = add(x, A)          s1 used only here
    s2 = add(s1, F)         F the output of a projection: matmul(., W) [+ constant bias]
                            [reshaped]

(GPT-NeoX's parallel residual ``x + attn + mlp``). FuseOps puts ``s2`` into the kernel of the
branch whose elementwise ops come first in binding order. As the importer writes it, the
attention kernel computes ``matmul + b + x + F``, so its input (the attention context) stays
live across the whole MLP branch (or ``F`` across the attention branch). Written as
``add(F, s1)`` with the binding of ``s1`` moved down to right before it (valid: ``s2`` is its only
user), the attention kernel stops at ``x + A`` and the MLP's output kernel adds it: the attention
context dies before the MLP starts, and the MLP's LayerNorm can run late.

Which form is better depends on the graph, so the pass measures instead of guessing: it lowers
the module as given and with every such sum rewritten (legalization, fusion and lowering of the
``fluidml`` pipeline, no schedules) and keeps the rewrite only when the memory planner's
in-place-aware live-set bound is lower. No value changes (floating-point addition is
commutative). The decision and both bounds are kept in :attr:`FluidMLResidualOrder.decision` and
the module attribute ``fluidml.decisions.residual_order`` (:mod:`fluidml_tvm.decisions`).
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax

from ..decisions import Decision, attach, note
from .relax_util import is_op

log = logging.getLogger("fluidml_tvm.residual_order")
STAGE = "residual_order"

_OP = tvm.ir.Op.get
ADD, MATMUL, RESHAPE = _OP("relax.add"), _OP("relax.matmul"), _OP("relax.reshape")


def _candidates(block, value_of, users) -> list:
    out = []
    for b in block.bindings:
        if not is_op(b.value, ADD):
            continue
        s1, f = b.value.args
        if not (isinstance(s1, relax.Var) and is_op(value_of.get(s1), ADD)):
            continue
        if len(users.get(s1, ())) != 1 or not isinstance(s1, relax.DataflowVar):
            continue
        if not isinstance(f, relax.Var):
            continue
        fv = value_of.get(f)
        if is_op(fv, RESHAPE):  # a 2-D projection viewed back as [B, S, N]
            fv = value_of.get(fv.args[0])
        if is_op(fv, ADD) and isinstance(fv.args[1], tvm.ir.GenericConst):
            fv = value_of.get(fv.args[0])  # projection + constant bias
        if is_op(fv, MATMUL):
            out.append(b.var)
    return out


def swap_sums(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """``mod`` with every candidate ``add(s1, F)`` rewritten to ``add(F, s1)``; and their count."""
    out, count = mod, 0
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        blocks, changed = [], False
        for block in func.body.blocks:
            if not isinstance(block, relax.DataflowBlock):
                blocks.append(block)
                continue
            value_of = {b.var: b.value for b in block.bindings}
            users = {v: list(u) for v, u in relax.analysis.udchain(block).items()}
            swap = set(_candidates(block, value_of, users))
            moved = {value_of[v].args[0]: None for v in swap}  # s1: emitted right before s2
            new = []
            for b in block.bindings:
                if b.var in moved:
                    moved[b.var] = b
                    continue
                if b.var in swap:
                    s1, f = b.value.args
                    new.append(moved[s1])
                    b = relax.VarBinding(b.var, relax.op.add(f, s1))
                new.append(b)
            count += len(swap)
            changed |= bool(swap)
            blocks.append(relax.DataflowBlock(new, block.span))
        if changed:
            out = out.clone() if out is mod else out
            f = relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty,
                               func.is_pure, func.attrs, func.span)
            out[gv] = relax.BlockBuilder().normalize(f)
    return out, count


def planned_bound(mod: tvm.IRModule, target) -> int:
    """The memory planner's in-place-aware live-set bound of ``mod`` lowered without schedules
    (summed over functions): TVM's own passes up to the memory slot, then the planner."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    from .legalize import legalize_ops
    from .memory import FluidMLMemoryPlan

    legalize = [legalize_ops(), *cpu_generic.legalize_passes(target)[1:]]
    lower = [*cpu_generic.library_dispatch_passes(target), *legalize,
             *cpu_generic.dataflow_lower_passes(target)]
    with target:
        lowered = tvm.transform.Sequential(lower)(mod)
    planner = FluidMLMemoryPlan(split_outputs=False, stock_fallback=False, random_tries=0)
    planner(lowered)
    return sum(p.bound for p in planner.plans.values())


@tvm.transform.module_pass(opt_level=0, name="FluidMLResidualOrder")
class FluidMLResidualOrder:
    """Swap residual sums ``add(s1, F)`` -> ``add(F, s1)`` when that lowers the planned bound."""

    def __init__(self, target=None):
        self.target = target
        self.decision = ""
        self.bounds: tuple[int, int] | None = None  # (as written, rewritten), bytes

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        swapped, n = swap_sums(mod)
        if n == 0:
            self.decision = "no residual sum of a projection found"
            return attach(mod, STAGE, [note(STAGE, self.decision)])
        target = self.target or tvm.target.Target.current(allow_none=True)
        target = target or tvm.target.Target({"kind": "llvm"})
        keep, swap = planned_bound(mod, target), planned_bound(swapped, target)
        self.bounds = (keep, swap)
        use = swap < keep
        self.decision = (
            f"{n} residual sums add(s1, projection): in-place-aware live-set bound "
            f"{keep} bytes as written, {swap} with the projection's kernel adding the sum; "
            + ("swapped" if use else "kept as written")
        )
        log.info(self.decision)
        record = Decision(STAGE, f"{n} residual sums", "swapped" if use else "kept as written",
                          self.decision, {"bound_as_written": keep, "bound_swapped": swap})
        return attach(swapped if use else mod, STAGE, [record])
