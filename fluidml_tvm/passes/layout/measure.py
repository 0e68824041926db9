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
packed offline as in the real pipeline. Each call is timed cold, the output flushed from the
caches first (``measure_funcs(cold=True)``), as in a model where the output buffer was last
touched a run before: how a layout writes shows only then (SqueezeNet's first conv writing NCHW
283 us warm, 809 us cold; writing NHWC 194 / 219 us; the plan taking it runs 0.84-0.94x).
A conv the Winograd pass computes keeps NCHW, its variants not timed (:attr:`nchw_only`). A
variant in a non-default layout must beat the default by :attr:`MeasuredCost.margin`;
elementwise/opaque kernels keep their analytic terms. Within a bounded tune budget variants take
the schedules' cached or analytic tile, and a node the budget does not reach keeps the default
layouts (:meth:`prepare`); a conv node's variants that keep one layout are measured first, the
ones that change it (where a chain starts or ends) only where a plan takes them (:meth:`refine`).
"""

from __future__ import annotations

import logging
import math

from ...costdb import target_key
from .cost import AnalyticCost, moved_bytes
from .layouts import identity, is_blocked
from .neighbours import estimate_unmeasured, one_of_each_kind_first
from .variants import matmul_key, matmul_variant, permute_variant, schedule_and_time

log = logging.getLogger("fluidml_tvm.layout")


# The cache's rule of nodes a tune budget left unmeasured (the next compile keeps them so; one
# that re-tunes or has no budget limit measures them).
SKIPPED = "layout_skipped"

# The part of the layout's share of a bounded budget kept for the conv variants that change the
# layout, measured where a plan takes them (MeasuredCost.refine).
MIXED_SHARE = 0.2

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
        super().__init__(conversion_penalty=conversion_penalty,
                         inplace_concat=bool(options.memory and options.memory_concat))
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "db", db)
        object.__setattr__(self, "measure", measure)
        object.__setattr__(self, "table", {})
        object.__setattr__(self, "loaded", set())  # variants known only from loaded runs
        object.__setattr__(self, "unmeasured", set())  # nodes the tune budget did not reach
        # within a bounded budget: conv variants that change the layout, measured only when a
        # plan takes them (key -> (make, tries, node)); those the budget refused
        object.__setattr__(self, "deferred", {})
        object.__setattr__(self, "refused", set())
        object.__setattr__(self, "pairs", {})  # conv variant key -> (node, in, out layouts)
        object.__setattr__(self, "share_end", None)  # where the layout share of the budget ends
        # pure variants (one layout in and out) of conv nodes the budget left unmeasured,
        # estimated from their nearest measured neighbour (key -> seconds; :mod:`.neighbours`)
        object.__setattr__(self, "estimated", {})
        object.__setattr__(self, "estimate_notes", [])
        object.__setattr__(self, "tkey", target_key(target))
        # conv nodes Winograd computes in NCHW (:func:`.conv.takes_winograd`): their other
        # variants are refused, never timed (set by the stage, :meth:`keep_nchw`)
        object.__setattr__(self, "nchw_only", frozenset())

    def keep_nchw(self, nodes) -> None:
        """Conv nodes that keep NCHW: only their NCHW -> NCHW variant is timed or taken."""
        object.__setattr__(self, "nchw_only", frozenset(nodes))

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
                            k = matmul_key(ts, o, la, lb, lo)
                            group[k] = lambda ts=ts, o=o, la=la, lb=lb, lo=lo, c=consts: (
                                matmul_variant(ts[0].shape, ts[1].shape, o.shape, la, lb, lo,
                                               o.dtype), c)
            elif kind == "conv":
                from .conv import conv_key, conv_variant, depthwise_offered, is_depthwise
                from .layouts import CONV_LAYOUTS

                dw = is_depthwise(g, i)
                for lx in cands[n.inputs[0]]:
                    for lo in cands[n.output]:
                        if (lx in CONV_LAYOUTS and lo in CONV_LAYOUTS) or (not dw and (
                                is_blocked(lo) and (lx == identity(4) or is_blocked(lx)))):
                            k = conv_key(g, i, lx, lo)
                            if i in self.nchw_only and (lx, lo) != (identity(4), identity(4)):
                                self.refused.add(k)  # Winograd's in NCHW: never taken
                                continue
                            if dw and not depthwise_offered(lx, lo):
                                self.refused.add(k)  # never timed, never taken
                                continue
                            group[k] = (
                                lambda i=i, lx=lx, lo=lo: (conv_variant(g, i, lx, lo), (1,)))
                            self.pairs[k] = (i, lx, lo)
            elif kind == "permute" and g.tensors[n.inputs[0]].kind != "const":
                for lx in cands[n.inputs[0]]:
                    for lo in cands[n.output]:
                        key, make = permute_variant(g, i, lx, lo)
                        if key is not None:
                            group[key] = make
            if group and not (i in self.nchw_only and len(group) == 1):
                out.append((i, group))  # (a lone NCHW variant decides nothing: not timed)
        return out

    def prepare(self, g, cands) -> int:
        """Measure (or read from the cache) the variants; returns how many were measured.

        Within the tune budget (:mod:`fluidml_tvm.tuning`, at most ``LAYOUT_SHARE`` of it) each
        node's variants are measured together, memory-bound nodes first; a node the budget does
        not reach keeps the default layouts (:meth:`_unmeasured`) and is remembered
        (:data:`SKIPPED`) for the next compile; one with ``fluidml.retune`` or no budget limit
        measures it. A variant cached only from a loaded machine (a 30 us transpose was once
        cached at 13 ms) is used as it is, measured again on ``fluidml.retune`` up to
        ``REMEASURE_ATTEMPTS`` times; its time is the best quiet measurement, else the best.

        Within a bounded budget (no ``fluidml.retune``), a conv node's variants that change the
        layout (NCHW in, NHWC out) wait (:attr:`deferred`, :meth:`_derivable`): the pure ones
        of twice as many nodes are measured instead, the mixed ones are estimated from them
        (:meth:`conv`) and measured when a plan takes them (:meth:`refine`, within
        :data:`MIXED_SHARE` of the layout's share). (ResNet-18 at its 6 s auto budget, all four
        variants a node: 32 of 44 variants measured in 3.6 s, and no plan.)
        """
        from ... import tuning

        session = tuning.for_options(self.options)
        again = session.revisits
        todo_groups = []
        seen = set()  # a variant of several nodes (identical layers) is measured once
        for i, group in self.variant_groups(g, cands):
            todo = {}
            for k, make in group.items():
                tries = self._cached(k, session) if k not in seen else None
                seen.add(k)
                if tries is None or not self.measure:
                    continue
                if not again and self._derivable(k, group):
                    self.deferred[k] = (make, tries, i)
                else:
                    todo[k] = (make, tries)
            if todo:
                todo_groups.append((i, todo))
        if not session.unbounded:
            object.__setattr__(self, "share_end",
                               session.spent_now() + tuning.LAYOUT_SHARE * session.budget)
        if not todo_groups:
            return 0
        # memory-bound nodes first (lowest FLOPs per byte): where a layout decides how a kernel
        # walks memory it can pay (a 3-channel first conv writing NHWC, attention reading K
        # transposed); compute-bound ones run alike in any layout (VGG's 64-512 channel convs
        # within 2%, under the margin). Cheap nodes also take little of the budget each.
        todo_groups.sort(key=lambda it: self._intensity(g, it[0]))
        if self.options.layout_neighbours:
            todo_groups = one_of_each_kind_first(g, todo_groups)
        done = 0
        share = tuning.LAYOUT_SHARE * (1.0 - (MIXED_SHARE if self.deferred else 0.0))
        with session.share(share):
            for i, todo in todo_groups:
                node = min(todo)  # the node's id in the cache: its first variant
                if (not again and self.db is not None
                        and self.db.measured(self.tkey, SKIPPED, node)):
                    self.unmeasured.add(i)  # an earlier compile's budget left it: still so
                    continue
                moved = moved_bytes(g, i)
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
            if self.options.layout_neighbours:
                estimate_unmeasured(self, g, cands)
        return done

    def _derivable(self, k: str, group: dict) -> bool:
        """A conv variant whose input and output layouts differ, while the node has both
        variants that keep one of them (a network's first conv reads the NCHW input: its
        NCHW -> NHWC variant is measured with the others)."""
        i, lx, lo = self.pairs.get(k, (None, None, None))
        pure = {self.pairs.get(c) for c in group}
        return lx != lo and (i, lx, lx) in pure and (i, lo, lo) in pure

    def refine(self, g, layouts: dict) -> bool:
        """Measure the deferred variants (:meth:`prepare`) plan ``layouts`` takes, within what
        is left of the layout's share of the budget; True when a cost changed (plan again). A
        variant the budget does not reach is refused (never taken; remembered in the cache as
        :data:`SKIPPED`, so a warm compile decides the same without measuring)."""
        from ... import tuning
        from .conv import conv_key
        from .cost import op_kind

        used = []
        for i, n in enumerate(g.nodes):
            if op_kind(g, i) == "conv":
                k = conv_key(g, i, layouts.get(n.inputs[0]) or identity(4),
                             layouts.get(n.output) or identity(4))
                if k in self.deferred and k not in used:
                    used.append(k)
        if not used:
            return False
        session = tuning.for_options(self.options)
        again = session.revisits
        left = 0.0 if self.share_end is None else min(self.share_end - session.spent_now(),
                                                      session.available())
        batch, moved = {}, 0
        for k in used:
            make, tries, i = self.deferred.pop(k)
            nbytes = moved_bytes(g, i)
            skipped = not again and self.db is not None and self.db.measured(
                self.tkey, SKIPPED, k)
            if skipped or left < session.estimate(len(batch) + 1, "layout", moved + nbytes):
                self.refused.add(k)
                if not skipped:
                    session.skip("layout")
                    if self.db is not None:
                        self.db.record(self.tkey, SKIPPED, k, {"node": k}, 0.0)
                continue
            batch[k] = (make, tries)
            moved += nbytes
        if batch:
            with session.share(max(0.0, left) / max(session.budget, 1e-9)):
                self._measure(batch, session, moved)
        return True

    def _intensity(self, g, i: int) -> float:
        """Node ``i``'s FLOPs per byte moved in the analytic model (0: a data movement)."""
        from .conv import conv_flops
        from .cost import op_kind

        n, kind = g.nodes[i], op_kind(g, i)
        moved = moved_bytes(g, i)
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
        t = self.table.get(matmul_key(ts, o, lays[0], lays[1], lout))
        plain = all(lay == identity(len(lay)) for lay in (*lays, lout))
        if t is None:
            return self._unmeasured(i, super().matmul(g, i, lays, lout), plain)
        return self.launch + (t if plain else t * (1 + self.margin))

    def conv(self, g, i, lin, lout):
        from .conv import conv_key

        key = conv_key(g, i, lin, lout)
        t = self.table.get(key, self.estimated.get(key))
        plain = lin == identity(4) and lout == identity(4)
        if t is None and key in self.deferred:
            # not measured yet: as fast as the faster of the node's two variants that keep one
            # layout (optimistic: refine measures it when a plan takes it, then plans again; the
            # mean kept SqueezeNet's fire modules NCHW, 1.14x slower, 2026-12-06)
            ends = [self.table.get(k, self.estimated.get(k))
                    for k in (conv_key(g, i, lay, lay) for lay in (lin, lout))]
            if all(e is not None for e in ends):
                t = min(ends)
        if t is None:
            if key in self.refused or key in self.deferred:
                return super().conv(g, i, lin, lout) + 10.0  # never taken unmeasured
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
            key, _ = permute_variant(g, i, lx, lo)
            plain = lx == identity(len(lx)) and lo == identity(len(lo))
            t = self.table.get(key) if key is not None else 0.0
            if t is None:
                t = self.transpose(o.nbytes) - self.launch
            return self._unmeasured(i, self.launch + t if key is not None else 0.0, plain)
        return super().node(g, i, layouts)


