"""``FluidMLSchedule``: give every PrimFunc of a module a CPU schedule.

Runs after LegalizeOps/FuseOps/FuseTIR. For each PrimFunc not yet marked ``tirx.is_scheduled``
the rules are tried in order; the first that applies wins:

1. ``matmul``   (:mod:`.matmul`) - matmul/dense/batch-matmul with prologues and epilogues.
   Candidate tiles and loop orders are compiled and timed on this machine (``tune_trials`` of
   them), the fastest is kept in the measurement database (:mod:`fluidml_tvm.costdb`) under
   (target, threads, kernel structural hash, shape), so a second compile measures nothing.
   When B is a constant at every call site the PrimFunc takes B packed ``[N/nr, K, nr]`` and
   the Relax caller's constant is packed here, at compile time.
2. ``conv2d``   (:mod:`.conv2d`) - direct convolutions (NCHW/NHWC, any stride);
   ``conv_pool`` (:mod:`.conv_pool`) first, for a convolution fused with its max-pool, and
   ``conv2d_nchwc`` (:mod:`.conv2d_nchwc`) before both, for a convolution the layout stage put
   in the blocked ``NCHW[b]c`` layout.
   ``depthwise`` (:mod:`.depthwise`) - depthwise convolutions (``group = C``), any stride
   (switched off by ``fluidml.schedule_off=depthwise``).
3. ``reduction`` (:mod:`.reduction`) - softmax, LayerNorm and any other reduction.
4. ``injective`` (:mod:`.injective`) - everything without a reduction.

Every decision is kept in :attr:`FluidMLSchedule.decisions` with its reason (and, as text, in the
module attribute ``fluidml.schedule_report``); a PrimFunc that no rule schedules is reported by
name (``warnings.warn`` and the ``fluidml_tvm.schedules`` logger), never silently left naive.
Dynamic-shape kernels fall to the generic rules.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx

from ..costdb import REMEASURE_ATTEMPTS
from ..decisions import Decision as Record
from ..decisions import attach
from ..options import Options
from . import conv2d, conv2d_nchwc, conv_pool, depthwise, fast_math
from . import matmul as mm
from .injective import schedule_injective
from .measure import QUIET_LOAD, can_measure, measure_funcs
from .reduction import schedule_reduction
from .target_info import CPUInfo, cpu_info

log = logging.getLogger("fluidml_tvm.schedules")

# Kernels smaller than this (2*64^3 FLOPs) take the analytic first choice: measuring them costs
# more compile time than any choice could save at run time.
MEASURE_MIN_FLOPS = 2 * 64**3


@dataclass
class Decision:
    """What happened to one PrimFunc."""

    kernel: str
    rule: str  # "matmul", "conv2d", "reduction", "injective", "none", "skipped"
    reason: str
    config: dict = field(default_factory=dict)
    measured: int = 0  # candidates timed for this decision (0: from the cache or analytic)
    seconds: float = 0.0

    def __str__(self) -> str:
        return str(self.record())

    def record(self) -> Record:
        reason = self.reason + (f" [measured {self.measured} candidates]" if self.measured else "")
        return Record("schedule", self.kernel, self.rule, reason,
                      {"config": self.config, "measured": self.measured, "seconds": self.seconds})


@tvm.transform.module_pass(opt_level=0, name="FluidMLSchedule")
class FluidMLSchedule:
    """Schedule every unscheduled PrimFunc of an IRModule for a CPU target.

    Parameters
    ----------
    target
        The llvm target (a ``Target`` or its dict/tag); ``None`` uses ``Target.current()``.
    options
        :class:`fluidml_tvm.options.Options` (``tune_trials``, ``cost``, ``cache_dir``).

    Reads PrimFuncs and the Relax functions calling them (to know which arguments are
    constants); rewrites the PrimFuncs and, for packed matmul weights, the constants passed at
    their call sites. Non-llvm targets are left alone (GPU kernels need GPU schedules).
    """

    def __init__(self, target=None, options: Options | None = None):
        self.target = target
        self.options = options or Options()
        self.decisions: list[Decision] = []

    # -- pass entry --------------------------------------------------------------------------
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
        fast_math.register()  # vectorizable erf/exp for GELU and softmax (fast_math.py)
        self.decisions = []
        consts = _constant_args(mod)
        db = None
        # "measured": look up, else measure and record. "learned": no model is trained yet, so
        # earlier measurements are used where the cache has them, the analytic choice elsewhere.
        # "analytic": the first candidate, no database.
        if self.options.cost in ("measured", "learned") and self.options.cache_dir:
            from ..costdb import CostDB

            db = CostDB(self.options.cache_dir)
        measure_ok = self.options.cost == "measured" and can_measure(target)
        packs: dict[str, dict[int, tuple]] = {}
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                self.decisions.append(Decision(gv.name_hint, "skipped", "already scheduled"))
                continue
            name = gv.name_hint
            new, dec, pack = self._schedule_one(
                name, func, target, cpu, consts.get(name, {}), db, measure_ok
            )
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
            mod = _pack_constants(mod, packs)
        if db is not None:
            db.close()
        if any(d.measured for d in self.decisions):
            n = sum(1 for d in self.decisions if d.measured)
            _progress(f"measured {n} kernels\n")
        # the per-kernel decisions travel with the module (read them with a pass instrument)
        return attach(mod, "schedule", [d.record() for d in self.decisions])

    # -- one kernel --------------------------------------------------------------------------
    def _schedule_one(self, name, func, target, cpu: CPUInfo, const_args, db, measure_ok):
        reasons = []
        try:
            match, why = mm.analyze(func)
        except Exception as err:  # noqa: BLE001
            match, why = None, f"analysis failed: {err}"
        if match is not None:
            pack_param = match.b_param is not None and const_args.get(match.b_param, False)
            try:
                out = self._matmul(name, func, match, target, cpu, pack_param, db, measure_ok)
                if out is not None:
                    return out
                reasons.append("matmul: no tile divides the shape")
            except Exception as err:  # noqa: BLE001
                reasons.append(f"matmul: {type(err).__name__}: {str(err)[:200]}")
        else:
            reasons.append(f"matmul: {why}")
        try:  # a conv the layout stage put in the blocked NCHW[b]c layout
            out, why = self._nchwc(name, func, target, cpu, db, measure_ok)
        except Exception as err:  # noqa: BLE001
            out, why = None, f"{type(err).__name__}: {str(err)[:200]}"
        if out is not None:
            return out
        if why and not why.startswith("no conv2d_nchwc"):
            reasons.append(f"conv2d_nchwc: {why}")
        try:  # a conv fused with its max-pool (passes/fuse_conv_pool.py)
            out, why = conv_pool.rule(self, name, func, target, cpu, const_args, db, measure_ok)
        except Exception as err:  # noqa: BLE001
            out, why = None, f"{type(err).__name__}: {str(err)[:200]}"
        if out is not None:
            return out
        if why:
            reasons.append(f"conv_pool: {why}")
        try:
            out, why = self._conv2d(name, func, target, cpu, const_args, db, measure_ok)
        except Exception as err:  # noqa: BLE001
            out, why = None, f"{type(err).__name__}: {str(err)[:200]}"
        if out is not None:
            return out
        reasons.append(f"conv2d: {why}")
        if self._rule_on("depthwise"):
            try:
                out, why = self._depthwise(name, func, target, cpu, db, measure_ok)
            except Exception as err:  # noqa: BLE001
                out, why = None, f"{type(err).__name__}: {str(err)[:200]}"
            if out is not None:
                return out
            reasons.append(f"depthwise: {why}")
        for rule, fn in (
            ("reduction", schedule_reduction),
            ("injective", schedule_injective),
        ):
            try:
                sch, why = fn(func, cpu)
            except Exception as err:  # noqa: BLE001
                sch, why = None, f"{type(err).__name__}: {str(err)[:200]}"
            if sch is not None:
                if reasons:  # say why the better rules did not apply
                    why += " | not " + "; not ".join(reasons)
                return sch.mod["main"], Decision(name, rule, why), None
            reasons.append(f"{rule}: {why}")
        return None, Decision(name, "none", "; ".join(reasons)), None

    def _choose(self, name, func, rule, workload, cands, build, flops, target, cpu, db, ok):
        """Pick one of ``cands`` (dicts): from the cache, else by measuring each candidate's
        PrimFunc (``build(cfg)``), else the first. Returns (config, candidates measured, s,
        note): ``note`` says when the choice came from loaded measurements (provisional: the
        cache re-measures it at the next compile, see :mod:`fluidml_tvm.costdb`)."""
        threads = os.environ.get("TVM_NUM_THREADS", "default")
        tkey = f"{target}|{cpu.key()}|threads={threads}"
        workload = f"{tvm_ffi.structural_hash(func) & 0xFFFFFFFFFFFF:012x}:{workload}"
        prior = db.choice(tkey, rule, workload) if db is not None else None
        if prior is not None and (not prior["provisional"] or not ok):
            note = ", loaded machine" if prior["noisy"] else ""
            return prior["config"], 0, prior["seconds"], note
        if not (ok and flops >= MEASURE_MIN_FLOPS and len(cands) > 1):
            return cands[0], 0, 0.0, ""
        built = []
        for cfg in cands:
            try:
                built.append((cfg, build(cfg)))
            except Exception as err:  # noqa: BLE001 - a candidate that does not apply
                log.info("%s: candidate %s failed: %s", name, cfg, err)
        log.info("measuring %s: %d candidates", name, len(built))
        _progress(f"measuring {name}: {len(built)} candidates of {rule}")
        timings = measure_funcs([f for _, f in built], target) if built else []
        timings = _confirm_top(built, timings, target)
        measured = 0
        results = {}  # config json -> (seconds, load): this measurement, merged with earlier ones
        for (cfg, _), tm in zip(built, timings):
            if tm.seconds is None:
                continue
            measured += 1
            log.info("  %s %s: %.1f GFLOP/s (others' load %.2f)", name, cfg,
                     flops / tm.seconds / 1e9, tm.load)
            results[_dump(cfg)] = (tm.seconds, tm.load)
            if db is not None:
                db.record(tkey, rule, workload, cfg, tm.seconds, flops, load=tm.load)
        if not results:
            return cands[0], 0, 0.0, ""
        if db is not None and prior is not None:  # a re-measure: earlier rounds count too
            for c, sl in db.measured(tkey, rule, workload, with_load=True).items():
                if c in results:
                    results[c] = sl
        by_key = {_dump(c): c for c in cands}
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
        return by_key[key], measured, seconds, note

    @staticmethod
    def _how(measured, seconds, flops) -> str:
        how = "measured" if measured else ("cached" if seconds else "analytic")
        return f"({how})" + (f", {flops / seconds / 1e9:.1f} GFLOP/s" if seconds else "")

    def _matmul(self, name, func, match, target, cpu, pack_param, db, measure_ok):
        cands = mm.candidates(match, cpu, self.options.tune_trials, b_const=pack_param)
        if not cands:
            return None

        def build(cfg):
            return mm.apply(func, match, mm.MatmulConfig.from_dict(cfg), cpu, pack_param).mod[
                "main"
            ]

        # v2: the candidate set with K-blocked orders first at large K (older choices never saw
        # them: measured again once)
        wl = f"{match.shape_key()}:{'constB' if pack_param else 'B'}:v2"
        cfg, measured, seconds, note = self._choose(
            name, func, "matmul", wl, [c.to_dict() for c in cands], build, match.flops(),
            target, cpu, db, measure_ok,
        )
        chosen = mm.MatmulConfig.from_dict(cfg)
        sch = mm.apply(func, match, chosen, cpu, pack_param)
        reason = f"{match.shape_key()} {chosen.describe()} " + self._how(
            measured, seconds, match.flops()
        ) + note
        pack = None
        if pack_param and chosen.pack:
            pack = {match.b_param: (tuple(match.roles_b), chosen.nv * cpu.lanes(32))}
        dec = Decision(name, "matmul", reason, chosen.to_dict(), measured, seconds)
        return sch.mod["main"], dec, pack

    def _rule_on(self, rule: str) -> bool:
        """Whether ``rule`` is not switched off by ``fluidml.schedule_off`` (a comma list)."""
        off = getattr(self.options, "schedule_off", "") or ""
        return rule not in {r.strip() for r in off.split(",")}

    def _nchwc(self, name, func, target, cpu, db, measure_ok):
        m, why = conv2d_nchwc.analyze(func)
        if m is None:
            return None, why
        cands = conv2d_nchwc.candidates(m, cpu, min(self.options.tune_trials, 4))
        if not cands:
            return None, f"no register tile divides columns {m.x} / blocks {m.fo}"

        return self._tiled(name, func, "conv2d_nchwc", f"f{m.fo}x{m.x}", cands,
                           lambda cfg: conv2d_nchwc.schedule(func, cpu, cfg), m.flops, target,
                           cpu, db, measure_ok), ""

    def _tiled(self, name, func, rule, workload, cands, schedule, flops, target, cpu, db,
               measure_ok):
        """A rule whose candidates are config dicts and ``schedule(cfg) -> (sch, why)``: pick
        one (cached or measured, :meth:`_choose`) and schedule with it."""
        cfg, measured, seconds, note = self._choose(
            name, func, rule, workload, cands, lambda c: schedule(c)[0].mod["main"], flops,
            target, cpu, db, measure_ok,
        )
        sch, why = schedule(cfg)
        why += " " + self._how(measured, seconds, flops) + note
        return sch.mod["main"], Decision(name, rule, why, cfg, measured, seconds), None

    def _depthwise(self, name, func, target, cpu, db, measure_ok):
        m, why = depthwise.analyze(func)
        if m is None:
            return None, why
        nvs = depthwise.candidates(m, cpu, min(self.options.tune_trials, 3))
        if not nvs:
            return None, f"vector axis {m.v_extent} does not suit {cpu.lanes(32)} lanes"

        return self._tiled(name, func, "depthwise", f"v{m.v_extent}s{m.stride}",
                           [{"nv": nv} for nv in nvs],
                           lambda cfg: depthwise.schedule_depthwise(func, cpu, cfg["nv"]),
                           m.flops, target, cpu, db, measure_ok), ""

    def _conv2d(self, name, func, target, cpu, const_args, db, measure_ok):
        m, why = conv2d.analyze(func)
        if m is None:
            return None, why
        # at most 4: a CNN has many distinct conv shapes, each candidate costs a compile, and
        # beyond the 4 best-ranked tiles (2 tiles x with/without reduction blocking) little won
        tiles = conv2d.candidates(m, cpu, min(self.options.tune_trials, 4))
        if not tiles:
            return None, f"no register tile divides channels {m.f} / columns {m.x}"

        def tile(cfg):
            return (cfg["mr"], cfg["nv"], cfg.get("rb", 0))

        def build(cfg):
            return conv2d.schedule_conv2d(func, cpu, const_args, tile(cfg),
                                          fuse_rows=bool(cfg.get("p")))[0].mod["main"]

        cands = [{"mr": mr, "nv": nv, "rb": rb} for mr, nv, rb in tiles]
        workload = f"f{m.f}x{m.x}"
        if self._rule_on("conv1x1"):
            # 1x1 stride-1: one more tile over rows x columns (14x14 and 28x28 maps, where the
            # column count caps the tile) in the race; measured only, never the analytic pick
            extra = [{"mr": mr, "nv": nv, "rb": 0, "p": 1}
                     for mr, nv, _ in conv2d.candidates_pointwise(m, cpu, 1)]
            if extra:  # its own cache entry: switched off, the choice among the rest stands
                cands += extra
                workload += ":p"
        cfg, measured, seconds, note = self._choose(
            name, func, "conv2d", workload, cands, build, m.flops, target, cpu, db,
            measure_ok,
        )
        sch, why, pack = conv2d.schedule_conv2d(func, cpu, const_args, tile(cfg),
                                                fuse_rows=bool(cfg.get("p")))
        why += " " + self._how(measured, seconds, m.flops) + note
        return (sch.mod["main"], Decision(name, "conv2d", why, cfg, measured, seconds), pack), ""


# The fastest few candidates of a first pass are timed again, interleaved, before one is chosen:
# they are often within a few percent, where one lucky round decided (1024^3 on the AVX2 machine
# took a 2x4 tile at 0.83x ORT in one quiet run, a 4x2 one at 0.93-0.95x in the next two).
CONFIRM_TOP = 3
CONFIRM_ROUNDS = 4


def _confirm_top(built, timings, target):
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


def _progress(text: str) -> None:
    """One overwritten status line on an interactive terminal (measuring can take minutes)."""
    if sys.stderr.isatty():
        sys.stderr.write("\r[fluidml] " + text[:100].ljust(100))
        sys.stderr.flush()


# ---- Relax side: which call_tir arguments are constants; packing them -------------------------
_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def _is_const(e) -> bool:
    return isinstance(e, tvm.ir.GenericConst)


def _calls(mod):
    for _, f in mod.functions_items():
        if not isinstance(f, relax.Function):
            continue
        found: list = []

        def visit(e, found=found):
            if isinstance(e, relax.Call) and e.op.same_as(_CALL_TIR):
                found.append(e)

        relax.analysis.post_order_visit(f, visit)
        yield from found


def _constant_args(mod) -> dict[str, dict[int, bool]]:
    """For each PrimFunc called by call_tir: param index -> constant at every call site."""
    out: dict[str, dict[int, bool]] = {}
    for call in _calls(mod):
        gv = call.args[0]
        args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
        slot = out.setdefault(gv.name_hint, {})
        for i, a in enumerate(args):
            slot[i] = slot.get(i, True) and _is_const(a)
    return out


def pack_array(arr: np.ndarray, roles: tuple, nr: int) -> np.ndarray:
    """``arr`` in B's layout (dims with roles b/1/k/n) -> packed ``[rest.., N/nr, K, nr]``;
    a conv weight (roles ``("conv", f/r/1 per dim)``) -> ``[F/nr, other dims.., nr]``."""
    if roles and roles[0] == "conv":
        roles = roles[1:]
        f_ax = roles.index("f")
        t = np.moveaxis(arr, f_ax, 0)
        t = t.reshape(t.shape[0] // nr, nr, *t.shape[1:])
        return np.ascontiguousarray(np.moveaxis(t, 1, -1))
    rest = [i for i, r in enumerate(roles) if r not in ("n", "k")]
    n_ax = roles.index("n")
    k_ax = roles.index("k")
    t = np.transpose(arr, [*rest, n_ax, k_ax])
    lead = t.shape[: len(rest)]
    n, k = t.shape[-2:]
    t = t.reshape(*lead, n // nr, nr, k)
    return np.ascontiguousarray(np.swapaxes(t, -1, -2))


def _pack_constants(mod, packs):
    """Replace each packed PrimFunc (new signature: new GlobalVar) and pack the constants its
    callers pass. ``packs``: name -> (new PrimFunc, {param index: (roles of B's dims, nr)})."""
    new_gvs = {}
    done = []  # (constant, roles, nr, packed): a weight shared by several calls is packed once

    @relax.expr_functor.mutator
    class _Repack(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM visitor name
            call = super().visit_call_(call)
            if not (isinstance(call, relax.Call) and call.op.same_as(_CALL_TIR)):
                return call
            name = call.args[0].name_hint
            if name not in packs:
                return call
            fields = list(call.args[1].fields)
            for idx, (roles, nr) in packs[name][1].items():
                const = fields[idx]
                hit = [p for c, r, n, p in done if c.same_as(const) and (r, n) == (roles, nr)]
                if not hit:
                    arr = pack_array(const.value.numpy(), roles, nr)
                    hit = [relax.const(arr, str(arr.dtype))]
                    done.append((const, roles, nr, hit[0]))
                fields[idx] = hit[0]
            return relax.Call(call.op, [new_gvs[name], relax.Tuple(fields)], call.attrs,
                              call.ty_args, call.span)

    mutator = _Repack(mod)
    for name, (func, _) in packs.items():
        new_gvs[name] = mutator.builder_.add_func(func, name + "_packed")
    for gv, f in mod.functions_items():
        if isinstance(f, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(f))
    out = mutator.builder_.get()
    keep = {gv: f for gv, f in out.functions_items() if gv.name_hint not in packs}
    return tvm.IRModule(keep, attrs=out.attrs, global_infos=out.global_infos)


def report(decisions: list[Decision]) -> str:
    """One line per kernel: which rule scheduled it and why."""
    return "\n".join(str(d) for d in decisions)
