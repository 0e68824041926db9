"""Any matmul shape as whole register tiles (issue 13), for :mod:`.matmul`.

* Where no tile divides M or N (a classifier's 1000 columns, ViT's 197 tokens), M is padded to
  whole ``mr`` rows and N to whole ``nv x lanes`` panels (:func:`.pad.grow`): a constant B is
  packed with zero columns (:func:`..constants.pack_array`), an activation is read through a
  zero-padded copy, and the epilogue writes only the real ``M x N``.
* :func:`picked_tiles`: the ``(mr, nv)`` tiles the candidates are made of, dividing ones first
  as before; the padded ones (:mod:`.tiles`) where none divides or they are poor.
"""

from __future__ import annotations

import dataclasses

from tvm import tirx

from . import tiles
from .matmul_match import MatmulMatch
from .pad import grow

MRS = (16, 14, 12, 8, 6, 4, 3, 2, 1)  # the rows of a dividing tile (the rule's history)
NVS = (6, 4, 3, 2, 1)


def dividing_tiles(match: MatmulMatch, cpu) -> list[tuple[int, int]]:
    """``(mr, nv)`` tiles that divide M and N, best guess first (the rule's original list)."""
    lanes = cpu.lanes(32)
    regs = cpu.vector_registers
    ranked = []
    for nv in NVS:
        for mr in MRS:
            # accumulators + one broadcast of A + one B vector must fit (FMA can take B from L1)
            if mr * nv + 2 > regs or match.n % (nv * lanes) or match.m % mr:
                continue
            # first the tiles whose accumulators, B vectors and A broadcast all stay in
            # registers, then by FLOPs per loaded register (the tile's arithmetic intensity)
            fits = mr * nv + nv + 1 <= regs
            ranked.append((fits, mr * nv / (mr + nv), mr * nv, mr, nv))
    ranked.sort(reverse=True)
    return [(mr, nv) for _, _, _, mr, nv in ranked]


def picked_tiles(match: MatmulMatch, cpu) -> tuple[list[tuple[int, int]], bool]:
    """``(tiles, padded)``: the dividing tiles, or the padded ones (full-width vectors) where
    none divides or the best padded tile scores :data:`.tiles.BETTER` times better."""
    lanes = cpu.lanes(32)
    div = dividing_tiles(match, cpu)
    pad = [(mr, nv) for mr, nv, vl in tiles.padded_tiles(match.m, match.n, cpu, NVS)
           if vl == lanes]
    best_div = tiles.score(match.m, match.n, *div[0], lanes, lanes) if div else None
    best_pad = tiles.score(match.m, match.n, *pad[0], lanes, lanes) if pad else None
    one_row = bool(div) and div[0][0] == 1 and match.m > 1
    if tiles.prefer_padded(best_div, best_pad, one_row):
        return pad, True
    return div, False


def whole_tiles(func: tirx.PrimFunc, match: MatmulMatch, mr: int, nr: int, pack_param: bool):
    """``(func, match, guarded)``: ``func`` with M / N padded to whole ``mr`` / ``nr`` tiles,
    the match of the new kernel and the blocks whose value is now guarded (zero-padded copies
    of activations, prologues: computed on their own, never inlined into the tile)."""
    notes, guarded = [], set()
    mp, np_ = tiles.up(match.m, mr), tiles.up(match.n, nr)
    pads = {}
    if mp != match.m and match.m_axes:
        pads[match.m_axes[0]] = mp
        notes.append(f"rows {match.m} padded to {mp}")
    if np_ != match.n:
        pads[match.n_axis] = np_
        notes.append(f"columns {match.n} padded to {np_}")
    if pads:
        caller = {match.b_param} if pack_param and match.b_param is not None else set()
        func, _, guarded = grow(func, match.block, pads, caller)
        match = dataclasses.replace(match, m=mp if mp != match.m and match.m_axes else match.m,
                                    n=np_)
    return func, match, guarded


def whole_tiles_note(match: MatmulMatch, mr: int, nr: int) -> str:
    """What :func:`whole_tiles` does to ``match`` for an ``mr x nr`` tile, for the reason."""
    notes = []
    if match.m_axes and match.m % mr:
        notes.append(f"rows {match.m} padded to {tiles.up(match.m, mr)}")
    if match.n % nr:
        notes.append(f"columns {match.n} padded to {tiles.up(match.n, nr)}")
    return "".join(", " + n for n in notes)
