"""The conv2d rule's kernel for few output channels: vectors along the columns.

With the vectors along the output channels (:func:`.conv2d.schedule_conv2d`), a convolution
with one output channel - a detector's probability map, a segmentation head with a class or
two, a depthwise transposed convolution's group - computes 4 to 16 lanes of which 1 is used,
and a grouped convolution with 8 channels a group (RegNet) half-width vectors. Here the vector
axis is the output columns ``x`` instead (the data must be read with stride 1 along them), and
the register tile is ``nf`` output channels (each weight broadcast) x ``nv`` vectors of columns:

``fuse(channel panel, batch, rows)`` parallel | column tiles | reduction | ``nf`` channels,
``nv`` vectors (unrolled) | lanes (vectorized).

Channels are padded to whole ``nf`` panels (the weight packed ``[F/nf, .., nf]`` like conv2d's,
zeros appended), columns to whole tiles (:mod:`.pad`); the epilogue follows each tile (each
``s`` output rows, for a transposed conv's phases). Considered only where no channel tile
divides the channels, and taken where it scores :data:`.tiles.BETTER` times the channel tiles
(:class:`.conv2d.Conv2dRule`).

*Pointwise NCHW* (:func:`schedule_pointwise_cols`, kill switch
``fluidml.schedule_off=pointwise_cols``): a 1x1 stride-1 convolution reading and writing NCHW is
the matmul ``W[F, C] x D[C, H*W]``, so rows and columns are one axis of positions ``p``
(``_fuse_positions``) and the vectors run along it: each input channel loads ``nv`` contiguous
vectors of one input plane and broadcasts ``nf`` packed weights, and the output tile (epilogue
included) is stored as whole vectors of ``nf`` output planes. The channel-vector kernel stores
each tile transposed (``nr`` planes, ``mr`` columns each): timed alone on the 2-core AVX-512
host, 2 threads, bias + ReLU, warm, 16->64 at 55x55 72 -> 31 us, 64->16 at 55x55 98 -> 27,
24->144 at 56x56 151 -> 80, 144->24 at 56x56 331 -> 111, 80->480 at 14x14 86 -> 55. The last
tile of a plane no whole tile fills is guarded and peeled by LoopPartition
(``pragma_loop_partition_hint``; the kernel's indices are narrowed to int32 first: with relax's
int64 ones LoopPartition left every tile guarded, and the vectorizer ran them lane by lane).
Not on maps of fewer than :data:`POINTWISE_MIN_VECTORS` vectors (7x7) nor on an NHWC output.
In a model the input comes from the kernel before, no longer in this core's cache: which loop
is outer is decided for that (:func:`schedule_pointwise_cols`). A/B over eleven conv models at
the defaults, 3 rounds (``benchmarks/results/2026-12-06-ab-src-pointwise-cols-4.md``): geometric
mean 0.925, RegNetY-400MF 0.797, MobileNetV3-L 0.858, ShuffleNetV2 0.867, MobileNetV3-S 0.872,
EfficientNet-B0 0.891, MNASNet 0.911, GoogLeNet 0.977, SqueezeNet 0.992, DenseNet-121 0.998,
ResNet-18 1.006, ResNet-50 1.039 (0.998 in the run before, ``-3.md``). With the channel panels
always outer ResNet-50 ran 1.095 (``-pointwise-cols.md``, then off by default).
"""

from __future__ import annotations

from tvm import s_tir

from ..common import around, loop_kinds, vectorize_inner
from ..target_info import CPUInfo
from . import tiles
from .conv2d_match import ConvMatch, loops_by_role, merge_rows, pack_weight, pad_to_tiles
from .injective import int32_indices, schedule_spatial_block
from .pad import schedule_padded_copy


def cols_candidates(m: ConvMatch, cpu: CPUInfo, budget: int) -> list[tuple[int, int]]:
    """``(nf, nv)`` tiles with the vectors along the columns, best score first; none where the
    columns are not read with stride 1 or fill less than a vector."""
    lanes = cpu.lanes(32)
    if m.x_stride != 1 or m.x < lanes:
        return []
    found = tiles.padded_tiles(m.f, m.x, cpu, nvs=(4, 3, 2, 1), mrs=(8, 6, 4, 3, 2, 1))
    return [(nf, nv) for nf, nv, vl in found if vl == lanes][: max(1, budget)]


def expansion_candidates(m: ConvMatch, cpu: CPUInfo, budget: int) -> list[tuple[int, int]]:
    """``(nf, nv)`` column-vector tiles that need no padding: ``nf`` divides the channels and
    ``nv`` vectors the columns (a 112- or 64-column map; not 56 or 28). A padded tile's guarded
    epilogue is not vectorized: with a SiLU epilogue, EfficientNet's 24->144 expansion at 56x56
    ran 1335 us padded to 64 columns vs 269 us with the channel tiles. First one vector of
    the most channels (8, 6, 4), then the tile of the most FLOPs per load within three quarters
    of the registers: an expansion reads few input channels, so the tile's reuse matters less
    than its cheap epilogue (16->64 at 112x112: 8x1 180-192 us, 2x7 201-292; 16->96: 6x1 242,
    2x7 267-279, 3x7 270-333; ``2026-12-06-conv-expansions.md``)."""
    lanes = cpu.lanes(32)
    if m.x_stride != 1 or m.x % lanes:
        return []
    found = []
    for nf in (8, 6, 4, 3, 2):
        for nv in (7, 4, 3, 2, 1):
            if m.f % nf or m.x % (nv * lanes) or nf * nv > cpu.vector_registers * 3 // 4:
                continue
            found.append((nf * nv / (nf + nv), nf * nv, nf, nv))
    found.sort(reverse=True)
    out = [(nf, nv) for _, _, nf, nv in found]
    one = next(((nf, 1) for nf in (8, 6, 4) if (nf, 1) in out), None)
    if one is not None:
        out.remove(one)
        out.insert(0, one)
    return out[: max(1, budget)]


def cols_score(m: ConvMatch, cpu: CPUInfo, tile) -> float:
    lanes = cpu.lanes(32)
    return tiles.score(m.f, m.x, tile[0], tile[1], lanes, lanes)


def schedule_conv2d_cols(func, m: ConvMatch, cpu: CPUInfo, const_args, tile):
    """``(schedule, reason, pack)`` of the column-vector kernel for ``tile`` = ``(nf, nv)``;
    ``m`` is ``func``'s match (``m.func``: a grouped conv's kernel with its channels split)."""
    func = m.func if m.func is not None else func
    nf, nv = tile
    lanes = cpu.lanes(32)
    pack_param = bool(const_args) and m.w_param is not None and const_args.get(m.w_param, False)
    shape = f"F={m.f} X={m.x}"
    func, m, said, guarded = pad_to_tiles(func, m, nf, nv * lanes, pack_param)
    if func is None:
        return None, said, None
    sch = s_tir.Schedule(func)
    main, pre, out = around(sch, m.block)
    out = out if out is not None else sch.cache_write(main, 0, "global")
    pack_weight(sch, main, m, nf, pack_param)
    loops = sch.get_loops(main)
    phases = [lp for lp, r in zip(loops, m.loop_roles) if r == "p"]
    fl, xl, _, reds, spatial = loops_by_role(loops, m.loop_roles)
    spatial = [lp for lp in spatial if not any(lp.same_as(p) for p in phases)]
    f0, f1 = sch.split(fl, [m.f // nf, nf])
    x0, x1, x2 = sch.split(xl, [m.x // (nv * lanes), nv, lanes])
    sch.reorder(f0, *spatial, *phases, x0, *reds, f1, x1, x2)
    par = sch.fuse(f0, *spatial)
    sch.parallel(par)
    sch.unroll(f1)
    sch.unroll(x1)
    sch.vectorize(x2)
    sch.reverse_compute_at(out, par if phases else x0, preserve_unit_loops=True)
    vectorize_inner(sch, out, lanes)
    for b in pre:  # padding / prologue stages: their own parallel loop nests
        kinds = loop_kinds(sch, b)
        if sch.get(b).name_hint in guarded:  # grown: zeros, then the copy (pad.py)
            schedule_padded_copy(sch, b, lanes)
        elif kinds is not None and all(k == "S" for k in kinds):
            schedule_spatial_block(sch, b, lanes)
    sch.decompose_reduction(main, reds[0])
    reason = f"conv2d {shape} tile {nf} channels x {nv}x{lanes} columns (vectors along columns)"
    reason += "".join(", " + s for s in said)
    reason += f", weight packed [F/{nf},..,{nf}]"
    reason += " at compile time" if pack_param else " at run time"
    roles = ("conv",) + tuple(m.w_roles)
    if m.groups > 1:
        roles = ("groups", m.groups, m.w_fdim) + roles
        reason = f"grouped ({m.groups} groups) " + reason
    return sch, reason, ({m.w_param: (roles, nf)} if pack_param else None)


# At least this many vectors of positions: on a 7x7 map (49 positions, 3 vectors and one lane)
# the channel tiles are as fast (2048->512: 608 vs 633 us cold; 160->960: 62 vs 64 warm).
POINTWISE_MIN_VECTORS = 8


# Maps of fewer positions than this take tiles of two vectors of positions first: measured
# (SqueezeNet, a fresh cache, every candidate timed) 8 channels x 2 vectors beat 8 x 3 on the four
# 1x1 convs of 13x13 and 27x27 maps that had both (384->64, 512->64 and 64->256 on 13x13,
# 32->128 on 27x27), which the default tune budget had left to 8 x 3.
SMALL_MAP_POSITIONS = 32 * 32


def pointwise_candidates(m: ConvMatch, cpu: CPUInfo, budget: int) -> list[tuple[int, int]]:
    """``(nf, nv)`` tiles of :func:`schedule_pointwise_cols` (a 1x1 stride-1 convolution reading
    and writing NCHW - the layout stage's variant writing NHWC took 0.9 s to time -, one group,
    at least :data:`POINTWISE_MIN_VECTORS` vectors of positions, ``nf`` >= 2 dividing the
    channels), most FLOPs per load first within three quarters of the vector registers: 8x3,
    8x2, 6x3, 4x3 ..."""
    lanes = cpu.lanes(32)
    if not m.rows or m.x_stride != 1 or not m.x_last or m.groups != 1 or m.func is not None:
        return []  # (an NHWC output would take a store per position and channel)
    positions = m.rows * m.x
    if positions < POINTWISE_MIN_VECTORS * lanes:
        return []
    found = []
    for nf in (8, 6, 4, 3, 2):
        for nv in (3, 2, 4, 1):
            if m.f % nf or nf * nv > cpu.vector_registers * 3 // 4:
                continue
            if nv > 1 and (nv - 1) * lanes >= positions:  # more vectors than positions
                continue
            rank = min(nf * nv, 24)
            if positions < SMALL_MAP_POSITIONS and nv == 2:
                rank = 25  # a small map: two vectors a tile first
            found.append((rank, nf, -nv if nv != 4 else -1.5, nf, nv))
    found.sort(reverse=True)
    return [(nf, nv) for *_, nf, nv in found][: max(1, budget)]


def _fuse_positions(sch, main, out, m: ConvMatch) -> ConvMatch:
    """Rows and columns of the conv block and of its output block as one axis ``p = y * X + x``
    with int32 iteration variables (:func:`.conv2d_match.merge_rows`; LoopPartition peels a
    guarded last tile of int32 loops only), the accumulator stored ``[.., p]``; returns the
    match of the rewritten kernel."""
    cols = m.x
    m, yd = merge_rows(sch, main, out, m, index_dtype="int32")
    sch.transform_layout(main, ("write", 0),
                         lambda *i: [*i[:yd], i[yd] * cols + i[yd + 1], *i[yd + 2:]])
    return m


def schedule_pointwise_cols(func, m: ConvMatch, cpu: CPUInfo, const_args, tile):
    """``(schedule, reason, pack)`` of a 1x1 stride-1 NCHW convolution with the vectors along its
    positions (rows x columns), ``tile`` = ``(nf, nv)``. An expansion: ``fuse(batch, channel
    panel)`` parallel | position tiles of ``nv`` vectors (the last one guarded, peeled) | input
    channels | ``nf`` channels, ``nv`` vectors (unrolled) | lanes; the epilogue per tile. With
    at least as many input as output channels (a projection, a squeeze) the position tiles are
    outer (parallel) and the channel panels inside: a tile of the input is read once for all of
    them, where sweeping it once per panel streams it from the cache of the core that wrote it
    again and again (SqueezeNet's 256->32 on 27x27 in the model: 272 us swept per panel, 90 by
    tiles; timed alone with the input cold, 24 inputs in turn: 85 / 71; ResNet-50's 256->64 on
    56x56 1315 / 767). An expansion the other way round: the input is small, and a position tile
    would write every output plane (24->144 on 56x56: 86 swept / 260 by tiles)."""
    nf, nv = tile
    lanes = cpu.lanes(32)
    if m.f % nf or not m.rows:
        return None, f"tile of {nf} channels does not divide {m.f}", None
    pack_param = bool(const_args) and m.w_param is not None and const_args.get(m.w_param, False)
    shape = f"F={m.f} X={m.x} rows={m.rows}"
    # int32 indices (relax legalizes with int64 ones): LoopPartition peels the guarded last
    # tile of int32 loops only
    func = int32_indices(func)
    sch = s_tir.Schedule(func)
    main, pre, out = around(sch, m.block)
    out = out if out is not None else sch.cache_write(main, 0, "global")
    kept = []
    for b in pre:  # a 1x1 kernel's "padding" stage copies its input: read it directly
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - a stage that is not a plain copy keeps its nest
            kept.append(b)
    m = _fuse_positions(sch, main, out, m)
    pack_weight(sch, main, m, nf, pack_param)
    loops = sch.get_loops(main)
    fl, xl, _, reds, spatial = loops_by_role(loops, m.loop_roles)
    f0, f1 = sch.split(fl, [m.f // nf, nf])
    x0, x1, x2 = sch.split(xl, [None, nv, lanes])
    if m.f > m.r0:  # an expansion: each channel panel sweeps the (smaller) input
        sch.reorder(*spatial, f0, x0, *reds, f1, x1, x2)
        par = sch.fuse(*spatial, f0)
        at, outer = x0, "channel panels outer (an expansion)"
    else:  # position tiles outer: a tile of the (larger) input read once, for every panel
        sch.reorder(*spatial, x0, f0, *reds, f1, x1, x2)
        par = sch.fuse(*spatial, x0)
        at, outer = f0, f"position tiles outer ({m.r0} >= {m.f} channels)"
    sch.parallel(par)
    sch.unroll(f1)
    sch.unroll(x1)
    sch.vectorize(x2)
    if m.x % (nv * lanes):
        sch.annotate(par if at is f0 else x0, "pragma_loop_partition_hint", 1)
    sch.reverse_compute_at(out, at, preserve_unit_loops=True)
    _, inner = sch.split(sch.get_loops(out)[-1], [None, lanes])
    sch.vectorize(inner)
    for b in kept:
        schedule_spatial_block(sch, b, lanes)
    sch.decompose_reduction(main, reds[0])
    reason = (f"conv2d {shape} 1x1 NCHW: tile {nf} channels x {nv}x{lanes} positions (rows x "
              f"columns one axis, vectors along it), {outer}, weight packed [F/{nf},..,{nf}]")
    reason += " at compile time" if pack_param else " at run time"
    return sch, reason, ({m.w_param: (("conv",) + tuple(m.w_roles), nf)} if pack_param else None)
