"""The te computes of layout-changed kernels: what the rewrite emits and the measured model times.

Each reads its operands and writes its result through their layouts (permutations, or the
blocked ``NCHW[b]c``), so a layout change costs nothing beyond the kernel itself (FLUIDML.md 1).
"""

from __future__ import annotations

from tvm import te, topi

from .layouts import compose, identity, inverse, is_blocked, phys_shape  # noqa: F401


def permuted_matmul(a, b, la, lb, lo, a_shape, b_shape, out_shape, dtype):
    """te compute of ``C = A @ B`` where A, B, C are held in layouts ``la``, ``lb``, ``lo``
    (logical shapes given; ``a``/``b`` are the physical te tensors); returns physical C."""
    r = len(out_shape)
    k = te.reduce_axis((0, a_shape[-1]), name="k")

    def operand(t, lay, shape, last2, pidx_log):
        nb = len(shape) - 2
        batch = [0 if shape[j] == 1 else pidx_log[r - 2 - nb + j] for j in range(nb)]
        idx = batch + last2
        return t[tuple(idx[d] for d in lay)]

    def fcompute(*pidx):
        lg = [None] * r
        for p, d in enumerate(lo):
            lg[d] = pidx[p]
        x = operand(a, la, a_shape, [lg[r - 2], k], lg)
        y = operand(b, lb, b_shape, [k, lg[r - 1]], lg)
        return te.sum(x.astype(dtype) * y.astype(dtype), axis=k)

    return te.compute(phys_shape(out_shape, lo), fcompute, name="T_matmul")


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


def _padded(data, lin, padding):
    """``data`` (a 4-d activation held in ``lin``) zero-padded on its H and W dims."""
    pos = [list(lin).index(d) for d in range(4)]  # logical dim -> physical position
    top, left, bottom, right = padding
    before, after = [0] * 4, [0] * 4
    before[pos[2]], after[pos[2]] = top, bottom
    before[pos[3]], after[pos[3]] = left, right
    return topi.nn.pad(data, before, after, name="pad_temp") if any(before + after) else data


def _windowed(out_shape, lout, lin, padded, strides, dilation, body, name):
    """te compute of a convolution written in ``lout``: ``body(read, f, ry, rx)`` sums the
    window taps, ``read(c, ry, rx)`` reading input channel ``c`` of the padded input held in
    ``lin`` at output position (y, x)."""
    sh, sw = strides
    dh, dw = dilation

    def fcompute(*pidx):
        lg = [None] * 4
        for p, d in enumerate(lout):
            lg[d] = pidx[p]
        nn, ff, yy, xx = lg

        def read(c, ry, rx):
            logical = [nn, c, yy * sh + ry * dh, xx * sw + rx * dw]
            return padded[tuple(logical[d] for d in lin)]

        return body(read, ff)

    shape = tuple(out_shape[d] for d in lout)
    return te.compute(shape, fcompute, name=name, tag=name)


def permuted_conv2d(data, weight, lin, lout, out_shape, strides, padding, dilation, dtype):
    """te compute of an NCHW/OIHW convolution whose input is held in layout ``lin`` and whose
    output is written in ``lout`` (``data`` is the physical te tensor, ``weight`` OIHW)."""
    _, cin, kh, kw = (int(d) for d in weight.shape)
    rc = te.reduce_axis((0, cin), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def body(read, ff):
        return te.sum(read(rc, ry, rx).astype(dtype) * weight[ff, rc, ry, rx].astype(dtype),
                      axis=[rc, ry, rx])

    return _windowed(out_shape, lout, lin, _padded(data, lin, padding), strides, dilation, body,
                     "conv2d_layout")


def permuted_depthwise(data, weight, lin, lout, out_shape, strides, padding, dilation, dtype):
    """te compute of a depthwise NCHW convolution (groups = channels) whose input is held in
    ``lin`` and whose output is written in ``lout`` (NCHW/NHWC); ``weight`` is ``[KH, KW, C]``
    (:func:`.conv.depthwise_weight_shape`). One reduction over the window: the schedules'
    depthwise rule vectorizes the innermost output axis (channels in NHWC)."""
    ry = te.reduce_axis((0, int(weight.shape[0])), name="ry")
    rx = te.reduce_axis((0, int(weight.shape[1])), name="rx")

    def body(read, ff):
        return te.sum(read(ff, ry, rx).astype(dtype) * weight[ry, rx, ff].astype(dtype),
                      axis=[ry, rx])

    return _windowed(out_shape, lout, lin, _padded(data, lin, padding), strides, dilation, body,
                     "depthwise_layout")
