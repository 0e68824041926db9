"""The conv2d rule's decisions by shape (no schedule here): how many accumulators a register
tile may take, which 1x1 kernels take the column vectors first, which copy their input rows
first. Each with the measurements behind it."""

from __future__ import annotations

from ..target_info import CPUInfo
from .conv2d_match import ConvMatch


def _one_by_one(m: ConvMatch) -> bool:
    """A 1x1 kernel: one reduction axis of the weight (the input channels), no window."""
    return sum(r == "r" for r in m.w_roles) == 1


def max_accumulators(m: ConvMatch, cpu: CPUInfo) -> int:
    """The most accumulator registers a tile of this kernel should take: two thirds of the
    vector registers for a kernel with a window, three quarters for a 1x1 kernel writing NCHW
    on a map wider than 14 columns, all of them on a narrower one (one tile a row) or with the
    channels innermost.

    Measured (``benchmarks/results/2026-12-06-conv-tiles*.md``): in a windowed kernel, tiles of
    28 accumulators (14x2, 7x4 on AVX-512's 32 registers) ran 2-3x slower than 14-21 (7x2,
    4x4, 7x3) on every 3x3 and 5x5 shape; on AVX2's 16, 12-14 accumulators (6x2, 7x2) ran
    1.2-3x slower than 8-10. A 1x1 kernel's 14x2 tile is its fastest on a 14x14 map (1-5%),
    but on 28x28 and 56x56 maps 28 accumulators ran 1.05-1.8x slower than 14-24 (256->64: 1275
    vs 1150 us, 512->128: 1022 vs 627; EfficientNet's 96->24 projection, 24 channels padded to
    32: 297 vs 161-189, ``2026-12-06-conv-expansions.md``), where 24 (8x3) still ran as fast
    as any (32->192 at 56x56: 238 us vs 262 for 7x3). With the channels innermost (NHWC
    output: no re-lay of the tile) 28 ran as fast as 16 (7x4 386 us, 4x4 377 on 256->64 at
    56x56): uncapped there."""
    if not _one_by_one(m):  # a window
        return cpu.vector_registers * 2 // 3
    channels_last = "f" in m.loop_roles and "x" in m.loop_roles and (
        m.loop_roles.index("f") > m.loop_roles.index("x"))
    if m.x <= 14 or channels_last:  # one tile a row, or no re-lay of the tile into NCHW rows
        return cpu.vector_registers
    return cpu.vector_registers * 3 // 4


# A 1x1 expansion (K input channels <= this, F >= 2K output channels: MobileNet/EfficientNet
# blocks) takes the column vectors first (:mod:`.conv2d_cols`) where they need no padding
# (:func:`.conv2d_cols.expansion_candidates`): the channel tiles' epilogue re-lays each
# [columns, channels] tile into NCHW rows, a strided access per output element, as much work as
# the K-long reduction itself; the column vectors write NCHW rows directly. Measured
# (benchmarks/results/2026-12-06-conv-expansions.md, AVX-512, 2 threads): 16->96 at 112x112
# with ReLU 707 -> 242-299 us, with SiLU 861 -> 648; 1x1 projections (F < K: 144->24, 240->40,
# 256->64) ran 1.1-2.4x slower with column vectors.
EXPANSION_MAX_K = 64


def expansion_cols(m: ConvMatch) -> bool:
    """Whether ``m`` is a 1x1 expansion that takes the column vectors first."""
    return (_one_by_one(m) and m.groups == 1 and m.r0 <= EXPANSION_MAX_K and m.f >= 2 * m.r0
            and m.x_stride == 1)


# 1x1 NCHW kernels reading at least this many input planes, with at most this many bytes of
# weights, copy one row of each plane into a contiguous buffer first (stages_input_rows).
STAGE_MIN_PLANES = 32
STAGE_MAX_WEIGHT_BYTES = 512 * 1024


def stages_input_rows(m: ConvMatch) -> bool:
    """Whether a 1x1 kernel reading its input directly (no padding stage) copies the input row
    of every channel into a contiguous buffer per output row, swept by all channel tiles of the
    row. Made for NCHW; with the channels innermost (a layout the layout stage chose) the row is
    one contiguous block already and the copy a cheap one (the six 1x1 kernels the layout stage
    rewrote in ResNet-50 ran 0.47-0.98x of their time with it).

    A tile reads a few columns of each of the K input planes, a stream per plane, 3-12 KB apart:
    beyond the hardware prefetcher's streams, and in a model the input is no longer in this
    core's L2 (the kernel before wrote it). Timed with the input cold (24 inputs in turn), 2-core
    AVX-512 host: 128->16 on 55x55 230 -> 108 us, 256->64 on 56x56 704 -> 559, 672->112 on
    14x14 166 -> 141, 32->16 on 112x112 238 -> 114; warm (the same input again, as the
    candidates are timed) 0.9-1.3x. Not with few planes (24->72 on 56x56: no change) or many
    output channels a plane (40->240 on 28x28: 107 -> 120 us, every channel tile's stores in
    one row sweep): K >= :data:`STAGE_MIN_PLANES` and F <= 4K. Not with weights beyond
    :data:`STAGE_MAX_WEIGHT_BYTES` either: every row then sweeps all of them, where the
    channel panels outside the rows read each once (ResNet-50 in a model: 512->2048 on 7x7
    574 -> 1250 us, 256->1024 on 14x14 975 -> 1197; with 64-512 KB of weights on 28x28 and
    56x56 maps 0.50-0.98x)."""
    return (_one_by_one(m) and m.groups == 1 and m.r0 >= STAGE_MIN_PLANES
            and m.f <= 4 * m.r0 and 4 * m.r0 * m.f <= STAGE_MAX_WEIGHT_BYTES)
