"""Elementwise / injective rule: transposes, reshape copies, layout transforms, broadcasts.

Inlines every intermediate block, then for each remaining block parallelizes the fused outer
loops (when the kernel has enough elements) and vectorizes the innermost loop by the target's
lanes. Applies to PrimFuncs without any reduction block.
"""

from __future__ import annotations

from tvm import s_tir, tirx

from .common import (
    MIN_PARALLEL_ELEMS,
    extent,
    inline_all,
    is_reduction,
    parallel_outer,
    root_blocks,
    vectorize_inner,
)
from .target_info import CPUInfo


def schedule_injective(func: tirx.PrimFunc, cpu: CPUInfo):
    """Returns ``(schedule, reason)``; schedule is None when the rule does not apply."""
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    if not blocks:
        return None, "no blocks under the root"
    if any(is_reduction(sch, b) for b in blocks):
        return None, "has a reduction block"
    inline_all(sch)
    lanes = cpu.lanes(32)
    for b in root_blocks(sch):
        schedule_spatial_block(sch, b, lanes)
    return sch, f"injective: {len(root_blocks(sch))} loop nest(s), parallel + vectorize x{lanes}"


def schedule_spatial_block(sch: s_tir.Schedule, block, lanes: int) -> None:
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
    parallel_outer(sch, block, ["S"] * len(loops), keep_inner=1)
    vectorize_inner(sch, block, lanes)
