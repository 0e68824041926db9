"""rules/conv_transpose.py: the legalized transposed convolution read back (k, s, pad, groups,
output size), the phase kernel that replaces it (no dilated input, the epilogue kept), and
what is refused."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from fluidml_tvm.schedules.constants import phase_weight
from fluidml_tvm.schedules.measure import random_args
from fluidml_tvm.schedules.rules.conv_transpose import analyze, rebuild

from ..models import build, fused
from . import odd_models as om


def _func(**kw):
    mod = fused(om.conv_transpose(**kw)[0])
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    return func


@pytest.mark.parametrize("kw,want", [
    (dict(k=2, stride=2), dict(k=(2, 2), s=(2, 2), pad=(0, 0), out=(10, 10), groups=1)),
    (dict(k=3, stride=2, pad=1, out_pad=1), dict(k=(3, 3), s=(2, 2), pad=(1, 1), out=(10, 10),
                                                 groups=1)),
    (dict(C=8, O=8, group=4, k=4, stride=2, pad=1), dict(k=(4, 4), pad=(1, 1), groups=4)),
    (dict(k=3, stride=1, pad=1), dict(s=(1, 1), out=(5, 5))),
])
def test_reads_the_legalized_form(kw, want):
    m, why = analyze(_func(**kw))
    assert m is not None, why
    for key, value in want.items():
        assert getattr(m, key) == value


@pytest.mark.parametrize("const", [True, False])
def test_phase_kernel_computes_the_same(const):
    """The rebuilt kernel, its weight re-laid per phase by the caller (const) or by a block of
    its own, against the legalized kernel; the dilated input is gone, the epilogue kept."""
    func = _func(C=8, O=6, k=3, stride=2, pad=1, out_pad=1)
    m, _ = analyze(func)
    new = rebuild(func, m, const)
    text = new.script()
    assert "data_dilate" not in text and "convT_phases" in text and "T_add" in text
    args = [a.numpy() for a in random_args(func, tvm.cpu(), seed=5)]
    ref = [tvm.runtime.tensor(a) for a in args]
    build(func)["main"](*ref)
    mine = list(args)
    if const:
        mine[1] = phase_weight(args[1], m.k, m.s, m.pad, m.groups)
    out = [tvm.runtime.tensor(a) for a in mine]
    build(new)["main"](*out)
    np.testing.assert_allclose(out[-1].numpy(), ref[-1].numpy(), rtol=1e-5, atol=1e-5)


def test_not_a_transposed_conv_is_unrelated():
    from fluidml_tvm.schedules.rules import Unrelated

    mod = fused(om.conv()[0])
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    m, why = analyze(func)
    assert m is None and isinstance(why, Unrelated)
