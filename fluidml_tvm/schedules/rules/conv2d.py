"""conv2d rule: direct convolution in any data layout (NCHW, NHWC), any stride, any sizes.

Matches the one reduction block ``C[.. f .. y .. x ..] += D[..] * W[.. f .. r ..]`` whose weight
``W`` is indexed by plain variables and owns one output axis ``f`` (the output channel) that the
data does not index - a grouped convolution once its channels are split into (group, channel in
the group) (:mod:`.grouped`); depthwise ones go to :mod:`.depthwise`. One output channel and a
1x1 map (squeeze-and-excitation) are matched too. The kernel is the matmul kernel seen through
the window:

* vector axis = output channels ``f`` (``nr = nv x lanes``); the weight is read packed
  ``[F/nr, .., nr]`` (a constant weight is packed at compile time by the caller);
* register tile = ``mr`` output columns ``x`` x ``nr`` channels, accumulated in a tile whose
  channels are innermost (the accumulator buffer is re-laid ``[.., y, x, f]``), the data value
  broadcast, ``mr``/``nv`` unrolled, lanes vectorized; a kernel with a window takes at most two
  thirds of the vector registers as accumulators (:func:`max_accumulators`);
* ``fuse(batch, channel panel, output rows)`` parallel | column tiles | reduction | tile;
* bias/ReLU epilogues computed per tile; the padding stage stays a parallel loop nest of its own;
  a 1x1 kernel reading many NCHW input planes directly copies one row of each into a contiguous
  buffer per output row first (:func:`.conv2d_policy.stages_input_rows`);
* any channel / column count (issue 13): where no tile divides them, or only a 1-row one, the
  tiles come from :mod:`.tiles` and the kernel computes whole tiles over channels padded with
  zero weights and padded columns (:mod:`.pad`; the reason says what was padded to what);
  vectors may be half or a quarter of the target's (8 channels a group); few output channels
  (one, two, a group's 8 at stride 1) take vectors along the columns instead
  (:mod:`.conv2d_cols`);
* 1x1 stride-1 kernels (``conv1x1``, ``fuse_rows``): rows and columns become one axis, so the
  tile of positions may straddle rows (``mr`` divides rows x columns, not only the columns);
  off by default (no whole-model gain beyond noise, see ``Options.schedule_off``).

The analysis is :mod:`.conv2d_match`, the decisions by shape :mod:`.conv2d_policy`; this module
has the candidates, the kernel and :class:`Conv2dRule`.
"""

from __future__ import annotations

from tvm import s_tir, tirx

from ..common import as_int, loop_kinds, root_blocks, vectorize_inner
from ..target_info import CPUInfo
from . import tiles
from .base import Context, Rule
from .conv2d_cols import (
    cols_candidates,
    cols_score,
    expansion_candidates,
    pointwise_candidates,
    schedule_conv2d_cols,
    schedule_pointwise_cols,
)
from .conv2d_match import (  # analyze: the rule's match, also for passes.fuse_conv_pool
    ConvMatch,
    analyze,  # noqa: F401
    analyze_any,
    loop_var_of,
    loops_by_role,
    merge_rows,
    pack_weight,
    pad_to_tiles,
    same_var,
)
from .conv2d_policy import (  # noqa: F401 - also read as conv2d.<name> (tests, docs)
    EXPANSION_MAX_K,
    STAGE_MAX_WEIGHT_BYTES,
    STAGE_MIN_PLANES,
    expansion_cols,
    max_accumulators,
    stages_input_rows,
)
from .injective import broadcast_costly, schedule_spatial_block
from .pad import schedule_padded_copy


def candidates(m: ConvMatch, cpu: CPUInfo, budget: int = 8) -> list[tuple[int, int, int]]:
    """(mr, nv, rb) register tiles dividing the column and channel extents, best guess first:
    those whose accumulators, weight vectors and the broadcast fit the registers (at most
    :func:`max_accumulators` accumulators), by FLOPs per load; ``rb`` > 0 blocks the outermost
    reduction loop (input channels) by ``rb``."""
    lanes = cpu.lanes(32)
    cap = max_accumulators(m, cpu)
    tiles = []
    for nv in (4, 3, 2, 1):
        if m.f % (nv * lanes):
            continue
        for mr in (14, 12, 8, 7, 6, 5, 4, 3, 2, 1):
            if mr * nv + 2 > cpu.vector_registers or m.x % mr:
                continue
            fits = mr * nv + nv + 1 <= cpu.vector_registers and mr * nv <= cap
            tiles.append(((fits, mr * nv / (mr + nv), mr * nv), (mr, nv)))
    tiles.sort(reverse=True)
    out = [t + (0,) for _, t in tiles]
    # reduction-blocked variants of the two best tiles (deep layers: long reductions)
    blocked = [(mr, nv, 32) for mr, nv, _ in out[:2] if m.r0 % 32 == 0 and m.r0 > 32]
    out = out[:1] + blocked[:1] + out[1:2] + blocked[1:] + out[2:]
    return out[: max(1, budget)]


def padded_candidates(m: ConvMatch, cpu: CPUInfo, budget: int = 8) -> list[tuple]:
    """(mr, nv, rb, vl) tiles of any channel / column count (:func:`.tiles.padded_tiles`):
    channels padded to whole ``nv x vl`` panels, columns to whole ``mr`` tiles, best first;
    the reduction-blocked variant of the best tile second, as in :func:`candidates`."""
    out = [(mr, nv, 0, vl) for mr, nv, vl in tiles.padded_tiles(
        m.x, m.f, cpu, max_acc=max_accumulators(m, cpu))]
    if out and m.r0 % 32 == 0 and m.r0 > 32:
        out.insert(1, out[0][:2] + (32,) + out[0][3:])
    return out[: max(1, budget)]


def tile_candidates(m: ConvMatch, cpu: CPUInfo, budget: int) -> list[tuple]:
    """The dividing tiles (:func:`candidates`) or, where none divides or they are poor, the
    padded ones (:func:`padded_candidates`)."""
    lanes = cpu.lanes(32)
    div = candidates(m, cpu, budget)
    pad = padded_candidates(m, cpu, budget)
    best_div = tiles.score(m.x, m.f, div[0][0], div[0][1], lanes, lanes) if div else None
    best_pad = tiles.score(m.x, m.f, pad[0][0], pad[0][1], pad[0][3], lanes) if pad else None
    one_row = bool(div) and div[0][0] == 1 and m.x > 1
    return pad if tiles.prefer_padded(best_div, best_pad, one_row) else div


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


def choose_tile(m: ConvMatch, cpu: CPUInfo) -> tuple[int, int] | None:
    c = candidates(m, cpu, 1)
    return c[0] if c else None


def schedule_conv2d(func: tirx.PrimFunc, cpu: CPUInfo, const_args=None, tile=None,
                    fuse_rows: bool = False, match: ConvMatch | None = None):
    """Returns ``(schedule, reason, pack)``: schedule None when the rule does not apply; ``pack``
    ``{weight param index: (("conv", roles..), nr)}`` when the weight parameter is packed.
    ``fuse_rows`` (1x1 stride-1 kernels, ``ConvMatch.rows``): rows and columns are one axis, the
    tile's ``mr`` divides their product (:func:`candidates_pointwise`). ``match``: the kernel's
    match when the caller has it (loops of role ``"p"``, a transposed conv's output phases, run
    inside the parallel loop and the epilogue follows them there)."""
    if match is not None:
        m, why = match, "given"
    else:
        m, why = analyze_any(func, {i for i, c in (const_args or {}).items() if c})
    if m is None:
        return None, why, None
    func = m.func if m.func is not None else func  # a grouped conv: its channels split
    tile = tile or choose_tile(m, cpu)
    if tile is None:
        return None, f"no register tile divides channels {m.f} / columns {m.x}", None
    mr, nv = tile[:2]
    rb = tile[2] if len(tile) > 2 else 0
    staged_rows = False
    lanes = tile[3] if len(tile) > 3 and tile[3] else cpu.lanes(32)  # lanes of one vector
    nr = nv * lanes
    pack_param = bool(const_args) and m.w_param is not None and const_args.get(m.w_param, False)
    padded, shape, guarded = "", f"F={m.f} X={m.x}", set()
    if m.f % nr or (m.x % mr and not fuse_rows):  # whole tiles over zero-padded channels /
        if fuse_rows:  # columns (pad.py); a rows x columns tile divides rows x columns
            return None, "rows x columns tiles need whole channel panels", None
        func, m, said, guarded = pad_to_tiles(func, m, nr, mr, pack_param)
        if func is None:
            return None, said, None
        padded = ", " + ", ".join(said)
    sch = s_tir.Schedule(func)
    main = sch.get_sblock(m.block)
    blocks = root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    pos = names.index(m.block)
    pre = blocks[:pos]
    epis = blocks[pos + 1:]
    once = []  # costly epilogues the last one broadcasts: computed once per tile, not inlined
    for b in epis[:-1]:
        if broadcast_costly(sch, b):
            once.append(b)
        else:
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
        m, y_dim = merge_rows(sch, main, out, m)
    # accumulator with channels innermost
    c_roles = m.loop_roles  # loops are in output-index order for spatial axes (legalized form)
    wr = sch.get(acc_block).writes[0]
    n_dims = len(wr.region)
    fvar = loop_var_of(sch, main, "f", c_roles)
    f_dim = next(i for i, r in enumerate(wr.region) if same_var(r.min, fvar))
    order = [i for i in range(n_dims) if i != f_dim] + [f_dim]
    if fuse_rows:  # [.., y * X + x, f]: a tile of positions is one exact region of it
        keep = [i for i in order if i not in (y_dim, y_dim + 1, f_dim)]

        def acc_map(*idx):
            return [*[idx[i] for i in keep], idx[y_dim] * cols + idx[y_dim + 1], idx[f_dim]]

        sch.transform_layout(acc_block, ("write", 0), acc_map)
    else:
        sch.transform_layout(acc_block, ("write", 0), lambda *idx: [idx[i] for i in order])
    # weight packing
    pack_weight(sch, main, m, nr, pack_param)
    loops = sch.get_loops(main)
    phases = [lp for lp, r in zip(loops, m.loop_roles) if r == "p"]
    fl, xl, _, reds, spatial_outer = loops_by_role(loops, m.loop_roles)
    spatial_outer = [lp for lp in spatial_outer if not any(lp.same_as(p) for p in phases)]
    f0, f1, f2 = sch.split(fl, [m.f // nr, nv, lanes])  # (padded) channels: whole tiles
    x0, x1 = sch.split(xl, [m.x // mr, mr])
    r_ext = sch.get(reds[0]).extent
    if rb and as_int(r_ext) and as_int(r_ext) % rb == 0 and as_int(r_ext) > rb:
        # reduction blocking: a block of rb input channels of the weight panel stays in L1
        # while the whole output row is swept; partial sums wait in the row's accumulators
        r0, r1 = sch.split(reds[0], [as_int(r_ext) // rb, rb])
        sch.reorder(f0, *spatial_outer, *phases, r0, x0, r1, *reds[1:], x1, f1, f2)
        init_at, epi_at = r0, None
    else:
        rb = 0
        staged_rows = stages_input_rows(m) and not pre and not fuse_rows and not phases
        if staged_rows:  # a row of every input plane copied once, swept by all channel tiles
            sch.reorder(*spatial_outer, f0, x0, *reds, x1, f1, f2)
        else:
            sch.reorder(f0, *spatial_outer, *phases, x0, *reds, x1, f1, f2)
        init_at, epi_at = reds[0], (None if phases else x0)
    if staged_rows:
        par = sch.fuse(*spatial_outer)
    elif fuse_rows and not rb:
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
    at = epi_at if epi_at is not None else par
    for b in once:  # the gate of a tile's channels as whole vectors, then the broadcast
        sch.reverse_compute_at(b, at, preserve_unit_loops=True)
        loops = sch.get_loops(b)
        below = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(at))) + 1
        if len(loops) - below > 1:
            sch.fuse(*loops[below:])
        vectorize_inner(sch, b, cpu.lanes(32), whole=4, tail=False)
    sch.reverse_compute_at(out, at, preserve_unit_loops=True)
    if once:  # rows of a broadcast epilogue are whole vectors (a padded last one) to 64 lanes
        vectorize_inner(sch, out, cpu.lanes(32), whole=4, tail=False)
    else:
        vectorize_inner(sch, out, cpu.lanes(32))
    if staged_rows:
        wb = sch.get(main)
        data_i = next(i for i, r in enumerate(wb.reads)
                      if i != m.w_index and not r.source.same_as(wb.writes[0].source))
        staged = sch.cache_read(main, data_i, "global")
        sch.compute_at(staged, par, preserve_unit_loops=True)
        vectorize_inner(sch, staged, cpu.lanes(32))
    for b in pre:  # padding / prologue stages: their own parallel loop nests
        kinds = loop_kinds(sch, b)
        if sch.get(b).name_hint in guarded:  # grown: zeros, then the copy (pad.py)
            schedule_padded_copy(sch, b, cpu.lanes(32))
        elif kinds is not None and all(k == "S" for k in kinds):
            schedule_spatial_block(sch, b, cpu.lanes(32))
    sch.decompose_reduction(main, init_at)
    reason = f"conv2d {shape} tile {mr}x{nr} (mr x channels)"
    reason += f" of {lanes}-lane vectors" if lanes != cpu.lanes(32) else ""
    reason += padded
    reason += f", 1x1: rows x columns ({m.x}) one axis for the tile" if fuse_rows else ""
    reason += f", reduction blocks of {rb}" if rb else ""
    reason += f", a row of the {m.r0} input planes copied per row" if staged_rows else ""
    if once:
        reason += f", {len(once)} costly epilogue(s) computed once per value, then broadcast"
    reason += f", weight packed [F/{nr},..,{nr}]"
    reason += " at compile time" if pack_param else " at run time"
    roles = ("conv",) + tuple(m.w_roles)
    if m.groups > 1:  # the caller's weight [F, ..] is re-laid [G, F/G, ..] first
        roles = ("groups", m.groups, m.w_fdim) + roles
        reason = f"grouped ({m.groups} groups) " + reason
    pack = {m.w_param: (roles, nr)} if pack_param else None
    return sch, reason, pack


def _alternate(first: list, rest: list, budget: int) -> list:
    """``first[0], rest[0], first[1], rest[1], ..`` then what is left of either, ``budget`` of
    them."""
    mixed = [c for pair in zip(first, rest) for c in pair]
    return (mixed + first[len(rest):] + rest[len(first):])[:budget]


class Conv2dRule(Rule):
    """The conv2d rule: up to 4 register tiles measured per shape (a CNN has many distinct conv
    shapes, each candidate costs a compile, and beyond the 4 best-ranked tiles - 2 tiles with and
    without reduction blocking - little is won); with ``conv1x1`` on, a 1x1 stride-1 kernel also
    races one tile over rows x columns (measured only, never the analytic pick). A 1x1 stride-1
    NCHW kernel takes the position vectors (:mod:`.conv2d_cols`) first, alternating."""

    name = "conv2d"

    def analyze(self, func, ctx: Context):
        return analyze_any(func, {i for i, c in ctx.const_args.items() if c})

    def candidates(self, m: ConvMatch, ctx: Context) -> list[dict]:
        cands = self._candidates(m, ctx)
        budget = min(ctx.options.tune_trials, 4)
        pw = [] if not ctx.options.rule_on("pointwise_cols") else [
            {"mr": nf, "nv": nv, "rb": 0, "pw": 1}
            for nf, nv in pointwise_candidates(m, ctx.cpu, budget)]
        if not pw:
            return cands
        # a 1x1 stride-1 NCHW conv: the position vectors first (conv2d_cols.py), alternating
        return _alternate(pw, cands, budget)

    def _candidates(self, m: ConvMatch, ctx: Context) -> list[dict]:
        budget = min(ctx.options.tune_trials, 4)
        found = tile_candidates(m, ctx.cpu, budget)
        lanes = ctx.cpu.lanes(32)
        # shapes a channel tile divides keep their tiles (their history); the others may take
        # the column vectors
        cols = [] if candidates(m, ctx.cpu, 1) else cols_candidates(m, ctx.cpu, budget)
        best = tiles.score(m.x, m.f, found[0][0], found[0][1], (found[0] + (0, 0, lanes))[3]
                           or lanes, lanes) if found else None
        if cols and tiles.prefer_padded(best, cols_score(m, ctx.cpu, cols[0])):
            # few output channels: the vectors along the columns (conv2d_cols.py)
            return [{"mr": nf, "nv": nv, "rb": 0, "cols": 1} for nf, nv in cols]
        if not found:
            return []
        cands = []
        for t in found:
            c = {"mr": t[0], "nv": t[1], "rb": t[2]}
            if len(t) > 3 and t[3] != lanes:
                c["vl"] = t[3]  # half-width vectors (only where the padded tiles are taken)
            cands.append(c)
        if ctx.options.rule_on("conv1x1"):
            # 1x1 stride-1: one more tile over rows x columns (14x14 and 28x28 maps, where the
            # column count caps the tile)
            cands += [{"mr": mr, "nv": nv, "rb": 0, "p": 1}
                      for mr, nv, _ in candidates_pointwise(m, ctx.cpu, 1)]
        expansion = [] if not expansion_cols(m) else [
            {"mr": nf, "nv": nv, "rb": 0, "cols": 1}
            for nf, nv in expansion_candidates(m, ctx.cpu, budget)]
        if expansion:  # a 1x1 expansion: the column vectors first, alternating with the rest
            return _alternate(expansion, cands, budget)
        return cands

    def no_candidates(self, m: ConvMatch, ctx: Context) -> str:
        return f"no register tile divides channels {m.f} / columns {m.x}"

    def workload(self, m: ConvMatch, candidates: list[dict], ctx: Context) -> str:
        # the rows x columns tile has its own cache entry: switched off, the choice among the
        # rest stands
        lanes = ctx.cpu.lanes(32)
        padded = any(m.f % (c["nv"] * c.get("vl", lanes)) or m.x % c["mr"] or "vl" in c
                     or "cols" in c for c in candidates if "p" not in c and "pw" not in c)
        return (f"f{m.f}x{m.x}" + (":p" if any("p" in c for c in candidates) else "")
                + (":pad" if padded else "")
                + (":pw" if any("pw" in c for c in candidates) else ""))

    def flops(self, m: ConvMatch) -> float:
        return m.flops

    def apply(self, func, m: ConvMatch, config: dict, ctx: Context):
        if config.get("pw"):
            sch, why, pack = schedule_pointwise_cols(func, m, ctx.cpu, ctx.const_args,
                                                     (config["mr"], config["nv"]))
            return sch.mod["main"], why, pack
        if config.get("cols"):
            sch, why, pack = schedule_conv2d_cols(func, m, ctx.cpu, ctx.const_args,
                                                  (config["mr"], config["nv"]))
            return sch.mod["main"], why, pack
        tile = (config["mr"], config["nv"], config.get("rb", 0), config.get("vl", 0))
        sch, why, pack = schedule_conv2d(func, ctx.cpu, ctx.const_args, tile,
                                         fuse_rows=bool(config.get("p")))
        return sch.mod["main"], why, pack
