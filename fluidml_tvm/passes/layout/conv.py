"""Convolution layouts for the layout stage: NCHW and NHWC activations (issue 5, part a).

A 4-d activation's layout is a permutation like any other: NCHW is the identity, NHWC is
``(0, 2, 3, 1)``. A ``conv2d`` node (NCHW/OIHW/NCHW attributes, groups 1, constant weight) is
the ``conv`` kind: its kernel reads its input in NCHW or NHWC and writes its output in NCHW or
NHWC, the two chosen independently (:func:`permuted_conv2d`, one te compute whose padding stage
and reduction index the physical layouts), so the first convolution of a network turns the NCHW
graph input into NHWC and the last one turns it back, with no transpose kernel. The weight stays
the model's constant: the conv2d schedule rule packs it offline for whichever output layout.
A depthwise conv2d (groups = channels, :func:`is_depthwise`) is the ``conv`` kind too, so a
MobileNet's chains of 1x1 and depthwise convs can run NHWC end to end; its layout kernel
(:func:`permuted_depthwise`) reads the weight stored ``[KH, KW, C]`` and the depthwise schedule
rule vectorizes it over the channels (in NCHW it has only a row of 7-14 columns to vectorize on
the small feature maps). It has no blocked variant.
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
from tvm import te

from .kernels import blocked_conv2d, permuted_conv2d, permuted_depthwise
from .layouts import (  # noqa: F401
    CONV_LAYOUTS,
    NHWC,
    POOL_OPS,
    blocked,
    blocked_shape,
    identity,
    is_blocked,
    layout_name,
    phys_shape,
)
from .variants import KERNELS_VERSION


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
    """A conv2d the stage can rewrite: NCHW/OIHW, a constant weight, and groups 1 or depthwise
    (:func:`is_depthwise`)."""
    n = g.nodes[i]
    c = n.attrs.get("conv")
    if n.op != "relax.nn.conv2d" or c is None or len(n.inputs) != 2:
        return False
    x, w = (g.tensors[t] for t in n.inputs)
    out = g.tensors[n.output]
    return (c["layouts"] == ("NCHW", "OIHW", "NCHW") and w.kind == "const"
            and c["out_dtype"] in (None, out.dtype)
            and all(t.shape is not None and len(t.shape) == 4 for t in (x, w, out))
            and (c["groups"] == 1 or _depthwise(c, x.shape, w.shape)))


def _depthwise(c: dict, x_shape, w_shape) -> bool:
    return (c["groups"] > 1 and c["groups"] == x_shape[1] == w_shape[0]
            and w_shape[1] == 1)


# Bumped when the depthwise schedule changes the kernels a depthwise conv key times: 2 = column
# tiles and per-row padding with the channels innermost (2026-12-06); 3 = accumulators on the
# stack, NCHW planes padded two at a time where small (2026-12-07); 4 = NCHW stride 2: planes
# up to 32 KB zeroed, then copied by pairs of columns (2026-12-07).
DEPTHWISE_VERSION = 4


def is_depthwise(g, i) -> bool:
    """A depthwise conv2d (MobileNet's: groups = input channels = output channels): in NHWC its
    kernel is vectorized over the channels, where in NCHW it has only a row of columns to
    vectorize (7 or 14 of 16 lanes on a small feature map). It has no blocked variant."""
    n = g.nodes[i]
    x, w = (g.tensors[t] for t in n.inputs)
    return _depthwise(n.attrs["conv"], x.shape, w.shape)


def depthwise_offered(lin, lout) -> bool:
    """Whether a depthwise conv has a layout variant ``lin`` -> ``lout``: not NCHW -> NHWC. That
    kernel (channels-innermost tiles gathering each vector across NCHW planes) ran 4.7-12x slower
    than the NHWC one and 2.5-5x slower than the NCHW one on all six nodes timed (ConvNeXt's 7x7
    192x28x28: 1209 us vs 109 / 261; a 5x5 240x14x14: 205 vs 16 / 41), and its LLVM build took
    1.7 s (0.06-0.18 s the others): within a bounded budget two of them took ConvNeXt's layout
    stage 5.6 s past its share and left no schedule measured. A transpose and the NHWC kernel do
    its job."""
    return not (tuple(lin) == identity(4) and tuple(lout) == NHWC)


def depthwise_weight(w):
    """A depthwise weight (numpy ``[C, 1, KH, KW]``) stored ``[KH, KW, C]``."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(c, kh, kw).transpose(1, 2, 0))


def depthwise_weight_shape(w_shape) -> tuple:
    """A depthwise weight ``[C, 1, KH, KW]`` as the layout variants read it: ``[KH, KW, C]``
    (one vector of channels per window tap)."""
    return (w_shape[2], w_shape[3], w_shape[0])


def takes_winograd(g, i) -> bool:
    """Whether conv node ``i``, left NCHW, is computed by the Winograd pass that runs after this
    stage (``fluidml.winograd``, :func:`fluidml_tvm.passes.winograd.why_not_shapes`). Such a
    node keeps NCHW (:func:`.dp.candidates`, :attr:`.measure.MeasuredCost.nchw_only`): its
    layout variants are direct convolutions, so timing them alone compares the wrong kernels
    (SqueezeNet's 3x3 expansions: direct 241-288 us in either layout, Winograd 129 us in NCHW
    only), and a plan moving it to NHWC loses Winograd (SqueezeNet's all-NHWC plan, modelled
    10.7% faster, ran on/off 1.105)."""
    from ..winograd import why_not_shapes

    n = g.nodes[i]
    c = n.attrs["conv"]
    x, w = (g.tensors[t] for t in n.inputs)
    out = g.tensors[n.output]
    return not why_not_shapes(w.dtype, x.dtype, tuple(w.shape), c["strides"], c["dilation"],
                              c["groups"], tuple(out.shape))


def winograd_nodes(g, options, target) -> set[int]:
    """Conv nodes of ``g`` that keep NCHW for Winograd (:func:`takes_winograd`); none with
    ``fluidml.winograd=0``, without the schedule stage or for a non-CPU ``target`` (None), where
    the pass does not run."""
    if target is None or not (options.layout_conv and options.winograd and options.schedule):
        return set()
    return {i for i in range(len(g.nodes)) if is_conv(g, i) and takes_winograd(g, i)}


def winograd_note(g, nodes) -> str:
    """The report line of the conv nodes kept NCHW for Winograd."""
    names = [g.nodes[i].output for i in sorted(nodes)]
    return (f"NCHW kept for {len(names)} 3x3 convolutions Winograd computes (fluidml.winograd; "
            "their layout variants not timed): " + ", ".join(names[:12])
            + (", ..." if len(names) > 12 else ""))


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


def conv_variant(g, i, lin, lout):
    """The PrimFunc the rewrite emits for conv node ``i`` with layouts ``lin`` -> ``lout``."""
    n = g.nodes[i]
    x, w = (g.tensors[t] for t in n.inputs)
    out = g.tensors[n.output]
    c = n.attrs["conv"]
    if is_depthwise(g, i):
        d = te.placeholder(tuple(x.shape[k] for k in lin), x.dtype, "data")
        k = te.placeholder(depthwise_weight_shape(w.shape), w.dtype, "weight")
        o = permuted_depthwise(d, k, lin, lout, out.shape, c["strides"], c["padding"],
                               c["dilation"], out.dtype)
        return te.create_prim_func([d, k, o])
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
    parts = [x.shape, w.shape, c["strides"], c["padding"], c["dilation"], lin, lout,
             (KERNELS_VERSION,)]
    key = "conv:" + "|".join(",".join(map(str, p)) for p in parts)
    # a depthwise kernel's timings from before its channels-innermost tiles are not reused
    return key + f"|dw{DEPTHWISE_VERSION}" if is_depthwise(g, i) else key
