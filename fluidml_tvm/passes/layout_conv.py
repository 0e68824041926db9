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

Blocked NCHW[x]c is not a candidate: it is not a permutation (the planner's layouts are), TVM
0.27's LegalizeOps refuses conv2d with channel-chunked layouts, and the conv2d schedule rule
matches a weight indexed by plain variables only (a blocked weight is indexed with div/mod).
"""

from __future__ import annotations

from tvm import te, topi

NCHW = (0, 1, 2, 3)
NHWC = (0, 2, 3, 1)
CONV_LAYOUTS = (NCHW, NHWC)
POOL_OPS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d")
_NAMES = {NCHW: "NCHW", NHWC: "NHWC"}


def layout_name(lay) -> str:
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
