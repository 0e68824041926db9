"""Elementwise / injective rule: transposes, reshape copies, layout transforms, broadcasts.

Inlines every intermediate block, then for each remaining block parallelizes the fused outer
loops (when the kernel has enough elements) and vectorizes the innermost loop by the target's
lanes. Applies to PrimFuncs without any reduction block.

A transpose that moves the innermost dim (its output's innermost loop does not index the input's
innermost dim: attention's K -> K^T, a 2-d transpose) is tiled ``lanes x lanes``: the output
vector of a tile gathers from ``lanes`` input rows that the tile's other ``lanes`` vectors read
again from L1, instead of streaming one output row across every input row (on this project's
znver4 host: BERT-base's [1,128,768] -> [1,12,64,128] 41 -> see the results file).
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx

from ..common import (
    MIN_PARALLEL_ELEMS,
    as_int,
    called_ops,
    extent,
    inline_all,
    is_reduction,
    loop_var_index,
    parallel_outer,
    root_blocks,
    vectorize_inner,
)
from ..target_info import CPUInfo
from .base import Context, Rule

#: calls worth computing once for several consumers (or once for the points a consumer
#: broadcasts them over) rather than once per use
COSTLY_CALLS = frozenset({"tirx.exp", "tirx.exp2", "tirx.erf", "tirx.tanh", "tirx.sigmoid",
                          "tirx.log", "tirx.pow"})


def broadcast_costly(sch: s_tir.Schedule, block) -> bool:
    """``block`` is injective, calls a costly function (:data:`COSTLY_CALLS`) and its one
    consumer iterates more points than it does (reads it broadcast: a squeeze-excitation gate
    ``sigmoid(fc(x))`` [C, 1, 1] times the activation [C, H, W]). Inlined, the costly call would
    run once per point of the consumer - H x W times per value - so it stays a block of its own,
    computed once per value."""
    if is_reduction(sch, block) or not called_ops(sch.get(block).body) & COSTLY_CALLS:
        return False
    consumers = sch.get_consumers(block)
    if len(consumers) != 1:
        return False
    points = [math.prod(as_int(iv.dom.extent) or 0 for iv in sch.get(b).iter_vars)
              for b in (block, consumers[0])]
    return 0 < points[0] < points[1]


def analyze(func: tirx.PrimFunc) -> tuple[bool | None, str]:
    """``(True, ..)`` when ``func`` has blocks and none is a reduction, else ``(None, why not)``."""
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    if not blocks:
        return None, "no blocks under the root"
    if any(is_reduction(sch, b) for b in blocks):
        return None, "has a reduction block"
    return True, "injective"


def schedule_injective(func: tirx.PrimFunc, cpu: CPUInfo):
    """Returns ``(schedule, reason)``; schedule is None when the rule does not apply."""
    ok, why = analyze(func)
    if ok is None:
        return None, why
    sch = s_tir.Schedule(int32_indices(func))
    inline_all(sch)
    lanes = cpu.lanes(32)
    for b in root_blocks(sch):
        schedule_spatial_block(sch, b, lanes, peel=True)
    return sch, f"injective: {len(root_blocks(sch))} loop nest(s), parallel + vectorize x{lanes}"


class InjectiveRule(Rule):
    """The elementwise / injective rule (one schedule, never measured); the last fallback: its
    reason also says why the better rules did not apply."""

    name = "injective"
    measures = False
    generic = True

    def analyze(self, func, ctx: Context):
        return analyze(func)

    def apply(self, func, match, config: dict, ctx: Context):
        sch, why = schedule_injective(func, ctx.cpu)
        return sch.mod["main"], why, None


def schedule_spatial_block(sch: s_tir.Schedule, block, lanes: int, peel: bool = False) -> None:
    """Parallel outer loops, the innermost vectorized. ``peel``: an innermost loop the lanes do
    not divide runs whole vectors and a peeled last one (:func:`vectorize_row`; the kernel's
    indices must be int32, :func:`int32_indices`) instead of unrolled scalar code."""
    loops = sch.get_loops(block)
    if not loops:
        return
    if len(loops) == 1:
        ext = extent(sch, loops[0]) or 0
        if ext > lanes and ext % lanes == 0:
            outer, inner = sch.split(loops[0], [None, lanes])
            if ext >= MIN_PARALLEL_ELEMS:
                sch.parallel(outer)
            sch.vectorize(inner)
        elif ext >= 2:
            sch.vectorize(loops[0]) if ext <= 4 * lanes else None
        return
    if _tile_transpose(sch, block, lanes):
        return
    parallel_outer(sch, block, ["S"] * len(loops), keep_inner=1)
    if peel:
        vectorize_row(sch, block, lanes)
    else:
        vectorize_inner(sch, block, lanes)


def transposed_loop(sch: s_tir.Schedule, block) -> int | None:
    """For a block whose single input's innermost index does not use the innermost loop: the
    position of the innermost loop that index does use (tile it against the innermost one)."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    if len(stmt.reads) != 1 or len(loops) < 2:
        return None
    pos = loop_var_index(sch, block)
    if pos is None:
        return None
    last = stmt.reads[0].region[-1].min
    used = [pos[v] for v in tirx.analysis.undefined_vars(last, []) if v in pos]
    inner = len(loops) - 1
    if not used or inner in used:
        return None
    return max(used)


def _tile_transpose(sch: s_tir.Schedule, block, lanes: int) -> bool:
    loops = sch.get_loops(block)
    p = transposed_loop(sch, block)
    if p is None:
        return False
    ext_p, ext_o = extent(sch, loops[p]), extent(sch, loops[-1])
    if not ext_p or not ext_o or ext_p % lanes or ext_o % lanes:
        return False
    p1, p2 = sch.split(loops[p], [None, lanes])
    o1, o2 = sch.split(loops[-1], [None, lanes])
    rest = [lp for i, lp in enumerate(loops[:-1]) if i != p]
    sch.reorder(*rest, p1, o1, p2, o2)
    lead = sch.fuse(*rest, p1, o1)
    total = 1
    for lp in sch.get_loops(block):
        total *= extent(sch, lp) or 1
    if total >= MIN_PARALLEL_ELEMS:
        sch.parallel(lead)
    sch.vectorize(o2)
    return True


def int32_indices(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with int32 indices where every buffer fits them: relax legalizes with int64
    ones, and LoopPartition peels the guarded last vector (:func:`vectorize_row`) of int32
    loops only (with int64 ones whisper-tiny's softmax kept every step guarded and ran lane by
    lane: 13.6 vs 5.0 ms)."""
    sizes = [math.prod(as_int(d) or 0 for d in b.shape) for b in func.params]
    if min(sizes, default=0) <= 0 or max(sizes) >= 2**31:  # a dynamic shape, or too big
        return func
    import tvm

    try:
        return tvm.tirx.transform.ForceNarrowIndexToInt32()(tvm.IRModule({"main": func}))["main"]
    except (RuntimeError, ValueError):  # an int64 buffer (an attention mask): left as is
        return func


def vectorize_row(sch, block, lanes) -> None:
    """The innermost loop as whole vectors; a row the lanes do not divide gets a guarded last
    vector that LoopPartition peels off (``pragma_loop_partition_hint``), not scalar code."""
    loops = sch.get_loops(block)
    ext = extent(sch, loops[-1]) if loops else None
    if ext is None or ext <= 2 * lanes or ext % lanes == 0:
        vectorize_inner(sch, block, lanes)
        return
    outer, inner = sch.split(loops[-1], [None, lanes])
    sch.annotate(outer, "pragma_loop_partition_hint", 1)
    sch.vectorize(inner)
