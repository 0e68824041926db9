"""conv2d_transpose rule (FPN / segmentation heads: stride 2, kernel 2/3/4, output padding).

Legalized, a transposed convolution dilates its input with ``s - 1`` zeros between pixels
(``data_dilate``), pads it (``data_pad``), flips its weight (``kernel_transform``) and runs a
direct convolution over that: ``s x s`` times the FLOPs, all but one in ``s x s`` of them a
product with an inserted zero. This rule computes it the way its arithmetic is: by output
phase. Output row ``oy = s * qy + py`` takes the taps ``ky = r(py) + s * t`` (``r(p) = (p + pad)
mod s``, ``t < T = ceil(k / s)``) of input rows ``qy + (py + pad) // s - t``, so

    phases[b, py, px, f, qy, qx] = sum_{c, ty, tx} xp[b, c, qy + E(py) + ty, qx + E(px) + tx]
                                   * Wph[py, px, f, c, ty, tx]
    out[b, f, oy, ox] = phases[b, oy % s, ox % s, f, oy // s, ox // s]

with ``xp`` the input padded by ``T - 1`` (zeros), ``E(p) = (p + pad) // s`` and ``Wph`` the
weight per phase, flipped, taps beyond ``k`` zero: a constant weight is re-laid so at compile
time (:func:`..constants.pack_array`, roles ``("convT", ..)``), any other by a block of the
kernel. The phase block is a plain convolution (no zeros multiplied): the conv2d rule's kernel
tiles it (channels padded to whole vectors, columns to whole tiles where needed), with the
phase loops inside the parallel loop, so each parallel iteration computes ``s`` whole output
rows and the shuffle + epilogue (bias, ReLU) follow at once, per row pair.

The rebuilt kernel replaces the four legalized blocks (:func:`rebuild`); the epilogue blocks are
kept as they are. ``groups > 1`` and dilated transposed convolutions are not matched (the
reason says so); they fall to the conv2d rule's general form.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import tvm
import tvm.sym
import tvm_ffi
from tvm import s_tir, te, tirx
from tvm.ir import Range

from ..common import as_int, coefficient, root_blocks
from .base import Context, Rule, Unrelated
from .conv2d import Conv2dRule, schedule_conv2d
from .conv2d_cols import schedule_conv2d_cols
from .conv2d_match import ConvMatch
from .conv2d_match import analyze as conv_analyze
from .grouped import _floordivs


@dataclass
class ConvTMatch:
    x_param: int
    w_param: int
    shape: tuple  # N, C, H, W, F
    groups: int
    k: tuple  # kh, kw
    s: tuple  # sh, sw
    pad: tuple  # ph, pw (the ONNX pads, front)
    out: tuple  # OH, OW
    conv_block: str
    remove: tuple  # names of the legalized blocks the phase kernel replaces
    func: object = None  # the rebuilt kernel
    conv: ConvMatch | None = None  # its phase block, as the conv2d rule sees it

    @property
    def taps(self) -> tuple:
        return tuple(-(-k // s) for k, s in zip(self.k, self.s))

    def flops(self) -> float:
        n, c, h, w, f = self.shape
        return 2.0 * n * c * h * w * f * self.k[0] * self.k[1] / self.groups


def _at_zero(expr, var_names=None):
    """The value of an index expression with its variables at 0."""
    ana = tvm.sym.Analyzer()
    for v in tirx.analysis.undefined_vars(expr):
        ana.bind(v, Range(0, 1))
    return int(ana.const_int_bound(expr).max_value)


def analyze(func: tirx.PrimFunc) -> tuple[ConvTMatch | None, str]:
    sch = s_tir.Schedule(func)
    blocks = {sch.get(b).name_hint: b for b in root_blocks(sch)}
    if "kernel_transform" not in blocks or "data_pad" not in blocks:
        return None, Unrelated("no conv2d_transpose blocks")
    params = list(func.params)

    def param_of(buf):
        return next((i for i, p in enumerate(params) if p.same_as(buf)), None)

    kt = sch.get(blocks["kernel_transform"])
    conv = next((sch.get(b) for n, b in blocks.items()
                 if any(r.source.same_as(kt.writes[0].source) for r in sch.get(b).reads)), None)
    if conv is None or len(conv.reads) != 2:
        return None, "kernel_transform feeds no convolution"
    w_reg = kt.reads[0]
    w_param = param_of(w_reg.source)
    fg, c_, kh, kw = [as_int(d) for d in kt.writes[0].source.shape]
    bshape = [as_int(d) for d in w_reg.source.shape]
    f_ = as_int(conv.writes[0].source.shape[1])
    if w_param is None or bshape != [c_, fg, kh, kw] or f_ % fg:
        return None, "not a plain conv2d_transpose"
    if [_at_zero(r.min) for r in w_reg.region][2:] != [kh - 1, kw - 1]:
        return None, "weight not read flipped"
    data_reg = next(r for r in conv.reads if not r.source.same_as(kt.writes[0].source))
    red = {iv.var: as_int(iv.dom.extent) for iv in conv.iter_vars
           if iv.iter_type == tirx.IterVar.CommReduce}
    for r in data_reg.region[2:]:
        if any(coefficient(r.min, v) not in (0, 1) for v in red):
            return None, "dilated conv2d_transpose"
    dil = sch.get(blocks["data_dilate"]) if "data_dilate" in blocks else None
    pad = sch.get(blocks["data_pad"])
    src = dil if dil is not None else pad
    x_reg = src.reads[0]
    x_param = param_of(x_reg.source)
    if x_param is None:
        return None, "input is not a parameter"
    n, c, h, w = [as_int(d) for d in x_reg.source.shape]
    strides = []
    for r in x_reg.region[2:]:
        divs = set()
        for v in tirx.analysis.undefined_vars(r.min):
            divs |= set(_floordivs(r.min, v))
        strides.append(divs.pop() if dil is not None and len(divs) == 1 else 1)
    front = [-_at_zero(r.min) for r in pad.reads[0].region[2:]]
    pads = (kh - 1 - front[0], kw - 1 - front[1])
    oh, ow = [as_int(d) for d in conv.writes[0].source.shape][2:]
    if c != c_ or min(pads) < 0:
        return None, "unexpected conv2d_transpose form"
    remove = tuple(b for b in ("data_dilate", "data_pad", "kernel_transform", conv.name_hint)
                   if b in blocks)
    return ConvTMatch(x_param, w_param, (n, c, h, w, f_), f_ // fg, (kh, kw), tuple(strides),
                      pads, (oh, ow), conv.name_hint, remove), "conv2d_transpose"


def _phase_func(m: ConvTMatch, dtype: str, w_const: bool):
    n, c, h, w, f = m.shape
    g = m.groups
    fg, cg = f // g, c // g
    (sh, sw), (ph, pw), (th, tw), (kh, kw) = m.s, m.pad, m.taps, m.k
    oh, ow = m.out
    qh, qw = -(-oh // sh), -(-ow // sw)
    eh, ew = (sh - 1 + ph) // sh, (sw - 1 + pw) // sw
    x = te.placeholder((n, c, h, w), dtype, name="x")

    def xpad(b, ci, u, v):
        y, z = u - (th - 1), v - (tw - 1)
        ok = tirx.all(y >= 0, y < h, z >= 0, z < w)
        return tirx.if_then_else(ok, x[b, ci, y, z], tirx.const(0, dtype))

    if (th, tw, eh, ew) == (1, 1, 0, 0) and (qh, qw) == (h, w):
        xp = x  # k == s, no padding: the phases read the input as it is
    else:
        xp = te.compute((n, c, qh + eh + th - 1, qw + ew + tw - 1), xpad, name="convT_input")
    if w_const:
        wb = te.placeholder((sh, sw, g, fg, cg, th, tw), dtype, name="w_phases")
        wph = wb
    else:
        wb = te.placeholder((c, fg, kh, kw), dtype, name="w")

        def wmap(py, px, gi, fi, ci, ty, tx):
            ky = (py + ph) % sh + sh * (th - 1 - ty)
            kx = (px + pw) % sw + sw * (tw - 1 - tx)
            ok = tirx.all(ky < kh, kx < kw)
            return tirx.if_then_else(
                ok, wb[gi * cg + ci, fi, tirx.min(ky, kh - 1), tirx.min(kx, kw - 1)],
                tirx.const(0, dtype))

        wph = te.compute((sh, sw, g, fg, cg, th, tw), wmap, name="convT_weight")
    rc = te.reduce_axis((0, cg), name="rc")
    ry = te.reduce_axis((0, th), name="ry")
    rx = te.reduce_axis((0, tw), name="rx")
    phases = te.compute(
        (n, sh, sw, g, fg, qh, qw),
        lambda b, py, px, gi, fi, yy, xx: te.sum(
            xp[b, gi * cg + rc, yy + (py + ph) // sh + ry, xx + (px + pw) // sw + rx]
            * wph[py, px, gi, fi, rc, ry, rx], axis=[rc, ry, rx]),
        name="convT_phases")
    out = te.compute((n, f, oh, ow), lambda b, fi, oy, ox: phases[
        b, oy % sh, ox % sw, fi // fg, fi % fg, oy // sh, ox // sw], name="convT_shuffle")
    return te.create_prim_func([x, wb, out])


def rebuild(func: tirx.PrimFunc, m: ConvTMatch, w_const: bool) -> tirx.PrimFunc:
    """``func`` with the legalized transposed convolution replaced by the phase kernel (the
    epilogue blocks kept). ``w_const``: the weight parameter becomes ``Wph`` (the caller
    re-lays the constant), else a block of the kernel computes it."""
    sch = s_tir.Schedule(func)
    conv = sch.get(sch.get_sblock(m.conv_block))
    out_buf = conv.writes[0].source
    dtype = str(out_buf.ty.dtype) if hasattr(out_buf.ty, "dtype") else "float32"
    new = _phase_func(m, dtype, w_const)
    root = func.body.block
    new_root = new.body.block
    params = list(func.params)
    remap = {new.params[0]: params[m.x_param], new.params[2]: out_buf}
    if w_const:
        params[m.w_param] = new.params[1]
    else:
        remap[new.params[1]] = params[m.w_param]

    def var(v):
        return next((t for s_, t in remap.items() if v.same_as(s_)), v)

    new_body = tvm_ffi.structural_map(new_root.body, [(tvm.ir.expr.Var, var)])
    kept, allocs = [], [a for a in root.alloc_buffers
                        if not any(a.same_as(_written(func, b)) for b in m.remove[:-1])]
    for stmt in root_stmts(root.body):
        if not (set(block_names(stmt)) & set(m.remove)):
            kept.append(stmt)
    body = tirx.SeqStmt(root_stmts(new_body) + kept)
    block = s_tir.SBlock([], [], [], "root", body, None, allocs + list(new_root.alloc_buffers))
    out = tirx.PrimFunc(params, s_tir.SBlockRealize([], True, block), func.ret_type, func.attrs)
    return out


def root_stmts(s) -> list:
    """The statements of a root block's body (one loop nest each)."""
    return list(s.seq) if isinstance(s, tirx.SeqStmt) else [s]


def block_names(stmt) -> list[str]:
    """Names of the blocks inside ``stmt``."""
    names = []
    tvm_ffi.structural_walk(stmt, [(s_tir.SBlock, lambda b: names.append(b.name_hint))])
    return names


def _written(func, name):
    sch = s_tir.Schedule(func)
    return sch.get(sch.get_sblock(name)).writes[0].source


def _conv_match(func: tirx.PrimFunc) -> tuple[ConvMatch | None, str]:
    """The phase block as the conv2d rule sees it, its phase loops marked ``"p"``."""
    cm, why = conv_analyze(func, window=True)
    if cm is None:
        return None, why
    sch = s_tir.Schedule(func)
    main = sch.get_sblock(cm.block)
    ivs = sch.get(main).iter_vars
    roles = list(cm.loop_roles)
    for i in (1, 2):  # py, px: the iteration variables 1 and 2, bound to loops 1 and 2
        if as_int(ivs[i].dom.extent) > 1:
            roles[i] = "p"
    return dataclasses.replace(cm, loop_roles=roles), "conv2d_transpose"


class ConvTransposeRule(Rule):
    """The conv2d_transpose rule: the phase kernel, its tiles chosen like conv2d's."""

    name = "conv2d_transpose"

    def analyze(self, func, ctx: Context):
        m, why = analyze(func)
        if m is None:
            return None, why
        const = ctx.is_const(m.w_param)
        new = rebuild(func, m, const)
        cm, why = _conv_match(new)
        if cm is None:
            return None, f"phase kernel: {why}"
        return dataclasses.replace(m, func=new, conv=cm), why

    def candidates(self, m: ConvTMatch, ctx: Context) -> list[dict]:
        return Conv2dRule().candidates(m.conv, ctx)

    def workload(self, m: ConvTMatch, candidates: list[dict], ctx: Context) -> str:
        return f"convT{m.shape}k{m.k}s{m.s}p{m.pad}"

    def flops(self, m: ConvTMatch) -> float:
        return m.flops()

    def apply(self, func, m: ConvTMatch, config: dict, ctx: Context):
        tile = (config["mr"], config["nv"], config.get("rb", 0), config.get("vl", 0))
        const = ctx.is_const(m.w_param)
        consts = {m.w_param: True} if const else {}
        if config.get("cols"):  # one or two channels: vectors along the columns
            sch, why, pack = schedule_conv2d_cols(m.func, m.conv, ctx.cpu, consts, tile[:2])
        else:
            sch, why, pack = schedule_conv2d(m.func, ctx.cpu, consts, tile, match=m.conv)
        if sch is None:
            raise ValueError(why)
        zeros = any(k % s for k, s in zip(m.k, m.s))
        grouped = f"{m.groups} groups, " if m.groups > 1 else ""
        reason = (f"conv2d_transpose {grouped}k={m.k} s={m.s} pad={m.pad} by "
                  f"{m.s[0] * m.s[1]} output phases ({m.taps[0]}x{m.taps[1]} taps each"
                  + (", taps past the kernel zero" if zeros else ", no zeros multiplied")
                  + f"): {why}")
        if pack is not None:  # the constant: [C, F, kh, kw] -> Wph, then packed like conv2d's
            roles, nr = pack[m.w_param]
            pack = {m.w_param: (("convT", m.k, m.s, m.pad, m.groups) + tuple(roles), nr)}
        return sch.mod["main"], reason, pack
