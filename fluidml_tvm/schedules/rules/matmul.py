"""Matmul / dense / batch-matmul rule (NN, NT, TN operands) with fused epilogues.

Matches a PrimFunc whose only reduction block computes ``C[b.., i, j] += A[.. i .. k ..] *
B[.. k .. j ..]`` with every index a plain iteration variable (any operand order: the transposed
forms attention and Gemm produce are covered), optionally preceded by injective prologues (inlined)
and followed by injective epilogues (bias, GELU, residual add: inlined into one block computed per
register tile). The analysis is :mod:`.matmul_match`; this module has the candidates, the kernel
and :class:`MatmulRule`. Any M / N / K (issue 13): M and N that no tile divides are padded to
whole tiles, rows over several axes are looped like a batch, N = 1 and K = 1 are matched
(:mod:`.matmul_shape`).

The kernel (the design that matched ONNX Runtime's MLAS on this project's machines):

* B is read in a packed layout ``[.., N/nr, K, nr]`` - for a constant weight the PrimFunc's
  parameter itself takes that layout (the caller packs the constant at compile time, see
  :mod:`..constants`); otherwise a copy stage packs it at run time (O(N*K), against O(M*N*K)).
* Register tile ``mr x nr`` (``nr = nv`` vectors of the target's lanes), accumulated in place,
  ``mr`` and ``nv`` unrolled, the lanes vectorized.
* Loop order, one of :data:`ORDERS` (FluidML's loop-order search, measured per shape):
  ``rows``: ``fuse(batch, row block of mc, column panel)`` parallel | rows of mr | k | tile;
  ``cols``: ``fuse(batch, column panel, row block)`` parallel | rows of mr | k | tile;
  ``kblock``: like ``rows`` with K split in blocks of ``kc`` outside the row loop;
  ``kouter``: K blocks of ``kc`` outermost (serial), ``fuse(batch, row block, column panel)``
  parallel inside: a block of A's rows (``mc x kc``) stays in L2 while every panel of B sweeps
  past it (the GotoBLAS order; the epilogue is then a loop nest of its own after the K loop).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from tvm import s_tir, tirx

from ..common import as_int, vectorize_inner
from ..target_info import CPUInfo
from .base import Context, Rule
from .matmul_match import MatmulMatch, analyze
from .matmul_shape import picked_tiles, whole_tiles, whole_tiles_note
from .pad import schedule_padded_copy
from .tiles import up

ORDERS = ("rows", "cols", "kblock", "kouter")
# Below this much work a parallel launch costs more than it saves.
PARALLEL_MIN_FLOPS = 1 << 21


@dataclass(frozen=True)
class MatmulConfig:
    """One candidate kernel: tile sizes, loop order and packing."""

    mr: int
    nv: int
    mc: int
    order: str = "rows"
    kc: int = 0
    pack: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MatmulConfig:
        return cls(**d)

    def describe(self) -> str:
        s = f"{self.order} mr={self.mr} nv={self.nv} mc={self.mc}"
        if self.kc:
            s += f" kc={self.kc}"
        return s + (" packedB" if self.pack else " plainB")


# ---- candidates -------------------------------------------------------------------------------
def candidates(
    match: MatmulMatch, cpu: CPUInfo, budget: int, b_const: bool = True
) -> list[MatmulConfig]:
    """Register tiles that fit the target's vector registers and divide the shape, best guess
    first; at most ``budget`` of them. When B is not a constant but already has N innermost
    (attention's ``P @ V``), reading it in place (no run-time packing) is tried first."""
    picked, _ = picked_tiles(match, cpu)
    out = []
    for mr, nv in picked[:3]:
        mp = up(match.m, mr)  # M, padded to whole tiles where mr does not divide it
        mcs = [mc for mc in (128, 64, 32, 256) if mp % mc == 0 and mc % mr == 0]
        mc = mcs[0] if mcs else mp
        out.append(MatmulConfig(mr, nv, mc, "rows"))
    if out:
        # the best tile in every loop order first, then the other tiles. Seen on the AVX2
        # machine (issue 4; noisy, shared runs): K-blocked orders often won at K >= 1024 (B's
        # block in L1), smaller row blocks (mc 64 / 32) at M = 128 / 1024; 2x2 tiles never did.
        mr, nv = picked[0]
        base = out[0]
        kc = _kc(match.k)
        first = []
        if match.k >= 1024:
            first.append(MatmulConfig(mr, nv, base.mc, "kblock", kc=kc))
        first.append(MatmulConfig(mr, nv, base.mc, "cols"))
        mp = up(match.m, mr)
        for mc in (64, 32):
            if mc != base.mc and mp % mc == 0 and mc % mr == 0:
                first.append(MatmulConfig(mr, nv, mc, "rows"))
        later = [MatmulConfig(mr, nv, base.mc, "kblock", kc=kc)]
        if match.k >= 2048 and match.k % 512 == 0:
            later.append(MatmulConfig(mr, nv, base.mc, "kblock", kc=512))
        if mp % 256 == 0 and base.mc != 256:
            later.append(MatmulConfig(mr, nv, 256, "rows"))
        later.append(MatmulConfig(mr, nv, base.mc, "kouter", kc=kc))
        out = [base] + first + out[1:2] + later + out[2:]
    out = [c for c in out if c.order not in ("kblock", "kouter") or c.kc]
    if not b_const and match.roles_b and match.roles_b[-1] == "n" and out:
        plain = [replace(c, pack=False) for c in out[:2]]
        out = [plain[0], out[0]] + plain[1:] + out[1:]
    # never return duplicates
    uniq = []
    for c in out:
        if c not in uniq:
            uniq.append(c)
    return uniq[: max(1, budget)]


def _kc(k: int) -> int:
    for kc in (256, 192, 128, 384, 96, 64):
        if k % kc == 0 and kc < k:
            return kc
    return 0


def default_config(match: MatmulMatch, cpu: CPUInfo) -> MatmulConfig | None:
    c = candidates(match, cpu, 1)
    return c[0] if c else None


# ---- schedule -------------------------------------------------------------------------------
def shared_b_rows(match: MatmulMatch) -> bool:
    """Rows over several axes (a "b" loop) that B does not index - one B for every row - and B
    the bigger operand (``N > rows``, so ``K x N > rows x K``): the column panels go outside
    the outer row axes, B is read once and A once a panel. Where A is the bigger one (ConvNeXt's
    56x56 and 28x28 stages), a block of A's rows stays in cache while the panels sweep past it,
    as before."""
    return ("b" in match.loop_roles and "b" not in match.roles_b
            and match.n > match.batch * match.m)


def _inside(loops: list, moved: list, after) -> list:
    """``loops`` with the ``moved`` ones taken out and put right after ``after``."""
    rest = [lp for lp in loops if not any(lp.same_as(m) for m in moved)]
    k = next(i for i, lp in enumerate(rest) if lp.same_as(after))
    return rest[:k + 1] + list(moved) + rest[k + 1:]


def pack_index_map(roles_b: list[str], nr: int):
    """Index map of B's dims to the packed layout ``[other dims.., N/nr, K, nr]``."""

    def fmap(*idx):
        rest = [i for i, r in zip(idx, roles_b) if r not in ("n", "k")]
        n = next(i for i, r in zip(idx, roles_b) if r == "n")
        k = next(i for i, r in zip(idx, roles_b) if r == "k")
        return [*rest, n // nr, k, n % nr]

    return fmap


def apply(
    func: tirx.PrimFunc,
    match: MatmulMatch,
    cfg: MatmulConfig,
    cpu: CPUInfo,
    pack_param: bool,
) -> s_tir.Schedule:
    """Schedule ``func`` with ``cfg``. ``pack_param``: B is a constant parameter whose caller
    passes it packed (the parameter's layout changes); otherwise B is packed at run time."""
    lanes = cpu.lanes(32)
    nr = cfg.nv * lanes
    # several row axes merged, M / N padded to whole tiles (matmul_shape.py)
    func, match, guarded = whole_tiles(func, match, cfg.mr, nr, pack_param)
    if match.n % nr or match.m % cfg.mr or match.m % cfg.mc or cfg.mc % cfg.mr:
        raise ValueError(f"tile {cfg.describe()} does not divide {match.shape_key()}")
    sch = s_tir.Schedule(func)
    main = sch.get_sblock(match.block)
    root = sch.get_sblock("root")
    blocks = list(sch.get_child_blocks(root))
    names = [sch.get(b).name_hint for b in blocks]
    pos = names.index(match.block)
    # prologues: inline into the matmul (injective producers such as a transpose); a padded
    # one (guarded: rows / columns past the end are zero) is a parallel loop nest of its own
    own = []
    for b in blocks[:pos][::-1]:
        if sch.get(b).name_hint in guarded:
            own.append(b)
        else:
            sch.compute_inline(b)
    # epilogues: inline all but the last into their consumers, the last one is computed per tile
    epis = blocks[pos + 1 :]
    for b in epis[:-1]:
        sch.compute_inline(b)
    if epis:
        out = epis[-1]
    else:
        out = sch.cache_write(main, 0, "global")
    # packing of B
    if cfg.pack:
        fmap = pack_index_map(match.roles_b, nr)
        if pack_param:
            sch.transform_layout(main, ("read", match.b_index), fmap)
            packer = None
        else:
            packer = sch.cache_read(main, match.b_index, "global")
            sch.transform_layout(main, ("read", match.b_index), fmap)
    else:
        packer = None
    loops = sch.get_loops(main)
    bl, ml, nl, kl = [], None, None, None
    for lp, role in zip(loops, match.loop_roles):
        if role == "b" or role == "1":
            bl.append(lp)
        elif role == "m":
            ml = lp
        elif role == "n":
            nl = lp
        else:
            kl = lp
    if ml is None:  # M == 1 (GEMV-like rows): a unit loop plays M
        ml = bl.pop() if bl else None
    i0, i1, i2 = sch.split(ml, [match.m // cfg.mc, cfg.mc // cfg.mr, cfg.mr])
    j0, j1, j2 = sch.split(nl, [match.n // nr, cfg.nv, lanes])
    if cfg.order == "kouter" and cfg.kc:
        k0, k1 = sch.split(kl, [match.k // cfg.kc, cfg.kc])
        order, outer = [k0, *bl, i0, j0, i1, k1, i2, j1, j2], [*bl, i0, j0]
        kloop, at = k0, None
    elif cfg.order == "kblock" and cfg.kc:
        k0, k1 = sch.split(kl, [match.k // cfg.kc, cfg.kc])
        order, outer = [*bl, i0, j0, k0, i1, k1, i2, j1, j2], [*bl, i0, j0]
        kloop, at = k0, None
    elif cfg.order == "cols":
        order, outer = [*bl, j0, i0, i1, kl, i2, j1, j2], [*bl, j0, i0]
        kloop, at = kl, i1
    else:
        order, outer = [*bl, i0, j0, i1, kl, i2, j1, j2], [*bl, i0, j0]
        kloop, at = kl, i1
    if shared_b_rows(match) and bl:
        # rows over several axes with one B for all ([1, H, W, C] @ [C, N]), B the bigger
        # operand: the outer row axes go inside the column panel, so each panel of B is swept
        # over every row while it is in cache - looped outside it, all of B streamed from
        # memory once per outer row (ConvNeXt-Tiny's 7x7-stage MLP, 9.4 MB of B: 3.95 ms a
        # call at 17% of the roofline)
        order = _inside(order, bl, j0)
        outer = _inside(outer, bl, j0)
    sch.reorder(*order)
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if match.flops() >= PARALLEL_MIN_FLOPS:
        sch.parallel(par)
    at = par if at is None else at
    sch.unroll(i2)
    sch.unroll(j1)
    sch.vectorize(j2)
    if cfg.order == "kouter":
        # the epilogue waits for the last K block: a parallel, vectorized loop nest of its own
        lps = sch.get_loops(out)
        if len(lps) > 1:
            sch.parallel(sch.fuse(*lps[:-1]))
        vectorize_inner(sch, out, lanes, whole=4, tail=False)
    else:
        # epilogue (or write-back) per tile
        sch.reverse_compute_at(out, at, preserve_unit_loops=True)
        vectorize_inner(sch, out, lanes, whole=4, tail=False)
    if packer is not None:
        b_shape = [as_int(d) for d in sch.get(packer).reads[0].source.shape]
        if None not in b_shape and _rows_fit_l1(match.roles_b, b_shape, nr):
            _transposing_copy(sch, packer, match.roles_b, nr, lanes)
        else:
            _parallel_copy(sch, packer, lanes)
    for b in own:  # zeros, then the copy: no condition per element (pad.split_padding)
        schedule_padded_copy(sch, b, lanes)
    init = sch.decompose_reduction(main, kloop)
    vectorize_inner(sch, init, lanes, whole=4, tail=False)
    return sch


def _rows_fit_l1(roles_b, b_shape, nr, line=64, sets=64, ways=8) -> bool:
    """Whether the run-time packing of B should go through :func:`_transposing_copy`: B has K
    innermost (``A @ B^T``) and the ``nr`` rows one vector store gathers from stay in L1 at once.
    Rows a power-of-two multiple of 1 KiB apart fall in a few L1 sets and evict each other (seen
    on a [1, 128, 8, 64] K: 105 -> 139 us with the transposing copy, 94 -> 85 us on a dense
    [1, 8, 128, 64] one); those keep the plain copy (K innermost: contiguous reads)."""
    if not roles_b or roles_b[-1] != "k" or "n" not in roles_b:
        return False
    ni = roles_b.index("n")
    stride = 4
    for d in b_shape[ni + 1:]:
        stride *= d
    step = max(1, stride // line) if stride % line == 0 else 1
    touched = sets // math.gcd(step, sets)
    return touched * ways >= nr


def _transposing_copy(sch, block, roles_b, nr, lanes):
    """The run-time packing of a B whose K dim is innermost (``C = A @ B^T``, attention's
    ``Q @ K^T`` on K in its [s, d] layout) into ``[.., N/nr, K, nr]``: loops in the packed order
    (``.., N/nr, K blocks`` parallel | ``K`` within the block | ``nr`` innermost, vectorized),
    so every store is a full vector and the strided reads of a ``nr x kb`` tile stay in L1."""
    loops = sch.get_loops(block)
    if len(loops) != len(roles_b):
        return _parallel_copy(sch, block, lanes)
    ni = roles_b.index("n")
    ki = roles_b.index("k")
    rest = [lp for i, lp in enumerate(loops) if i not in (ni, ki)]
    n0, n1 = sch.split(loops[ni], [None, nr])
    k = loops[ki]
    sch.reorder(*rest, n0, k, n1)
    par = sch.fuse(*rest, n0) if rest else n0
    sch.parallel(par)
    if nr % lanes == 0 and nr > lanes:
        _, v = sch.split(n1, [None, lanes])
        sch.vectorize(v)
    else:
        sch.vectorize(n1)


def _parallel_copy(sch, block, lanes):
    loops = sch.get_loops(block)
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    elif loops:
        sch.parallel(loops[0])


class MatmulRule(Rule):
    """The matmul rule: candidate tiles and loop orders measured per shape (see the module
    docstring); B packed at compile time when it is a constant at every call site."""

    name = "matmul"

    def analyze(self, func, ctx: Context):
        try:
            return analyze(func)
        except Exception as err:  # noqa: BLE001 - an unexpected kernel: the reason says so
            return None, f"analysis failed: {err}"

    def candidates(self, match: MatmulMatch, ctx: Context) -> list[dict]:
        cands = candidates(match, ctx.cpu, ctx.options.tune_trials,
                           b_const=ctx.is_const(match.b_param))
        return [c.to_dict() for c in cands]

    def no_candidates(self, match, ctx: Context) -> str:
        return "no tile fits the registers"

    def workload(self, match: MatmulMatch, candidates: list[dict], ctx: Context) -> str:
        # v2: the candidate set with K-blocked orders first at large K (older choices never saw
        # them: measured again once); ":pad": padded tiles (issue 13); ":rows": several row
        # axes under one B, looped inside the column panels since 2026-12-07
        pad = ":pad" if picked_tiles(match, ctx.cpu)[1] else ""
        rows = ":rows" if shared_b_rows(match) else ""
        return (f"{match.shape_key()}:{'constB' if ctx.is_const(match.b_param) else 'B'}"
                f":v2{pad}{rows}")

    def flops(self, match: MatmulMatch) -> float:
        return match.flops()

    def config_of(self, config: dict) -> dict:
        return MatmulConfig.from_dict(config).to_dict()

    def apply(self, func, match: MatmulMatch, config: dict, ctx: Context):
        cfg = MatmulConfig.from_dict(config)
        pack_b = ctx.is_const(match.b_param)
        sch = apply(func, match, cfg, ctx.cpu, pack_b)
        pack = None
        if pack_b and cfg.pack:
            pack = {match.b_param: (tuple(match.roles_b), cfg.nv * ctx.cpu.lanes(32))}
        note = whole_tiles_note(match, cfg.mr, cfg.nv * ctx.cpu.lanes(32))
        return sch.mod["main"], f"{match.shape_key()} {cfg.describe()}{note}", pack


__all__ = [
    "MatmulConfig",
    "MatmulMatch",
    "MatmulRule",
    "analyze",
    "apply",
    "candidates",
    "default_config",
    "pack_index_map",
]
