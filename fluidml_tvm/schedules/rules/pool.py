"""pool rule: NCHW max/avg window pools whose window runs along the rows (stride 1 or 2).

Matches one reduction block reading one buffer whose innermost index is ``s * x + rx`` (``x``
the innermost output axis, ``rx`` a window axis, ``s`` 1 or 2), with a padding stage before it.
The generic reduction rule vectorized ``x`` with the padding tested per element and window tap
(for stride 2 a gather per tap). Here the padded input plane of a channel is copied once per
parallel (batch, channel) iteration, so each window tap reads a contiguous vector; the rows stay
inside the parallel loop, the window unrolled, ``x`` one vector:

- stride 2: the plane laid out ``[.., row, column % 2, column // 2]`` (even columns, then odd
  ones; the copy iterates as it stores), as the depthwise rule does for its stride-2
  kernels: ``out[x] = max over (ry, rx) of P[2y + ry, rx % 2, x + rx // 2]``; the copy is left to
  LLVM's loop vectorizer (:func:`.pad.iterate_even_odd`: whole vectors split by shuffles, where
  TVM's vectors loaded every other element one at a time). An odd padded row
  (ceil-mode pools: GoogLeNet's 113, 57, 29, 15) gives the odd half one spare slot, written with
  zero and never read.
- stride 1: the plane copied as it is (the inception branches' 3x3 pools, SPP's 5x5):
  ``out[x] = max over (ry, rx) of P[y + ry, x + rx]``.

Measured against the generic rule with a cold input (24 inputs in turn, 2-core AVX-512 host):
stride 2: 3x3 max pools 128x55x55 (ceil) 201 -> 51 us, 64x112x112 (pad 1) 405 -> 278, GoogLeNet's
odd rows 64x112x112 (ceil) 431 -> 235, 192x56x56 227 -> 165, 480x28x28 106 -> 90; stride 1
(pad 1): 192x28x28 127 -> 35 us, 256x28x28 175 -> 46, 512x14x14 88 -> 29, 832x7x7 123 -> 12.
Only pools with a padding stage (the generic rule tests the bounds per element): without one the
copy costs more than it saves (2x2 average pools of DenseNet's transitions, 128x56x56: 49 -> 61
us). Channels-innermost pools (NHWC: the window does not run along the innermost axis) keep the
generic rule, which vectorizes them over the channels. Kill switch: ``fluidml.schedule_off=pool``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx

from ..common import (
    around,
    as_int,
    coefficient,
    is_reduction,
    loop_var_index,
    plain_indices,
    root_blocks,
    vectorize_inner,
)
from .base import Context, Rule, Unrelated
from .pad import iterate_even_odd, lay_out_even_odd


@dataclass
class PoolMatch:
    block: str
    roles: list  # per loop of the block: "s" spatial, "v" the innermost output axis, "r" window
    width: int  # the (padded) input row the window reads
    stride: int = 2  # along the innermost axis: 1 or 2


def analyze(func: tirx.PrimFunc):
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    reds = [b for b in blocks if is_reduction(sch, b)]
    if len(reds) != 1:
        return None, Unrelated(f"{len(reds)} reduction blocks (needs exactly 1)")
    main = reds[0]
    st = sch.get(main)
    if not isinstance(st.body, tirx.BufferStore) or str(st.writes[0].source.dtype) != "float32":
        return None, Unrelated("not a float32 store")
    out = st.writes[0]
    reads = [r for r in st.reads if not r.source.same_as(out.source)]
    if len(reads) != 1:
        return None, Unrelated("not one input read (not a pool)")
    o_vars = plain_indices(out)
    if not o_vars or o_vars[-1] is None:
        return None, Unrelated("output not indexed by plain variables")
    x = o_vars[-1]
    last = reads[0].region[-1].min
    stride = coefficient(last, x)
    if stride not in (1, 2):
        return None, Unrelated("the innermost axis is not read with stride 1 or 2")
    window = [iv.var for iv in st.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    if not any(coefficient(last, r) for r in window):
        # channels innermost (NHWC): the generic rule vectorizes over them
        return None, Unrelated("the window does not run along the innermost axis")
    width = as_int(reads[0].source.shape[-1])
    if width is None:
        return None, "symbolic input row"
    idx = loop_var_index(sch, main)
    if idx is None:
        return None, "block bindings are not one loop per axis"
    roles = ["s"] * len(sch.get_loops(main))
    for iv in st.iter_vars:
        if iv.var not in idx:
            continue
        if iv.iter_type == tirx.IterVar.CommReduce:
            roles[idx[iv.var]] = "r"
        elif iv.var.same_as(x):
            roles[idx[iv.var]] = "v"
    if "v" not in roles or roles[-1] != "r" or roles.index("v") > roles.index("r"):
        return None, "loops are not (spatial.., innermost output axis, window..)"
    names = [sch.get(b).name_hint for b in blocks]
    pre = blocks[:names.index(st.name_hint)]
    if not pre:
        # no padding: the generic rule's strided loads have no bound test to pay, and the copy
        # costs more than it saves (2x2 average pools 128x56x56: 49 vs 61 us, cold input)
        return None, Unrelated("no padding stage")
    if len(pre) > 1 or not sch.get(pre[0]).writes[0].source.same_as(reads[0].source):
        return None, "a prologue other than the padding"
    return PoolMatch(st.name_hint, roles, width, stride), "pool"


def schedule_pool(func, m: PoolMatch, lanes: int):
    sch = s_tir.Schedule(func)
    main, pre, out = around(sch, m.block)
    copy = pre[0]
    if m.stride == 2:
        lay_out_even_odd(sch, copy, odd_ok=True)
    loops = sch.get_loops(main)
    spatial = [lp for lp, r in zip(loops, m.roles) if r == "s"]
    reds = [lp for lp, r in zip(loops, m.roles) if r == "r"]
    vec = next(lp for lp, r in zip(loops, m.roles) if r == "v")
    # (batch, channel) parallel, the rows inside: one channel's plane is copied per iteration
    outer, row = spatial[:-1], spatial[-1]
    sch.reorder(*spatial, *reds, vec)
    par = sch.fuse(*outer) if len(outer) > 1 else (outer[0] if outer else row)
    sch.parallel(par)
    sch.compute_at(copy, par, preserve_unit_loops=True)
    if m.stride == 2:
        iterate_even_odd(sch, copy)
    else:
        vectorize_inner(sch, copy, lanes, whole=4, tail=False)
    for r in reds:
        sch.unroll(r)
    sch.vectorize(vec)
    init = sch.decompose_reduction(main, reds[0])
    sch.vectorize(sch.get_loops(init)[-1])
    if out is not None:
        sch.reverse_compute_at(out, row, preserve_unit_loops=True)
        vectorize_inner(sch, out, lanes)
    if m.stride == 1:
        return sch, (f"pool (stride 1 along a row of {m.width}): the padded input plane copied "
                     f"per channel, window taps as contiguous vectors")
    return sch, (f"pool (stride 2 along a row of {m.width}): the input plane copied per "
                 f"channel as even then odd columns, window taps as contiguous vectors")


class PoolRule(Rule):
    """NCHW window pools with stride 1 or 2 along the rows (one schedule, never measured)."""

    name = "pool"
    measures = False
    optional = True

    def analyze(self, func, ctx: Context):
        return analyze(func)

    def apply(self, func, m: PoolMatch, config: dict, ctx: Context):
        sch, why = schedule_pool(func, m, ctx.cpu.lanes(32))
        return sch.mod["main"], why, None
