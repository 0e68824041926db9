"""rules/pad.py: an iteration space grown to whole tiles computes what the kernel computed,
the padding is zero where it is read, and what cannot be padded is refused with a reason."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

from fluidml_tvm.schedules.measure import random_args
from fluidml_tvm.schedules.rules.pad import PadError, grow

from ..models import build, conv_model, fused


def _run(func, args):
    out = [tvm.runtime.tensor(a) for a in args]
    build(func)["main"](*out)
    return out[-1].numpy()


def _conv():
    mod = fused(conv_model(C=8, O=24, H=13, W=13))
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    return func


def test_grown_conv_computes_the_same():
    """Channels 24 -> 32 (the weight passed padded with zeros by the caller), columns 13 -> 16:
    the padding stage grows and is guarded, the conv output grows, the epilogue is unchanged."""
    func = _conv()
    new, params, guarded = grow(func, "conv2d_nchw", {1: 32, 3: 16}, caller_pads={1})
    assert guarded == {"pad_temp"}
    assert params == {1: (32, 8, 3, 3)}
    text = new.script()
    assert "T.sblock_alloc_buffer((T.int64(1), T.int64(32), T.int64(13), T.int64(16)))" in text
    args = [a.numpy() for a in random_args(func, tvm.cpu(), seed=3)]
    ref = _run(func, args)
    w = np.zeros((32, 8, 3, 3), "f4")
    w[:24] = args[1]
    out = _run(new, [args[0], w, args[2], np.zeros_like(args[3])])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_parameter_the_caller_does_not_pad_is_copied():
    """A weight that is not a constant is read through a zero-padded copy (the kernel keeps its
    signature), and an output parameter is written through a cache."""
    A = te.placeholder((7, 5), name="A")
    B = te.placeholder((5, 13), name="B")
    k = te.reduce_axis((0, 5), name="k")
    C = te.compute((7, 13), lambda i, j: te.sum(A[i, k] * B[k, j], axis=k), name="C")
    func = te.create_prim_func([A, B, C])
    new, params, guarded = grow(func, "C", {0: 8, 1: 16})
    assert guarded == {"A_global", "B_global"}
    assert params == {}
    assert [tuple(int(d) for d in p.ty.shape) for p in new.params] == [(7, 5), (5, 13), (7, 13)]
    args = [a.numpy() for a in random_args(func, tvm.cpu(), seed=4)]
    np.testing.assert_allclose(_run(new, args[:2] + [np.zeros((7, 13), "f4")]),
                               args[0] @ args[1], rtol=1e-5, atol=1e-5)


def test_a_reduction_producer_is_refused():
    """A buffer to grow that a reduction produces cannot be padded by guarding its value."""
    A = te.placeholder((6, 6), name="A")
    r = te.reduce_axis((0, 6), name="r")
    S = te.compute((6,), lambda i: te.sum(A[i, r], axis=r), name="S")
    k = te.reduce_axis((0, 6), name="k")
    C = te.compute((6,), lambda j: te.sum(S[k] * A[k, j], axis=k), name="C")
    func = te.create_prim_func([A, C])
    with pytest.raises(PadError, match="reduction"):
        grow(func, "C", {1: 8})
