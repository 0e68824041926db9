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
"""

from __future__ import annotations

from tvm import s_tir

from ..common import loop_kinds, root_blocks, vectorize_inner
from ..target_info import CPUInfo
from . import tiles
from .conv2d_match import ConvMatch, loops_by_role, pack_weight, pad_to_tiles
from .injective import schedule_spatial_block
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
    main = sch.get_sblock(m.block)
    blocks = root_blocks(sch)
    pos = [sch.get(b).name_hint for b in blocks].index(m.block)
    pre, epis = blocks[:pos], blocks[pos + 1:]
    for b in epis[:-1]:
        sch.compute_inline(b)
    out = epis[-1] if epis else sch.cache_write(main, 0, "global")
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
