"""What the conv_pool rule matches (:mod:`.conv_pool`): a kernel whose last block is a max-pool
(:func:`analyze_pool`) reading the output of a convolution the conv2d rule would match
(:func:`analyze`), possibly of a chain conv -> epilogues -> padding -> conv -> epilogues -> pool
(the first convolution then computed per row block too)."""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx

from ..common import as_int, is_reduction, iter_values, loop_kinds, root_blocks
from .base import Unrelated
from .conv2d_match import ConvMatch, loop_var_of, same_var
from .conv2d_match import analyze as analyze_conv

# Row-block iterations (batch x pooled rows) below which the padding keeps its own loop nest:
# with the padding inside the row loop only the rows are parallel, too few for the threads.
MIN_ROW_BLOCKS = 8


@dataclass
class PoolMatch:
    block: str
    input: object  # the buffer pooled
    dims: list  # per input dim: None (indexed by a plain spatial var) or (stride, kernel)
    out_shape: list

    @property
    def stride(self) -> list[int]:
        return [d[0] for d in self.dims if d is not None]


def _window(expr, kinds, ext):
    """``v * s + r`` / ``v + r`` (either order) -> (stride, kernel extent), else None."""
    if not isinstance(expr, tirx.Add):
        return None
    for a, b in ((expr.a, expr.b), (expr.b, expr.a)):
        if not (isinstance(b, tirx.Var) and kinds.get(b) == "R"):
            continue
        if isinstance(a, tirx.Var) and kinds.get(a) == "S":
            return 1, ext[b]
        if isinstance(a, tirx.Mul) and isinstance(a.a, tirx.Var) and kinds.get(a.a) == "S":
            s = as_int(a.b)
            if s is not None:
                return s, ext[b]
    return None


def analyze_pool(func: tirx.PrimFunc) -> tuple[PoolMatch | None, str]:
    """The last root block of ``func`` as a max-pool ``out[..] = max(out, in[.., o*s + r, ..])``."""
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    if not blocks:
        return None, "no blocks"
    b = blocks[-1]
    if not is_reduction(sch, b):
        return None, "last block is not a reduction"
    st = sch.get(b)
    body = st.body
    if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, tirx.Max):
        return None, "not a max reduction"
    kinds = {iv.var: ("R" if iv.iter_type == tirx.IterVar.CommReduce else "S")
             for iv in st.iter_vars}
    ext = {iv.var: as_int(iv.dom.extent) for iv in st.iter_vars}
    if any(e is None for e in ext.values()):
        return None, "dynamic shape"
    reads = [r for r in st.reads if not r.source.same_as(body.buffer)]
    if len(reads) != 1:
        return None, "pools more than one buffer"
    dims = []
    for r in reads[0].region:
        if isinstance(r.min, tirx.Var) and kinds.get(r.min) == "S":
            dims.append(None)
            continue
        w = _window(r.min, kinds, ext)
        if w is None:
            return None, "input not indexed as out * stride + window"
        dims.append(w)
    out_shape = [as_int(d) for d in body.buffer.shape]
    return PoolMatch(st.name_hint, reads[0].source, dims, out_shape), "max-pool"


@dataclass
class ConvPoolMatch:
    conv: ConvMatch
    pool: PoolMatch
    y_dim: int  # accumulator dim of the pooled row axis
    x_dim: int  # accumulator dim of the pooled column axis
    s: int  # the pool's row stride (= its window)
    row_blocks: int = 0  # batch x pooled rows
    pad: str | None = None  # the padding block, when the conv reads one
    first: ConvMatch | None = None  # conv -> conv -> pool: the first convolution
    halo: int = 0  # its rows above a row block the second conv reads (its top padding)


def _conv_part(func: tirx.PrimFunc, pool_input, start: int = 0, end: int = -1,
               first_input=None) -> tirx.PrimFunc | None:
    """The root loop nests ``[start, end)`` of ``func`` (default: all but the pool) as a kernel
    of their own whose output is ``pool_input`` (and whose first input is ``first_input``): the
    kernel the conv2d rule would have seen before the fusion (for :func:`.conv2d_match.analyze`).
    Parameters: ``[first_input] + func's inputs + [pool_input]``."""
    realize = func.body
    if not isinstance(realize, s_tir.SBlockRealize):
        return None
    root = realize.block
    if not isinstance(root.body, tirx.SeqStmt) or len(root.body.seq) < 2:
        return None
    seq = list(root.body.seq)[start:end]
    if not seq:
        return None
    body = seq[0] if len(seq) == 1 else tirx.SeqStmt(seq)
    drop = [pool_input] + ([first_input] if first_input is not None else [])
    allocs = [b for b in root.alloc_buffers if not any(b.same_as(d) for d in drop)]
    if len(allocs) != len(root.alloc_buffers) - len(drop):
        return None  # the pool reads a parameter, not an intermediate
    new_root = s_tir.SBlock([], [], [], root.name_hint, body, None, allocs)
    params = ([first_input] if first_input is not None else []) + list(func.params)[:-1]
    return tirx.PrimFunc(params + [pool_input], s_tir.SBlockRealize([], True, new_root),
                         attrs=func.attrs)


def _chain(func: tirx.PrimFunc, pool_input):
    """conv1 -> epilogues -> pad -> conv2 -> epilogues -> pool: ``(m1, m2, pad2 name)`` with
    both ConvMatches' ``w_param`` indices into ``func``'s params, else None."""
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    reds = [i for i, b in enumerate(blocks[:-1]) if is_reduction(sch, b)]
    if len(reds) != 2 or len(blocks) != len(func.body.block.body.seq):
        return None
    pad2 = reds[1] - 1
    kinds = loop_kinds(sch, blocks[pad2])
    if pad2 <= reds[0] or not kinds or any(k != "S" for k in kinds):
        return None
    reads = sch.get(blocks[pad2]).reads
    if len(reads) != 1:
        return None
    mid = reads[0].source  # conv1's (epilogue) output, pad2's input
    part1 = _conv_part(func, mid, 0, pad2)
    part2 = _conv_part(func, pool_input, pad2, -1, first_input=mid)
    if part1 is None or part2 is None:
        return None
    m1, _ = analyze_conv(part1)
    m2, _ = analyze_conv(part2)
    if m1 is None or m2 is None or m1.w_param is None or m2.w_param is None:
        return None
    m2.w_param -= 1  # part2's params start with ``mid``
    # halo: pad2 reads mid[.., row - off, ..]; per row dim the offset (the conv's top padding)
    offs = []
    for r in reads[0].region:
        e = r.min
        if isinstance(e, tirx.Sub) and as_int(e.b) is not None:
            offs.append(as_int(e.b))
        elif isinstance(e, tirx.Add) and as_int(e.b) is not None:
            offs.append(-as_int(e.b))
        else:
            offs.append(0)
    return m1, m2, sch.get(blocks[pad2]).name_hint, offs, mid


def _reduction_blocks(func: tirx.PrimFunc) -> int | None:
    """How many root blocks of ``func`` are reductions (None: no root block)."""
    sch = s_tir.Schedule(func)
    try:
        blocks = root_blocks(sch)
    except Exception:  # noqa: BLE001 - no root block: an opaque kernel
        return None
    return sum(1 for b in blocks if is_reduction(sch, b))


def analyze(func: tirx.PrimFunc) -> tuple[ConvPoolMatch | None, str]:
    pm, why = analyze_pool(func)
    if pm is None:
        return None, why
    part = _conv_part(func, pm.input)
    if part is None:
        return None, Unrelated("the pool does not read an intermediate of the kernel")
    m, why = analyze_conv(part)
    chain = None
    if m is None and _reduction_blocks(part) == 2:  # conv -> conv -> pool: a chain?
        chain = _chain(func, pm.input)
        if chain is not None:
            m = chain[1]
    if m is None:
        return None, f"not a convolution before the pool ({why})"
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    pos = names.index(m.block)
    for b in blocks[pos + 1:-1]:  # epilogues: pointwise over the accumulator
        if is_reduction(sch, b) or loop_kinds(sch, b) is None:
            return None, f"epilogue {sch.get(b).name_hint} is not pointwise"
    acc = sch.get(sch.get_sblock(m.block)).writes[0]
    if len(acc.region) != len(pm.dims):
        return None, "pool rank differs from the conv output's"
    main = sch.get_sblock(m.block)
    fvar = loop_var_of(sch, main, "f", m.loop_roles)
    xvar = loop_var_of(sch, main, "x", m.loop_roles)
    win = [i for i, d in enumerate(pm.dims) if d is not None]
    if len(win) != 2:
        return None, f"{len(win)} pooled axes (2 expected)"
    f_dim = next((i for i, r in enumerate(acc.region) if same_var(r.min, fvar)), None)
    x_dim = next((i for i, r in enumerate(acc.region) if same_var(r.min, xvar)), None)
    if x_dim is None or f_dim is None or f_dim in win or x_dim not in win:
        return None, "the pooled axes are not the conv's rows and columns"
    y_dim = next(i for i in win if i != x_dim)
    acc_shape = [as_int(d) for d in pm.input.shape]
    for i in win:
        s, k = pm.dims[i]
        if s != k:
            return None, f"overlapping pool windows (kernel {k}, stride {s})"
        if acc_shape[i] != pm.out_shape[i] * s:
            return None, f"the pool drops conv rows/columns ({acc_shape[i]} -> {pm.out_shape[i]})"
    # the row loop of the conv must exist as its own spatial loop (the legalized form)
    yvar = acc.region[y_dim].min
    loops = sch.get_loops(main)
    vals = iter_values(sch, main)
    st = sch.get(main)
    lvars = [sch.get(lp).loop_var for lp in loops]
    y_loop = None
    for iv, val in zip(st.iter_vars, vals):
        if iv.var.same_as(yvar) and isinstance(val, tirx.Var):
            y_loop = next((i for i, lv in enumerate(lvars) if lv.same_as(val)), None)
    if y_loop is None or m.loop_roles[y_loop] != "s":
        return None, "no row loop in the convolution"
    s = pm.dims[y_dim][0]
    row_blocks = acc_shape[y_dim] // s
    for i, d in enumerate(pm.out_shape):
        if pm.dims[i] is None and i != f_dim:
            row_blocks *= d
    pre = blocks[:pos]
    pad = None
    if chain is not None:
        pad = chain[2]
    elif len(pre) == 1 and (loop_kinds(sch, pre[0]) or ["R"]) and all(
            k == "S" for k in loop_kinds(sch, pre[0]) or ["R"]):
        pad = sch.get(pre[0]).name_hint
    if chain is not None:
        mid_shape = [as_int(d) for d in chain[4].shape]
        if len(mid_shape) != len(acc_shape) or any(
                mid_shape[i] != acc_shape[i] for i in (y_dim, x_dim)):
            return None, "conv->conv chain: the first conv's rows/columns are not the second's"
        if not 0 <= chain[3][y_dim] < s + 2:
            return None, f"conv->conv chain: row padding {chain[3][y_dim]}"
    if chain is not None and not (row_blocks >= MIN_ROW_BLOCKS):
        return None, f"conv->conv chain needs >= {MIN_ROW_BLOCKS} row blocks ({row_blocks})"
    first = chain[0] if chain is not None else None
    halo = chain[3][y_dim] if chain is not None else 0
    return ConvPoolMatch(m, pm, y_dim, x_dim, s, row_blocks, pad, first, halo), "conv+pool"
