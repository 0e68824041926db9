"""Grouped convolutions (``groups`` neither 1 nor the channel count: ResNeXt, RegNet,
ShuffleNet) as the conv2d rule's kernel (issue 13): :func:`ungroup`.

Legalized, a grouped convolution reads its data at ``D[.., f // Fg * Cg + rc, ..]``: the output
channel ``f`` indexes the data too, so the conv2d analysis finds no output-channel axis of its
own. Split it: ``f = g * Fg + fg`` on the block (``transform_block_layout``), the weight re-laid
``[G, Fg, ..]`` and the conv output ``[.., G, Fg, ..]`` (``transform_layout``); the data index
simplifies to ``g * Cg + rc``. Then ``fg`` is an output-channel axis the data does not index and
``g`` one more spatial axis, and the conv2d rule tiles ``fg`` (padded to whole vectors when
``Fg`` is small: :mod:`.pad`). A constant weight is re-laid by the caller when it is packed
(:func:`..constants.pack_array`, roles ``("groups", G, f axis, "conv", ..)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
import tvm.sym
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir import Range

from ..common import as_int, match_sum_of_products, plain_indices, root_blocks


@dataclass
class Ungrouped:
    func: tirx.PrimFunc  # the kernel with the channel axis split
    groups: int
    f_dim: int  # the output-channel dim of the original weight


def _floordivs(expr, var) -> list[int]:
    """The constant divisors of ``var // c`` terms in ``expr``."""
    found = []

    def visit(e):
        if isinstance(e, tirx.FloorDiv) and isinstance(e.a, tirx.Var) and e.a.same_as(var):
            c = as_int(e.b)
            if c:
                found.append(c)

    tvm_ffi.structural_walk(expr, [(tirx.FloorDiv, visit)])
    return found


def ungroup(func: tirx.PrimFunc, const_params=()) -> tuple[Ungrouped | None, str]:
    """The grouped convolution ``func`` with its output channels split into (group, channel in
    the group), or ``(None, why not)``. ``const_params``: parameters constant at every call (a
    weight among them is re-laid by the caller; any other weight through a copy)."""
    sop, why = match_sum_of_products(func)
    if sop is None:
        return None, why
    st, ext = sop.stmt, sop.extents
    reads = list(st.reads)
    w_i = next((i for i, r in enumerate(reads) if plain_indices(r) is not None), None)
    out = plain_indices(st.writes[0])
    if w_i is None or out is None:
        return None, "not a grouped convolution"
    w_vars = plain_indices(reads[w_i])
    data = reads[1 - w_i]
    for f in out:
        if f is None or ext[f] <= 1 or not any(v is not None and v.same_as(f) for v in w_vars):
            continue
        divs = {d for r in data.region for d in _floordivs(r.min, f)}
        if len(divs) != 1:
            continue
        fg = divs.pop()
        if fg >= ext[f] or ext[f] % fg:
            continue
        return _split(func, sop, w_i, f, fg, ext[f] // fg, const_params), "grouped"
    return None, "not a grouped convolution"


def _split(func, sop, w_i, f, fg, groups, const_params) -> Ungrouped:
    sch = s_tir.Schedule(func)
    block = sch.get_sblock(sop.name)
    st = sch.get(block)
    params = list(func.params)
    w_buf = st.reads[w_i].source
    w_param = next((i for i, p in enumerate(params) if p.same_as(w_buf)), None)
    if any(p.same_as(st.writes[0].source) for p in params):
        sch.cache_write(block, 0, "global")
    if w_param is not None and w_param not in const_params:
        sch.cache_read(block, w_i, "global")
    st = sch.get(block)
    ivs = list(st.iter_vars)
    fa = next(i for i, iv in enumerate(ivs) if iv.var.same_as(f))
    w_dim = next(i for i, r in enumerate(st.reads[w_i].region) if r.min.same_as(f))
    c_dim = next(i for i, r in enumerate(st.writes[0].region) if r.min.same_as(f))

    def split_at(dim, ndim):
        def fmap(*idx):
            return [*idx[:dim], idx[dim] // fg, idx[dim] % fg, *idx[dim + 1:]]

        return tirx.IndexMap.from_func(fmap, ndim=ndim)

    sch.transform_block_layout(block, split_at(fa, len(ivs)))
    sch.transform_layout(block, ("read", w_i), split_at(w_dim, len(st.reads[w_i].region)))
    sch.transform_layout(block, ("write", 0), split_at(c_dim, len(st.writes[0].region)))
    conv_out = sch.get(block).writes[0].source  # the split buffer
    names = {sop.name} | _split_consumers(sch, conv_out, c_dim, split_at)
    return Ungrouped(_simplify_blocks(sch.mod["main"], names), groups, w_dim)


def _split_consumers(sch, conv_out, c_dim, split_at) -> set:
    """The epilogue blocks after the convolution iterate (group, channel in the group) too, and
    the intermediates between them are laid out [.., G, Fg, ..] like the conv output: a tile of
    a group's (padded) channels then needs exactly that group's channels of the epilogue. With
    one channel axis ``f``, a tile of channels ``g * Fg + [96, 144)`` of a group of 136 reached
    into the next group's channels, which the epilogue computed from conv outputs not yet
    written (ShuffleNet: wrong logits)."""
    split = {conv_out: c_dim}  # buffers laid out split: the dim of the group axis
    names = set()
    blocks = root_blocks(sch)
    start = next(i for i, b in enumerate(blocks) if any(
        w.source.same_as(conv_out) for w in sch.get(b).writes)) + 1
    for b in blocks[start:]:
        st = sch.get(b)
        ivs = list(st.iter_vars)
        axis = None
        for r in st.reads:
            dim = split.get(r.source)
            if dim is None:
                continue
            idx = r.region[dim].min  # after the split: v // Fg at the group dim
            v = idx.a if isinstance(idx, tirx.FloorDiv) else None
            axis = next((i for i, iv in enumerate(ivs) if v is not None and iv.var.same_as(v)),
                        None)
            if axis is not None:
                break
        if axis is None:
            continue
        var = ivs[axis].var
        writes = [(i, w) for i, w in enumerate(st.writes)]
        sch.transform_block_layout(b, split_at(axis, len(ivs)))
        names.add(st.name_hint)
        for i, w in writes:
            if _is_param(sch, w.source):
                continue  # the kernel's output keeps its layout: [.., g * Fg + fg, ..]
            dim = next((d for d, r in enumerate(w.region) if r.min.same_as(var)), None)
            if dim is None:
                continue
            sch.transform_layout(b, ("write", i), split_at(dim, len(w.region)))
            split[sch.get(b).writes[i].source] = dim
    return names


def _is_param(sch, buf) -> bool:
    return any(p.same_as(buf) for p in sch.mod["main"].params)


def _simplify_blocks(func, names):
    """The indices of the blocks ``names`` simplified over its iteration domain (``(g * Fg + fg) //
    Fg`` -> ``g``)."""

    def block(b):
        if b.name_hint not in names:
            return b
        ana = tvm.sym.Analyzer()
        for iv in b.iter_vars:
            if as_int(iv.dom.extent) != 1:  # unit axes stay (the store indexes them)
                ana.bind(iv.var, Range(iv.dom.min, iv.dom.min + iv.dom.extent))

        def load(ld):
            return tirx.BufferLoad(ld.source, [ana.simplify(i) for i in ld.indices])

        def region(r):
            return tirx.BufferRegion(r.source, [Range.from_min_extent(ana.simplify(x.min),
                                                                      x.extent) for x in r.region])

        body = tvm_ffi.structural_map(b.body, [(tvm.ir.expr.TensorLoad, load)])
        return s_tir.SBlock(b.iter_vars, [region(r) for r in b.reads],
                            [region(w) for w in b.writes], b.name_hint, body, b.init,
                            b.alloc_buffers, b.match_buffers, b.annotations)

    return tvm_ffi.structural_map(func, [(s_tir.SBlock, block)])
