"""Measured and learned layout costs: time each (kernel, layouts) variant with the schedules.

:class:`MeasuredCost` is :class:`~.layout_cost.AnalyticCost` whose matmul and transpose terms are
on-device timings: the variant's PrimFunc (the same te compute the rewrite emits) gets the
FluidML schedules (:class:`fluidml_tvm.schedules.FluidMLSchedule`) and is timed on this host by
:func:`fluidml_tvm.schedules.measure.time_funcs`. Timings go to the shared sqlite cache
(:class:`fluidml_tvm.costdb.CostDB`, rule ``layout``), so a variant is measured once per
(target, threads, shape, layouts), across models and processes. Where the target cannot run on
this host, the analytic term stays. :class:`LearnedCost` predicts variants that are not in the
cache with an XGBoost model trained on the cached ones (:mod:`.layout_learned`).

What is measured: the bare matmul (no fused epilogue), with the best of up to 3 of the schedules'
tiles (their own measured choice, cached) and constant operands passed as constants, so they are
packed offline as in the real pipeline. A variant in a non-default layout must beat the default by
:attr:`MeasuredCost.margin`; elementwise/opaque kernels keep their analytic terms. Within a
bounded tune budget variants take the schedules' cached or analytic tile, and a node the budget
does not reach keeps the default layouts (:meth:`prepare`).
"""

from __future__ import annotations

import logging
import math

import tvm
from tvm import te

from ...costdb import target_key
from .cost import AnalyticCost
from .layouts import compose, identity, inverse, is_blocked, moves_data, phys_shape

log = logging.getLogger("fluidml_tvm.layout")


def matmul_variant(a_shape, b_shape, out_shape, la, lb, lo, dtype="float32"):
    """The PrimFunc the rewrite emits for a matmul with layouts ``la``, ``lb``, ``lo``."""
    from .kernels import permuted_matmul

    a = te.placeholder(phys_shape(a_shape, la), dtype, "A")
    b = te.placeholder(phys_shape(b_shape, lb), dtype, "B")
    c = permuted_matmul(a, b, la, lb, lo, a_shape, b_shape, out_shape, dtype)
    return te.create_prim_func([a, b, c])


def transpose_variant(shape, perm, dtype="float32"):
    """A transpose kernel: out dim p = in dim ``perm[p]``."""
    x = te.placeholder(tuple(shape), dtype, "X")
    out = te.compute(phys_shape(shape, perm),
                     lambda *i: x[tuple(i[inverse(perm)[d]] for d in range(len(perm)))],
                     name="T_transpose")
    return te.create_prim_func([x, out])


def _with_constants(func, consts):
    """A module where a Relax caller passes constants for params ``consts`` of ``func``, so the
    schedules treat them as the model's weights (packed offline, as in the real pipeline)."""
    import numpy as np
    from tvm import relax

    bb = relax.BlockBuilder()
    gv = bb.add_func(func, "k")
    ps = func.params
    ins = [relax.Var(f"p{i}", relax.TensorType([int(d) for d in p.ty.shape], str(p.ty.dtype)))
           for i, p in enumerate(ps[:-1]) if i not in consts]
    args, it = [], iter(ins)
    for i, p in enumerate(ps[:-1]):
        shape = [int(d) for d in p.ty.shape]
        args.append(relax.const(np.zeros(shape, str(p.ty.dtype))) if i in consts else next(it))
    out = ps[-1].ty
    with bb.function("main", ins):
        res = bb.emit(relax.call_tir(gv, args, relax.TensorType(
            [int(d) for d in out.shape], str(out.dtype))))
        bb.emit_func_output(res)
    return bb.get()


def reshape_transpose_variant(src, mid, perm, after, dtype="float32"):
    """``reshape(src -> mid)``, transpose by ``perm``, then ``reshape(-> after)`` if given: the
    kernel FuseOps makes of a permute and its neighbouring reshape."""
    from tvm import topi

    x = te.placeholder(tuple(src), dtype, "X")
    y = topi.reshape(x, tuple(mid)) if tuple(mid) != tuple(src) else x
    y = topi.transpose(y, list(perm))
    if after is not None:
        y = topi.reshape(y, tuple(after))
    return te.create_prim_func([x, y])


def schedule_and_time(funcs: list, target, options, timings: bool = False) -> list:
    """Seconds per call of each PrimFunc with the FluidML schedules (None where it failed);
    ``timings``: :class:`~fluidml_tvm.schedules.measure.Timing` objects (with the machine load).

    Items are PrimFuncs or ``(PrimFunc, constant param indices)``.
    """
    import dataclasses

    from ... import tuning
    from ...schedules import FluidMLSchedule
    from ...schedules.measure import measure_funcs

    # each variant gets the schedules' own choice among a few measured tiles (cached), so the
    # default and the permuted variants are compared at their best, as the pipeline runs them;
    # within a bounded tune budget the schedules' cached choice, else their analytic one (a
    # variant then costs one build and its timing: the margin absorbs the difference)
    options = dataclasses.replace(options, tune_trials=min(options.tune_trials, 3))
    if not tuning.for_options(options).unbounded:
        options = dataclasses.replace(options, cost="learned")
    done = []
    for item in funcs:
        f, consts = item if isinstance(item, tuple) else (item, ())
        if consts:
            mod = _with_constants(f, set(consts))
        else:
            mod = tvm.IRModule({"k": f.with_attr("global_symbol", "k")})
        with target:
            mod = FluidMLSchedule(target, options)(mod)
        prims = [g for g, v in mod.functions_items() if isinstance(v, tvm.tirx.PrimFunc)]
        done.append(mod[prims[0]].with_attr("global_symbol", "main"))
    found = measure_funcs(done, target, min_repeat_ms=10, repeat=3)
    return found if timings else [t.seconds for t in found]


# The cache's rule of nodes a tune budget left unmeasured (the next compile keeps them so; one
# that re-tunes or has no budget limit measures them).
SKIPPED = "layout_skipped"

# Bumped when a schedule rule changes the kernels a key times, so older cached timings are not
# reused: 2 = tiled transposes and the packed-order copy of K-innermost B (2026-11-26).
KERNELS_VERSION = 2


def _key(kind, *parts) -> str:
    key = kind + ":" + "|".join(",".join(map(str, p)) for p in parts)
    if kind in ("transpose", "rtranspose", "transposer"):
        key += f"|{KERNELS_VERSION}"  # a numeric part: layout_learned.features parses keys
    return key


def _mm_key(ts, o, la, lb, lo) -> str:
    """A matmul variant: shapes, layouts and which operands are constants (packed offline)."""
    consts = tuple(j for j, t in enumerate(ts) if t.kind == "const")
    return _key("matmul", ts[0].shape, ts[1].shape, o.shape, la, lb, lo, consts,
                (3, KERNELS_VERSION))


class MeasuredCost(AnalyticCost):
    """Analytic model with measured matmul and transpose kernels (see the module docstring).

    Call :meth:`prepare` with the graph and its candidates before planning: it measures every
    variant the DP can ask for in one batch (cached). Unmeasurable variants keep the analytic term.
    """

    name = "measured"
    # a variant that reads/writes a non-default layout must beat the default by this fraction:
    # timings on a shared machine are noisy, and a flip-flopping plan is worse than none
    margin = 0.1

    def __init__(self, target, options, db=None, measure: bool = True,
                 conversion_penalty: float = 0.0):
        super().__init__(conversion_penalty=conversion_penalty)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "db", db)
        object.__setattr__(self, "measure", measure)
        object.__setattr__(self, "table", {})
        object.__setattr__(self, "loaded", set())  # variants known only from loaded runs
        object.__setattr__(self, "unmeasured", set())  # nodes the tune budget did not reach
        object.__setattr__(self, "tkey", target_key(target))

    def __hash__(self):
        return id(self)

    # -- variants the DP may ask for ----------------------------------------------------------
    def variants(self, g, cands) -> dict:
        """``{key: make}`` of every variant the DP may ask for (all nodes)."""
        return {k: v for _, group in self.variant_groups(g, cands) for k, v in group.items()}

    def variant_groups(self, g, cands) -> list[tuple[int, dict]]:
        """``[(node index, {key: make})]``: each node's variants, measured all or none."""
        from .cost import op_kind

        out = []
        for i, n in enumerate(g.nodes):
            kind = op_kind(g, i)
            group = {}
            if kind == "matmul":
                ts = [g.tensors[t] for t in n.inputs]
                o = g.tensors[n.output]
                consts = tuple(j for j, t in enumerate(ts) if t.kind == "const")
                for la in cands[n.inputs[0]]:
                    for lb in cands[n.inputs[1]]:
                        for lo in cands[n.output]:
                            k = _mm_key(ts, o, la, lb, lo)
                            group[k] = lambda ts=ts, o=o, la=la, lb=lb, lo=lo, c=consts: (
                                matmul_variant(ts[0].shape, ts[1].shape, o.shape, la, lb, lo,
                                               o.dtype), c)
            elif kind == "conv":
                from .conv import conv_key, conv_variant, is_depthwise
                from .layouts import CONV_LAYOUTS

                dw = is_depthwise(g, i)
                for lx in cands[n.inputs[0]]:
                    for lo in cands[n.output]:
                        if (lx in CONV_LAYOUTS and lo in CONV_LAYOUTS) or (not dw and (
                                is_blocked(lo) and (lx == identity(4) or is_blocked(lx)))):
                            group[conv_key(g, i, lx, lo)] = (
                                lambda i=i, lx=lx, lo=lo: (conv_variant(g, i, lx, lo), (1,)))
            elif kind == "permute" and g.tensors[n.inputs[0]].kind != "const":
                for lx in cands[n.inputs[0]]:
                    for lo in cands[n.output]:
                        key, make = self._transpose(g, i, lx, lo)
                        if key is not None:
                            group[key] = make
            if group:
                out.append((i, group))
        return out

    def _transpose(self, g, i, lx, lo):
        """Key and builder of permute node ``i``'s kernel for layouts ``lx -> lo``, fused with
        the reshape that feeds it or follows it, as FuseOps will fuse them (None: an alias)."""
        n = g.nodes[i]
        x = g.tensors[n.inputs[0]]
        q = compose(inverse(lx), compose(n.attrs["axes"], lo))
        shape = phys_shape(x.shape, lx)
        if not moves_data(q, shape):
            return None, None
        dt = x.dtype
        p = g.producer.get(n.inputs[0])
        if p is not None and g.nodes[p].op == "relax.reshape" and lx == identity(len(lx)):
            src = g.tensors[g.nodes[p].inputs[0]].shape if g.nodes[p].inputs else None
            if src is not None:
                return _key("rtranspose", src, shape, q), (
                    lambda: reshape_transpose_variant(src, shape, q, None, dt))
        cons = g.consumers.get(n.output, [])
        if len(cons) == 1 and g.nodes[cons[0]].op == "relax.reshape" and lo == identity(len(lo)):
            after = g.tensors[g.nodes[cons[0]].output].shape
            if after is not None:
                return _key("transposer", shape, q, after), (
                    lambda: reshape_transpose_variant(shape, shape, q, after, dt))
        return _key("transpose", shape, q), lambda: transpose_variant(shape, q, dt)

    def prepare(self, g, cands) -> int:
        """Measure (or read from the cache) the variants; returns how many were measured.

        Within the tune budget (:mod:`fluidml_tvm.tuning`, at most ``LAYOUT_SHARE`` of it) each
        node's variants are measured together, memory-bound nodes first; a node the budget does
        not reach keeps the default layouts (:meth:`_unmeasured`) and is remembered
        (:data:`SKIPPED`) for the next compile; one with ``fluidml.retune`` or no budget limit
        measures it. A variant cached only from a loaded machine (a 30 us transpose was once
        cached at 13 ms) is used as it is, measured again on ``fluidml.retune`` up to
        ``REMEASURE_ATTEMPTS`` times; its time is the best quiet measurement, else the best.
        """
        from ... import tuning

        session = tuning.for_options(self.options)
        todo_groups = []
        seen = set()  # a variant of several nodes (identical layers) is measured once
        for i, group in self.variant_groups(g, cands):
            todo = {}
            for k, make in group.items():
                tries = self._cached(k, session) if k not in seen else None
                if tries is not None and self.measure:
                    todo[k] = (make, tries)
                seen.add(k)
            if todo:
                todo_groups.append((i, todo))
        if not todo_groups:
            return 0
        # memory-bound nodes first (lowest FLOPs per byte): where a layout decides how a kernel
        # walks memory it can pay (a 3-channel first conv writing NHWC, attention reading K
        # transposed); compute-bound ones run alike in any layout (VGG's 64-512 channel convs
        # within 2%, under the margin). Cheap nodes also take little of the budget each.
        todo_groups.sort(key=lambda it: self._intensity(g, it[0]))
        done = 0
        again = session.retune or session.unbounded
        with session.share(tuning.LAYOUT_SHARE):
            for i, todo in todo_groups:
                node = min(todo)  # the node's id in the cache: its first variant
                if (not again and self.db is not None
                        and self.db.measured(self.tkey, SKIPPED, node)):
                    self.unmeasured.add(i)  # an earlier compile's budget left it: still so
                    continue
                moved = sum(g.tensors[t].nbytes for t in (*g.nodes[i].inputs, g.nodes[i].output))
                if not session.affords(session.estimate(len(todo), "layout", moved)):
                    session.skip("layout")
                    self.unmeasured.add(i)
                    if self.db is not None:
                        self.db.record(self.tkey, SKIPPED, node, {"node": node}, 0.0)
                    continue
                done += self._measure(todo, session, moved)
        if self.unmeasured:
            log.info("layout: tune budget spent; %d nodes keep their analytic costs",
                     len(self.unmeasured))
        return done

    def _intensity(self, g, i: int) -> float:
        """Node ``i``'s FLOPs per byte moved in the analytic model (0: a data movement)."""
        from .conv import conv_flops
        from .cost import op_kind

        n, kind = g.nodes[i], op_kind(g, i)
        moved = g.tensors[n.output].nbytes + sum(g.tensors[t].nbytes for t in n.inputs)
        flops = conv_flops(g, i) if kind == "conv" else 0.0
        if kind == "matmul":
            flops = 2.0 * g.tensors[n.inputs[0]].shape[-1] * math.prod(g.tensors[n.output].shape)
        return flops / max(1, moved)

    def _cached(self, k: str, session) -> int | None:
        """Fill ``table[k]`` from the cache; None when that settles it, else the number of
        earlier measurements (0: never measured) of a variant to measure."""
        from ...costdb import NOISY_LOAD, REMEASURE_ATTEMPTS

        if k in self.table and k not in self.loaded:
            return None
        hit = self.db.measured(self.tkey, "layout", k, with_load=True) \
            if self.db is not None else {}
        # rows from before the load was recorded (no "attempt") count as loaded
        hit = {c: (sec, ld if '"attempt"' in c else 1.0) for c, (sec, ld) in hit.items()}
        if not hit:
            return 0
        quiet = [sec for sec, ld in hit.values() if ld <= NOISY_LOAD]
        self.table[k] = min(quiet or [sec for sec, _ in hit.values()])
        if quiet:
            self.loaded.discard(k)
            return None
        self.loaded.add(k)
        if session.retune and len(hit) < REMEASURE_ATTEMPTS:
            return len(hit)
        return None

    def _measure(self, todo: dict, session, nbytes: int = 0) -> int:
        """Time the variants ``{key: (make, tries)}`` of one node; record them."""
        from ...costdb import NOISY_LOAD

        log.info("layout: measuring %d kernel variants", len(todo))
        keys = list(todo)
        with session.measuring("layout", kernels=len(keys), candidates=len(keys), nbytes=nbytes):
            found = schedule_and_time([todo[k][0]() for k in keys], self.target, self.options,
                                      timings=True)
        for k, t in zip(keys, found):
            if t.seconds is None:
                continue
            old = self.table.get(k)
            if t.load <= NOISY_LOAD:  # a quiet measurement settles it
                self.table[k] = t.seconds
                self.loaded.discard(k)
            else:
                self.table[k] = t.seconds if old is None else min(old, t.seconds)
                self.loaded.add(k)
            if self.db is not None:
                self.db.record(self.tkey, "layout", k, {"variant": k, "attempt": todo[k][1]},
                               t.seconds, load=t.load)
        return len(keys)

    # -- T_n -----------------------------------------------------------------------------------
    def matmul(self, g, i, lays, lout):
        n = g.nodes[i]
        ts = [g.tensors[t] for t in n.inputs]
        o = g.tensors[n.output]
        t = self.table.get(_mm_key(ts, o, lays[0], lays[1], lout))
        plain = all(lay == identity(len(lay)) for lay in (*lays, lout))
        if t is None:
            return self._unmeasured(i, super().matmul(g, i, lays, lout), plain)
        return self.launch + (t if plain else t * (1 + self.margin))

    def conv(self, g, i, lin, lout):
        from .conv import conv_key

        t = self.table.get(conv_key(g, i, lin, lout))
        plain = lin == identity(4) and lout == identity(4)
        if t is None:
            return self._unmeasured(i, super().conv(g, i, lin, lout), plain)
        return t if plain else t * (1 + self.margin)

    def _unmeasured(self, i: int, analytic: float, plain: bool) -> float:
        """A variant without a measurement: its analytic term; a non-default one of a node the
        budget left unmeasured is never taken (10 s: no layout change without a measurement)."""
        return analytic if plain or i not in self.unmeasured else analytic + 10.0

    def node(self, g, i, layouts):
        from .cost import op_kind

        n = g.nodes[i]
        blocked = any(is_blocked(layouts.get(t)) for t in (n.output, *n.inputs))
        if op_kind(g, i) == "permute" and not blocked:
            x, o = g.tensors[n.inputs[0]], g.tensors[n.output]
            if x.kind == "const":  # folded at compile time: no kernel at run time
                return 0.0
            lx = layouts.get(n.inputs[0]) or identity(len(x.shape))
            lo = layouts.get(n.output) or identity(len(o.shape))
            key, _ = self._transpose(g, i, lx, lo)
            plain = lx == identity(len(lx)) and lo == identity(len(lo))
            t = self.table.get(key) if key is not None else 0.0
            if t is None:
                t = self.transpose(o.nbytes) - self.launch
            return self._unmeasured(i, self.launch + t if key is not None else 0.0, plain)
        return super().node(g, i, layouts)


