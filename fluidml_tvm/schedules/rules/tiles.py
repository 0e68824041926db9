"""Register tiles for any shape (issue 13): candidates that pad instead of dividing.

The conv2d and matmul rules first look for tiles that divide their extents (their measured
history, unchanged). When none does - 24 or 1000 output channels, 13 or 197 rows - or the best
that does is poor (a prime column count leaves 1-wide tiles), these tiles compute whole tiles
over a padded iteration space (:mod:`.pad`): ``rows`` padded to a multiple of ``mr``, ``cols``
(the vector axis) to a multiple of ``nv x vl``. Vectors may be half the target's width
(``vl = lanes / 2`` or ``/ 4``: 24 channels as 3 x 8 lanes, no padding, on a 16-lane target;
the 4 or 8 channels of a group of a grouped convolution).

A tile's analytic score is its FLOPs per loaded register (``mr x nv / (mr + nv)``, the rules'
own measure) times the useful share of the padded work, times ``vl / lanes`` (a half-width FMA
does half the work); tiles whose accumulators, vectors and broadcast all fit the registers
come first, as in the rules.
"""

from __future__ import annotations

from ..target_info import CPUInfo

# Rows per tile (output columns of a convolution, rows of a matmul), odd ones included: 13 or 7
# rows are tiled whole where they fit the registers.
ROWS = (16, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1)
# A padded tile replaces the dividing ones when it scores this much better: the dividing tiles
# are the rules' measured history and are kept wherever they are not poor. At 1.25, padded tiles
# took MobileNetV2's 320-channel 7x7 layers on AVX-512 (7x48 over 7x32), and at 1.5 ResNet-50's
# 7x7 layers and every classifier GEMV on AVX2. A dividing tile of one row over several (13
# columns, 197 tokens: no other row count divides) is poor: there, BETTER_THAN_ONE_ROW.
BETTER = 2.0
BETTER_THAN_ONE_ROW = 1.25


def up(n: int, m: int) -> int:
    """``n`` rounded up to a multiple of ``m``."""
    return -(-n // m) * m


def score(rows: int, cols: int, mr: int, nv: int, vl: int, lanes: int) -> float:
    """FLOPs per loaded register of an ``mr x nv`` tile of ``vl``-lane vectors, times the useful
    share of the padded ``rows x cols``."""
    useful = rows * cols / (up(rows, mr) * up(cols, nv * vl))
    return mr * nv / (mr + nv) * useful * vl / lanes


def padded_tiles(rows: int, cols: int, cpu: CPUInfo, nvs=(4, 3, 2, 1), mrs=ROWS,
                 max_regs: int | None = None,
                 max_acc: int | None = None) -> list[tuple[int, int, int]]:
    """``(mr, nv, vl)`` tiles of a ``rows x cols`` output (``cols`` on the vectors), any
    extents, best score first. ``max_regs``: a tighter register budget than the target's;
    ``max_acc``: tiles of more accumulators rank after those that fit."""
    lanes = cpu.lanes(32)
    regs = min(cpu.vector_registers, max_regs or cpu.vector_registers)
    max_acc = max_acc or regs
    vls = [v for v in (lanes, lanes // 2, lanes // 4) if v >= 4 or v == lanes]
    ranked = []
    for vl in vls:
        for nv in nvs:
            if (nv - 1) * vl >= cols:  # a whole vector of padding
                continue
            for mr in mrs:
                if mr > rows or mr * nv + 2 > regs:
                    continue
                fits = mr * nv + nv + 1 <= regs and mr * nv <= max_acc
                s = score(rows, cols, mr, nv, vl, lanes)
                useful = rows * cols / (up(rows, mr) * up(cols, nv * vl))
                # ties: less padding (no copy to pad), then the bigger tile, narrower vectors
                ranked.append(((fits, round(s, 4), round(useful, 4), mr * nv, -vl),
                               (mr, nv, vl)))
    ranked.sort(reverse=True)
    out = []
    for _, t in ranked:
        if t not in out:
            out.append(t)
    return out


def prefer_padded(best_dividing: float | None, best_padded: float | None,
                  one_row: bool = False) -> bool:
    """Whether the padded tiles replace the dividing ones: none divides, or the best padded
    tile scores :data:`BETTER` times the best dividing one (:data:`BETTER_THAN_ONE_ROW` times
    where that is one row of several: ``one_row``)."""
    if best_padded is None:
        return False
    better = BETTER_THAN_ONE_ROW if one_row else BETTER
    return best_dividing is None or best_padded >= better * best_dividing
