"""Blocked-layout convolution rule: ``conv2d_nchwc`` kernels of the layout stage (issue 5).

The layout stage (:mod:`fluidml_tvm.passes.layout_conv`) may hold a convolution's activations in
the blocked layout ``NCHW[b]c`` (``[N, C/b, H, W, b]``, ``b`` = the target's vector lanes) and
its weight pre-blocked (``[O/b, C/b, KH, KW, b_in, b_out]``, or ``[O/b, C, KH, KW, b_out]`` for
an NCHW input). Its te compute (block ``conv2d_nchwc``) has only plain indices, so this rule
schedules it the way TVM's x86 ``conv2d_NCHWc`` schedule does:

``fuse(n, output channel blocks / nf, rows)`` parallel | columns / mr | reduction
(input channel blocks, KH, KW, input channels within the block) | ``nf`` output blocks, ``mr``
columns (unrolled) | the ``b`` output channels of a block (one vector).

Every weight load is one contiguous vector, every input element one broadcast, the ``mr x nf``
accumulators stay in registers, and the output tile is written as whole vectors (the epilogue -
bias, ReLU - computed per tile). The padded input is a separate parallel stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx

from ..common import as_int, loop_kinds, root_blocks, vectorize_inner
from ..target_info import CPUInfo
from .base import Context, Rule, Unrelated
from .injective import schedule_spatial_block

BLOCK = "conv2d_nchwc"


@dataclass
class NCHWcMatch:
    block: str
    fo: int  # output channel blocks
    x: int  # output columns
    lanes: int  # output channels per block (the vector)
    flops: float


def analyze(func: tirx.PrimFunc) -> tuple[NCHWcMatch | None, str]:
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    if BLOCK not in names:
        return None, Unrelated(f"no {BLOCK} block")
    main = blocks[names.index(BLOCK)]
    kinds = loop_kinds(sch, main)
    if kinds is None or kinds[:5] != ["S"] * 5 or any(k != "R" for k in kinds[5:]):
        return None, "loops are not 5 spatial then the reductions"
    loops = sch.get_loops(main)
    ext = [as_int(sch.get(lp).extent) for lp in loops]
    if None in ext:
        return None, "dynamic extents"
    red = 1
    for e in ext[5:]:
        red *= e
    out = ext[0] * ext[1] * ext[2] * ext[3] * ext[4]
    return NCHWcMatch(BLOCK, ext[1], ext[3], ext[4], 2.0 * out * red), "conv2d_nchwc"


def candidates(m: NCHWcMatch, cpu: CPUInfo, budget: int) -> list[dict]:
    """Register tiles ``mr`` columns x ``nf`` output blocks that divide the shape and fit the
    vector registers (accumulators + the nf weight vectors + one broadcast), biggest first."""
    regs = cpu.vector_registers
    if m.lanes % cpu.lanes(32):
        return []
    out = []
    for nf in (2, 1, 4):
        for mr in (14, 12, 8, 7, 6, 4, 3, 2, 1):
            if m.fo % nf or m.x % mr or mr * nf + nf + 1 > regs:
                continue
            out.append((mr * nf, nf == 2, mr, nf))
    out.sort(reverse=True)
    return [{"mr": mr, "nf": nf} for _, _, mr, nf in out[: max(1, budget)]]


def schedule(func: tirx.PrimFunc, cpu: CPUInfo, cfg: dict) -> tuple[s_tir.Schedule | None, str]:
    m, why = analyze(func)
    if m is None:
        return None, why
    mr, nf = cfg["mr"], cfg["nf"]
    if m.fo % nf or m.x % mr:
        return None, f"tile {mr} x {nf} does not divide columns {m.x} / blocks {m.fo}"
    lanes = cpu.lanes(32)
    sch = s_tir.Schedule(func)
    main = sch.get_sblock(BLOCK)
    blocks = root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    pos = names.index(BLOCK)
    pre, epis = blocks[:pos], blocks[pos + 1:]
    for b in epis[:-1]:
        sch.compute_inline(b)
    out = epis[-1] if epis else sch.cache_write(main, 0, "global")
    loops = sch.get_loops(main)
    n, fo, y, x, fi = loops[:5]
    reds = loops[5:]
    f0, f1 = sch.split(fo, [None, nf])
    x0, x1 = sch.split(x, [None, mr])
    sch.reorder(n, f0, y, x0, *reds, f1, x1, fi)
    par = sch.fuse(n, f0, y)
    sch.parallel(par)
    sch.unroll(f1)
    sch.unroll(x1)
    if m.lanes == lanes:
        sch.vectorize(fi)
    else:
        _, v = sch.split(fi, [None, lanes])
        sch.vectorize(v)
    sch.reverse_compute_at(out, x0, preserve_unit_loops=True)
    vectorize_inner(sch, out, lanes)
    init = sch.decompose_reduction(main, reds[0])
    vectorize_inner(sch, init, lanes)
    for b in pre:  # the padded input: its own parallel, vectorized loop nest
        schedule_spatial_block(sch, b, lanes)
    return sch, (f"NCHW{m.lanes}c conv: tile {mr} columns x {nf} blocks of {m.lanes} channels, "
                 f"{len(reds)} reduction loops")


class NCHWcRule(Rule):
    """The conv2d_nchwc rule: up to 4 register tiles measured per shape."""

    name = "conv2d_nchwc"

    def analyze(self, func, ctx: Context):
        return analyze(func)

    def candidates(self, m: NCHWcMatch, ctx: Context) -> list[dict]:
        return candidates(m, ctx.cpu, min(ctx.options.tune_trials, 4))

    def no_candidates(self, m: NCHWcMatch, ctx: Context) -> str:
        return f"no register tile divides columns {m.x} / blocks {m.fo}"

    def workload(self, m: NCHWcMatch, candidates: list[dict], ctx: Context) -> str:
        return f"f{m.fo}x{m.x}"

    def flops(self, m: NCHWcMatch) -> float:
        return m.flops

    def apply(self, func, m: NCHWcMatch, config: dict, ctx: Context):
        sch, why = schedule(func, ctx.cpu, config)
        return sch.mod["main"], why, None
