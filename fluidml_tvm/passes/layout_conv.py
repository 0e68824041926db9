"""Convolution layouts for the layout stage: NCHW and NHWC activations (issue 5, part a).

A 4-d activation's layout is a permutation like any other: NCHW is the identity, NHWC is
``(0, 2, 3, 1)``. A ``conv2d`` node (NCHW/OIHW/NCHW attributes, groups 1, constant weight) is
the ``conv`` kind: its kernel reads its input in NCHW or NHWC and writes its output in NCHW or
NHWC, the two chosen independently (:func:`permuted_conv2d`, one te compute whose padding stage
and reduction index the physical layouts), so the first convolution of a network turns the NCHW
graph input into NHWC and the last one turns it back, with no transpose kernel. The weight stays
the model's constant: the conv2d schedule rule packs it offline for whichever output layout.
Pools (``max_pool2d``, ``avg_pool2d``, ``adaptive_avg_pool2d``) are the ``pool`` kind: they run
on NCHW or NHWC (input and output alike) through their ``layout`` attribute.

Whether NHWC pays is measured (``fluidml.cost=measured``): every (input, output) layout pair of
every conv shape is timed with the FluidML schedules and cached (rule ``layout``, key ``conv:``);
a non-default variant must beat NCHW by the measured model's margin. ``fluidml.layout_conv=0``
switches the conv candidates off.

Blocked ``NCHW[b]c`` (``[N, C/b, H, W, b]``, ``b`` = the target's vector lanes) is the third
candidate of conv activations whose channels ``b`` divides. It is not a permutation, so it is
written as the 5-tuple ``(0, 1, 2, 3, b)`` (:func:`blocked`, :func:`is_blocked`), which only
the conv, pool and elementwise kinds accept (every other op gets the tensor back in NCHW through
a ``layout_transform``). TVM 0.27's LegalizeOps leaves ``conv2d`` with chunked layouts
un-legalized, so the rewrite emits its own te compute (:func:`blocked_conv2d`, block
``conv2d_nchwc``) with the weight stored pre-blocked at compile time (:func:`block_weight`:
``[O/b, C/b, KH, KW, b_in, b_out]``, or ``[O/b, C, KH, KW, b_out]`` for an NCHW input: the first
convolution reads the graph's NCHW input directly); every index is a plain variable, and
:mod:`fluidml_tvm.schedules.conv2d_nchwc` schedules it. Pools run on it through their layout
attribute (``NCHW16c``, which LegalizeOps accepts for pools), elementwise ops on the 5-d tensor
with per-channel constants stored blocked. Whether it pays is measured like NHWC.
"""

from __future__ import annotations

import numpy as np
from tvm import te, topi

from .layout_cost import is_blocked, phys_shape

NCHW = (0, 1, 2, 3)
NHWC = (0, 2, 3, 1)
CONV_LAYOUTS = (NCHW, NHWC)  # the permutations; blocked layouts: is_blocked()
POOL_OPS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d")
_NAMES = {NCHW: "NCHW", NHWC: "NHWC"}


def blocked(b: int) -> tuple:
    """The ``NCHW[b]c`` layout of a 4-d activation."""
    return (0, 1, 2, 3, int(b))


def blocked_shape(shape, lay) -> tuple:
    """The physical shape of a 4-d tensor held in ``lay`` (blocked or a permutation)."""
    if is_blocked(lay):
        b = lay[4]
        return (shape[0], shape[1] // b, shape[2], shape[3], b)
    return phys_shape(shape, lay)


def to_blocked(b: int):
    """Index map NCHW -> NCHW[b]c (for ``relax.op.layout_transform``)."""
    return lambda n, c, h, w: (n, c // b, h, w, c % b)


def from_blocked(b: int):
    """Index map NCHW[b]c -> NCHW."""
    return lambda n, co, h, w, ci: (n, co * b + ci, h, w)


def block_activation(arr, b: int):
    """A 4-d array (numpy; a broadcastable operand: channel dim 1 or C) held in ``NCHW[b]c``,
    what :func:`to_blocked` does to a tensor."""
    n, c, h, w = arr.shape
    if c == 1:
        return np.ascontiguousarray(arr.reshape(n, 1, h, w, 1))
    return np.ascontiguousarray(arr.reshape(n, c // b, b, h, w).transpose(0, 1, 3, 4, 2))


def block_weight(w, lin, b: int):
    """An OIHW weight (numpy) stored for :func:`blocked_conv2d` writing ``NCHW[b]c`` and
    reading ``lin`` (blocked: ``[O/b, C/b, KH, KW, b, b]``; NCHW: ``[O/b, C, KH, KW, b]``)."""
    o, c, kh, kw = w.shape
    if is_blocked(lin):
        bi = lin[4]
        return w.reshape(o // b, b, c // bi, bi, kh, kw).transpose(0, 2, 4, 5, 3, 1).copy()
    return w.reshape(o // b, b, c, kh, kw).transpose(0, 2, 3, 4, 1).copy()


def blocked_weight_shape(w_shape, lin, b: int) -> tuple:
    o, c, kh, kw = w_shape
    if is_blocked(lin):
        bi = lin[4]
        return (o // b, c // bi, kh, kw, bi, b)
    return (o // b, c, kh, kw, b)


def blocked_conv2d(data, weight, lin, b, out_shape, strides, padding, dilation, dtype):
    """te compute of a convolution writing ``NCHW[b]c``; ``data`` is held in ``lin`` (NCHW or
    blocked), ``weight`` pre-blocked by :func:`block_weight`. All indices are plain variables."""
    top, left, bottom, right = padding
    rank = len(data.shape)
    before, after = [0] * rank, [0] * rank
    before[2], after[2], before[3], after[3] = top, bottom, left, right
    padded = topi.nn.pad(data, before, after, name="pad_temp") if any(before + after) else data
    sh, sw = strides
    dh, dw = dilation
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    n_, o_, oh, ow = out_shape
    shape = (n_, o_ // b, oh, ow, b)
    if is_blocked(lin):
        rco = te.reduce_axis((0, int(weight.shape[1])), name="rco")
        rci = te.reduce_axis((0, int(weight.shape[4])), name="rci")

        def fcompute(nn, fo, yy, xx, fi):
            x = padded[nn, rco, yy * sh + ry * dh, xx * sw + rx * dw, rci]
            return te.sum(x.astype(dtype) * weight[fo, rco, ry, rx, rci, fi].astype(dtype),
                          axis=[rco, ry, rx, rci])
    else:
        rc = te.reduce_axis((0, int(weight.shape[1])), name="rc")

        def fcompute(nn, fo, yy, xx, fi):
            x = padded[nn, rc, yy * sh + ry * dh, xx * sw + rx * dw]
            return te.sum(x.astype(dtype) * weight[fo, rc, ry, rx, fi].astype(dtype),
                          axis=[rc, ry, rx])

    return te.compute(shape, fcompute, name="conv2d_nchwc", tag="conv2d_nchwc")


def layout_name(lay) -> str:
    if is_blocked(lay):
        return f"NCHW{lay[4]}c"
    return _NAMES[tuple(lay)]


def conv_attrs(call) -> dict | None:
    """The static attributes of a ``relax.nn.conv2d`` call the layout stage can rewrite."""
    a = call.attrs
    try:
        attrs = {
            "strides": tuple(int(s) for s in a.strides),
            "padding": tuple(int(p) for p in a.padding),
            "dilation": tuple(int(d) for d in a.dilation),
            "groups": int(a.groups),
            "layouts": (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)),
            "out_dtype": str(a.out_dtype) if str(a.out_dtype) not in ("", "void", "None") else None,
        }
    except (AttributeError, TypeError, ValueError):
        return None
    if len(attrs["padding"]) == 2:
        attrs["padding"] = attrs["padding"] * 2
    return attrs


def pool_attrs(call) -> dict | None:
    a = call.attrs
    try:
        return {"layouts": (str(a.layout), str(a.out_layout))}
    except AttributeError:
        return None


def is_conv(g, i) -> bool:
    n = g.nodes[i]
    c = n.attrs.get("conv")
    if n.op != "relax.nn.conv2d" or c is None or len(n.inputs) != 2:
        return False
    x, w = (g.tensors[t] for t in n.inputs)
    out = g.tensors[n.output]
    return (c["layouts"] == ("NCHW", "OIHW", "NCHW") and c["groups"] == 1
            and w.kind == "const" and c["out_dtype"] in (None, out.dtype)
            and all(t.shape is not None and len(t.shape) == 4 for t in (x, w, out)))


def is_pool(g, i) -> bool:
    n = g.nodes[i]
    p = n.attrs.get("pool")
    if n.op not in POOL_OPS or p is None or len(n.inputs) != 1:
        return False
    x, out = g.tensors[n.inputs[0]], g.tensors[n.output]
    return (p["layouts"] == ("NCHW", "NCHW") and x.shape is not None and out.shape is not None
            and len(x.shape) == 4 and len(out.shape) == 4)


def conv_flops(g, i) -> float:
    n = g.nodes[i]
    w = g.tensors[n.inputs[1]]
    return 2.0 * g.tensors[n.output].size * w.shape[1] * w.shape[2] * w.shape[3]


def permuted_conv2d(data, weight, lin, lout, out_shape, strides, padding, dilation, dtype):
    """te compute of an NCHW/OIHW convolution whose input is held in layout ``lin`` and whose
    output is written in ``lout`` (``data`` is the physical te tensor, ``weight`` OIHW)."""
    pos = [list(lin).index(d) for d in range(4)]  # logical dim -> physical position
    top, left, bottom, right = padding
    before, after = [0] * 4, [0] * 4
    before[pos[2]], after[pos[2]] = top, bottom
    before[pos[3]], after[pos[3]] = left, right
    padded = topi.nn.pad(data, before, after, name="pad_temp") if any(before + after) else data
    _, cin, kh, kw = (int(d) for d in weight.shape)
    rc = te.reduce_axis((0, cin), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    sh, sw = strides
    dh, dw = dilation

    def fcompute(*pidx):
        lg = [None] * 4
        for p, d in enumerate(lout):
            lg[d] = pidx[p]
        nn, ff, yy, xx = lg
        logical = [nn, rc, yy * sh + ry * dh, xx * sw + rx * dw]
        x = padded[tuple(logical[d] for d in lin)]
        return te.sum(x.astype(dtype) * weight[ff, rc, ry, rx].astype(dtype), axis=[rc, ry, rx])

    shape = tuple(out_shape[d] for d in lout)
    return te.compute(shape, fcompute, name="conv2d_layout", tag="conv2d_layout")


def conv_variant(g, i, lin, lout):
    """The PrimFunc the rewrite emits for conv node ``i`` with layouts ``lin`` -> ``lout``."""
    n = g.nodes[i]
    x, w = (g.tensors[t] for t in n.inputs)
    out = g.tensors[n.output]
    c = n.attrs["conv"]
    if is_blocked(lout):
        d = te.placeholder(blocked_shape(x.shape, lin), x.dtype, "data")
        k = te.placeholder(blocked_weight_shape(w.shape, lin, lout[4]), w.dtype, "weight")
        o = blocked_conv2d(d, k, lin, lout[4], out.shape, c["strides"], c["padding"],
                           c["dilation"], out.dtype)
        return te.create_prim_func([d, k, o])
    d = te.placeholder(tuple(x.shape[k] for k in lin), x.dtype, "data")
    k = te.placeholder(tuple(w.shape), w.dtype, "weight")
    o = permuted_conv2d(d, k, lin, lout, out.shape, c["strides"], c["padding"], c["dilation"],
                        out.dtype)
    return te.create_prim_func([d, k, o])


def conv_key(g, i, lin, lout) -> str:
    n = g.nodes[i]
    x, w = (g.tensors[t] for t in n.inputs)
    c = n.attrs["conv"]
    parts = [x.shape, w.shape, c["strides"], c["padding"], c["dilation"], lin, lout]
    return "conv:" + "|".join(",".join(map(str, p)) for p in parts)
