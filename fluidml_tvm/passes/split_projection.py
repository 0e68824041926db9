"""``FluidMLSplitProjection``: one projection per slice instead of a fused projection + slices.

Contract
--------
Runs on high-level Relax (``R.matmul``, ``R.add``, ``R.reshape``, ``R.strided_slice``) before
legalization. In every dataflow block it looks for a projection by a constant weight::

    y = matmul(x, W)                 W: constant [K, N] (or permute_dims of a constant [N, K])
    y = add(y, b)                    optional, b: constant broadcast along the last axis only
    y = reshape(y, [..., g, c])      optional, splits the last axis N into (g, c), g * c = N
                                     (the leading dims may be regrouped, [B*S, N] -> [B, S, g, c])
    s_j = strided_slice(y, last axis, [b_j, e_j))   for every user of y

whose result is read only through slices of its last axis (a fused QKV projection cut into
q, k, v; GPT-NeoX's ``view(B, S, nh, 3D)`` interleaves the three per head, which the reshape
expresses: slice ``[b, e)`` of the reshaped axis is the columns ``h * c + [b, e)`` of every
group ``h``). Each slice becomes its own projection with the gathered constant columns::

    s_j = reshape(add(matmul(x, W[:, cols_j]), b[cols_j]), [..., g, e_j - b_j])

so the fused output (GPT-NeoX-small: 0.79 MB, live until its last slice) is never materialized;
each part is computed where its slice was. Columns no slice reads are not computed.

Not rewritten (the reason is kept in :attr:`FluidMLSplitProjection.decisions` and in the
module attribute ``fluidml.decisions.split_projection``): a non-constant weight, a projection or
intermediate that leaves the dataflow block or has another user, a slice on another axis, with
a stride other than 1 or symbolic bounds, slices that overlap (the rewrite would compute columns
twice), symbolic shapes. Nothing is matched by name.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax

from ..decisions import Decision, attach, note, render

log = logging.getLogger("fluidml_tvm.split_projection")
STAGE = "split_projection"

_OP = tvm.ir.Op.get
MATMUL, ADD, RESHAPE = _OP("relax.matmul"), _OP("relax.add"), _OP("relax.reshape")
SLICE, PERMUTE = _OP("relax.strided_slice"), _OP("relax.permute_dims")


def _static(ty) -> list[int] | None:
    shape = getattr(ty, "shape", None)
    if not isinstance(shape, relax.ShapeExpr):
        return None
    dims = [d.value if isinstance(d, tvm.tirx.IntImm) else None for d in shape.values]
    return None if None in dims else [int(d) for d in dims]


def _is_call(expr, op) -> bool:
    return isinstance(expr, relax.Call) and expr.op.same_as(op)


def _ints(tup) -> list[int] | None:
    out = []
    for v in tup:
        v = getattr(v, "value", v)
        v = getattr(v, "value", v)
        if not isinstance(v, int):
            return None
        out.append(v)
    return out


class _Match:
    """One projection that can be split, and how."""

    def __init__(self, matmul_var, x, weight, removed):
        self.matmul_var, self.x, self.weight = matmul_var, x, weight  # weight: numpy [K, N]
        self.bias = None  # numpy, broadcast along the last axis
        self.removed = removed  # vars whose bindings go away
        self.groups = 1  # g of the reshape [..., g, c]; c = N / g
        self.slices = {}  # slice var -> (begin, end) in the last axis of the sliced tensor


def _constant(expr, value_of):
    """The numpy value of a constant weight [K, N], through one ``permute_dims([1, 0])``."""
    if isinstance(expr, relax.Var) and expr in value_of:
        expr = value_of[expr]
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy(), None
    if _is_call(expr, PERMUTE) and isinstance(expr.args[0], tvm.ir.GenericConst):
        axes = expr.attrs.axes
        if axes is None or [int(a) for a in axes] == [1, 0]:
            return expr.args[0].value.numpy().T, expr
    return None, None


def _match(var, value, value_of, users, outside) -> tuple[_Match | None, str]:
    """``(match, reason)``: a split plan for the projection bound to ``var``, or why not."""
    x, w_expr = value.args
    if value.attrs.out_dtype is not None and str(value.attrs.out_dtype) not in ("", "void"):
        return None, "matmul with an explicit out_dtype"
    w, perm = _constant(w_expr, value_of)
    if w is None or w.ndim != 2:
        return None, "weight is not a 2-D constant"
    out = _static(var.ty)
    if out is None or _static(x.ty) is None:
        return None, "symbolic shape"
    removed = [var]
    if perm is not None:
        if len(users.get(w_expr, ())) != 1 or w_expr in outside:
            return None, "transposed weight has other users"
        removed.append(w_expr)
    m = _Match(var, x, w, removed)
    n, cur = w.shape[1], var

    def only_user(v):
        us = users.get(v, [])
        return value_of.get(us[0]) if len(us) == 1 and v not in outside else None, us

    nxt, us = only_user(cur)
    if _is_call(nxt, ADD):
        a, b = nxt.args
        other = b if a.same_as(cur) else a
        bshape = _static(other.ty) if isinstance(other, tvm.ir.GenericConst) else None
        if bshape and bshape[-1] == n and all(d == 1 for d in bshape[:-1]) \
                and len(bshape) <= len(out) and not a.same_as(b):
            m.bias = other.value.numpy().reshape(n)
            cur = us[0]
            m.removed.append(cur)
            nxt, us = only_user(cur)
    if _is_call(nxt, RESHAPE):
        new = _static(nxt.ty)
        # [..., N] -> [..., g, c] with the same rows (leading dims may be regrouped: an
        # exporter's 2-D matmul [B*S, N] viewed as [B, S, g, c])
        if new and len(new) >= 2 and np.prod(new[:-2]) == np.prod(out[:-1]) \
                and new[-2] * new[-1] == n:
            m.groups = new[-2]
            cur = us[0]
            m.removed.append(cur)
    if cur in outside:
        return None, "projection output leaves the dataflow block"
    us = users.get(cur, [])
    if not us:
        return None, "projection output has no users"
    width = n // m.groups
    rank = len(_static(cur.ty))
    for u in dict.fromkeys(us):
        call = value_of.get(u)
        if not _is_call(call, SLICE):
            return None, f"consumer {u.name} is not a strided_slice"
        axes, begin, end = (_ints(a) for a in call.args[1:4])
        strides = _ints(call.args[4]) if len(call.args) > 4 else [1]
        if None in (axes, begin, end, strides) or len(axes) != 1:
            return None, f"slice {u.name}: symbolic or multi-axis bounds"
        if axes[0] % rank != rank - 1:
            return None, f"slice {u.name} is not on the last axis"
        if strides != [1]:
            return None, f"slice {u.name} has a stride"
        b = min(max(begin[0] + width if begin[0] < 0 else begin[0], 0), width)
        e = min(max(end[0] + width if end[0] < 0 else end[0], 0), width)
        if e <= b:
            return None, f"slice {u.name} is empty"
        m.slices[u] = (b, e)
    spans = sorted(m.slices.values())
    if any(e0 > b1 for (_, e0), (b1, _) in zip(spans, spans[1:])):
        return None, "slices overlap (columns would be computed twice)"
    return m, ""


@tvm.transform.module_pass(opt_level=0, name="FluidMLSplitProjection")
class FluidMLSplitProjection:
    """Split every constant-weight projection read only through last-axis slices.

    ``decisions`` lists, per projection considered, a :class:`~fluidml_tvm.decisions.Decision`
    (choice ``split`` or ``kept``, with the reason).
    """

    def __init__(self):
        self.decisions: list[Decision] = []

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.decisions = []
        out = mod
        for gv, func in mod.functions.items():
            if not isinstance(func, relax.Function):
                continue
            new = self._function(func, gv.name_hint)
            if new is not None:
                out = out.clone() if out is mod else out
                out[gv] = new
        found = self.decisions or [note(STAGE, "no constant-weight projection read through slices")]
        return attach(out, STAGE, found)

    def report(self) -> str:
        return render(self.decisions) or "no constant-weight projection read through slices"

    def _function(self, func: relax.Function, fname: str) -> relax.Function | None:
        body = func.body
        if not isinstance(body, relax.SeqExpr):
            return None
        blocks, changed = [], False
        for block in body.blocks:
            new = self._block(block, fname) if isinstance(block, relax.DataflowBlock) else None
            changed |= new is not None
            blocks.append(new if new is not None else block)
        if not changed:
            return None
        new = relax.Function(func.params, relax.SeqExpr(blocks, body.body), func.ret_ty,
                             func.is_pure, func.attrs, func.span)
        return relax.BlockBuilder().normalize(new)

    def _block(self, block: relax.DataflowBlock, fname: str):
        value_of = {b.var: b.value for b in block.bindings if isinstance(b, relax.VarBinding)}
        users = {v: list(us) for v, us in relax.analysis.udchain(block).items()}
        outside = {b.var for b in block.bindings if not isinstance(b.var, relax.DataflowVar)}
        matches, dropped = {}, set()
        for b in block.bindings:
            if not (isinstance(b, relax.VarBinding) and _is_call(b.value, MATMUL)):
                continue
            m, why = _match(b.var, b.value, value_of, users, outside)
            name = f"{fname}/{b.var.name}"
            if m is None:
                if why != "weight is not a 2-D constant":  # activations x activations: silent
                    self.decisions.append(Decision(STAGE, name, "kept", why))
                continue
            for s, (lo, hi) in m.slices.items():
                matches[s] = (m, lo, hi)
            dropped.update(m.removed)
            k, n = m.weight.shape
            kept = sum(hi - lo for lo, hi in m.slices.values()) * m.groups
            self.decisions.append(Decision(
                STAGE, name, "split",
                f"[{k}x{n}] into {len(m.slices)} projections "
                f"({', '.join(f'{s.name}: cols [{lo},{hi})' for s, (lo, hi) in m.slices.items())}"
                + (f" in each of {m.groups} groups" if m.groups > 1 else "")
                + f"); the fused output ({int(np.prod(_static(b.var.ty))) * m.weight.itemsize}"
                f" bytes) is never materialized; {n - kept} of {n} columns unread",
                {"weight": [k, n], "parts": len(m.slices), "groups": m.groups}))
            log.debug(self.decisions[-1])
        if not matches:
            return None
        bb = relax.BlockBuilder()
        new = []

        def emit(expr, name, var=None):
            expr = bb.normalize(expr)
            var = var if var is not None else relax.DataflowVar(name, expr.ty)
            new.append(relax.VarBinding(var, expr))
            return var

        for b in block.bindings:
            if b.var in dropped:
                continue
            if b.var not in matches:
                new.append(b)
                continue
            m, lo, hi = matches[b.var]
            c = m.weight.shape[1] // m.groups
            cols = (np.arange(m.groups)[:, None] * c + np.arange(lo, hi)[None, :]).reshape(-1)
            wj = relax.const(np.ascontiguousarray(m.weight[:, cols]))
            exprs = [("mm", relax.op.matmul(m.x, wj))]
            if m.bias is not None:
                bj = relax.const(np.ascontiguousarray(m.bias[cols]))
                exprs.append(("bias", lambda v, bj=bj: relax.op.add(v, bj)))
            if m.groups > 1:  # back to the slice's own shape [..., g, hi - lo]
                exprs.append(("view", lambda v, s=b.var.ty.shape: relax.op.reshape(v, s)))
            v = None
            for i, (tag, make) in enumerate(exprs):
                expr = make if i == 0 else make(v)
                v = emit(expr, f"{b.var.name}_{tag}", b.var if i == len(exprs) - 1 else None)
        return relax.DataflowBlock(new, block.span)
