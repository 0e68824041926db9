"""rules/grouped.py: a grouped convolution's channels split into (group, channel in the group),
the data index simplified to g * Cg + c, the kernel computing what it computed; a depthwise
convolution (one channel a group) is left to the depthwise rule."""

from __future__ import annotations

import numpy as np
import tvm

from fluidml_tvm.schedules.measure import random_args
from fluidml_tvm.schedules.rules.conv2d_match import analyze, analyze_any
from fluidml_tvm.schedules.rules.grouped import ungroup

from ..models import build, fused
from . import odd_models as om


def _func(**kw):
    mod = fused(om.conv(**kw)[0])
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    return func


def test_split_kernel_computes_the_same():
    func = _func(C=16, O=32, group=4, H=6, W=6)
    assert analyze(func)[0] is None
    u, why = ungroup(func, {1})
    assert (u.groups, u.f_dim) == (4, 0)
    text = u.func.script()
    assert "v1 * T.int64(4) + v5" in text  # the data's channel: g * Cg + c
    m, _ = analyze(u.func)
    assert m.f == 8 and m.w_roles == ["r", "f", "r", "r", "r"]
    args = [a.numpy() for a in random_args(func, tvm.cpu(), seed=2)]
    ref = [tvm.runtime.tensor(a) for a in args]
    build(func)["main"](*ref)
    new = [tvm.runtime.tensor(a) for a in args]
    new[1] = tvm.runtime.tensor(args[1].reshape(4, 8, 4, 3, 3))  # the caller's re-laid weight
    build(u.func)["main"](*new)
    np.testing.assert_allclose(new[-1].numpy(), ref[-1].numpy(), rtol=1e-5, atol=1e-5)


def test_match_records_the_groups():
    m, why = analyze_any(_func(C=12, O=24, group=3, H=5, W=5), {1})
    assert why == "grouped conv2d" and m.groups == 3 and m.f == 8 and m.func is not None


def test_depthwise_is_not_split():
    assert ungroup(_func(C=8, O=8, group=8, H=6, W=6), {1})[0] is None
