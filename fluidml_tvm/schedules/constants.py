"""The Relax side of the schedule stage: which ``call_tir`` arguments are constants, and packing
them when a rule re-lays a constant parameter.

A rule may schedule a kernel whose constant weight parameter is read in a packed layout (matmul's
B as ``[N/nr, K, nr]``, a conv weight as ``[F/nr, .., nr]``): the kernel's signature changes, so
:func:`pack_constants` adds it under a new name (``<kernel>_packed``), packs the constant every
caller passes (:func:`pack_array`, once per weight shared by several calls) and drops the old
kernel.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def _is_const(e) -> bool:
    return isinstance(e, tvm.ir.GenericConst)


def _calls(mod):
    for _, f in mod.functions_items():
        if not isinstance(f, relax.Function):
            continue
        found: list = []

        def visit(e, found=found):
            if isinstance(e, relax.Call) and e.op.same_as(_CALL_TIR):
                found.append(e)

        relax.analysis.post_order_visit(f, visit)
        yield from found


def constant_args(mod) -> dict[str, dict[int, bool]]:
    """For each PrimFunc called by call_tir: param index -> constant at every call site."""
    out: dict[str, dict[int, bool]] = {}
    for call in _calls(mod):
        gv = call.args[0]
        args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
        slot = out.setdefault(gv.name_hint, {})
        for i, a in enumerate(args):
            slot[i] = slot.get(i, True) and _is_const(a)
    return out


def pad_axis(arr: np.ndarray, axis: int, multiple: int) -> np.ndarray:
    """``arr`` with zeros appended along ``axis`` up to a multiple of ``multiple``: the padded
    output channels / columns of a kernel computed in whole tiles (:mod:`.rules.pad`)."""
    extra = -arr.shape[axis] % multiple
    if not extra:
        return arr
    width = [(0, 0)] * arr.ndim
    width[axis] = (0, extra)
    return np.pad(arr, width)


def pack_array(arr: np.ndarray, roles: tuple, nr: int) -> np.ndarray:
    """``arr`` in B's layout (dims with roles b/1/k/n) -> packed ``[rest.., N/nr, K, nr]``;
    a conv weight (roles ``("conv", f/r/1 per dim)``) -> ``[F/nr, other dims.., nr]``. ``N`` /
    ``F`` that ``nr`` does not divide are padded with zeros to whole panels."""
    if roles and roles[0] == "convT":  # [C, F, kh, kw] -> per output phase (.rules.conv_transpose)
        wph = phase_weight(arr, roles[1], roles[2], roles[3], roles[4])
        return pack_array(wph, roles[5:], nr)
    if roles and roles[0] == "groups":  # [F, ..] -> [G, F/G, ..] (.rules.grouped), then packed
        groups, f_ax = roles[1], roles[2]
        t = np.moveaxis(arr, f_ax, 0)
        t = t.reshape(groups, t.shape[0] // groups, *t.shape[1:])
        return pack_array(np.moveaxis(t, (0, 1), (f_ax, f_ax + 1)), roles[3:], nr)
    if roles and roles[0] == "conv":
        roles = roles[1:]
        f_ax = roles.index("f")
        t = pad_axis(np.moveaxis(arr, f_ax, 0), 0, nr)
        t = t.reshape(t.shape[0] // nr, nr, *t.shape[1:])
        return np.ascontiguousarray(np.moveaxis(t, 1, -1))
    rest = [i for i, r in enumerate(roles) if r not in ("n", "k")]
    n_ax = roles.index("n")
    k_ax = roles.index("k")
    t = pad_axis(np.transpose(arr, [*rest, n_ax, k_ax]), len(rest), nr)
    lead = t.shape[: len(rest)]
    n, k = t.shape[-2:]
    t = t.reshape(*lead, n // nr, nr, k)
    return np.ascontiguousarray(np.swapaxes(t, -1, -2))


def phase_weight(b: np.ndarray, k: tuple, s: tuple, pad: tuple, groups: int = 1) -> np.ndarray:
    """A transposed convolution's weight ``B[c, f, ky, kx]`` (``c`` = group x input channel of
    the group) per output phase: ``Wph[py, px, g, f, c, ty, tx] = B[g * Cg + c, f, (py + pad) %
    s + s * (T - 1 - ty), ..]``, taps past the kernel zero (:mod:`.rules.conv_transpose`)."""
    (kh, kw), (sh, sw), (ph, pw) = k, s, pad
    th, tw = -(-kh // sh), -(-kw // sw)
    c, f = b.shape[:2]
    cg = c // groups
    out = np.zeros((sh, sw, groups, f, cg, th, tw), b.dtype)
    for py in range(sh):
        for px in range(sw):
            for ty in range(th):
                for tx in range(tw):
                    ky = (py + ph) % sh + sh * (th - 1 - ty)
                    kx = (px + pw) % sw + sw * (tw - 1 - tx)
                    if ky < kh and kx < kw:
                        tap = b[:, :, ky, kx].reshape(groups, cg, f)
                        out[py, px, :, :, :, ty, tx] = tap.transpose(0, 2, 1)
    return out


def pack_constants(mod, packs):
    """Replace each packed PrimFunc (new signature: new GlobalVar) and pack the constants its
    callers pass. ``packs``: name -> (new PrimFunc, {param index: (roles of B's dims, nr)})."""
    new_gvs = {}
    done = []  # (constant, roles, nr, packed): a weight shared by several calls is packed once

    @relax.expr_functor.mutator
    class _Repack(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM visitor name
            call = super().visit_call_(call)
            if not (isinstance(call, relax.Call) and call.op.same_as(_CALL_TIR)):
                return call
            name = call.args[0].name_hint
            if name not in packs:
                return call
            fields = list(call.args[1].fields)
            for idx, (roles, nr) in packs[name][1].items():
                const = fields[idx]
                hit = [p for c, r, n, p in done if c.same_as(const) and (r, n) == (roles, nr)]
                if not hit:
                    arr = pack_array(const.value.numpy(), roles, nr)
                    hit = [relax.const(arr, str(arr.dtype))]
                    done.append((const, roles, nr, hit[0]))
                fields[idx] = hit[0]
            return relax.Call(call.op, [new_gvs[name], relax.Tuple(fields)], call.attrs,
                              call.ty_args, call.span)

    mutator = _Repack(mod)
    for name, (func, _) in packs.items():
        new_gvs[name] = mutator.builder_.add_func(func, name + "_packed")
    for gv, f in mod.functions_items():
        if isinstance(f, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(f))
    out = mutator.builder_.get()
    keep = {gv: f for gv, f in out.functions_items() if gv.name_hint not in packs}
    return tvm.IRModule(keep, attrs=out.attrs, global_infos=out.global_infos)
