"""NCHW depthwise convolutions on maps whose rows fill less than two whole vectors and no vector
width divides (7, 13, 14, 28 columns on AVX-512: MobileNet/EfficientNet/MNASNet's later stages),
computed over the flattened padded plane of each channel.

A channel's padded plane (``Hp x Wp``, ``Wp = W + kw - 1``) is stored as one row of
``Hq x Wp`` values (a few zero rows appended); output position ``i = y * Wp + x`` is then
``sum(P[i + ry * Wp + rx] * w[ry, rx])``, contiguous in ``i`` for every window tap, so the
kernel is whole 16-lane vectors over ``i`` - the ``Wp - W`` positions a row computes past its
end are never read. The row-by-row kernel (:mod:`.depthwise`) runs one ``W``-lane vector a row
per tap: 7 or 14 lanes, which LLVM splits into 2-3 narrower operations. Timed on the 2-core
AVX-512 host, 2 threads, bias + SiLU epilogue, the input 24 times in turn (cold) / the same
again (warm): 1152ch 7x7 5x5 139 -> 76 us cold (126 -> 66 warm), 672ch 14x14 5x5 180 -> 125,
240ch 28x28 5x5 270 -> 166, 1152ch 7x7 3x3 78 -> 58, 480ch 14x14 3x3 76 -> 65; not on
longer rows (144ch 56x56 3x3: 380 -> 424 cold, 238 -> 210 warm). With a ReLU epilogue 5x5
windows gain as much (1152ch 7x7 97 -> 70 us, 480ch 14x14 96 -> 82, 120ch 28x28 95 -> 63) but
3x3 ones do not (1152ch 7x7 38 -> 46): a 3x3 window takes the flat kernel with an exp, sigmoid,
tanh or erf in its epilogue only (:data:`COSTLY_EPILOGUE`).

The kernel is rebuilt (a te compute of the padded plane, the flat convolution and its copy
back into the ``[n, c, y, x]`` output), the padding stage and the convolution block of the
legalized kernel are replaced by it and its epilogue blocks stay as they are (they read the
flat result, the copy inlined). Stride 1, ``same`` padding, one input channel per output
channel (``[C, 1, kh, kw]`` weights) only; anything else keeps the row-by-row kernel.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir, te, tirx

from ..common import around, as_int, called_ops, extent, root_blocks, vectorize_inner
from .conv_transpose import block_names, root_stmts
from .pad import _is_pad
from .tiles import up

# Epilogue ops that make a pass of their own over the result the cheaper part (3x3 windows take
# the flat kernel only with one of them: with ReLU 1152ch 7x7 ran 38 -> 46 us cold flat, 576ch
# 14x14 64 -> 72; with SiLU 78 -> 58 and 79 -> 64).
COSTLY_EPILOGUE = frozenset({"tirx.exp", "tirx.sigmoid", "tirx.tanh", "tirx.erf"})
# The most accumulator vectors of one tile (registers: 32 on AVX-512, the window's loads and
# the weight broadcast besides).
MAX_VECTORS = 8


def _offset(index, var) -> int | None:
    """``c`` for an index ``var + c`` (``c`` constant), else None."""
    diff = tvm.sym.Analyzer().simplify(index - var)
    return as_int(diff)


def _shape(buf) -> list[int] | None:
    dims = [as_int(d) for d in buf.shape]
    return None if None in dims else dims


class FlatShape:
    """What the flat kernel needs of a legalized depthwise kernel."""

    def __init__(self, data, weight, pad_buf, out, pt, pl, kh, kw, pad_block):
        self.data, self.weight, self.pad_buf, self.out = data, weight, pad_buf, out
        self.pad_block = pad_block
        self.pt, self.pl, self.kh, self.kw = pt, pl, kh, kw
        n, c, h, w = _shape(data)
        self.n, self.c, self.h, self.w = n, c, h, w
        self.wp = w + kw - 1

    def vectors(self, lanes: int) -> tuple[int, int]:
        """``(vectors of the flat output, vectors a tile)``: a tile of at most
        :data:`MAX_VECTORS`, the one padding the flat output least (most vectors on a tie)."""
        nvv = up((self.h - 1) * self.wp + self.w, lanes) // lanes
        if nvv <= MAX_VECTORS:
            return nvv, nvv
        nv = min(range(MAX_VECTORS, 3, -1), key=lambda v: (up(nvv, v), -v))
        return up(nvv, nv), nv


def match(func: tirx.PrimFunc, m, lanes: int) -> tuple[FlatShape | None, str]:
    """The kernel's :class:`FlatShape` when the flat form applies, else ``(None, why not)``."""
    if m.f_is_vector or m.stride != 1:
        return None, "channels innermost or stride > 1"
    if m.v_extent % lanes == 0 or m.v_extent > 2 * lanes:
        return None, f"rows of {m.v_extent}: whole vectors, or longer than two"
    sch = s_tir.Schedule(func)
    st = sch.get(sch.get_sblock(m.block))
    out = st.writes[0].source
    reads = [r.source for r in st.reads if not r.source.same_as(out)]
    pst, pad_buf = None, None
    for b in root_blocks(sch):
        bst = sch.get(b)
        hit = next((r for r in reads if any(w.source.same_as(r) for w in bst.writes)), None)
        if hit is not None and bst.name_hint != m.block:
            pst, pad_buf = bst, hit
    weight = next((b for b in reads if pad_buf is not None and not b.same_as(pad_buf)), None)
    if pst is None or weight is None:
        return None, "no padding stage"
    body = pst.body
    if not isinstance(body, tirx.BufferStore) or not _is_pad(body.value):
        return None, "the padding stage is not a guarded copy"
    load = body.value.args[1]
    if not isinstance(load, tvm.ir.TensorLoad) or len(load.indices) != 4:
        return None, "the padding stage does not copy a 4-d input"
    data = load.source
    ivs = [iv.var for iv in pst.iter_vars]
    offs = [_offset(i, v) for i, v in zip(load.indices, ivs)]
    if offs[:2] != [0, 0] or None in offs:
        return None, "the padding stage moves more than rows and columns"
    shapes = [_shape(b) for b in (data, weight, pad_buf, out)]
    if None in shapes or any(len(s) != 4 for s in shapes):
        return None, "dynamic or not 4-d buffers"
    (n, c, h, w), (wc, one, kh, kw), (_, _, hp, wp), out_shape = shapes
    pt, pl = -offs[2], -offs[3]
    if wc != c or one != 1 or out_shape != [n, c, h, w] or hp != h + kh - 1 or wp != w + kw - 1:
        return None, "not a stride-1 'same' depthwise convolution with [C, 1, kh, kw] weights"
    if 2 * pt != kh - 1 or 2 * pl != kw - 1:
        return None, "asymmetric padding"
    if kh * kw < 25 and not called_ops(func) & COSTLY_EPILOGUE:
        return None, ("a window under 5x5 with a cheap epilogue: the row kernel's epilogue per "
                      "row, in cache, beats a pass of its own")
    if any(str(b.dtype) != "float32" for b in (data, weight, out)):
        return None, "not fp32"
    return FlatShape(data, weight, pad_buf, out, pt, pl, kh, kw, pst.name_hint), "flat"


def _flat_compute(fs: FlatShape, lanes: int) -> tirx.PrimFunc:
    """The te kernel: ``flat_pad`` (the padded plane with zero rows appended), ``flat_conv``
    over the flat positions, ``flat_out`` (the ``[n, c, y, x]`` values)."""
    dt = str(fs.data.shape[0].ty)

    def k(v):
        return tirx.const(v, dt)

    nvv, _ = fs.vectors(lanes)
    m = nvv * lanes
    rows = (m + (fs.kh - 1) * fs.wp + fs.kw - 1 + fs.wp - 1) // fs.wp
    x = te.placeholder(fs.data.shape, "float32", name="X")
    w = te.placeholder(fs.weight.shape, "float32", name="W")
    zero = tirx.const(0.0, "float32")
    p = te.compute(
        (k(fs.n), k(fs.c), k(rows), k(fs.wp)),
        lambda n, c, h, col: tirx.if_then_else(
            tirx.all(h >= k(fs.pt), h < k(fs.pt + fs.h), col >= k(fs.pl), col < k(fs.pl + fs.w)),
            x[n, c, h - k(fs.pt), col - k(fs.pl)], zero),
        name="flat_pad")
    ry = te.reduce_axis((k(0), k(fs.kh)), "ry")
    rx = te.reduce_axis((k(0), k(fs.kw)), "rx")

    def tap(n, c, i):
        j = i + ry * k(fs.wp) + rx
        return p[n, c, tirx.floordiv(j, k(fs.wp)), tirx.floormod(j, k(fs.wp))]

    a = te.compute((k(fs.n), k(fs.c), k(m)),
                   lambda n, c, i: te.sum(tap(n, c, i) * w[c, k(0), ry, rx], axis=[ry, rx]),
                   name="flat_conv")
    y = te.compute(fs.out.shape, lambda n, c, r, col: a[n, c, r * k(fs.wp) + col],
                   name="flat_out")
    return te.create_prim_func([x, w, y])


def rebuild(func: tirx.PrimFunc, m, fs: FlatShape, lanes: int) -> tirx.PrimFunc:
    """``func`` with its padding stage and convolution block replaced by the flat kernel."""
    flat = _flat_compute(fs, lanes)
    to_orig = dict(zip(flat.params, [fs.data, fs.weight, fs.out]))
    fblock = flat.body.block
    new_nests = root_stmts(fblock.body)
    root_realize = func.body
    root = root_realize.block
    body = []
    for stmt in root_stmts(root.body):
        inside = block_names(stmt)
        if fs.pad_block in inside:
            continue
        if m.block in inside:
            body.extend(new_nests)
            continue
        body.append(stmt)
    allocs = [b for b in root.alloc_buffers if not b.same_as(fs.pad_buf)]
    allocs += list(fblock.alloc_buffers)
    new_root = s_tir.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint,
                            tirx.SeqStmt(body), root.init, allocs, root.match_buffers,
                            root.annotations)
    new_realize = s_tir.SBlockRealize(root_realize.iter_values, root_realize.predicate, new_root)
    out = func.with_body(new_realize)
    return tvm_ffi.structural_map(out, [(tvm.ir.expr.Var, lambda v: to_orig.get(v, v))])


def schedule_flat(func: tirx.PrimFunc, m, fs: FlatShape, lanes: int):
    """``(schedule, reason)`` of the flat kernel: ``fuse(n, c)`` parallel | tiles of ``nv``
    vectors over the flat positions (window unrolled, accumulators in registers) | the padded
    plane computed per channel and stored flat; the epilogue one parallel loop nest of its own
    reading the flat result (``flat_out`` inlined into it)."""
    sch = s_tir.Schedule(rebuild(func, m, fs, lanes))
    nvv, nv = fs.vectors(lanes)
    conv, _, out = around(sch, "flat_conv")  # flat_out inlined into the epilogue (if any)
    n, c, i, ry, rx = sch.get_loops(conv)
    par = sch.fuse(n, c)
    sch.parallel(par)
    i0, i1, i2 = sch.split(i, [nvv // nv, nv, lanes])
    sch.reorder(i0, ry, rx, i1, i2)
    acc = sch.cache_write(conv, 0, "global")  # on the stack, not a workspace (depthwise._tile)
    sch.reverse_compute_at(acc, i0, preserve_unit_loops=True)
    for r in (ry, rx):
        if (extent(sch, r) or 0) <= 7:
            sch.unroll(r)
    sch.unroll(i1)
    sch.vectorize(i2)
    vectorize_inner(sch, acc, lanes, whole=4, tail=False)
    sch.decompose_reduction(conv, ry)
    vectorize_inner(sch, sch.get_sblock("flat_conv_init"), lanes, whole=4, tail=False)
    pad = sch.get_sblock("flat_pad")
    sch.compute_at(pad, par, preserve_unit_loops=True)
    # flat only now: computed at the channel, the plane's region is still inferred in 2-d
    wp = tirx.const(fs.wp, str(fs.data.shape[0].ty))
    sch.transform_layout(pad, ("write", 0), lambda n_, c_, h, w: (n_, c_, h * wp + w))
    sch.vectorize(sch.get_loops(pad)[-1])
    loops = sch.get_loops(out)  # [n, c, y, x]: channels parallel, a row one vector (<= 2)
    sch.parallel(sch.fuse(*loops[:2]) if len(loops) > 2 else loops[0])
    vectorize_inner(sch, out, lanes, whole=4, tail=False)
    reason = (f"depthwise (columns innermost, stride 1) over the flattened padded plane: rows of "
              f"{fs.wp}, {nvv} vectors of {lanes} a channel in tiles of {nv}, window unrolled")
    return sch, reason
