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
output exactly, in any layout where the pooled axes are the conv's row and column axes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx

from . import conv2d
from .common import as_int, extent, is_reduction, loop_kinds, root_blocks, vectorize_inner
from .injective import schedule_spatial_block
from .target_info import CPUInfo


@dataclass
class PoolMatch:
    block: str
    input: object  # the buffer pooled
    dims: list  # per input dim: None (indexed by a plain spatial var) or (stride, kernel)
    out_shape: list

    @property
    def stride(self) -> list[int]:
        return [d[0] for d in self.dims if d is not None]


def _window(expr, kinds, ext):
    """``v * s + r`` / ``v + r`` (either order) -> (stride, kernel extent), else None."""
    if not isinstance(expr, tirx.Add):
        return None
    for a, b in ((expr.a, expr.b), (expr.b, expr.a)):
        if not (isinstance(b, tirx.Var) and kinds.get(b) == "R"):
            continue
        if isinstance(a, tirx.Var) and kinds.get(a) == "S":
            return 1, ext[b]
        if isinstance(a, tirx.Mul) and isinstance(a.a, tirx.Var) and kinds.get(a.a) == "S":
            s = as_int(a.b)
            if s is not None:
                return s, ext[b]
    return None


def analyze_pool(func: tirx.PrimFunc) -> tuple[PoolMatch | None, str]:
    """The last root block of ``func`` as a max-pool ``out[..] = max(out, in[.., o*s + r, ..])``."""
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    if not blocks:
        return None, "no blocks"
    b = blocks[-1]
    if not is_reduction(sch, b):
        return None, "last block is not a reduction"
    st = sch.get(b)
    body = st.body
    if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, tirx.Max):
        return None, "not a max reduction"
    kinds = {iv.var: ("R" if iv.iter_type == tirx.IterVar.CommReduce else "S")
             for iv in st.iter_vars}
    ext = {iv.var: as_int(iv.dom.extent) for iv in st.iter_vars}
    if any(e is None for e in ext.values()):
        return None, "dynamic shape"
    reads = [r for r in st.reads if not r.source.same_as(body.buffer)]
    if len(reads) != 1:
        return None, "pools more than one buffer"
    dims = []
    for r in reads[0].region:
        if isinstance(r.min, tirx.Var) and kinds.get(r.min) == "S":
            dims.append(None)
            continue
        w = _window(r.min, kinds, ext)
        if w is None:
            return None, "input not indexed as out * stride + window"
        dims.append(w)
    out_shape = [as_int(d) for d in body.buffer.shape]
    return PoolMatch(st.name_hint, reads[0].source, dims, out_shape), "max-pool"


@dataclass
class ConvPoolMatch:
    conv: conv2d.ConvMatch
    pool: PoolMatch
    y_dim: int  # accumulator dim of the pooled row axis
    x_dim: int  # accumulator dim of the pooled column axis
    s: int  # the pool's row stride (= its window)
    row_blocks: int = 0  # batch x pooled rows
    pad: str | None = None  # the padding block, when the conv reads one
    first: conv2d.ConvMatch | None = None  # conv -> conv -> pool: the first convolution
    halo: int = 0  # its rows above a row block the second conv reads (its top padding)


def _conv_part(func: tirx.PrimFunc, pool_input, start: int = 0, end: int = -1,
               first_input=None) -> tirx.PrimFunc | None:
    """The root loop nests ``[start, end)`` of ``func`` (default: all but the pool) as a kernel
    of their own whose output is ``pool_input`` (and whose first input is ``first_input``): the
    kernel the conv2d rule would have seen before the fusion (for :func:`conv2d.analyze`).
    Parameters: ``[first_input] + func's inputs + [pool_input]``."""
    realize = func.body
    if not isinstance(realize, s_tir.SBlockRealize):
        return None
    root = realize.block
    if not isinstance(root.body, tirx.SeqStmt) or len(root.body.seq) < 2:
        return None
    seq = list(root.body.seq)[start:end]
    if not seq:
        return None
    body = seq[0] if len(seq) == 1 else tirx.SeqStmt(seq)
    drop = [pool_input] + ([first_input] if first_input is not None else [])
    allocs = [b for b in root.alloc_buffers if not any(b.same_as(d) for d in drop)]
    if len(allocs) != len(root.alloc_buffers) - len(drop):
        return None  # the pool reads a parameter, not an intermediate
    new_root = s_tir.SBlock([], [], [], root.name_hint, body, None, allocs)
    params = ([first_input] if first_input is not None else []) + list(func.params)[:-1]
    return tirx.PrimFunc(params + [pool_input], s_tir.SBlockRealize([], True, new_root),
                         attrs=func.attrs)


def _chain(func: tirx.PrimFunc, pool_input):
    """conv1 -> epilogues -> pad -> conv2 -> epilogues -> pool: ``(m1, m2, pad2 name)`` with
    both ConvMatches' ``w_param`` indices into ``func``'s params, else None."""
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    reds = [i for i, b in enumerate(blocks[:-1]) if is_reduction(sch, b)]
    if len(reds) != 2 or len(blocks) != len(func.body.block.body.seq):
        return None
    pad2 = reds[1] - 1
    kinds = loop_kinds(sch, blocks[pad2])
    if pad2 <= reds[0] or not kinds or any(k != "S" for k in kinds):
        return None
    reads = sch.get(blocks[pad2]).reads
    if len(reads) != 1:
        return None
    mid = reads[0].source  # conv1's (epilogue) output, pad2's input
    part1 = _conv_part(func, mid, 0, pad2)
    part2 = _conv_part(func, pool_input, pad2, -1, first_input=mid)
    if part1 is None or part2 is None:
        return None
    m1, _ = conv2d.analyze(part1)
    m2, _ = conv2d.analyze(part2)
    if m1 is None or m2 is None or m1.w_param is None or m2.w_param is None:
        return None
    m2.w_param -= 1  # part2's params start with ``mid``
    # halo: pad2 reads mid[.., row - off, ..]; per row dim the offset (the conv's top padding)
    offs = []
    for r in reads[0].region:
        e = r.min
        if isinstance(e, tirx.Sub) and as_int(e.b) is not None:
            offs.append(as_int(e.b))
        elif isinstance(e, tirx.Add) and as_int(e.b) is not None:
            offs.append(-as_int(e.b))
        else:
            offs.append(0)
    return m1, m2, sch.get(blocks[pad2]).name_hint, offs, mid


def analyze(func: tirx.PrimFunc) -> tuple[ConvPoolMatch | None, str]:
    pm, why = analyze_pool(func)
    if pm is None:
        return None, why
    part = _conv_part(func, pm.input)
    if part is None:
        return None, "the pool does not read an intermediate of the kernel"
    m, why = conv2d.analyze(part)
    chain = None
    if m is None and why.startswith("2 reduction blocks"):
        chain = _chain(func, pm.input)
        if chain is not None:
            m = chain[1]
    if m is None:
        return None, f"not a convolution before the pool ({why})"
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    pos = names.index(m.block)
    for b in blocks[pos + 1:-1]:  # epilogues: pointwise over the accumulator
        if is_reduction(sch, b) or loop_kinds(sch, b) is None:
            return None, f"epilogue {sch.get(b).name_hint} is not pointwise"
    acc = sch.get(sch.get_sblock(m.block)).writes[0]
    if len(acc.region) != len(pm.dims):
        return None, "pool rank differs from the conv output's"
    main = sch.get_sblock(m.block)
    fvar = conv2d._loop_var_of(sch, main, "f", m.loop_roles)
    xvar = conv2d._loop_var_of(sch, main, "x", m.loop_roles)
    win = [i for i, d in enumerate(pm.dims) if d is not None]
    if len(win) != 2:
        return None, f"{len(win)} pooled axes (2 expected)"
    f_dim = next((i for i, r in enumerate(acc.region) if conv2d._same_var(r.min, fvar)), None)
    x_dim = next((i for i, r in enumerate(acc.region) if conv2d._same_var(r.min, xvar)), None)
    if x_dim is None or f_dim is None or f_dim in win or x_dim not in win:
        return None, "the pooled axes are not the conv's rows and columns"
    y_dim = next(i for i in win if i != x_dim)
    acc_shape = [as_int(d) for d in pm.input.shape]
    for i in win:
        s, k = pm.dims[i]
        if s != k:
            return None, f"overlapping pool windows (kernel {k}, stride {s})"
        if acc_shape[i] != pm.out_shape[i] * s:
            return None, f"the pool drops conv rows/columns ({acc_shape[i]} -> {pm.out_shape[i]})"
    # the row loop of the conv must exist as its own spatial loop (the legalized form)
    yvar = acc.region[y_dim].min
    loops = sch.get_loops(main)
    vals = conv2d._iter_values(sch, main)
    st = sch.get(main)
    lvars = [sch.get(lp).loop_var for lp in loops]
    y_loop = None
    for iv, val in zip(st.iter_vars, vals):
        if iv.var.same_as(yvar) and isinstance(val, tirx.Var):
            y_loop = next((i for i, lv in enumerate(lvars) if lv.same_as(val)), None)
    if y_loop is None or m.loop_roles[y_loop] != "s":
        return None, "no row loop in the convolution"
    s = pm.dims[y_dim][0]
    row_blocks = acc_shape[y_dim] // s
    for i, d in enumerate(pm.out_shape):
        if pm.dims[i] is None and i != f_dim:
            row_blocks *= d
    pre = blocks[:pos]
    pad = None
    if chain is not None:
        pad = chain[2]
    elif len(pre) == 1 and (loop_kinds(sch, pre[0]) or ["R"]) and all(
            k == "S" for k in loop_kinds(sch, pre[0]) or ["R"]):
        pad = sch.get(pre[0]).name_hint
    if chain is not None:
        mid_shape = [as_int(d) for d in chain[4].shape]
        if len(mid_shape) != len(acc_shape) or any(
                mid_shape[i] != acc_shape[i] for i in (y_dim, x_dim)):
            return None, "conv->conv chain: the first conv's rows/columns are not the second's"
        if not 0 <= chain[3][y_dim] < s + 2:
            return None, f"conv->conv chain: row padding {chain[3][y_dim]}"
    if chain is not None and not (row_blocks >= MIN_ROW_BLOCKS):
        return None, f"conv->conv chain needs >= {MIN_ROW_BLOCKS} row blocks ({row_blocks})"
    first = chain[0] if chain is not None else None
    halo = chain[3][y_dim] if chain is not None else 0
    return ConvPoolMatch(m, pm, y_dim, x_dim, s, row_blocks, pad, first, halo), "conv+pool"


# Row-block iterations (batch x pooled rows) below which the padding keeps its own loop nest:
# with the padding inside the row loop only the rows are parallel, too few for the threads.
MIN_ROW_BLOCKS = 8


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
    fvar = conv2d._loop_var_of(sch, main, "f", m.loop_roles)
    f_dim = next(i for i, r in enumerate(wr.region) if conv2d._same_var(r.min, fvar))
    order = [i for i in range(n_dims) if i != f_dim] + [f_dim]
    sch.transform_layout(main, ("write", 0), lambda *idx: [idx[i] for i in order])
    fmap = conv2d.pack_index_map(m.w_roles, nr)
    if pack_param:
        sch.transform_layout(main, ("read", m.w_index), fmap)
    else:
        cr = sch.cache_read(main, m.w_index, "global")
        sch.transform_layout(main, ("read", m.w_index), fmap)
        lps = sch.get_loops(cr)
        sch.parallel(lps[0]) if lps else None
    # which spatial loop is the pooled row axis
    st = sch.get(main)
    yvar = st.writes[0].region[order.index(cm.y_dim)].min
    loops = sch.get_loops(main)
    vals = conv2d._iter_values(sch, main)
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
    vals = conv2d._iter_values(sch, block)
    fi = m1.loop_roles.index("f")
    f_var = next(iv.var for iv, v in zip(st.iter_vars, vals) if _uses_var(v, lvars[fi]))
    f_dim = next(i for i, r in enumerate(wr.region) if conv2d._same_var(r.min, f_var))
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
    fmap = conv2d.pack_index_map(m1.w_roles, nr)
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


def rule(sched, name, func, target, cpu, const_args, db, measure_ok):
    """The conv_pool rule inside :class:`FluidMLSchedule` (``sched``): ``((func, Decision,
    pack) | None, why)``; ``why`` is empty when ``func`` is not a fused conv+pool at all."""
    from .fluidml_schedule import Decision

    pm, _ = analyze_pool(func)
    if pm is None:
        return None, ""
    cm, why = analyze(func)
    if cm is None:
        return None, "" if why.startswith("the pool does not read") else why
    m = cm.conv
    tiles = candidates(cm, cpu, min(sched.options.tune_trials, 4))[: max(4, min(
        sched.options.tune_trials, 6))]
    if not tiles:
        return None, f"no register tile divides channels {m.f} / columns {m.x}"

    def tile(cfg):
        return (cfg["mr"], cfg["nv"], cfg.get("rb", 0), cfg.get("pad_rows", 0))

    def build(cfg):
        return schedule_conv_pool(func, cpu, const_args, tile(cfg), cm)[0].mod["main"]

    cands = [{"mr": mr, "nv": nv, "rb": rb, "pad_rows": p} for mr, nv, rb, p in tiles]
    chosen = sched._choose(
        name, func, "conv_pool", f"f{m.f}x{m.x}s{cm.s}p{tiles[0][3]}", cands, build, m.flops,
        target, cpu, db, measure_ok,
    )
    cfg, measured, seconds = chosen[:3]
    note = chosen[3] if len(chosen) > 3 else ""  # newer _choose: where the choice came from
    # the fusion pass checked one schedule of this kernel; should the chosen one fail, the
    # others (whole padded copy first) rather than a kernel holding the whole conv output
    sch, why, pack, err = None, "", None, None
    for c in [cfg] + [dict(c, pad_rows=0) for c in cands] + cands:
        try:
            sch, why, pack = schedule_conv_pool(func, cpu, const_args, tile(c), cm)
        except Exception as e:  # noqa: BLE001 - a tile/placement this kernel does not take
            err = err or e
            continue
        if c is not cfg:
            why += f" (chosen {cfg} failed: {type(err).__name__})"
        break
    if sch is None:
        raise err or RuntimeError(why)
    why += " " + sched._how(measured, seconds, m.flops) + note
    return (sch.mod["main"], Decision(name, "conv_pool", why, cfg, measured, seconds), pack), ""
