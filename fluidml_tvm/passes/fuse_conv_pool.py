"""``FluidMLFuseConvPool``: memory-driven fusion of conv2d(+bias)(+ReLU) with the max-pool after it.

After LegalizeOps TVM's FuseOps never puts a convolution and a pooling into one kernel (both are
"out-elementwise fusable"), so the convolution's whole output is materialized between them: on
VGG-11 conv1's 64x224x224 fp32 output (12.85 MB) is live beside the pool's output and is the
network's memory peak. This pass runs between FuseOps and FuseTIR and merges the FuseOps group
that computes a convolution (with its bias/ReLU epilogues) with the non-overlapping max-pool
that is the only consumer of its output into one group, which FuseTIR turns into one PrimFunc.
Its schedule (:mod:`fluidml_tvm.schedules.conv_pool`) computes the convolution a few output rows
at a time into a small buffer inside the kernel and pools them at once, so the memory planner
only ever sees the pool's output.

A pair is fused only when the fused kernel can be scheduled that way: the merged group is run
through FuseTIR on its own and the conv_pool rule must accept (and schedule) the result;
otherwise the fused kernel would allocate the whole convolution output inside itself, no better
than before. Every pair found gets a :class:`FusionDecision` with its reason, kept in
:attr:`FluidMLFuseConvPool.decisions` and in the module attribute
``fluidml.decisions.fuse_conv_pool`` (:mod:`fluidml_tvm.decisions`).

Kill switch: ``fluidml.fuse_conv_pool=0`` (``Options(fuse_conv_pool=False)``). The pipeline runs
this pass only when the schedule stage is on (unscheduled, the fused kernel would still hold the
whole convolution output).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tvm
from tvm import relax, tirx

from ..decisions import Decision, attach, note
from .relax_util import CALL_TIR, callee, is_call_tir, static_nbytes, use_counts

log = logging.getLogger("fluidml_tvm.fusion")
STAGE = "fuse_conv_pool"

_CALL_TIR = CALL_TIR
# conv -> conv -> pool: the first convolution is fused only if it costs at most this fraction of
# the second one's FLOPs (it is recomputed for the halo rows: (s + kh - 1) / s = 2x for VGG)
CHAIN_MAX_FLOPS = 0.1


@dataclass
class FusionDecision:
    """One (convolution group, max-pool) pair and what was done with it."""

    producer: str  # the FuseOps group (or kernel) computing the convolution
    pool: str  # the pooling kernel
    fused: str | None  # the fused group's name, None when not fused
    reason: str
    saved_bytes: int = 0  # bytes of the convolution output no longer materialized

    def __str__(self) -> str:
        return str(self.record())

    def record(self) -> Decision:
        choice = f"fused into {self.fused}" if self.fused else "not fused"
        return Decision(STAGE, f"{self.producer} + {self.pool}", choice, self.reason,
                        {"saved_bytes": self.saved_bytes, "fused": self.fused})


@tvm.transform.module_pass(opt_level=0, name="FluidMLFuseConvPool")
class FluidMLFuseConvPool:
    """Merge each conv2d(+epilogue) FuseOps group with the max-pool consuming it (see module doc).

    Parameters
    ----------
    check
        Fuse a pair only if FuseTIR's result is accepted and scheduled by the conv_pool schedule
        rule (default). ``False`` fuses every structurally matching pair (tests).
    """

    def __init__(self, check: bool = True, chain: bool = True):
        self.check = check
        self.chain = chain
        self.decisions: list[FusionDecision] = []

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.decisions = []
        pairs = self._find(mod)  # (func gv, producer binding index, pool binding index, info)
        if not pairs:
            return records(mod, self.decisions)
        accepted = pairs
        if self.check:
            accepted, todo = [], pairs
            while todo:  # a refused conv->conv chain is tried again as a plain conv+pool pair
                fused = relax.transform.FuseTIR()(self._rewrite(mod, todo))
                retry = []
                for p in todo:
                    why = self._check(fused, p)
                    if why is None:
                        accepted.append(p)
                    elif p.get("chain"):
                        name, producer, reason, saved = p.pop("plain")
                        del p["chain"]
                        d = p["decision"]
                        d.fused, d.producer, d.saved_bytes = name, producer, saved
                        d.reason = reason + f" (the chain with the first conv was refused: {why})"
                        p["name"] = name
                        retry.append(p)
                    else:
                        p["decision"].reason = why
                        p["decision"].fused = None
                        p["decision"].saved_bytes = 0
                todo = retry
        mod = self._rewrite(mod, accepted) if accepted else mod
        for d in self.decisions:
            log.info("%s", d)
        return records(mod, self.decisions)

    # -- finding pairs -------------------------------------------------------------------------
    def _find(self, mod) -> list[dict]:
        from ..schedules.rules import conv_pool

        pairs = []
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            if func.attrs is not None and "Primitive" in func.attrs:
                continue
            if not isinstance(func.body, relax.SeqExpr):
                continue
            uses = use_counts(func)
            for bi, block in enumerate(func.body.blocks):
                if not isinstance(block, relax.DataflowBlock):
                    continue
                where = {b.var: i for i, b in enumerate(block.bindings)}
                for j, b in enumerate(block.bindings):
                    value = b.value
                    if not is_call_tir(value):
                        continue
                    pool_gv = value.args[0]
                    pool = mod[pool_gv]
                    if not isinstance(pool, tirx.PrimFunc):
                        continue
                    pm, _ = conv_pool.analyze_pool(pool)
                    if pm is None:
                        continue
                    args = list(value.args[1].fields) if isinstance(
                        value.args[1], relax.Tuple) else []
                    if len(args) != 1 or not isinstance(args[0], relax.Var):
                        continue
                    src = args[0]
                    if src not in where:
                        continue
                    i = where[src]
                    prod = block.bindings[i].value
                    kind, pname = self._producer(mod, prod)
                    if kind is None:
                        self.decisions.append(FusionDecision(
                            callee(prod), pool_gv.name_hint, None,
                            "the pool's input is not computed by a conv2d (+pointwise "
                            "epilogue) kernel"))
                        continue
                    dec = FusionDecision(pname, pool_gv.name_hint, None, "")
                    self.decisions.append(dec)
                    if uses.get(src, 0) != 1:
                        dec.reason = (f"the convolution output has {uses.get(src, 0)} uses "
                                      "(the pool must be its only consumer)")
                        continue
                    saved = static_nbytes(src.ty) or 0
                    name = f"{pname}_{pool_gv.name_hint}"
                    if not name.startswith("fused_"):
                        name = "fused_" + name
                    dec.fused = name
                    dec.saved_bytes = saved
                    out = static_nbytes(b.var.ty) or 0
                    dec.reason = (f"conv output {saved} bytes computed {pm.stride[0]} rows at a "
                                  f"time and pooled in the kernel; only the pool output "
                                  f"({out} bytes) is materialized")
                    pair = dict(gv=gv, block=bi, prod=i, pool=j, kind=kind, name=name,
                                decision=dec)
                    if self.chain:
                        self._chain(mod, block, where, uses, pair)
                    pairs.append(pair)
        return pairs

    def _chain(self, mod, block, where, uses, pair) -> None:
        """A convolution whose only consumer is the fused convolution, and which costs at most
        ``CHAIN_MAX_FLOPS`` of it, is fused too (its rows computed inside the row loop, with a
        halo: recomputed (s + kh - 1) / s times); its output is then never materialized."""
        from ..schedules.rules import conv2d

        prod = block.bindings[pair["prod"]].value
        data = self._args(prod, pair["kind"])[0]
        if not isinstance(data, relax.Var) or data not in where or uses.get(data, 0) != 1:
            return
        k = where[data]
        call1 = block.bindings[k].value
        kind1, name1 = self._producer(mod, call1)
        if kind1 is None:
            return

        def flops(call, kind):
            first = call.args[0] if kind == "kernel" else mod[call.op].body.blocks[0].bindings[
                0].value.args[0]
            m, _ = conv2d.analyze(mod[first])
            return m.flops if m is not None else None

        f1, f2 = flops(call1, kind1), flops(prod, pair["kind"])
        if not f1 or not f2 or f1 > CHAIN_MAX_FLOPS * f2:
            return
        dec = pair["decision"]
        pair["plain"] = (pair["name"], dec.producer, dec.reason, dec.saved_bytes)
        pair["chain"] = (k, kind1)
        pair["name"] = f"{name1}_{pair['name'][len('fused_'):]}"
        if not pair["name"].startswith("fused_"):
            pair["name"] = "fused_" + pair["name"]
        dec = pair["decision"]
        dec.producer = f"{name1} + {dec.producer}"
        dec.fused = pair["name"]
        saved = static_nbytes(data.ty) or 0
        dec.saved_bytes += saved
        dec.reason += (f"; the first convolution's output ({saved} bytes, {f1 / f2:.1%} of the "
                       f"second's FLOPs) is computed inside the row loop too")

    @staticmethod
    def _producer(mod, call) -> tuple[str | None, str]:
        """("group"|"kernel", name) when ``call`` computes a convolution, else (None, "")."""
        from ..schedules.rules import conv2d

        def is_conv(prim):
            try:
                return conv2d.analyze(prim)[0] is not None
            except Exception:  # noqa: BLE001 - analysis of an unexpected kernel
                return False

        if is_call_tir(call):
            prim = mod[call.args[0]]
            if isinstance(prim, tirx.PrimFunc) and is_conv(prim):
                return "kernel", call.args[0].name_hint
            return None, ""
        if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.GlobalVar)):
            return None, ""
        group = mod[call.op]
        if not isinstance(group, relax.Function) or group.attrs is None:
            return None, ""
        if "Primitive" not in group.attrs or "Composite" in group.attrs:
            return None, ""
        body = group.body
        if not (isinstance(body, relax.SeqExpr) and len(body.blocks) == 1):
            return None, ""
        calls = [b.value for b in body.blocks[0].bindings]
        if not calls or not all(is_call_tir(c) for c in calls):
            return None, ""
        first = mod[calls[0].args[0]]
        if not (isinstance(first, tirx.PrimFunc) and is_conv(first)):
            return None, ""
        for c in calls[1:]:  # epilogues: elementwise/broadcast only
            prim = mod[c.args[0]]
            pat = prim.attrs.get("op_pattern") if prim.attrs is not None else None
            if pat is None or int(pat) > 1:
                return None, ""
        return "group", call.op.name_hint

    # -- rewriting -----------------------------------------------------------------------------
    @staticmethod
    def _body(mod, call, kind, data=None):
        """(params, bindings, output var) of a producer's computation; ``data`` (an expression)
        replaces its first input, which is then no parameter."""
        if kind == "group":
            g = relax.utils.copy_with_new_vars(mod[call.op])
            if data is not None:
                g = g.bind_params({g.params[0]: data})
            return list(g.params), list(g.body.blocks[0].bindings), g.body.body
        args = list(call.args[1].fields)
        params = [relax.Var(f"param_{k}", a.ty) for k, a in enumerate(args)]
        inputs = list(params)
        if data is not None:
            params, inputs[0] = params[1:], data
        last = relax.DataflowVar("conv", call.ty)
        return params, [relax.VarBinding(last, relax.Call(
            call.op, [call.args[0], relax.Tuple(inputs)], call.attrs, call.ty_args))], last

    @staticmethod
    def _args(call, kind) -> list:
        return list(call.args) if kind == "group" else list(call.args[1].fields)

    def _group(self, mod, func, p) -> relax.Function:
        block = func.body.blocks[p["block"]]
        prod = block.bindings[p["prod"]].value
        pool_b = block.bindings[p["pool"]]
        attrs = {"Primitive": True}
        if p.get("chain"):
            k, kind1 = p["chain"]
            params, bindings, first = self._body(mod, block.bindings[k].value, kind1)
            params2, bindings2, last = self._body(mod, prod, p["kind"], data=first)
            params, bindings = params + params2, bindings + bindings2
        else:
            params, bindings, last = self._body(mod, prod, p["kind"])
        pc = pool_b.value
        out = relax.Var("gv", pool_b.var.ty)
        bindings.append(relax.VarBinding(out, relax.Call(
            pc.op, [pc.args[0], relax.Tuple([last])], pc.attrs, pc.ty_args)))
        body = relax.SeqExpr([relax.DataflowBlock(bindings)], out)
        return relax.Function(params, body, pool_b.var.ty, True,
                              tvm.ir.make_node("ir.DictAttrs", **attrs))

    def _rewrite(self, mod, pairs) -> tvm.IRModule:
        bb = relax.BlockBuilder(mod)
        made: dict[str, tvm.ir.GlobalVar] = {}
        by_func: dict = {}
        for p in pairs:
            by_func.setdefault(p["gv"], []).append(p)
        replaced = set()
        for gv, ps in by_func.items():
            func = mod[gv]
            blocks = list(func.body.blocks)
            for bi in sorted({p["block"] for p in ps}):
                block = blocks[bi]
                bindings = list(block.bindings)
                drop = set()
                for p in (q for q in ps if q["block"] == bi):
                    if p["name"] not in made:
                        made[p["name"]] = bb.add_func(self._group(mod, func, p), p["name"])
                    prod = bindings[p["prod"]].value
                    args = self._args(prod, p["kind"])
                    if p["kind"] == "group":
                        replaced.add(prod.op)
                    if p.get("chain"):
                        k, kind1 = p["chain"]
                        prod1 = bindings[k].value
                        args = self._args(prod1, kind1) + args[1:]
                        if kind1 == "group":
                            replaced.add(prod1.op)
                        drop.add(k)
                    pool_b = bindings[p["pool"]]
                    bindings[p["pool"]] = relax.VarBinding(
                        pool_b.var, relax.Call(made[p["name"]], args, None, None,
                                               ret_ty=pool_b.var.ty))
                    drop.add(p["prod"])
                blocks[bi] = relax.DataflowBlock(
                    [b for k, b in enumerate(bindings) if k not in drop])
            new = relax.Function(func.params, relax.SeqExpr(blocks, func.body.body),
                                 func.ret_ty, func.is_pure, func.attrs)
            bb.update_func(gv, new)
        out = bb.get()
        # groups no longer called by anyone go away (FuseTIR would keep their PrimFuncs)
        called = set()
        for _, f in out.functions_items():
            if isinstance(f, relax.Function):
                def visit(e, called=called):
                    if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.GlobalVar):
                        called.add(e.op.name_hint)
                relax.analysis.post_order_visit(f, visit)
        keep = {g: f for g, f in out.functions_items()
                if not (g in replaced and g.name_hint not in called)}
        out = tvm.IRModule(keep, attrs=out.attrs, global_infos=out.global_infos)
        return relax.transform.Normalize()(out)

    # -- the schedule must take it ---------------------------------------------------------------
    @staticmethod
    def _check(fused_mod, p) -> str | None:
        from ..schedules.rules import conv_pool
        from ..schedules.target_info import cpu_info

        name = p["name"]
        prim = next((f for g, f in fused_mod.functions_items() if g.name_hint == name), None)
        if not isinstance(prim, tirx.PrimFunc):
            return f"FuseTIR made no kernel {name}"
        target = tvm.target.Target.current(allow_none=True) or tvm.target.Target("llvm")
        try:
            sch, why, _ = conv_pool.schedule_conv_pool(prim, cpu_info(target))
        except Exception as err:  # noqa: BLE001 - the rule failed on this kernel
            return f"the conv_pool schedule failed: {type(err).__name__}: {str(err)[:160]}"
        if sch is None:
            return f"the conv_pool schedule does not apply: {why}"
        return None


def fusion_passes(check: bool = True, chain: bool = True) -> list:
    """``[FluidMLFuseConvPool, FuseTIR, report]`` for the legalize phase's FuseTIR slot; the last
    pass puts the decisions back on the module (FuseTIR drops module attributes)."""
    fuser = FluidMLFuseConvPool(check=check, chain=chain)

    @tvm.transform.module_pass(opt_level=0, name="FluidMLFuseConvPoolReport")
    def _report(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return records(mod, fuser.decisions)

    return [fuser, relax.transform.FuseTIR(), _report]


def records(mod: tvm.IRModule, decisions: list[FusionDecision]) -> tvm.IRModule:
    """``mod`` with the fusion decisions attached (:mod:`fluidml_tvm.decisions`)."""
    found = [d.record() for d in decisions]
    found = found or [note(STAGE, "no convolution followed by a max-pool")]
    return attach(mod, STAGE, found)
