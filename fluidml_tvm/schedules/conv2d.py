"""conv2d rule: direct convolution in any data layout (NCHW, NHWC), any stride, 1x1 and 3x3.

Matches the one reduction block ``C[.. f .. y .. x ..] += D[..] * W[.. f .. r ..]`` whose weight
``W`` is indexed by plain variables and owns one output axis ``f`` (the output channel) that the
data does not index (depthwise/grouped convolutions, where the data is indexed by ``f`` too, are
left to the generic reduction rule). The kernel is the matmul kernel seen through the window:

* vector axis = output channels ``f`` (``nr = nv x lanes``); the weight is read packed
  ``[F/nr, .., nr]`` (a constant weight is packed at compile time by the caller);
* register tile = ``mr`` output columns ``x`` x ``nr`` channels, accumulated in a tile whose
  channels are innermost (the accumulator buffer is re-laid ``[.., y, x, f]``), the data value
  broadcast, ``mr``/``nv`` unrolled, lanes vectorized;
* ``fuse(batch, channel panel, output rows)`` parallel | column tiles | reduction | tile;
* bias/ReLU epilogues computed per tile; the padding stage stays a parallel loop nest of its own;
* 1x1 stride-1 kernels (``conv1x1``, ``fuse_rows``): rows and columns become one axis, so the
  tile of positions may straddle rows (``mr`` divides rows x columns, not only the columns);
  off by default (no whole-model gain beyond noise, see ``Options.schedule_off``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tvm import s_tir, tirx

from .common import (
    as_int,
    coefficient,
    extent,
    loop_kinds,
    match_sum_of_products,
    plain_indices,
    root_blocks,
    vectorize_inner,
)
from .injective import schedule_spatial_block
from .matmul import _iter_values
from .target_info import CPUInfo


@dataclass
class ConvMatch:
    block: str
    w_index: int  # index of the weight in the block's reads
    w_param: int | None  # position of the weight among the PrimFunc's params
    w_roles: list[str]  # per weight dim: "f" or "r" (reduction) or "1"
    loop_roles: list[str]  # per loop: "f", "x", "s" (other spatial), "r"
    f: int
    x: int
    flops: float
    r0: int = 1  # extent of the outermost reduction loop (input channels in NCHW)
    # pointwise (1x1, stride 1) kernels: extent of the output-row loop right outside the column
    # loop, which the conv1x1 tiles fuse with it (tiles then divide rows x columns); 0 otherwise
    rows: int = 0


def loops_by_role(loops, roles, y_index: int | None = None):
    """A conv block's loops by role: ``(f, x, y, reductions, other spatial)``. ``y`` is the loop at
    ``y_index`` (None when not asked for; that loop then counts as other spatial)."""
    fl = xl = yl = None
    reds, spatial = [], []
    for i, (lp, role) in enumerate(zip(loops, roles)):
        if role == "f":
            fl = lp
        elif role == "x":
            xl = lp
        elif role == "r":
            reds.append(lp)
        elif i == y_index:
            yl = lp
        else:
            spatial.append(lp)
    return fl, xl, yl, reds, spatial


def analyze(func: tirx.PrimFunc) -> tuple[ConvMatch | None, str]:
    sop, why = match_sum_of_products(func)
    if sop is None:
        return None, why
    sch, main, st = sop.sch, sop.block, sop.stmt
    kinds, ext = sop.kinds, sop.extents

    plain = plain_indices

    def used(region):
        vs = set()
        for r in region.region:
            vs |= {v for v in ext if _uses(r.min, v)}
        return vs

    reads = list(st.reads)
    w_i = next((i for i, r in enumerate(reads) if plain(r) is not None), None)
    if w_i is None:
        return None, "no operand indexed by plain variables"
    d_i = 1 - w_i
    w_vars = set(v for v in plain(reads[w_i]) if v is not None)
    d_vars = used(reads[d_i])
    c_vars = plain(st.writes[0])
    if c_vars is None:
        return None, "output not indexed by plain variables"
    red = [v for v in ext if kinds[v] == tirx.IterVar.CommReduce and ext[v] > 1]
    if not red or any(v not in w_vars or v not in d_vars for v in red):
        return None, "reduction axes not in both operands"
    fs = [v for v in c_vars if v is not None and v in w_vars and v not in d_vars and ext[v] > 1]
    if len(fs) != 1:
        return None, "no single output-channel axis (depthwise/grouped or not a conv)"
    f = fs[0]
    xs = [v for v in c_vars if v is not None and v in d_vars and ext[v] > 1]
    if not xs:
        return None, "no spatial output axis"
    x = xs[-1]  # the innermost spatial axis (output columns)
    if len(red) < 2 and all(_is_plain_in(reads[d_i], v) for v in xs):
        return None, "a matmul, not a convolution"
    vals = _iter_values(sch, main)
    loops = sch.get_loops(main)
    lvars = [sch.get(lp).loop_var for lp in loops]
    roles = ["s"] * len(loops)
    for iv, val in zip(st.iter_vars, vals):
        if ext[iv.var] == 1:
            continue
        if not isinstance(val, tirx.Var):
            return None, "binding is not a loop variable"
        i = next((i for i, lv in enumerate(lvars) if lv.same_as(val)), None)
        if i is None:
            return None, "binding is not a loop variable"
        if kinds[iv.var] == tirx.IterVar.CommReduce:
            roles[i] = "r"
        elif iv.var.same_as(f):
            roles[i] = "f"
        elif iv.var.same_as(x):
            roles[i] = "x"
    w_roles = []
    for v in plain(reads[w_i]):
        if v is None or ext.get(v, 1) == 1:
            w_roles.append("1")
        else:
            w_roles.append("f" if v.same_as(f) else "r")
    w_param = next((i for i, p in enumerate(func.params) if p.same_as(reads[w_i].source)), None)
    flops = 2.0
    for v in ext:
        flops *= ext[v]
    r0 = next((extent(sch, lp) for lp, r in zip(loops, roles) if r == "r"), 1) or 1
    rows = _pointwise_rows(sch, loops, roles, lvars, st, vals, reads[d_i], x, red)
    match = ConvMatch(st.name_hint, w_i, w_param, w_roles, roles, ext[f], ext[x], flops, r0,
                      rows)
    return match, "conv2d"


def _pointwise_rows(sch, loops, roles, lvars, st, vals, data, x, red) -> int:
    """Extent of the row loop a 1x1 stride-1 kernel can fuse with its column loop (0: none):
    one reduction axis (the channels), the row and column variables bound to adjacent loops in
    block order, each indexing the data with stride 1 and the output in adjacent dims."""
    if len(red) != 1 or "x" not in roles:
        return 0
    xi = roles.index("x")
    if xi == 0 or roles[xi - 1] != "s" or len(vals) != len(loops):
        return 0
    ivs = list(st.iter_vars)
    for i, val in enumerate(vals):  # iteration variable i bound to loop i (the legalized form)
        if not (isinstance(val, tirx.Var) and val.same_as(lvars[i])):
            return 0
    y = ivs[xi - 1].var
    if not ivs[xi].var.same_as(x):
        return 0
    for var in (x, y):
        dims = [r for r in data.region if _uses(r.min, var)]
        if len(dims) != 1 or coefficient(dims[0].min, var) != 1:
            return 0
    out = [r.min for r in st.writes[0].region]
    yd = next((i for i, e in enumerate(out) if _same_var(e, y)), None)
    if yd is None or yd + 1 >= len(out) or not _same_var(out[yd + 1], x):
        return 0
    return extent(sch, loops[xi - 1]) or 0


def _uses(expr, var) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def _is_plain_in(region, var) -> bool:
    return any(isinstance(r.min, tirx.Var) and r.min.same_as(var) for r in region.region)


def pack_index_map(w_roles: list[str], nr: int):
    """Weight dims -> ``[F/nr, other dims.., nr]``."""

    def fmap(*idx):
        f = next(i for i, r in zip(idx, w_roles) if r == "f")
        rest = [i for i, r in zip(idx, w_roles) if r != "f"]
        return [f // nr, *rest, f % nr]

    return fmap


def candidates(m: ConvMatch, cpu: CPUInfo, budget: int = 8) -> list[tuple[int, int, int]]:
    """(mr, nv, rb) register tiles dividing the column and channel extents, best guess first:
    those whose accumulators, weight vectors and the broadcast fit the registers, by FLOPs per
    load; ``rb`` > 0 blocks the outermost reduction loop (input channels) by ``rb``."""
    lanes = cpu.lanes(32)
    tiles = []
    for nv in (4, 3, 2, 1):
        if m.f % (nv * lanes):
            continue
        for mr in (14, 12, 8, 7, 6, 5, 4, 3, 2, 1):
            if mr * nv + 2 > cpu.vector_registers or m.x % mr:
                continue
            fits = mr * nv + nv + 1 <= cpu.vector_registers
            tiles.append(((fits, mr * nv / (mr + nv), mr * nv), (mr, nv)))
    tiles.sort(reverse=True)
    out = [t + (0,) for _, t in tiles]
    # reduction-blocked variants of the two best tiles (deep layers: long reductions)
    blocked = [(mr, nv, 32) for mr, nv, _ in out[:2] if m.r0 % 32 == 0 and m.r0 > 32]
    out = out[:1] + blocked[:1] + out[1:2] + blocked[1:] + out[2:]
    return out[: max(1, budget)]


def candidates_pointwise(m: ConvMatch, cpu: CPUInfo, budget: int = 2) -> list[tuple]:
    """(mr, nv, 0) tiles of a 1x1 stride-1 kernel (``m.rows``) whose ``mr`` divides rows x
    columns, for :func:`schedule_conv2d` with ``fuse_rows``: a 7x7 or 14x14 map gets tiles of 4
    to 8 positions (``mr`` dividing the columns alone caps them at 7 or 2)."""
    if not m.rows:
        return []
    lanes = cpu.lanes(32)
    p = m.rows * m.x
    tiles = []
    for nv in (4, 3, 2, 1):
        if m.f % (nv * lanes):
            continue
        for mr in (14, 12, 8, 7, 6, 5, 4, 3, 2):
            # only the tiles the column loop alone cannot have (the others exist unfused)
            if mr * nv + 2 > cpu.vector_registers or p % mr or m.x % mr == 0:
                continue
            fits = mr * nv + nv + 1 <= cpu.vector_registers
            tiles.append(((fits, mr * nv / (mr + nv), mr * nv), (mr, nv, 0)))
    tiles.sort(reverse=True)
    return [t for _, t in tiles][: max(1, budget)]


def _fuse_rows(sch, main, out, m: ConvMatch) -> ConvMatch:
    """Rewrite the iteration space of the conv block and of its output block so rows x columns
    is one axis ``p = y * X + x``; returns the match for the rewritten kernel."""
    xi = m.loop_roles.index("x")
    yi = xi - 1
    X = m.x
    n_iv = len(sch.get(main).iter_vars)

    def main_map(*iv):
        return [*iv[:yi], iv[yi] * X + iv[xi], *iv[xi + 1:]]

    wr = [r.min for r in sch.get(main).writes[0].region]
    ivs = sch.get(main).iter_vars
    yd = next(i for i, e in enumerate(wr) if _same_var(e, ivs[yi].var))
    sch.transform_block_layout(main, tirx.IndexMap.from_func(main_map, ndim=n_iv))
    n_out = len(sch.get(out).iter_vars)

    def out_map(*iv):
        return [*iv[:yd], iv[yd] * X + iv[yd + 1], *iv[yd + 2:]]

    sch.transform_block_layout(out, tirx.IndexMap.from_func(out_map, ndim=n_out))
    roles = m.loop_roles[:yi] + m.loop_roles[xi:]
    return dataclasses.replace(m, loop_roles=roles, x=m.rows * X, rows=0), yd


def choose_tile(m: ConvMatch, cpu: CPUInfo) -> tuple[int, int] | None:
    c = candidates(m, cpu, 1)
    return c[0] if c else None


def schedule_conv2d(func: tirx.PrimFunc, cpu: CPUInfo, const_args=None, tile=None,
                    fuse_rows: bool = False):
    """Returns ``(schedule, reason, pack)``: schedule None when the rule does not apply; ``pack``
    ``{weight param index: (("conv", roles..), nr)}`` when the weight parameter is packed.
    ``fuse_rows`` (1x1 stride-1 kernels, ``ConvMatch.rows``): rows and columns are one axis, the
    tile's ``mr`` divides their product (:func:`candidates_pointwise`)."""
    m, why = analyze(func)
    if m is None:
        return None, why, None
    tile = tile or choose_tile(m, cpu)
    if tile is None:
        return None, f"no register tile divides channels {m.f} / columns {m.x}", None
    mr, nv = tile[:2]
    rb = tile[2] if len(tile) > 2 else 0
    lanes = cpu.lanes(32)
    nr = nv * lanes
    if m.f % nr:
        return None, f"tile {nv} x {lanes} lanes does not divide channels {m.f}", None
    pack_param = bool(const_args) and m.w_param is not None and const_args.get(m.w_param, False)
    sch = s_tir.Schedule(func)
    main = sch.get_sblock(m.block)
    blocks = root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    pos = names.index(m.block)
    pre = blocks[:pos]
    epis = blocks[pos + 1:]
    for b in epis[:-1]:
        sch.compute_inline(b)
    if epis:
        out = epis[-1]
        acc_block = main
    else:
        out = sch.cache_write(main, 0, "global")
        acc_block = main
    cols = m.x
    fuse_rows = bool(fuse_rows and m.rows)
    if fuse_rows:
        m, y_dim = _fuse_rows(sch, main, out, m)
    # accumulator with channels innermost
    c_roles = m.loop_roles  # loops are in output-index order for spatial axes (legalized form)
    wr = sch.get(acc_block).writes[0]
    n_dims = len(wr.region)
    fvar = _loop_var_of(sch, main, "f", c_roles)
    f_dim = next(i for i, r in enumerate(wr.region) if _same_var(r.min, fvar))
    order = [i for i in range(n_dims) if i != f_dim] + [f_dim]
    if fuse_rows:  # [.., y * X + x, f]: a tile of positions is one exact region of it
        keep = [i for i in order if i not in (y_dim, y_dim + 1, f_dim)]

        def acc_map(*idx):
            return [*[idx[i] for i in keep], idx[y_dim] * cols + idx[y_dim + 1], idx[f_dim]]

        sch.transform_layout(acc_block, ("write", 0), acc_map)
    else:
        sch.transform_layout(acc_block, ("write", 0), lambda *idx: [idx[i] for i in order])
    # weight packing
    fmap = pack_index_map(m.w_roles, nr)
    if pack_param:
        sch.transform_layout(main, ("read", m.w_index), fmap)
    else:
        cr = sch.cache_read(main, m.w_index, "global")
        sch.transform_layout(main, ("read", m.w_index), fmap)
        lps = sch.get_loops(cr)
        sch.parallel(lps[0]) if lps else None
    fl, xl, _, reds, spatial_outer = loops_by_role(sch.get_loops(main), m.loop_roles)
    f0, f1, f2 = sch.split(fl, [m.f // nr, nv, lanes])
    x0, x1 = sch.split(xl, [m.x // mr, mr])
    r_ext = sch.get(reds[0]).extent
    if rb and as_int(r_ext) and as_int(r_ext) % rb == 0 and as_int(r_ext) > rb:
        # reduction blocking: a block of rb input channels of the weight panel stays in L1
        # while the whole output row is swept; partial sums wait in the row's accumulators
        r0, r1 = sch.split(reds[0], [as_int(r_ext) // rb, rb])
        sch.reorder(f0, *spatial_outer, r0, x0, r1, *reds[1:], x1, f1, f2)
        init_at, epi_at = r0, None
    else:
        rb = 0
        sch.reorder(f0, *spatial_outer, x0, *reds, x1, f1, f2)
        init_at, epi_at = reds[0], x0
    if fuse_rows and not rb:
        # the rows are inside the tile loop now: share the tiles between the threads too (a
        # layer with one channel panel would otherwise run on one thread)
        par = sch.fuse(f0, *spatial_outer, x0)
        epi_at = par
    else:
        par = sch.fuse(f0, *spatial_outer)
    sch.parallel(par)
    sch.unroll(x1)
    sch.unroll(f1)
    sch.vectorize(f2)
    sch.reverse_compute_at(out, epi_at if epi_at is not None else par, preserve_unit_loops=True)
    vectorize_inner(sch, out, lanes)
    for b in pre:  # padding / prologue stages: their own parallel loop nests
        kinds = loop_kinds(sch, b)
        if kinds is not None and all(k == "S" for k in kinds):
            schedule_spatial_block(sch, b, lanes)
    sch.decompose_reduction(main, init_at)
    reason = f"conv2d F={m.f} X={m.x} tile {mr}x{nr} (mr x channels)"
    reason += f", 1x1: rows x columns ({m.x}) one axis for the tile" if fuse_rows else ""
    reason += f", reduction blocks of {rb}" if rb else ""
    reason += f", weight packed [F/{nr},..,{nr}]"
    reason += " at compile time" if pack_param else " at run time"
    pack = {m.w_param: (("conv",) + tuple(m.w_roles), nr)} if pack_param else None
    return sch, reason, pack


def _loop_var_of(sch, block, role, roles):
    st = sch.get(block)
    vals = _iter_values(sch, block)
    loops = sch.get_loops(block)
    lvars = [sch.get(lp).loop_var for lp in loops]
    idx = roles.index(role)
    for iv, val in zip(st.iter_vars, vals):
        if isinstance(val, tirx.Var) and val.same_as(lvars[idx]):
            return iv.var
    raise ValueError(f"no block var for loop role {role}")


def _same_var(e, v) -> bool:
    return isinstance(e, tirx.Var) and e.same_as(v)
