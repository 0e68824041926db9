"""The pool rule: NCHW window pools with a padding stage read a copy of their input plane (as even
then odd columns for stride 2, as it is for stride 1), and compute exactly what the unscheduled
kernel computes; the other pools keep the generic reduction rule."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te, topi

from fluidml_tvm.options import Options
from fluidml_tvm.schedules import cpu_info
from fluidml_tvm.schedules.common import inline_plain_copies
from fluidml_tvm.schedules.rules import RULES
from fluidml_tvm.schedules.rules.base import Context
from fluidml_tvm.schedules.rules.pool import PoolRule

from ..models import TARGET


def _pool(c, x, k, s, pad, ceil, kind="max", layout="NCHW"):
    shape = (1, c, x, x) if layout == "NCHW" else (1, x, x, c)
    data = te.placeholder(shape, "float32", "data")
    y = topi.nn.pool2d(data, (k, k), (s, s), (1, 1), (pad,) * 4, kind, ceil_mode=ceil,
                       layout=layout, count_include_pad=False)
    return inline_plain_copies(te.create_prim_func([data, y])), tuple(int(d) for d in y.shape)


def _run(func, x, oshape):
    lib = tvm.compile(func, target=TARGET)
    out = tvm.runtime.tensor(np.zeros(oshape, "float32"))
    lib(tvm.runtime.tensor(x), out)
    return out.numpy()


@pytest.mark.parametrize("c, x, k, s, pad, ceil, kind", [
    (8, 55, 3, 2, 0, True, "max"),  # SqueezeNet's: ceil mode pads the last row and column
    (4, 32, 3, 2, 1, False, "max"),  # ResNet's stem pool
    (4, 30, 3, 2, 1, False, "avg"),  # an average pool with padding: the division as epilogue
    (4, 56, 3, 2, 0, True, "max"),  # GoogLeNet's: the ceil padding makes the row odd (57)
    (4, 14, 2, 2, 0, True, "max"),  # odd row (15), 2x2 window: the odd half's spare slot
    (4, 28, 3, 1, 1, False, "max"),  # GoogLeNet's inception branch pools: stride 1
    (4, 7, 3, 1, 1, False, "max"),  # ... on a 7x7 map
    (4, 13, 5, 1, 2, False, "max"),  # a 5x5 stride-1 pool (YOLO's SPP)
    (4, 9, 3, 1, 1, False, "avg"),  # stride-1 average pool, padding not counted
])
def test_pool_rule_computes_what_the_unscheduled_kernel_does(c, x, k, s, pad, ceil, kind):
    func, oshape = _pool(c, x, k, s, pad, ceil, kind)
    ctx = Context("k", TARGET, cpu_info(TARGET), Options())
    rule = PoolRule()
    m, why = rule.analyze(func, ctx)
    assert m is not None, why
    new, why, _ = rule.apply(func, m, {}, ctx)
    assert ("even then odd columns" if s == 2 else "padded input plane copied") in why
    text = new.script()
    assert "T.parallel" in text and "T.vectorized" in text
    xv = np.random.default_rng(3).standard_normal((1, c, x, x)).astype("float32")
    np.testing.assert_allclose(_run(new, xv, oshape), _run(func, xv, oshape), rtol=1e-6)
    # the stage picks it before the generic reduction rule
    first = next(r for r in RULES if r.analyze(func, ctx)[0] is not None)
    assert first.name == "pool"


@pytest.mark.parametrize("kw, reason", [
    (dict(c=8, x=56, k=2, pad=0, ceil=False, kind="avg"), "no padding stage"),
    (dict(c=8, x=28, k=3, s=1, pad=0, ceil=False), "no padding stage"),
    (dict(c=16, x=28, k=3, pad=1, ceil=False, layout="NHWC"), "not run along the innermost"),
    (dict(c=8, x=30, k=3, s=3, pad=1, ceil=False), "not read with stride 1 or 2"),
])
def test_other_pools_keep_the_generic_rule(kw, reason):
    func, _ = _pool(kw.pop("c"), kw.pop("x"), kw.pop("k"), kw.pop("s", 2), kw.pop("pad"),
                    kw.pop("ceil"), **kw)
    m, why = PoolRule().analyze(func, Context("k", TARGET, cpu_info(TARGET), Options()))
    assert m is None and reason in str(why)
