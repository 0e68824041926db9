"""rules/conv2d_cols.py: one or two output channels get vectors along the columns (the weight
broadcast), only where the columns are read with stride 1; the kernel computes what the
unscheduled one computes, for every candidate tile."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from fluidml_tvm.options import Options
from fluidml_tvm.schedules import cpu_info
from fluidml_tvm.schedules.constants import pack_array
from fluidml_tvm.schedules.measure import random_args
from fluidml_tvm.schedules.rules import Context
from fluidml_tvm.schedules.rules.conv2d import Conv2dRule
from fluidml_tvm.schedules.rules.conv2d_cols import cols_candidates, schedule_conv2d_cols
from fluidml_tvm.schedules.rules.conv2d_match import analyze_any

from ..models import TARGET, build, fused
from . import odd_models as om

CPU = cpu_info(TARGET)


def _func(**kw):
    mod = fused(om.conv(**kw)[0])
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    return func


def _ctx():
    return Context("k", TARGET, CPU, Options(), {1: True})


def test_one_channel_takes_column_vectors_many_do_not():
    rule = Conv2dRule()
    m, _ = rule.analyze(_func(C=8, O=1, H=6, W=40), _ctx())
    assert all(c.get("cols") for c in rule.candidates(m, _ctx()))
    m, _ = rule.analyze(_func(C=8, O=32, H=6, W=40), _ctx())
    assert not any(c.get("cols") for c in rule.candidates(m, _ctx()))


def test_strided_columns_are_not_vectorized_along():
    m, _ = analyze_any(_func(C=8, O=1, H=9, W=41, stride=2), {1})
    assert m.x_stride == 2 and cols_candidates(m, CPU, 4) == []


@pytest.mark.parametrize("F,W", [(1, 40), (2, 37), (3, 16)])
def test_every_column_tile_computes_the_same(F, W):
    func = _func(C=5, O=F, H=4, W=W)
    m, _ = analyze_any(func, {1})
    args = [a.numpy() for a in random_args(func, tvm.cpu(), seed=8)]
    ref = [tvm.runtime.tensor(a) for a in args]
    build(func)["main"](*ref)
    for tile in cols_candidates(m, CPU, 8):
        sch, why, pack = schedule_conv2d_cols(func, m, CPU, {1: True}, tile)
        assert "vectors along columns" in why
        mine = list(args)
        mine[1] = pack_array(args[1], *pack[1])
        out = [tvm.runtime.tensor(a) for a in mine[:-1]] + [tvm.runtime.tensor(
            np.zeros_like(args[-1]))]
        build(sch.mod["main"])["main"](*out)
        np.testing.assert_allclose(out[-1].numpy(), ref[-1].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw,first_nv", [(13, 2), (27, 2), (56, 3)])
def test_pointwise_small_maps_take_two_vectors_first(hw, first_nv):
    """1x1 NCHW convs with the vectors along the positions: on a map of fewer than
    ``SMALL_MAP_POSITIONS`` (13x13, 27x27) the first tile is 8 channels x 2 vectors, on a larger
    one (56x56) 8 x 3; the first tile computes the unscheduled kernel."""
    from fluidml_tvm.schedules.rules.conv2d_cols import (
        SMALL_MAP_POSITIONS,
        pointwise_candidates,
        schedule_pointwise_cols,
    )

    func = _func(C=16, O=32, H=hw, W=hw, k=1, pad=0)
    m, _ = analyze_any(func, {1})
    cands = pointwise_candidates(m, CPU, 4)
    assert cands[0] == (8, first_nv), cands
    assert (hw * hw < SMALL_MAP_POSITIONS) == (first_nv == 2)
    sch, why, _ = schedule_pointwise_cols(func, m, CPU, {}, cands[0])
    assert f"tile 8 channels x {first_nv}x16 positions" in why, why
    args = random_args(func, tvm.cpu(), seed=3)
    out = [tvm.runtime.tensor(np.zeros_like(args[-1].numpy())) for _ in range(2)]
    build(sch.mod["main"])["main"](*args[:-1], out[0])
    build(func)["main"](*args[:-1], out[1])
    assert np.abs(out[1].numpy()).max() > 0
    np.testing.assert_allclose(out[0].numpy(), out[1].numpy(), rtol=1e-4, atol=1e-4)
