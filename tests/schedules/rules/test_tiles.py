"""rules/tiles.py: padded tiles for any extent, ranked by FLOPs per loaded register x the
useful share of the padded work, within the target's registers."""

from __future__ import annotations

import pytest

from fluidml_tvm.schedules.rules import tiles
from fluidml_tvm.schedules.target_info import CPUInfo

AVX512 = CPUInfo("avx512", 512, 32, 2)
AVX2 = CPUInfo("avx2", 256, 16, 2)


@pytest.mark.parametrize("cpu", [AVX512, AVX2], ids=["avx512", "avx2"])
@pytest.mark.parametrize("rows,cols", [(13, 24), (1, 1000), (7, 5), (80, 24), (1, 1), (197, 197)])
def test_every_shape_gets_tiles_that_fit(cpu, rows, cols):
    found = tiles.padded_tiles(rows, cols, cpu)
    assert found
    for mr, nv, vl in found:
        assert mr <= rows and mr * nv + 2 <= cpu.vector_registers
        assert vl in (cpu.lanes(32), cpu.lanes(32) // 2, cpu.lanes(32) // 4)
        assert (nv - 1) * vl < cols  # never a whole vector of padding
    scores = [round(tiles.score(rows, cols, mr, nv, vl, cpu.lanes(32)), 4) for mr, nv, vl in found]
    fits = [mr * nv + nv + 1 <= cpu.vector_registers for mr, nv, _ in found]
    # the tiles that keep everything in registers first, each group by score
    assert fits == sorted(fits, reverse=True)
    for f in (True, False):
        group = [s for s, ok in zip(scores, fits) if ok == f]
        assert group == sorted(group, reverse=True)


def test_score_counts_the_padding():
    assert tiles.score(14, 32, 14, 2, 16, 16) == pytest.approx(28 / 16)
    assert tiles.score(13, 24, 13, 2, 16, 16) == pytest.approx(26 / 15 * 24 / 32)
    assert tiles.score(13, 24, 13, 3, 8, 16) == pytest.approx(39 / 16 * 0.5)


def test_columns_of_one_row_take_full_vectors_and_13_rows_whole():
    assert tiles.padded_tiles(13, 32, AVX512)[0] == (13, 2, 16)
    assert tiles.padded_tiles(1, 1000, AVX512)[0][:2] == (1, 4)


def test_prefer_padded_only_when_clearly_better():
    assert tiles.prefer_padded(None, 0.5)
    assert not tiles.prefer_padded(1.0, 1.9)
    assert tiles.prefer_padded(1.0, tiles.BETTER)
    assert not tiles.prefer_padded(1.0, None)
    assert tiles.prefer_padded(1.0, 1.3, one_row=True)  # a 1-row tile over 13 columns
