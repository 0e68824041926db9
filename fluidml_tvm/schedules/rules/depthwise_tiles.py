"""The depthwise rule's match (:class:`DepthwiseMatch`, found by :func:`.depthwise.analyze`) and its
tiles: vectors per register tile of the columns-innermost (NCHW) kernel, rows padded to whole
vectors, tiles of several output rows, and the channels-innermost (NHWC) column x vector tiles,
best guess first; how the NCHW kernel pads its channel planes (:func:`plane_group`,
:data:`PAIRS_PLANE_BYTES`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..common import as_int
from ..target_info import CPUInfo
from .tiles import up


@dataclass
class DepthwiseMatch:
    block: str
    loop_roles: list[str]  # per loop: "f", "v" (vector axis), "s" (other spatial), "r"
    v_extent: int  # extent of the vector axis
    f_is_vector: bool  # NHWC form: the channel axis is innermost
    flops: float
    stride: int  # stride of the vector axis in the data index (1: contiguous loads)
    v_axis: int = -1  # index of the vector axis among the block's iteration variables
    cols: int = 0  # channels innermost: the output columns (the axis just outside the channels)
    flat: bool = False  # the flat kernel applies (depthwise_flat.py; set by DepthwiseRule)
    rows: int = 0  # columns innermost: the output rows (loop role "y")
    plane: tuple = ()  # columns innermost: (rows, columns) of the input plane the window reads
    channels: int = 0


def candidates(m: DepthwiseMatch, cpu: CPUInfo, budget: int = 4) -> list[int]:
    """Vectors per register tile (``nv``): those dividing the vector axis, most first (0: the
    whole axis as one vector, for rows shorter than a few vectors that lanes do not divide)."""
    lanes = cpu.lanes(32)
    out = []
    if m.v_extent % lanes == 0:
        nvec = m.v_extent // lanes
        for nv in (4, 2, 7, 1, 3):
            if nvec % nv == 0 and nv <= nvec and nv not in out:
                out.append(nv)
    elif m.v_extent <= 4 * lanes:
        out.append(0)
    else:  # a long row no vector divides (75, 150 columns): padded to whole tiles (pad.py)
        out = sorted((4, 2, 1), key=lambda nv: (up(m.v_extent, nv * lanes), -nv))
    return out[: max(1, budget)]


def short_row_candidates(m: DepthwiseMatch, cpu: CPUInfo) -> list[dict]:
    """Columns-innermost rows short of a few vectors whose tail is not a power of two lanes
    (7, 14, 28, 55 columns with 16 lanes): the row padded to whole vectors (``nv`` vectors of
    ``vl`` lanes, ``vl`` the smallest power of two that holds a row shorter than the target's
    vector), the extra columns computed and not stored. "One vector of 7" was legalized by LLVM
    into loads of 4 + 2 + 1 lanes put together per window tap. Cold, 2 threads: 5x5/2
    576x14x14 53 -> 39 us, 240x28x28 50 -> 44, 80x56x56 80 -> 59; 5x5 1152x7x7 81 -> 50; 3x3
    480x14x14 33 -> 29."""
    lanes = cpu.lanes(32)
    v = m.v_extent
    tail = v % lanes
    if m.f_is_vector or tail == 0 or v > 4 * lanes or tail & (tail - 1) == 0:
        # a tail of a power of two lanes is one load already (56 columns: 3 x 16 + 8; padded
        # to 64, 3x3/2 48x112x112 ran 135 -> 157 us)
        return []
    if v < lanes:
        vl = 4
        while vl < v:
            vl *= 2
        return [{"nv": 1, "vl": vl} if vl != lanes else {"nv": 1}]
    return [{"nv": up(v, lanes) // lanes}]


def nhwc_candidates(m: DepthwiseMatch, cpu: CPUInfo, budget: int = 3) -> list[dict]:
    """Tiles of a channels-innermost kernel (:func:`_schedule_nhwc`): ``{"nv", "mr"[, "vl"]}``,
    ``mr`` output columns x ``nv`` vectors of ``vl`` channels (``vl``: half or a quarter of the
    target's vector where that divides the channels and the whole one does not - 24, 40, 72,
    120 channels - so nothing is padded: 72 channels at 28x28 stride 2 45 us, padded to 80 95
    us). Best guess first: two vectors (one where the vectors do not pair: 144 channels' 3 x 4
    ran 195 us, 1 x 7 84) x 7 or 8 columns, then four vectors of one column, then one vector of
    7 or 8 columns (``benchmarks/results/2026-12-06-depthwise-nhwc.md``: new first tile / the
    row-parallel kernel 0.28-0.95 on 24 of 26 MobileNet/EfficientNet/MNASNet/ConvNeXt shapes;
    72 and 88 channels at 56x56 / 28x28 stride 1 1.5-1.65x slower, tens of us)."""
    lanes = cpu.lanes(32)
    vl = lanes
    if m.v_extent % lanes:
        vl = next((v for v in (lanes // 2, lanes // 4) if v >= 4 and m.v_extent % v == 0), lanes)
    nvec = up(m.v_extent, vl) // vl
    x = m.cols or 1
    mrs = [r for r in (7, 8, 4, 3, 2) if x % r == 0] + [1]
    cap = cpu.vector_registers // 2  # accumulators; the rest: weights, the input vectors
    out = []

    def add(nv, mr):
        c = {"nv": nv, "mr": mr}
        if vl != lanes:
            c["vl"] = vl
        if nv <= nvec and nvec % nv == 0 and nv * mr <= cap and c not in out:
            out.append(c)

    pair = 2 if nvec % 2 == 0 else 1
    add(pair, next(r for r in mrs if pair * r <= cap))
    add(4, 1)
    add(1, next(r for r in mrs if r <= cap))
    return out[: max(1, budget)]


# A data cache's worth of one channel's input plane (float32): larger planes (112x112 maps,
# 56x56 ones at stride 2) take no row tiles.
L1_BYTES = 32 * 1024


def row_tile(m: DepthwiseMatch, c: dict, cpu: CPUInfo) -> dict | None:
    """Tile ``c`` of a columns-innermost kernel over ``mr`` output rows (``{.., "mr"}``), or None.

    The rows' accumulators stay in registers while the window runs, so an input row vector is
    loaded once for every output row its taps reach (a 5x5 window: 5 output rows) instead of
    once per row. ``mr``: stride 1 the most of 7, 4, 2 rows, stride 2 (rows share fewer taps)
    2 first, with ``mr`` x the tile's vectors at most a quarter of the vector registers; none
    where a channel's input plane is larger than :data:`L1_BYTES`. Measured
    (``benchmarks/results/2026-12-07-depthwise-rows.md``, 2 threads, AVX-512, one row -> rows,
    cold inputs): 7x7 768x7x7 85 -> 43 us, 96x56x56 466 -> 224; 5x5 1152x7x7 57 -> 45,
    672x14x14 87 -> 74, 240x28x28 111 -> 85; 3x3 192x28x28 40 -> 31, 72x56x56 85 -> 75; 3x3
    on 7x7/14x14 maps within +-5%; planes past L1 were slower with rows in an earlier run of
    that benchmark (3x3 32x112x112 136 -> 203 us, 16x112x112 stride 2 159 -> 175)."""
    if m.f_is_vector or not m.rows or c.get("flat"):
        return None
    if (m.rows * m.stride) * (m.v_extent * m.stride) * 4 > L1_BYTES:
        return None  # the channel's input plane spills L1: a row at a time streams it better
    lanes = cpu.lanes(32)
    regs = c["nv"] or up(m.v_extent, lanes) // lanes
    cap = max(2, cpu.vector_registers // 4)
    for mr in ((7, 4, 2) if m.stride == 1 else (2, 7)):
        if m.rows % mr == 0 and mr * regs <= cap:
            return dict(c, mr=mr)
    return None


def plane_group(sch, pre, channels: int) -> int:
    """Channels whose padded planes are computed before their convolutions (NCHW): 2 where two
    padded planes fit the 1 KB TVM keeps on the stack (a larger buffer inside the parallel loop
    is a workspace allocation a loop iteration), else 1. A plane padded right before its window
    loads is still in the store buffer when they run (the loads wait for the stores to drain):
    on the 2-core AVX-512 host, 2 threads, + ReLU, 1152ch 7x7 3x3 35 -> 15 us, 576ch 7x7 3x3
    18 -> 8 (planes of 360 bytes; 5x5 windows' 528-byte planes stay one a channel)."""
    if not pre or channels % 2:
        return 1
    return 2 if 2 * plane_bytes(sch.get(pre[-1]).writes[0].source) <= PLANE_GROUP_BYTES else 1


def planes_pair(m: DepthwiseMatch, c: dict, lanes: int) -> bool:
    """Whether tile ``c`` of a columns-innermost kernel pads two channels' planes at a time
    (:func:`plane_group`): its row padded to whole vectors widens the plane. The tiles whose
    planes pair come first: 2 threads, + ReLU, 7x7 maps, 5x5 (11x11 planes pair, 11x12 ones padded
    for rows of 8 lanes do not): one vector of 7 / rows padded to 8 lanes 31 / 39 us at 1152
    channels, 27 / 32 at 960, 16 / 20 at 576; 3x3 (both pair): 17 / 13, 14 / 11, 9 / 7."""
    if len(m.plane) != 2 or not all(m.plane) or m.channels % 2:
        return False
    nv = c.get("nv") or 0
    vp = nv * (c.get("vl") or lanes) if nv else m.v_extent
    cols = m.plane[1] + max(0, vp - m.v_extent) * m.stride
    return 2 * 4 * m.plane[0] * cols <= PLANE_GROUP_BYTES


def plane_bytes(buf) -> int:
    """Bytes of one channel plane of a float32 ``[N, C, ..]`` buffer: its dims after the channel
    (``[H, W]``, or ``[H, 2, W/2]`` laid out even/odd); large if unknown or not that shape."""
    dims = [as_int(d) for d in buf.shape[2:]]
    if not dims or None in dims:
        return 1 << 30
    size = 4
    for d in dims:
        size *= d
    return size


# Stride 2: a padded input plane up to this size is zeroed, then copied by pairs of columns
# (.pad.iterate_pairs); a larger one keeps the guarded copy (.pad.iterate_even_odd), as
# zeroing a plane past L1 adds a plane of stores. 2 threads, + ReLU, guarded -> pairs (best
# tile): 5x5/2 144x56x56 143 -> 70 us, 72x56x56 70 -> 36; 3x3/2 576x14x14 67 -> 24, 72x56x56
# 25 -> 25 (67 -> 25 with its rows padded to 32); 672x14x14 5x5/2 40 -> 39; 3x3/2 240x28x28
# 22 -> 25, 5x5/2 96x28x28 16 -> 16; past it, 3x3/2 96x112x112 134 -> 148, 64x112x112 93 -> 100.
PAIRS_PLANE_BYTES = 32 * 1024


# TVM 0.27 keeps a "global" buffer of fewer bytes than this on the stack (LowerTVMBuiltin's
# kMaxStackAlloca); a larger one is a TVMBackendAllocWorkspace call where it is allocated.
PLANE_GROUP_BYTES = 1024
