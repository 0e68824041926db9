"""Row-reduction rule: softmax, LayerNorm, RMSNorm, mean/sum and other reductions.

*Row form* (softmax, LayerNorm): every block starts with the same spatial "row" axes. The last
block's rows are fused and parallelized, every other block is computed at that row loop
(``compute_at``), injective blocks are vectorized and reduction loops split by the vector lanes and
unrolled (a float reduction cannot be vectorized without reassociation).

*Generic form* (anything else with a reduction block): each loop nest is parallelized over its
leading spatial loops; nothing is left single-threaded where there is work to share.
"""

from __future__ import annotations

import logging

from tvm import s_tir, tirx

from ..common import (
    MIN_PARALLEL_ELEMS,
    extent,
    inline_all,
    is_reduction,
    loop_kinds,
    parallel_outer,
    root_blocks,
    vectorize_inner,
)
from ..target_info import CPUInfo
from .base import Context, Rule
from .injective import schedule_spatial_block

log = logging.getLogger("fluidml_tvm.schedules")


def _leading_s(kinds: list[str]) -> int:
    n = 0
    for k in kinds:
        if k != "S":
            break
        n += 1
    return n


def _unroll_reduction(sch, block, lanes):
    loops = sch.get_loops(block)
    ext = extent(sch, loops[-1]) if loops else None
    if ext is None or ext <= lanes:
        return
    _, inner = sch.split(loops[-1], [None, lanes])
    sch.annotate(inner, "pragma_auto_unroll_max_step", lanes)
    sch.annotate(inner, "pragma_unroll_explicit", 1)


def analyze(func: tirx.PrimFunc) -> tuple[bool | None, str]:
    """``(True, ..)`` when some block of ``func`` is a reduction, else ``(None, why not)``."""
    sch = s_tir.Schedule(func)
    if not any(is_reduction(sch, b) for b in root_blocks(sch)):
        return None, "no reduction block"
    return True, "reduction"


def schedule_reduction(func: tirx.PrimFunc, cpu: CPUInfo):
    """Returns ``(schedule, reason)``; schedule is None when the rule does not apply."""
    ok, why = analyze(func)
    if ok is None:
        return None, why
    sch = s_tir.Schedule(func)
    lanes = cpu.lanes(32)
    try:
        out = _row_form(s_tir.Schedule(func), lanes)
        if out is not None:
            return out
    except Exception as err:  # noqa: BLE001 - fall through to the generic form
        reason = f"row form failed ({type(err).__name__})"
    else:
        reason = "no common row axes"
    try:
        return _generic(s_tir.Schedule(func), lanes, reason, vector=True)
    except Exception as err:  # noqa: BLE001 - the plain generic form always applies
        log.info("vectorized reduction form failed (%s); plain generic form", err)
        return _generic(sch, lanes, reason, vector=False)


def _generic(sch, lanes, reason, vector):
    inline_all(sch)
    for b in root_blocks(sch):
        kinds = loop_kinds(sch, b)
        if kinds is None:
            continue
        if is_reduction(sch, b):
            if vector and _vectorize_under_reduction(sch, b, kinds, lanes):
                reason += "; innermost output axis vectorized under the reduction"
                continue
            lead = _leading_s(kinds)
            parallel_outer(sch, b, kinds, keep_inner=max(0, len(kinds) - lead))
            _unroll_reduction(sch, b, lanes)
        else:
            schedule_spatial_block(sch, b, lanes)
    return sch, f"reduction (generic: {reason}): parallel leading spatial loops"


def _vectorize_under_reduction(sch, block, kinds, lanes) -> bool:
    """Pooling / depthwise form ``S.. x R..``: move the innermost output axis ``x`` below the
    reduction loops and vectorize it (each step accumulates a vector of outputs), parallelize
    the outer output axes. False (nothing changed) when the nest is not of that form."""
    loops = sch.get_loops(block)
    lead = _leading_s(kinds)
    if lead == 0 or lead == len(kinds) or any(k != "R" for k in kinds[lead:]):
        return False
    x = loops[lead - 1]
    ext = extent(sch, x)
    reds = loops[lead:]
    if ext is None or ext < 4:
        return False
    total = 1
    for lp in loops:
        total *= extent(sch, lp) or 1
    if ext % lanes == 0 and ext > lanes:
        xo, xi = sch.split(x, [None, lanes])
        sch.reorder(xo, *reds, xi)
        outer, vec = [*loops[: lead - 1], xo], xi
    elif ext <= 2 * lanes:
        sch.reorder(*reds, x)
        outer, vec = list(loops[: lead - 1]), x
    else:
        return False
    if outer:
        par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if total >= MIN_PARALLEL_ELEMS:
            sch.parallel(par)
    sch.vectorize(vec)
    sch.decompose_reduction(block, reds[0])
    return True


def _row_form(sch: s_tir.Schedule, lanes: int):
    inline_all(sch)
    blocks = root_blocks(sch)
    if len(blocks) < 2:
        return None
    kinds = [loop_kinds(sch, b) for b in blocks]
    if any(k is None for k in kinds) or is_reduction(sch, blocks[-1]):
        return None
    rows = min(_leading_s(k) for k in kinds)
    if rows == 0:
        return None
    # the row loops must be the same axes in every nest (same extents)
    ext0 = [extent(sch, lp) for lp in sch.get_loops(blocks[-1])[:rows]]
    for b in blocks[:-1]:
        if [extent(sch, lp) for lp in sch.get_loops(b)[:rows]] != ext0:
            return None
    last = blocks[-1]
    loops = sch.get_loops(last)
    row = sch.fuse(*loops[:rows]) if rows > 1 else loops[0]
    total = 1
    for lp in sch.get_loops(last):
        total *= extent(sch, lp) or 1
    if total >= MIN_PARALLEL_ELEMS:
        sch.parallel(row)
    if len(sch.get_loops(last)) > 1:  # never vectorize the row loop the other nests go under
        vectorize_inner(sch, last, lanes)
    for b in reversed(blocks[:-1]):
        sch.compute_at(b, row, preserve_unit_loops=True)
    for b in blocks[:-1]:
        if len(sch.get_loops(b)) <= 1:
            continue
        if is_reduction(sch, b):
            _unroll_reduction(sch, b, lanes)
        else:
            vectorize_inner(sch, b, lanes)
    return sch, f"reduction (row form: {len(blocks)} nests under {rows} fused row axes)"


class ReductionRule(Rule):
    """The row-reduction rule (one schedule, never measured); a fallback: its reason also says
    why the better rules did not apply."""

    name = "reduction"
    measures = False
    generic = True

    def analyze(self, func, ctx: Context):
        return analyze(func)

    def apply(self, func, match, config: dict, ctx: Context):
        sch, why = schedule_reduction(func, ctx.cpu)
        return sch.mod["main"], why, None
