"""conv_pool rule: a convolution (+bias/ReLU) fused with the max-pool that consumes it.

The kernel comes from :class:`fluidml_tvm.passes.fuse_conv_pool.FluidMLFuseConvPool` (one
PrimFunc: padding, conv accumulation, epilogues, pooling). The convolution keeps the conv2d
rule's kernel (:mod:`.conv2d`: channels-innermost accumulator, packed weight, ``mr`` columns x
``nr`` channels register tile, lanes vectorized); what changes is where its output lives:

* the conv's output rows are split by the pool's stride, ``y = y0 * s + y1``;
* ``fuse(channel panel, batch, y0)`` parallel | ``y1`` | column tiles | reduction | tile: one
  parallel iteration computes the ``s`` conv rows (all columns, ``nr`` channels) that one row of
  pool outputs needs;
* the bias/ReLU epilogues are inlined into the pool, and the pool is computed at that same
  parallel iteration (``reverse_compute_at``), so the accumulator's live region is
  ``s x W x nr`` floats per iteration and TVM compacts the buffer to that size: the convolution
  output is never materialized (a 64x224x224 output becomes a 2x224x16 buffer per thread).

Applies when the pool windows do not overlap (kernel == stride, no padding) and tile the conv
output exactly, in any layout where the pooled axes are the conv's row and column axes. The
analysis is :mod:`.conv_pool_match`; this module has the candidates, the kernel and
:class:`ConvPoolRule`.
"""

from __future__ import annotations

from tvm import s_tir, tirx

from ..common import as_int, extent, iter_values, loop_kinds, root_blocks, vectorize_inner
from ..target_info import CPUInfo
from . import conv2d
from .base import Context, Rule, Unrelated
from .conv2d_match import loop_var_of, pack_index_map, pack_weight, same_var
from .conv_pool_match import MIN_ROW_BLOCKS, ConvPoolMatch, analyze, analyze_pool
from .injective import schedule_spatial_block


def candidates(cm: ConvPoolMatch, cpu: CPUInfo, budget: int = 4) -> list[tuple]:
    """``(mr, nv, rb, pad_rows)``: the conv2d rule's tiles; ``pad_rows`` = 1 computes the padded
    input rows one row block needs inside the parallel row loop (no padded copy of the whole
    input), when there are enough row blocks for the threads."""
    tiles = conv2d.candidates(cm.conv, cpu, budget)
    if cm.first is not None:  # the first conv's rows are computed per row block: always
        return [t + (1,) for t in tiles]
    if not (cm.row_blocks >= MIN_ROW_BLOCKS and cm.pad is not None):
        return [t + (0,) for t in tiles]
    # both placements of the padding for the best tiles: which one is faster varies by layer
    # (measured on VGG-11: 0.63x-1.14x of the whole-copy time), the row one first (less memory)
    return [t + (p,) for t in tiles[:3] for p in (1, 0)] + [t + (1,) for t in tiles[3:]]


def schedule_conv_pool(func: tirx.PrimFunc, cpu: CPUInfo, const_args=None, tile=None,
                       match: ConvPoolMatch | None = None):
    """Returns ``(schedule, reason, pack)`` like :func:`conv2d.schedule_conv2d`."""
    cm, why = (match, "") if match is not None else analyze(func)
    if cm is None:
        return None, why, None
    m = cm.conv
    tile = tile or conv2d.choose_tile(m, cpu)
    if tile is None:
        return None, f"no register tile divides channels {m.f} / columns {m.x}", None
    mr, nv = tile[:2]
    rb = tile[2] if len(tile) > 2 else 0
    pad_rows = bool(tile[3]) if len(tile) > 3 else False
    pad_rows = (pad_rows or cm.first is not None) and cm.pad is not None
    lanes = cpu.lanes(32)
    nr = nv * lanes
    pack_param = bool(const_args) and m.w_param is not None and const_args.get(m.w_param, False)
    sch = s_tir.Schedule(func)
    main = sch.get_sblock(m.block)
    blocks = root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    pos = names.index(m.block)
    pre = blocks[:pos]
    pool = blocks[-1]
    for b in blocks[pos + 1:-1]:  # bias / ReLU: computed inside the pool's max
        sch.compute_inline(b)
    first = None
    if cm.first is not None:  # conv1's bias / ReLU: computed inside conv2's padding
        first = sch.get_sblock(cm.first.block)
        i1 = names.index(cm.first.block)
        for b in blocks[i1 + 1:pos - 1]:
            sch.compute_inline(b)
        pre = blocks[:i1]
    # accumulator with channels innermost
    wr = sch.get(main).writes[0]
    n_dims = len(wr.region)
    fvar = loop_var_of(sch, main, "f", m.loop_roles)
    f_dim = next(i for i, r in enumerate(wr.region) if same_var(r.min, fvar))
    order = [i for i in range(n_dims) if i != f_dim] + [f_dim]
    sch.transform_layout(main, ("write", 0), lambda *idx: [idx[i] for i in order])
    pack_weight(sch, main, m, nr, pack_param)
    # which spatial loop is the pooled row axis
    st = sch.get(main)
    yvar = st.writes[0].region[order.index(cm.y_dim)].min
    loops = sch.get_loops(main)
    vals = iter_values(sch, main)
    lvars = [sch.get(lp).loop_var for lp in loops]
    y_i = None
    for iv, val in zip(st.iter_vars, vals):
        if iv.var.same_as(yvar):
            y_i = next(i for i, lv in enumerate(lvars) if lv.same_as(val))
    fl, xl, yl, reds, spatial_outer = conv2d.loops_by_role(loops, m.loop_roles, y_i)
    s = cm.s
    y_ext = extent(sch, yl)
    f0, f1, f2 = sch.split(fl, [m.f // nr, nv, lanes])
    x0, x1 = sch.split(xl, [m.x // mr, mr])
    y0, y1 = sch.split(yl, [y_ext // s, s])
    r_ext = as_int(sch.get(reds[0]).extent)
    # pad_rows: rows outermost (parallel), channel panels inside, sharing one padded row block
    outer = [*spatial_outer, y0, f0] if pad_rows else [f0, *spatial_outer, y0]
    if rb and r_ext and r_ext % rb == 0 and r_ext > rb:
        r0, r1 = sch.split(reds[0], [r_ext // rb, rb])
        sch.reorder(*outer, y1, r0, x0, r1, *reds[1:], x1, f1, f2)
        init_at = r0
    else:
        rb = 0
        sch.reorder(*outer, y1, x0, *reds, x1, f1, f2)
        init_at = reds[0]
    par = sch.fuse(*outer[:-1]) if pad_rows else sch.fuse(*outer)
    sch.parallel(par)
    sch.unroll(x1)
    sch.unroll(f1)
    sch.vectorize(f2)
    # the pool (with bias and ReLU inlined) right after the s conv rows it reads
    sch.reverse_compute_at(pool, f0 if pad_rows else par, preserve_unit_loops=True)
    if pad_rows:  # the padded input rows of this row block, all channels, computed here
        padb = sch.get_sblock(cm.pad)
        sch.compute_at(padb, par, preserve_unit_loops=True)
        vectorize_inner(sch, padb, lanes)
        if first is not None:  # the first conv's rows this block pads (with a halo), here
            sch.compute_at(first, par, preserve_unit_loops=True)
            _tile_inner_conv(sch, first, cm.first, cpu, const_args, cm.y_dim, s, cm.halo)
        for b in pre if first is not None else []:
            kinds = loop_kinds(sch, b)
            if kinds is not None and all(k == "S" for k in kinds):
                schedule_spatial_block(sch, b, lanes)
    else:
        for b in pre:  # padding: its own parallel loop nest, as in the conv2d rule
            kinds = loop_kinds(sch, b)
            if kinds is not None and all(k == "S" for k in kinds):
                schedule_spatial_block(sch, b, lanes)
    sch.decompose_reduction(main, init_at)
    acc_bytes = s * m.x * nr * 4
    reason = (f"conv2d+max-pool F={m.f} X={m.x} tile {mr}x{nr}, conv rows computed {s} at a "
              f"time into a {s}x{m.x}x{nr} buffer ({acc_bytes} bytes per thread) and pooled")
    reason += (", padded input rows computed per row block (no padded copy of the input)"
               if pad_rows else ", padded input copied whole")
    reason += f", reduction blocks of {rb}" if rb else ""
    reason += f", weight packed [F/{nr},..,{nr}]"
    reason += " at compile time" if pack_param else " at run time"
    pack = {m.w_param: (("conv",) + tuple(m.w_roles), nr)} if pack_param else None
    if first is not None:
        m1 = cm.first
        nr1 = _inner_tile(m1, cpu)[1] * lanes
        reason += (f"; the first conv (F={m1.f}) computed per row block with its halo rows "
                   f"into a buffer of {m1.f} x {s + 2} rows x {m1.x}")
        if const_args and const_args.get(m1.w_param, False):
            pack = dict(pack or {})
            pack[m1.w_param] = (("conv",) + tuple(m1.w_roles), nr1)
    return sch, reason, pack


def _inner_tile(m1, cpu):
    t = conv2d.choose_tile(m1, cpu)
    if t is None:
        raise ValueError(f"no register tile for the first conv (F={m1.f}, X={m1.x})")
    return t[:2]


def _tile_inner_conv(sch, block, m1, cpu, const_args, y_dim, stride, halo) -> None:
    """The conv2d rule's register tiling for a convolution computed at the row-block loop:
    channels-innermost accumulator, packed weight, ``f0 | rows | x0 | reduction | x1 f1 f2``."""
    mr, nv = _inner_tile(m1, cpu)
    lanes = cpu.lanes(32)
    nr = nv * lanes
    wr = sch.get(block).writes[0]
    st = sch.get(block)
    loops = sch.get_loops(block)[-len(m1.loop_roles):]  # the block's own loops (under par)
    lvars = [sch.get(lp).loop_var for lp in loops]
    vals = iter_values(sch, block)
    fi = m1.loop_roles.index("f")
    f_var = next(iv.var for iv, v in zip(st.iter_vars, vals) if _uses_var(v, lvars[fi]))
    f_dim = next(i for i, r in enumerate(wr.region) if same_var(r.min, f_var))
    n_dims = len(wr.region)
    order = [i for i in range(n_dims) if i != f_dim] + [f_dim]
    # rows y -> ((y + halo) // s, (y + halo) % s): the halo rows a block needs are then provably
    # inside the buffer and TVM compacts it to the block's rows (else it keeps the whole output)
    yd, s, halo = y_dim, stride, halo

    def lay(*idx):
        out = []
        for i in order:
            if i == yd:
                out += [(idx[i] + halo) // s, (idx[i] + halo) % s]
            else:
                out.append(idx[i])
        return out

    sch.transform_layout(block, ("write", 0), lay, assume_injective_transform=True)
    fmap = pack_index_map(m1.w_roles, nr)
    if const_args and const_args.get(m1.w_param, False):
        sch.transform_layout(block, ("read", m1.w_index), fmap)
    else:
        sch.cache_read(block, m1.w_index, "global")  # small: a serial copy at the root
        sch.transform_layout(block, ("read", m1.w_index), fmap)
    loops = sch.get_loops(block)[-len(m1.loop_roles):]
    fl, xl, _, reds, spatial = conv2d.loops_by_role(loops, m1.loop_roles)
    f0, f1, f2 = sch.split(fl, [m1.f // nr, nv, lanes])
    x0, x1 = sch.split(xl, [m1.x // mr, mr])
    sch.reorder(f0, *spatial, x0, *reds, x1, f1, f2)
    sch.unroll(x1)
    sch.unroll(f1)
    sch.vectorize(f2)
    sch.decompose_reduction(block, reds[0])


def _uses_var(expr, var) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


class ConvPoolRule(Rule):
    """The conv_pool rule: the conv2d rule's tiles, with both placements of the padding where
    there are enough row blocks, measured per shape. The fusion pass checked one schedule of the
    kernel; should the chosen one fail, the others are tried (the whole padded copy first) rather
    than leaving a fused kernel that holds the whole conv output to the generic rules."""

    name = "conv_pool"

    def analyze(self, func, ctx: Context):
        pm, why = analyze_pool(func)
        if pm is None:
            return None, Unrelated(why)
        return analyze(func)

    def candidates(self, cm: ConvPoolMatch, ctx: Context) -> list[dict]:
        trials = ctx.options.tune_trials
        tiles = candidates(cm, ctx.cpu, min(trials, 4))[: max(4, min(trials, 6))]
        return [{"mr": mr, "nv": nv, "rb": rb, "pad_rows": p} for mr, nv, rb, p in tiles]

    def no_candidates(self, cm: ConvPoolMatch, ctx: Context) -> str:
        return f"no register tile divides channels {cm.conv.f} / columns {cm.conv.x}"

    def workload(self, cm: ConvPoolMatch, candidates: list[dict], ctx: Context) -> str:
        m = cm.conv
        return f"f{m.f}x{m.x}s{cm.s}p{candidates[0]['pad_rows']}"

    def flops(self, cm: ConvPoolMatch) -> float:
        return cm.conv.flops

    def build(self, func, cm: ConvPoolMatch, config: dict, ctx: Context):
        return schedule_conv_pool(func, ctx.cpu, ctx.const_args, _tile(config), cm)[0].mod["main"]

    def apply(self, func, cm: ConvPoolMatch, config: dict, ctx: Context):
        cands = self.candidates(cm, ctx)
        sch, why, pack, err = None, "", None, None
        for c in [config] + [dict(c, pad_rows=0) for c in cands] + cands:
            try:
                sch, why, pack = schedule_conv_pool(func, ctx.cpu, ctx.const_args, _tile(c), cm)
            except Exception as e:  # noqa: BLE001 - a tile/placement this kernel does not take
                err = err or e
                continue
            if c is not config:
                why += f" (chosen {config} failed: {type(err).__name__})"
            break
        if sch is None:
            raise err or RuntimeError(why)
        return sch.mod["main"], why, pack


def _tile(cfg: dict) -> tuple:
    return (cfg["mr"], cfg["nv"], cfg.get("rb", 0), cfg.get("pad_rows", 0))
