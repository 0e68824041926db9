"""What the conv2d rule matches (:mod:`.conv2d`): the one reduction block ``C[.. f .. y .. x ..]
+= D[..] * W[.. f .. r ..]`` whose weight ``W`` is indexed by plain variables and owns one output
axis ``f`` (the output channel) that the data does not index; the role of every loop, and for a
1x1 stride-1 kernel the row loop its tiles may fuse with the columns (``ConvMatch.rows``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tvm import tirx

from ..common import coefficient, extent, iter_values, match_sum_of_products, plain_indices
from . import tiles
from .grouped import ungroup
from .pad import grow


@dataclass
class ConvMatch:
    block: str
    w_index: int  # index of the weight in the block's reads
    w_param: int | None  # position of the weight among the PrimFunc's params
    w_roles: list[str]  # per weight dim: "f" or "r" (reduction) or "1"
    loop_roles: list[str]  # per loop: "f", "x", "s" (other spatial), "r"
    f: int
    x: int
    flops: float
    r0: int = 1  # extent of the outermost reduction loop (input channels in NCHW)
    # pointwise (1x1, stride 1) kernels: extent of the output-row loop right outside the column
    # loop, which the conv1x1 tiles fuse with it (tiles then divide rows x columns); 0 otherwise
    rows: int = 0
    f_axis: int = -1  # index of the channel / column iteration variable among the block's
    x_axis: int = -1
    # a grouped convolution (.grouped): the kernel with its channels split, the group count and
    # the output-channel dim of the original weight
    func: object = None
    groups: int = 1
    w_fdim: int = 0
    x_stride: int = 0  # the columns' stride in the data index (1: a vector of them is contiguous)
    x_last: bool = False  # the columns are the output's innermost dim (NCHW, not NHWC)


def analyze(func: tirx.PrimFunc, window: bool = False) -> tuple[ConvMatch | None, str]:
    """The conv2d match of ``func``, or ``(None, why not)``. ``window``: take a kernel whose
    data is indexed plainly too (a 1x1 window: the phase kernel of a transposed conv with
    ``k == s``) instead of leaving it to the matmul rule."""
    sop, why = match_sum_of_products(func)
    if sop is None:
        return None, why
    sch, main, st = sop.sch, sop.block, sop.stmt
    kinds, ext = sop.kinds, sop.extents

    plain = plain_indices

    def used(region):
        vs = set()
        for r in region.region:
            vs |= {v for v in ext if _uses(r.min, v)}
        return vs

    reads = list(st.reads)
    w_i = next((i for i, r in enumerate(reads) if plain(r) is not None), None)
    if w_i is None:
        return None, "no operand indexed by plain variables"
    d_i = 1 - w_i
    w_vars = set(v for v in plain(reads[w_i]) if v is not None)
    d_vars = used(reads[d_i])
    c_vars = plain(st.writes[0])
    if c_vars is None:
        return None, "output not indexed by plain variables"
    red = [v for v in ext if kinds[v] == tirx.IterVar.CommReduce and ext[v] > 1]
    if not red:  # one input channel, a 1x1 window: the unit reduction axes are the reduction
        red = [v for v in ext if kinds[v] == tirx.IterVar.CommReduce]
    if not red or any(v not in w_vars or v not in d_vars for v in red):
        return None, "reduction axes not in both operands"
    fs = [v for v in c_vars if v is not None and v in w_vars and v not in d_vars and ext[v] > 1]
    if not fs:  # one output channel (a probability map): the unit axis is the channel axis
        fs = [v for v in c_vars if v is not None and v in w_vars and v not in d_vars]
    if len(fs) != 1:
        return None, "no single output-channel axis (depthwise/grouped or not a conv)"
    f = fs[0]
    xs = [v for v in c_vars if v is not None and v in d_vars and ext[v] > 1]
    if len(red) < 2 and xs and not window and all(_is_plain_in(reads[d_i], v) for v in xs):
        return None, "a matmul, not a convolution"
    if not xs:  # a 1x1 map (squeeze-and-excitation): the unit column axis is the tile's
        xs = [v for v in c_vars if v is not None and v in d_vars]
        if not xs:
            return None, "no spatial output axis"
    x = xs[-1]  # the innermost spatial axis (output columns)
    vals = iter_values(sch, main)
    loops = sch.get_loops(main)
    lvars = [sch.get(lp).loop_var for lp in loops]
    roles = ["s"] * len(loops)
    axes = {}  # "f" / "x" -> index of the iteration variable among the block's
    for a, iv in enumerate(st.iter_vars):
        if iv.var.same_as(f):
            axes["f"] = a
        elif iv.var.same_as(x):
            axes["x"] = a
    for iv, val in zip(st.iter_vars, vals):
        if ext[iv.var] == 1 and not (iv.var.same_as(f) or iv.var.same_as(x)
                                     or any(iv.var.same_as(r) for r in red)):
            continue
        if not isinstance(val, tirx.Var):
            return None, "binding is not a loop variable"
        i = next((i for i, lv in enumerate(lvars) if lv.same_as(val)), None)
        if i is None:
            return None, "binding is not a loop variable"
        if kinds[iv.var] == tirx.IterVar.CommReduce:
            roles[i] = "r"
        elif iv.var.same_as(f):
            roles[i] = "f"
        elif iv.var.same_as(x):
            roles[i] = "x"
    w_roles = []
    for v in plain(reads[w_i]):
        if v is None or (ext.get(v, 1) == 1 and not v.same_as(f)):
            w_roles.append("1")
        else:
            w_roles.append("f" if v.same_as(f) else "r")
    w_param = next((i for i, p in enumerate(func.params) if p.same_as(reads[w_i].source)), None)
    flops = 2.0
    for v in ext:
        flops *= ext[v]
    r0 = next((extent(sch, lp) for lp, r in zip(loops, roles) if r == "r"), 1) or 1
    rows = _pointwise_rows(sch, loops, roles, lvars, st, vals, reads[d_i], x, red)
    x_dims = [r.min for r in reads[d_i].region if _uses(r.min, x)]
    x_stride = coefficient(x_dims[0], x) if len(x_dims) == 1 else None
    match = ConvMatch(st.name_hint, w_i, w_param, w_roles, roles, ext[f], ext[x], flops, r0,
                      rows, axes.get("f", -1), axes.get("x", -1), x_stride=x_stride or 0,
                      x_last=c_vars[-1] is not None and c_vars[-1].same_as(x))
    return match, "conv2d"


def analyze_any(func: tirx.PrimFunc, const_params=()) -> tuple[ConvMatch | None, str]:
    """:func:`analyze`, or for a grouped convolution the match of its kernel with the channels
    split into (group, channel in the group) (:func:`.grouped.ungroup`; ``match.func``)."""
    m, why = analyze(func)
    if m is not None or not why.startswith("no single output-channel axis"):
        return m, why
    u, _ = ungroup(func, const_params)
    if u is None:
        return m, why
    m, why2 = analyze(u.func)
    if m is None:
        return None, f"{why}; grouped: {why2}"
    return dataclasses.replace(m, func=u.func, groups=u.groups, w_fdim=u.f_dim), "grouped conv2d"


def _pointwise_rows(sch, loops, roles, lvars, st, vals, data, x, red) -> int:
    """Extent of the row loop a 1x1 stride-1 kernel can fuse with its column loop (0: none):
    one reduction axis (the channels), the row and column variables bound to adjacent loops in
    block order, each indexing the data with stride 1 and the output in adjacent dims."""
    if len(red) != 1 or "x" not in roles:
        return 0
    xi = roles.index("x")
    if xi == 0 or roles[xi - 1] != "s" or len(vals) != len(loops):
        return 0
    ivs = list(st.iter_vars)
    for i, val in enumerate(vals):  # iteration variable i bound to loop i (the legalized form)
        if not (isinstance(val, tirx.Var) and val.same_as(lvars[i])):
            return 0
    y = ivs[xi - 1].var
    if not ivs[xi].var.same_as(x):
        return 0
    for var in (x, y):
        dims = [r for r in data.region if _uses(r.min, var)]
        if len(dims) != 1 or coefficient(dims[0].min, var) != 1:
            return 0
    out = [r.min for r in st.writes[0].region]
    yd = next((i for i, e in enumerate(out) if same_var(e, y)), None)
    if yd is None or yd + 1 >= len(out) or not same_var(out[yd + 1], x):
        return 0
    return extent(sch, loops[xi - 1]) or 0


def loops_by_role(loops, roles, y_index: int | None = None):
    """A conv block's loops by role: ``(f, x, y, reductions, other spatial)``. ``y`` is the loop at
    ``y_index`` (None when not asked for; that loop then counts as other spatial)."""
    fl = xl = yl = None
    reds, spatial = [], []
    for i, (lp, role) in enumerate(zip(loops, roles)):
        if role == "f":
            fl = lp
        elif role == "x":
            xl = lp
        elif role == "r":
            reds.append(lp)
        elif i == y_index:
            yl = lp
        else:
            spatial.append(lp)
    return fl, xl, yl, reds, spatial


def merge_rows(sch, main, out, m: ConvMatch, index_dtype: str = "int64"):
    """Rewrite the iteration space of the conv block and of its output block so rows x columns
    is one axis ``p = y * X + x`` (iteration variables of ``index_dtype``); returns the match
    for the rewritten kernel and the output dim of the rows."""
    xi = m.loop_roles.index("x")
    yi = xi - 1
    cols = m.x
    ivs = sch.get(main).iter_vars
    wr = [r.min for r in sch.get(main).writes[0].region]
    yd = next(i for i, e in enumerate(wr) if same_var(e, ivs[yi].var))

    def main_map(*iv):
        return [*iv[:yi], iv[yi] * cols + iv[xi], *iv[xi + 1:]]

    def out_map(*iv):
        return [*iv[:yd], iv[yd] * cols + iv[yd + 1], *iv[yd + 2:]]

    sch.transform_block_layout(main, tirx.IndexMap.from_func(main_map, ndim=len(ivs),
                                                             index_dtype=index_dtype))
    n_out = len(sch.get(out).iter_vars)
    sch.transform_block_layout(out, tirx.IndexMap.from_func(out_map, ndim=n_out,
                                                            index_dtype=index_dtype))
    roles = m.loop_roles[:yi] + m.loop_roles[xi:]
    return dataclasses.replace(m, loop_roles=roles, x=m.rows * cols, rows=0), yd


def pack_index_map(w_roles: list[str], nr: int):
    """Weight dims -> ``[F/nr, other dims.., nr]``."""

    def fmap(*idx):
        f = next(i for i, r in zip(idx, w_roles) if r == "f")
        rest = [i for i, r in zip(idx, w_roles) if r != "f"]
        return [f // nr, *rest, f % nr]

    return fmap


def pad_to_tiles(func, m: ConvMatch, nf: int, mx: int, pack_param: bool):
    """``(func, match, said, guarded)``: ``func`` with the channels padded to whole ``nf`` panels
    and the columns to whole ``mx`` tiles (:func:`.pad.grow`; a constant weight is padded with
    zeros when it is packed), its match (the loop roles and groups of ``m`` kept), what was padded
    (for the reason) and the guarded blocks; ``(None, None, why, None)`` when the padded kernel
    does not match."""
    pads, said = {}, []
    fp, xp = tiles.up(m.f, nf), tiles.up(m.x, mx)
    if fp != m.f:
        pads[m.f_axis] = fp
        said.append(f"channels {m.f} padded to {fp}")
    if xp != m.x:
        pads[m.x_axis] = xp
        said.append(f"columns {m.x} padded to {xp}")
    if not pads:
        return func, m, [], set()
    func, _, guarded = grow(func, m.block, pads, {m.w_param} if pack_param else set())
    new, why = analyze(func, window=True)
    if new is None:
        return None, None, f"padded kernel: {why}", None
    roles = ["p" if o == "p" else r for o, r in zip(m.loop_roles, new.loop_roles)]
    new = dataclasses.replace(new, groups=m.groups, w_fdim=m.w_fdim, loop_roles=roles)
    return func, new, said, guarded


def pack_weight(sch, block, m, nr: int, at_compile_time: bool) -> None:
    """``block`` reads its weight as ``[F/nr, other dims.., nr]`` (:func:`pack_index_map`): the
    caller's constant re-laid once at compile time, else a parallel copy at run time."""
    fmap = pack_index_map(m.w_roles, nr)
    if at_compile_time:
        sch.transform_layout(block, ("read", m.w_index), fmap)
        return
    cr = sch.cache_read(block, m.w_index, "global")
    sch.transform_layout(block, ("read", m.w_index), fmap)
    lps = sch.get_loops(cr)
    if lps:
        sch.parallel(lps[0])


def _uses(expr, var) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def _is_plain_in(region, var) -> bool:
    return any(isinstance(r.min, tirx.Var) and r.min.same_as(var) for r in region.region)


def loop_var_of(sch, block, role, roles):
    st = sch.get(block)
    vals = iter_values(sch, block)
    loops = sch.get_loops(block)
    lvars = [sch.get(lp).loop_var for lp in loops]
    idx = roles.index(role)
    for iv, val in zip(st.iter_vars, vals):
        if isinstance(val, tirx.Var) and val.same_as(lvars[idx]):
            return iv.var
    raise ValueError(f"no block var for loop role {role}")


def same_var(e, v) -> bool:
    return isinstance(e, tirx.Var) and e.same_as(v)
