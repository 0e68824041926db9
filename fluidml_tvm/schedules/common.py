"""Helpers shared by the schedule rules."""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

_get_sblock_realize = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")

# Below this many output elements a kernel is not worth a parallel launch.
MIN_PARALLEL_ELEMS = 4096


def as_int(x) -> int | None:
    if isinstance(x, int):
        return x
    if isinstance(x, tirx.IntImm):
        return int(x)
    return None


def root_blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def loop_kinds(sch: s_tir.Schedule, block) -> list[str] | None:
    """``"S"``/``"R"`` for each loop above ``block`` when each loop binds exactly one block axis
    (the form LegalizeOps produces), else None."""
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    vals = list(_get_sblock_realize(sch, block).iter_values)
    loop_vars = [sch.get(lp).loop_var for lp in loops]
    kinds = ["S"] * len(loops)
    for iv, val in zip(stmt.iter_vars, vals):
        if as_int(iv.dom.extent) == 1 and as_int(val) is not None:
            continue
        if not isinstance(val, tirx.Var):
            return None
        idx = next((i for i, lv in enumerate(loop_vars) if lv.same_as(val)), None)
        if idx is None:
            return None
        if iv.iter_type == tirx.IterVar.CommReduce:
            kinds[idx] = "R"
        elif iv.iter_type != tirx.IterVar.DataPar:
            return None
    return kinds


def extent(sch, loop) -> int | None:
    return as_int(sch.get(loop).extent)


def inline_all(sch: s_tir.Schedule, keep=()) -> None:
    """Inline every injective non-output block into its consumers (or producers) where legal."""
    changed = True
    while changed:
        changed = False
        blocks = root_blocks(sch)
        for b in blocks[:-1]:
            name = sch.get(b).name_hint
            if name in keep or is_reduction(sch, b):
                continue
            try:
                sch.compute_inline(b)
                changed = True
                break
            except Exception:  # noqa: BLE001 - not inlinable: try the other direction
                pass
            try:
                sch.reverse_compute_inline(b)
                changed = True
                break
            except Exception:  # noqa: BLE001
                pass


def vectorize_inner(sch: s_tir.Schedule, block, lanes: int) -> bool:
    """Split the innermost loop by ``lanes`` and vectorize it (or vectorize a short loop)."""
    loops = sch.get_loops(block)
    if not loops:
        return False
    ext = extent(sch, loops[-1])
    if ext is None or ext < 2:
        return False
    if ext % lanes == 0 and ext > lanes:
        _, v = sch.split(loops[-1], [None, lanes])
        sch.vectorize(v)
        return True
    if ext <= 2 * lanes:
        sch.vectorize(loops[-1])
        return True
    if ext > lanes:
        # a tail: LLVM vectorizes the body of a split loop with a bounds check poorly, so only
        # unroll-annotate the inner loop
        _, v = sch.split(loops[-1], [None, lanes])
        sch.annotate(v, "pragma_auto_unroll_max_step", lanes)
        sch.annotate(v, "pragma_unroll_explicit", 1)
    return False


def parallel_outer(sch: s_tir.Schedule, block, kinds: list[str], keep_inner: int = 0) -> bool:
    """Fuse the leading spatial loops of ``block`` (all but ``keep_inner`` innermost ones) and
    parallelize them when there is enough work."""
    loops = sch.get_loops(block)
    lead = []
    for lp, k in zip(loops[: len(loops) - keep_inner], kinds):
        if k != "S":
            break
        lead.append(lp)
    if not lead:
        return False
    total = 1
    for lp in loops:
        total *= extent(sch, lp) or 1
    fused = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    if total >= MIN_PARALLEL_ELEMS and (extent(sch, fused) or 2) > 1:
        sch.parallel(fused)
        return True
    return False
