"""Depthwise conv2d rule (MobileNet's ``group = C`` convolutions), any layout, any stride.

Matches the one sum-of-products block ``C[.. f .. y .. x ..] += D[.. f .. y*s+ry .. x*s+rx ..] *
W[.. f .. ry, rx ..]`` where the output channel ``f`` indexes the data too (one input channel per
output channel) and every reduction axis of extent > 1 is a window axis. Such a kernel does ~9
FMAs per output element: it is bound by memory, not by the FMA units, so the schedule's job is to
read each input row from cache once and write each output once, vectorized:

* vector axis = the innermost output axis: ``x`` (output columns) in NCHW, ``f`` in NHWC; a
  register tile of ``nv`` vectors of it; the window loops (``ry``, ``rx``) unrolled inside the
  tile, the accumulators in a local buffer (registers);
* ``fuse(batch, channel)`` parallel (NCHW: the padded plane of the channel is computed right there,
  so it is still in L1/L2 when the window reads it; NHWC: ``fuse(batch, rows)``);
* epilogues (bias, ReLU6, ...) computed per tile;
* stride 2 along the columns (NCHW): the padded plane laid out even columns, then odd ones, so
  each window tap reads a contiguous vector; a plane up to ``PAIRS_PLANE_BYTES`` is zeroed, then
  its in-bound part copied by pairs of columns without a guard (:func:`.pad.iterate_pairs`).
"""

from __future__ import annotations

from tvm import s_tir, tirx

from ..common import (
    around,
    as_int,
    coefficient,
    extent,
    loop_kinds,
    loop_var_index,
    match_sum_of_products,
    plain_indices,
    vectorize_inner,
)
from ..target_info import CPUInfo
from . import depthwise_flat
from .base import Context, Rule
from .depthwise_tiles import (  # noqa: F401 - DepthwiseMatch is read as depthwise.<name>
    PAIRS_PLANE_BYTES,
    DepthwiseMatch,
    candidates,
    nhwc_candidates,
    plane_bytes,
    plane_group,
    planes_pair,
    row_tile,
    short_row_candidates,
)
from .injective import schedule_spatial_block
from .pad import (
    grow,
    iterate_even_odd,
    iterate_pairs,
    lay_out_even_odd,
    schedule_padded_copy,
)
from .tiles import up


def _vars_in(expr) -> list:
    return list(tirx.analysis.undefined_vars(expr))


def analyze(func: tirx.PrimFunc) -> tuple[DepthwiseMatch | None, str]:
    sop, why = match_sum_of_products(func, dtypes=("float32",))
    if sop is None:
        return None, why
    sch, st, ext = sop.sch, sop.stmt, sop.extents
    reads = sop.reads

    plain = plain_indices

    w_i = next((i for i, r in enumerate(reads) if plain(r) is not None), None)
    if w_i is None:
        return None, "no operand indexed by plain variables"
    d_reg = reads[1 - w_i]
    w_vars = {v for v in plain(reads[w_i]) if v is not None}
    c_vars = plain(sop.write)
    if c_vars is None:
        return None, "output not indexed by plain variables"
    # the variables of each data dim, unit axes left out (``f + rc`` with rc of extent 1)
    d_dims = [[x for x in _vars_in(r.min) if ext.get(x, 2) > 1] for r in d_reg.region]
    red = sop.reduction_vars()
    if not red:
        return None, "no reduction axis"
    if any(not any(v.same_as(w) for w in w_vars) for v in red):
        return None, "a reduction axis the weight does not index"
    # every reduction axis is a window axis: it shares a data dim with an output spatial axis
    for v in red:
        dim = next((dv for dv in d_dims if any(x.same_as(v) for x in dv)), None)
        if dim is None or len(dim) < 2:
            return None, "a reduction over channels (not depthwise)"
    out_vars = [v for v in c_vars if v is not None and ext[v] > 1]
    # the channel axis: in the output, the weight and the data, alone in its data dim
    fs = [v for v in out_vars if v in w_vars and any(len(dv) == 1 and dv[0].same_as(v)
                                                      for dv in d_dims)]
    if len(fs) != 1:
        return None, "no channel axis shared by output, weight and data (not depthwise)"
    f = fs[0]
    if not out_vars:
        return None, "no output axis"
    v = out_vars[-1]
    stride = 1
    if not v.same_as(f):
        dim = next((r for r in d_reg.region if any(x.same_as(v) for x in _vars_in(r.min))), None)
        if dim is None:
            return None, "innermost output axis not in the data"
        stride = coefficient(dim.min, v)
        if stride is None:
            return None, "innermost output axis indexes the data non-linearly"
    idx = loop_var_index(sch, sop.block)
    if idx is None:
        return None, "block bindings are not one loop per axis"
    loops = sch.get_loops(sop.block)
    roles = ["s"] * len(loops)
    for var, i in idx.items():
        if sop.kinds[var] == tirx.IterVar.CommReduce:
            roles[i] = "r"
        elif ext[var] == 1:
            continue
        elif var.same_as(v):
            roles[i] = "v"
        elif var.same_as(f):
            roles[i] = "f"
        elif not v.same_as(f) and len(c_vars) > 1 and var.same_as(c_vars[-2]):
            roles[i] = "y"  # columns innermost: the output rows
    if "v" not in roles:
        return None, "vector axis has no loop"
    flops = 2.0
    for e in ext.values():
        flops *= e
    v_axis = next(i for i, iv in enumerate(st.iter_vars) if iv.var.same_as(v))
    cols = 0
    if v.same_as(f) and len(c_vars) > 1 and c_vars[-2] is not None:
        cols = int(ext.get(c_vars[-2], 1))
    rows = int(ext[c_vars[-2]]) if "y" in roles else 0
    plane = tuple(as_int(d) or 0 for d in d_reg.source.shape[-2:]) if not v.same_as(f) else ()
    return (DepthwiseMatch(st.name_hint, roles, ext[v], v.same_as(f), flops, stride, v_axis,
                           cols, rows=rows, plane=plane, channels=int(ext[f])), "depthwise")


def schedule_depthwise(func: tirx.PrimFunc, cpu: CPUInfo, nv: int | None = None,
                       split_even_odd: bool = True, mr: int = 0, vl: int = 0):
    """Returns ``(schedule, reason)``; schedule None when the rule does not apply.
    ``split_even_odd``: for stride 2 along the vector axis, the padded input is laid out even
    columns then odd ones (contiguous loads per window tap). ``mr`` (with the channels
    innermost): the column tiles of :func:`_schedule_nhwc` (0: the row-parallel kernel they
    replaced, kept for ``benchmarks/bench_depthwise_tiles.py``); columns innermost: ``mr`` > 1
    output rows a tile (:func:`.depthwise_tiles.row_tile`); ``vl``: lanes a vector."""
    m, why = analyze(func)
    if m is None:
        return None, why
    cands = candidates(m, cpu)
    if not cands:
        return None, f"vector axis {m.v_extent} neither divisible by nor short against the lanes"
    if nv is None and m.f_is_vector:  # the first channels-innermost tile
        first = nhwc_candidates(m, cpu, 1)[0]
        nv, mr, vl = first["nv"], first["mr"], first.get("vl", 0)
    nv = cands[0] if nv is None else nv
    lanes = vl or cpu.lanes(32)
    padded = ""
    guarded = set()
    if nv and m.v_extent % (nv * lanes):  # whole tiles over padded columns / channels
        vp = up(m.v_extent, nv * lanes)
        func, _, guarded = grow(func, m.block, {m.v_axis: vp},
                                even_last=m.stride == 2 and not m.f_is_vector)
        padded = f", vector axis {m.v_extent} padded to {vp}"
        m, why = analyze(func)
        if m is None:
            return None, f"padded kernel: {why}"
    sch = s_tir.Schedule(func)
    main, pre, out = around(sch, m.block)
    split_pad = pairs = zeroed = False
    if m.stride == 2 and not m.f_is_vector and pre and split_even_odd:
        # stride 2 along the vector axis: lay the padded input out as [.., even, odd] columns
        # (w -> (w % 2, w // 2)), so each window tap reads a contiguous vector instead of every
        # other element
        pb = pre[-1]
        wbuf = sch.get(pb).writes[0].source
        last = as_int(wbuf.shape[-1])
        reads_main = [r.source for r in sch.get(main).reads]
        if last is not None and last % 2 == 0 and any(b.same_as(wbuf) for b in reads_main):
            pairs = plane_bytes(wbuf) <= PAIRS_PLANE_BYTES
            lay_out_even_odd(sch, pb, by_pairs=pairs)
            split_pad = True
    if m.f_is_vector and mr:
        return _schedule_nhwc(sch, main, m, pre, out, nv or 1, mr, lanes, padded, guarded)
    outer, reds, vl = _loops_by_role(sch, main, m)
    if nv:
        v0, v1, v2 = sch.split(vl, [m.v_extent // (nv * lanes), nv, lanes])
    else:
        v0, v2 = sch.split(vl, [1, m.v_extent])
        v1 = None
    inner = [v1, v2] if v1 is not None else [v2]
    rows = None  # a tile of mr output rows: their window taps share the input rows' loads
    if mr > 1 and m.rows % mr == 0:
        i = [r for r in m.loop_roles if r not in ("v", "r")].index("y")
        outer[i], rows = sch.split(outer[i], [m.rows // mr, mr])
    sch.reorder(*outer, v0, *reds, *([rows] if rows is not None else []), *inner)
    # parallel over the leading outer loops: (batch, channel) in NCHW - the rows stay inside so
    # the padded channel plane can be computed per iteration - (batch, rows) in NHWC
    f_pos = next((i for i, r in enumerate(m.loop_roles) if r == "f"), None)
    n_par = len(outer) if m.f_is_vector else min(len(outer), (f_pos or 0) + 1)
    par_loops = outer[:n_par]
    par = sch.fuse(*par_loops) if len(par_loops) > 1 else par_loops[0]
    channels = extent(sch, par) or 1
    group = 1 if m.f_is_vector else plane_group(sch, pre, channels)
    if group > 1:  # the padded planes of `group` channels, then their convolutions
        par, _ = sch.split(par, [channels // group, group])
    sch.parallel(par)
    _tile(sch, main, out, v0, reds, [lp for lp in (rows, v1) if lp is not None], v2, lanes)
    padded_here = False
    for b in pre:  # padding: per parallel iteration when it covers one channel plane
        kinds = loop_kinds(sch, b)
        if kinds is None or not all(k == "S" for k in kinds):
            continue
        if not m.f_is_vector:
            try:
                sch.compute_at(b, par, preserve_unit_loops=True)
                if split_pad and b.same_as(pre[-1]):
                    if pairs:
                        zeroed = iterate_pairs(sch, b, par)
                    else:
                        iterate_even_odd(sch, b)
                else:
                    vectorize_inner(sch, b, lanes, whole=4, tail=False)
                padded_here = True
                continue
            except Exception:  # noqa: BLE001 - not computable there: its own loop nest
                pass
        schedule_spatial_block(sch, b, lanes)
    _init_vectorized(sch, main, m, reds[0], lanes)
    layout = "channels innermost" if m.f_is_vector else "columns innermost"
    tile = f"{nv} x {lanes} lanes" if nv else f"one vector of {m.v_extent}"
    tile = f"{mr} rows x " + tile if rows is not None else tile
    reason = f"depthwise ({layout}, stride {m.stride}) tile {tile}, window unrolled"
    reason += padded
    if padded_here:
        reason += f", padding per {group} channels" if group > 1 else ", padding per channel"
    reason += ", padded columns split even/odd" if split_pad else ""
    reason += " (plane zeroed, then copied by pairs of columns)" if zeroed else ""
    return sch, reason


def _loops_by_role(sch, main, m: DepthwiseMatch):
    """``(outer loops, reduction loops, the vector axis' loop)`` of the main block."""
    outer, reds, vl = [], [], None
    for lp, role in zip(sch.get_loops(main), m.loop_roles):
        if role == "v":
            vl = lp
        elif role == "r":
            reds.append(lp)
        else:
            outer.append(lp)
    return outer, reds, vl


def _tile(sch, main, out, at, reds, unrolled, vec, lanes: int) -> None:
    """One tile under loop ``at``: its accumulators in a buffer of the tile (registers), the
    window loops (up to 7 taps) and ``unrolled`` unrolled, ``vec`` vectorized, the epilogue
    ``out`` computed per tile. The accumulators' scope is "global", not "local": TVM 0.27's
    LowerTVMBuiltin keeps only "global" buffers under 1 KB on the stack (where LLVM promotes
    them to registers) and allocates a "local" one with TVMBackendAllocWorkspace at every tile
    (2-core AVX-512 host, 2 threads, + ReLU: 480ch 14x14 3x3 30 -> 20 us, 120ch 28x28 5x5
    43 -> 37, 72ch 56x56 3x3 47 -> 43, 576ch 14x14 5x5/2 40 -> 35)."""
    acc = sch.cache_write(main, 0, "global")
    sch.reverse_compute_at(acc, at, preserve_unit_loops=True)
    for r in reds:
        if (extent(sch, r) or 0) <= 7:
            sch.unroll(r)
    for lp in unrolled:
        sch.unroll(lp)
    sch.vectorize(vec)
    vectorize_inner(sch, acc, lanes, whole=4, tail=False)
    if out is not None:
        sch.reverse_compute_at(out, at, preserve_unit_loops=True)
        vectorize_inner(sch, out, lanes, whole=4, tail=False)


def _init_vectorized(sch, main, m: DepthwiseMatch, at, lanes: int) -> None:
    """The accumulators' initial values as a block of their own above ``at``, vectorized."""
    sch.decompose_reduction(main, at)
    init = sch.get_sblock(m.block + "_init")
    vectorize_inner(sch, init, lanes, whole=4, tail=False)


def _schedule_nhwc(sch, main, m: DepthwiseMatch, pre, out, nv: int, mr: int, lanes: int,
                   padded: str, guarded=frozenset()):
    """Channels innermost: ``fuse(channel block, batch, rows)`` parallel | column tiles of
    ``mr`` | window (unrolled) | ``mr`` columns x ``nv`` vectors (unrolled) | lanes. A channel
    block's few padded rows stay in L1 while a row of tiles sweeps them (the padding is computed
    per parallel iteration), and the ``mr`` columns of a tile share the window's input loads."""
    outer, reds, vl = _loops_by_role(sch, main, m)
    cols, rest = outer[-1], outer[:-1]
    x = extent(sch, cols) or 1
    mr = mr if x % mr == 0 else 1
    v0, v1, v2 = sch.split(vl, [m.v_extent // (nv * lanes), nv, lanes])
    j0, j1 = sch.split(cols, [x // mr, mr])
    sch.reorder(v0, *rest, j0, *reds, j1, v1, v2)
    par = sch.fuse(v0, *rest)
    sch.parallel(par)
    _tile(sch, main, out, j0, reds, [j1, v1], v2, lanes)
    padded_here = False
    for b in pre:
        kinds = loop_kinds(sch, b)
        if kinds is None or not all(k == "S" for k in kinds):
            continue
        if sch.get(b).name_hint in guarded:  # grown: zeros, then the copy (pad.py)
            schedule_padded_copy(sch, b, lanes)
            continue
        try:
            sch.compute_at(b, par, preserve_unit_loops=True)
            vectorize_inner(sch, b, lanes, whole=4, tail=False)
            padded_here = True
        except Exception:  # noqa: BLE001 - not computable there: its own loop nest
            schedule_spatial_block(sch, b, lanes)
    _init_vectorized(sch, main, m, reds[0], lanes)
    reason = (f"depthwise (channels innermost) tile {mr} columns x {nv} x {lanes} lanes, "
              f"window unrolled{padded}")
    reason += ", padding per channel block and row" if padded_here else ""
    return sch, reason


class DepthwiseRule(Rule):
    """The depthwise rule: up to 3 tile widths measured per shape; switched off by
    ``fluidml.schedule_off=depthwise`` (its kernels then fall to the reduction rule)."""

    name = "depthwise"
    optional = True

    def analyze(self, func, ctx: Context):
        m, why = analyze(func)
        if m is not None and ctx.options.rule_on("depthwise_flat"):
            m.flat = depthwise_flat.match(func, m, ctx.cpu.lanes(32))[0] is not None
        return m, why

    def candidates(self, m: DepthwiseMatch, ctx: Context) -> list[dict]:
        budget = min(ctx.options.tune_trials, 3)
        if m.f_is_vector:
            return nhwc_candidates(m, ctx.cpu, budget)
        flat = [{"nv": 0, "flat": 1}] if m.flat else []  # rows short of whole vectors
        rows = short_row_candidates(m, ctx.cpu) + [{"nv": nv} for nv in
                                                    candidates(m, ctx.cpu, budget)]
        tiled = [t for t in (row_tile(m, c, ctx.cpu) for c in rows) if t is not None]
        tiled.sort(key=lambda c: not planes_pair(m, c, ctx.cpu.lanes(32)))  # stable
        return (tiled + flat + rows)[:budget]

    def no_candidates(self, m: DepthwiseMatch, ctx: Context) -> str:
        return f"vector axis {m.v_extent} does not suit {ctx.cpu.lanes(32)} lanes"

    def workload(self, m: DepthwiseMatch, candidates: list[dict], ctx: Context) -> str:
        # channels innermost: column tiles since 2026-12-06 (decisions of the older kernel
        # not reused)
        # rows padded to whole vectors since 2026-12-07 (":pv"; earlier choices not reused),
        # tiles of rows since 2026-12-07 (":y"), accumulators on the stack since 2026-12-07
        # (":s"; the choices among the slower kernels not reused), stride 2 planes zeroed then
        # copied by pairs since 2026-12-07 (":p")
        pairs = ":p" if m.stride == 2 and not m.f_is_vector else ""
        return (f"v{m.v_extent}s{m.stride}:s{pairs}" + (f":x{m.cols}" if m.f_is_vector else "")
                + (f":y{m.rows}" if any("mr" in c for c in candidates) and not m.f_is_vector
                   else "")
                + (":flat" if m.flat else "")
                + (":pv" if any("vl" in c or m.v_extent % (c["nv"] * ctx.cpu.lanes(32))
                                for c in candidates if c.get("nv") and not m.f_is_vector)
                   else ""))

    def flops(self, m: DepthwiseMatch) -> float:
        return m.flops

    def apply(self, func, m: DepthwiseMatch, config: dict, ctx: Context):
        if config.get("flat"):
            lanes = ctx.cpu.lanes(32)
            sch, why = depthwise_flat.schedule_flat(
                func, m, depthwise_flat.match(func, m, lanes)[0], lanes)
            return sch.mod["main"], why, None
        sch, why = schedule_depthwise(func, ctx.cpu, config["nv"], mr=config.get("mr", 0),
                                      vl=config.get("vl", 0))
        return sch.mod["main"], why, None
