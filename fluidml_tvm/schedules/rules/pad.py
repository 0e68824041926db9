"""Padding an iteration space to whole register tiles (issue 13): :func:`grow`.

A register tile that does not divide a kernel's extent leaves a bounds check in the innermost
loops (4-20x slower, TVM-0.27-NOTES.md). ``s_tir.Schedule.pad_einsum`` pads einsum blocks only
(plain indices: no convolution window ``y + ry``), so the rules pad the way ONNX Runtime's
NCHWc transformer and MLAS do, by computing whole tiles over zero-padded panels:

* the block's padded iteration axes get the padded extents (its loops, bound one to one in the
  legalized form, too);
* every buffer the block then reaches past its end grows:

  - a constant parameter the caller pads (a weight: the stage packs the constant with zeros,
    :func:`..constants.pack_array`) takes the grown shape;
  - any other parameter is first copied into an intermediate (``cache_read``; a written one:
    ``cache_write``), which grows like the rest;
  - an intermediate grows, and the block that produces it (a padding stage, that copy) computes
    the grown region too, its value guarded to zero outside the old extent - so a padded output
    channel reads zero weights and a padded column reads zero data;

* the consumers of a grown buffer read only its old region: the padding is computed, never
  seen.
"""

from __future__ import annotations

import tvm
import tvm.sym
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir import Range

from ..common import as_int, iter_values, root_blocks


class PadError(ValueError):
    """The kernel cannot be padded (the reason says why)."""


def _bounds(sch, block, extents: dict) -> dict:
    """``{buffer: [needed extent per dim]}`` of every buffer ``block`` accesses, with the block's
    iteration variables ranging over ``extents`` (iter var -> extent)."""
    ana = tvm.sym.Analyzer()
    st = sch.get(block)
    for iv in st.iter_vars:
        ana.bind(iv.var, Range(0, extents.get(iv.var, iv.dom.extent)))
    out = {}
    for reg in list(st.reads) + list(st.writes):
        need = []
        for r in reg.region:
            hi = ana.const_int_bound(r.min + r.extent - 1).max_value
            need.append(int(hi) + 1)
        old = out.get(reg.source)
        out[reg.source] = need if old is None else [max(a, b) for a, b in zip(old, need)]
    return out


def _grown(sch, block, extents) -> dict:
    """Buffers ``block`` would reach past their end: ``{buffer: new shape}``."""
    out = {}
    for buf, need in _bounds(sch, block, extents).items():
        shape = [as_int(d) for d in buf.shape]
        if None in shape:
            raise PadError(f"buffer {buf.name} has a dynamic shape")
        if any(n > s for n, s in zip(need, shape)):
            out[buf] = [max(n, s) for n, s in zip(need, shape)]
    return out


_IF_THEN_ELSE = tvm.ir.Op.get("prim.if_then_else")


def _is_pad(value) -> bool:
    """``if_then_else(cond, x, 0)``: a padding stage's value."""
    return (isinstance(value, tvm.ir.expr.Call) and value.op.same_as(_IF_THEN_ELSE)
            and isinstance(value.args[2], (tirx.FloatImm, tirx.IntImm))
            and value.args[2].value == 0)


def split_padding(sch, block) -> list:
    """A guarded stage as two loop nests without a condition per element - zeros over the whole
    buffer, then the in-bound copy (``decompose_padding``) - or ``[block]`` where it is not of
    that form. Each is then a plain loop nest to parallelize and vectorize."""
    loops = sch.get_loops(block)
    if not loops:
        return [block]
    try:
        fill = sch.decompose_padding(block, loops[0])
    except Exception:  # noqa: BLE001 - not a padding pattern: one nest with the guard
        return [block]
    return [fill, block]


def schedule_padded_copy(sch, block, lanes: int) -> None:
    """The parts of a guarded stage (:func:`split_padding`), each a parallel loop nest whose
    rows are vectorized whole (a row of 197 is one long vector LLVM splits into whole vectors
    and a tail, instead of a bounds check per element)."""
    from .injective import schedule_spatial_block

    for part in split_padding(sch, block):
        loops = sch.get_loops(part)
        inner = as_int(sch.get(loops[-1]).extent) if loops else None
        if not loops or inner is None or inner % lanes == 0 or inner > 16 * lanes:
            schedule_spatial_block(sch, part, lanes)
            continue
        if len(loops) > 1:
            sch.parallel(sch.fuse(*loops[:-1]))
        sch.vectorize(loops[-1])


def lay_out_even_odd(sch, copy, odd_ok: bool = False, by_pairs: bool = False) -> None:
    """Lay the buffer the padding stage ``copy`` writes out as ``[.., column % 2, column // 2]``
    (even columns, then odd ones), so a stride-2 window's taps read contiguous vectors, and
    iterate the copy as it stores: vectorized stores, where the column order stored every other
    element one scalar at a time (depthwise 64 channels 112 -> 56: 387 -> 153 us, the copy was
    the kernel's time). The row must be even, unless ``odd_ok``: then the odd half gets one
    slot more than it has columns, written with zero and never read (a window's taps read
    columns below the row's length only). ``by_pairs``: the copy keeps iterating over the
    padded row's columns, to be iterated by :func:`iterate_pairs`."""
    width = sch.get(copy).writes[0].source.shape[-1]
    pad = None
    if odd_ok and int(width) % 2:
        pad = tirx.FloatImm(str(sch.get(copy).writes[0].source.dtype), 0.0)
    sch.transform_layout(copy, ("write", 0), lambda *i: [*i[:-1], i[-1] % 2, i[-1] // 2],
                         pad_value=pad)
    if pad is not None or by_pairs:  # the padded transform already iterates the copy as it
        return  # stores; by pairs: iterate_pairs splits the columns
    try:
        ivs = sch.get(copy).iter_vars
        sch.transform_block_layout(copy, tirx.IndexMap.from_func(
            lambda *iv: [*iv[:-1], iv[-1] % 2, iv[-1] // 2], ndim=len(ivs),
            index_dtype=str(ivs[-1].dom.extent.ty.dtype)))
    except Exception:  # noqa: BLE001 - the copy keeps its column order
        pass


def iterate_even_odd(sch, copy) -> None:
    """Iterate an even/odd copy (:func:`lay_out_even_odd`, computed where its plane is used) with
    the column-half loop outside the parity loop (unrolled) and leave that loop to LLVM's loop
    vectorizer: it loads whole vectors of the row and splits them into the even and odd lanes
    with shuffles (an interleaved access group), where the half loop vectorized by TVM loaded
    every other element one scalar at a time. Cold, 2 threads: GoogLeNet's 3x3/2 pools
    192x56x56 158 -> 126 us, SqueezeNet's 128x55x55 58 -> 45; depthwise 5x5/2 240x28x28
    58 -> 46 us, 3x3/2 48x112x112 167 -> 119."""
    loops = sch.get_loops(copy)
    sch.reorder(loops[-1], loops[-2])
    sch.unroll(sch.get_loops(copy)[-1])


def iterate_pairs(sch, copy, at) -> bool:
    """Iterate a copy laid out by :func:`lay_out_even_odd` ``by_pairs``, computed under ``at``,
    as two loop nests without a guard where it decomposes so: zeros over its region (an even and an
    odd run of contiguous stores a row), then the in-bound copy by pairs of source columns, the pair
    unrolled and the pair loop left to LLVM's loop vectorizer (one interleaved access group: two
    whole-vector loads, shuffles into the even and odd halves, two vector stores). Otherwise the
    guarded copy by pairs of columns, as :func:`iterate_even_odd` iterates it. That guarded copy
    was vectorized with masked gathers (the bound test per lane) in some kernels: 5x5/2
    144x56x56 + SiLU spent ~30% of its time in them. Returns whether the copy was split into the
    zeros and the unguarded copy."""
    loops = sch.get_loops(copy)
    pos = next((i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(at))), None)
    fill = None
    if pos is not None and pos + 1 < len(loops):
        try:
            fill = sch.decompose_padding(copy, loops[pos + 1])
        except Exception:  # noqa: BLE001 - not a padding pattern: the guarded copy
            fill = None
    last = sch.get_loops(copy)[-1]
    n = as_int(sch.get(last).extent)
    if n is not None and n % 2 == 0:  # an odd source row: LLVM vectorizes the strided stores
        _, pair = sch.split(last, [n // 2, 2])
        sch.unroll(pair)
    if fill is not None:
        flast = sch.get_loops(fill)[-1]
        half, parity = sch.split(flast, [(as_int(sch.get(flast).extent) or 2) // 2, 2])
        sch.reorder(parity, half)
        sch.unroll(parity)
        sch.vectorize(half)
    return fill is not None


def _dt(expr) -> str:
    return str(expr.ty)


def _param_index(func, buf) -> int | None:
    return next((i for i, p in enumerate(func.params) if p.same_as(buf)), None)


def grow(func: tirx.PrimFunc, block_name: str, pads: dict[int, int], caller_pads=(),
         even_last=False):
    """``func`` with the iteration axes of block ``block_name`` padded: ``pads`` maps an axis
    (its index among the block's iteration variables) to its padded extent. ``caller_pads``:
    the parameters (indices) the caller passes padded (constants); others are copied first.
    ``even_last``: grown intermediates get an even innermost extent (a stride-2 depthwise
    kernel splits its padded input into even and odd columns).

    Returns ``(PrimFunc, {param index: grown shape}, guarded)``: ``guarded`` names the blocks
    whose value is now guarded (the copies made here among them); a rule computes them as loop
    nests of their own - inlined into a tile, the guard would be evaluated per FMA. Raises
    :class:`PadError` when a buffer to grow is produced by anything but an injective block with
    plain indices."""
    sch = s_tir.Schedule(func)
    block = sch.get_sblock(block_name)
    ivs = list(sch.get(block).iter_vars)
    ext = {ivs[i].var: e for i, e in pads.items()}
    grown = _grown(sch, block, ext)
    # parameters the caller does not pad: read through a copy, written through a cache
    for buf in list(grown):
        p = _param_index(sch.mod["main"], buf)
        if p is None or p in caller_pads:
            continue
        st = sch.get(block)
        if any(w.source.same_as(buf) for w in st.writes):
            sch.cache_write(block, 0, "global")
        else:
            i = next(i for i, r in enumerate(st.reads) if r.source.same_as(buf))
            sch.cache_read(block, i, "global")
    func = sch.mod["main"]
    sch = s_tir.Schedule(func)
    block = sch.get_sblock(block_name)
    grown = _grown(sch, block, ext)
    if even_last:  # grown intermediates: an even innermost extent (an even/odd column split)
        for buf, shape in grown.items():
            if _param_index(func, buf) is None and shape[-1] % 2:
                shape[-1] += 1
    new_bufs, params = {}, {}
    for buf, shape in grown.items():
        dt = _dt(buf.shape[0]) if buf.shape else "int64"
        nb = tirx.decl_buffer([tirx.IntImm(dt, s) for s in shape], buf.dtype, buf.name)
        new_bufs[buf] = nb
        p = _param_index(func, buf)
        if p is not None:
            params[p] = tuple(shape)
    # the producers of grown intermediates: their axes along the grown dims, and the guard
    producers = {}  # block name -> (buffer, {iter var: new extent}, guard)
    for b in root_blocks(sch):
        st = sch.get(b)
        if st.name_hint == block_name:
            continue
        for w in st.writes:
            if w.source not in grown or _param_index(func, w.source) is not None:
                continue
            producers[st.name_hint] = _producer_plan(sch, b, w, grown[w.source])
    loop_ext = {}  # loop var -> new extent
    iv_ext = {}  # block name -> {iter var: new extent}
    _plan_loops(sch, block, ext, loop_ext)
    iv_ext[block_name] = ext
    for name, (_, pext, _) in producers.items():
        _plan_loops(sch, sch.get_sblock(name), pext, loop_ext)
        iv_ext[name] = pext
    return _rewrite(func, new_bufs, loop_ext, iv_ext, producers), params, set(producers)


def _producer_plan(sch, b, write, shape):
    st = sch.get(b)
    if any(iv.iter_type != tirx.IterVar.DataPar for iv in st.iter_vars):
        raise PadError(f"{st.name_hint} (producer of {write.source.name}) is a reduction")
    pext, guard = {}, []
    for r, old, new in zip(write.region, write.source.shape, shape):
        if as_int(old) == new:
            continue
        if not isinstance(r.min, tirx.Var):
            raise PadError(f"{st.name_hint} writes {write.source.name} through an expression")
        pext[r.min] = new
        guard.append(r.min < old)
    return write.source, pext, guard


def _plan_loops(sch, block, ext: dict, loop_ext: dict) -> None:
    """The loops bound to the padded axes of ``block`` (one loop per axis), with their new
    extents."""
    st = sch.get(block)
    vals = iter_values(sch, block)
    loops = {sch.get(lp).loop_var: lp for lp in sch.get_loops(block)}
    for iv, val in zip(st.iter_vars, vals):
        if iv.var not in ext:
            continue
        lp = next((lp for v, lp in loops.items() if isinstance(val, tirx.Var) and v.same_as(val)),
                  None)
        if lp is None:
            raise PadError(f"axis {iv.var.name} of {st.name_hint} is not bound to one loop")
        loop_ext[sch.get(lp).loop_var] = ext[iv.var]


def _rewrite(func, new_bufs, loop_ext, iv_ext, producers):
    def var(v):
        return new_bufs.get(v, v)

    def loop(f):
        e = loop_ext.get(f.loop_var)
        if e is None:
            return f
        return tirx.For(f.loop_var, f.min, tirx.IntImm(_dt(f.extent), e), f.kind, f.body,
                        f.thread_binding, f.annotations)

    def block(b):
        ext = iv_ext.get(b.name_hint)
        if ext is None:
            return b
        ivs = [tirx.IterVar(Range(0, tirx.IntImm(_dt(iv.dom.extent), ext[iv.var])), iv.var,
                            iv.iter_type) if iv.var in ext else iv for iv in b.iter_vars]
        body = b.body
        if b.name_hint in producers:
            _, _, guard = producers[b.name_hint]
            if not isinstance(body, tirx.BufferStore):
                raise PadError(f"{b.name_hint} is not one store")
            cond = guard[0]
            for g in guard[1:]:
                cond = tirx.And(cond, g)
            value = body.value
            if _is_pad(value):  # a padding stage already: one condition (decompose_padding's form)
                cond, value = tirx.And(value.args[0], cond), value.args[1]
            zero = tirx.const(0, _dt(body.value))
            body = tirx.BufferStore(body.buffer, tirx.if_then_else(cond, value, zero),
                                    body.indices)
        return s_tir.SBlock(ivs, b.reads, b.writes, b.name_hint, body, b.init, b.alloc_buffers,
                            b.match_buffers, b.annotations)

    # blocks first (their iter var domains refer to the old vars), then loops and buffers
    out = tvm_ffi.structural_map(func, [(s_tir.SBlock, block), (tirx.For, loop)])
    return tvm_ffi.structural_map(out, [(tvm.ir.expr.Var, var)])
