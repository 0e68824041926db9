"""The conv2d_nchwc rule: a convolution writing the blocked NCHW[b]c layout (the layout stage's
te compute, block ``conv2d_nchwc``), every register tile computing what the unscheduled kernel
computes; any other kernel is not its kind."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, topi

from fluidml_tvm.options import Options
from fluidml_tvm.schedules import cpu_info
from fluidml_tvm.schedules.measure import random_args
from fluidml_tvm.schedules.rules import Context, Unrelated, conv2d_nchwc

from ..models import TARGET, build, matmul_func


def _nchwc_conv(b, C=8, H=10, W=10):
    """An NCHW input, a weight pre-blocked [F/b, C, 3, 3, b], output [1, F/b, H, W, b]."""
    F = 2 * b
    data = te.placeholder((1, C, H, W), name="data")
    weight = te.placeholder((F // b, C, 3, 3, b), name="weight")
    padded = topi.nn.pad(data, [0, 0, 1, 1], [0, 0, 1, 1], name="pad_temp")
    rc = te.reduce_axis((0, C), name="rc")
    ry = te.reduce_axis((0, 3), name="ry")
    rx = te.reduce_axis((0, 3), name="rx")
    out = te.compute(
        (1, F // b, H, W, b),
        lambda n, fo, y, x, fi: te.sum(
            padded[n, rc, y + ry, x + rx] * weight[fo, rc, ry, rx, fi], axis=[rc, ry, rx]),
        name="conv2d_nchwc")
    return te.create_prim_func([data, weight, out])


def test_every_tile_computes_the_same():
    cpu = cpu_info(TARGET)
    b = cpu.lanes(32)
    func = _nchwc_conv(b)
    m, why = conv2d_nchwc.analyze(func)
    assert m is not None, why
    assert (m.fo, m.x, m.lanes) == (2, 10, b)
    rule = conv2d_nchwc.NCHWcRule()
    ctx = Context("k", TARGET, cpu, Options(tune_trials=2))
    cands = rule.candidates(m, ctx)
    assert len(cands) == 2 and rule.workload(m, cands, ctx) == "f2x10"
    dev = tvm.cpu()
    args = random_args(func, dev, seed=2)
    build(func)["main"](*args)
    for cfg in cands:
        new, reason, pack = rule.apply(func, m, cfg, ctx)
        assert pack is None and f"tile {cfg['mr']} columns x {cfg['nf']} blocks" in reason
        out = tvm.runtime.tensor(np.zeros(args[-1].shape, "f4"), dev)
        build(new)["main"](*args[:-1], out)
        np.testing.assert_allclose(out.numpy(), args[-1].numpy(), rtol=1e-4, atol=1e-4)


def test_other_kernels_are_not_its_kind():
    m, why = conv2d_nchwc.analyze(matmul_func(16, 16, 16))
    assert m is None and isinstance(why, Unrelated)
