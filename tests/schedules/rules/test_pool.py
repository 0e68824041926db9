"""The pool rule: NCHW stride-2 window pools with a padding stage read their input plane as even
then odd columns, and compute exactly what the unscheduled kernel computes; the other pools keep
the generic reduction rule."""

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


@pytest.mark.parametrize("c, x, k, pad, ceil, kind", [
    (8, 55, 3, 0, True, "max"),  # SqueezeNet's: ceil mode pads the last row and column
    (4, 32, 3, 1, False, "max"),  # ResNet's stem pool
    (4, 30, 3, 1, False, "avg"),  # an average pool with padding: the division as epilogue
])
def test_pool_rule_computes_what_the_unscheduled_kernel_does(c, x, k, pad, ceil, kind):
    func, oshape = _pool(c, x, k, 2, pad, ceil, kind)
    ctx = Context("k", TARGET, cpu_info(TARGET), Options())
    rule = PoolRule()
    m, why = rule.analyze(func, ctx)
    assert m is not None, why
    new, why, _ = rule.apply(func, m, {}, ctx)
    assert "even then odd columns" in why
    text = new.script()
    assert "T.parallel" in text and "T.vectorized" in text
    xv = np.random.default_rng(3).standard_normal((1, c, x, x)).astype("float32")
    np.testing.assert_allclose(_run(new, xv, oshape), _run(func, xv, oshape), rtol=1e-6)
    # the stage picks it before the generic reduction rule
    first = next(r for r in RULES if r.analyze(func, ctx)[0] is not None)
    assert first.name == "pool"


@pytest.mark.parametrize("kw, reason", [
    (dict(c=8, x=56, k=2, pad=0, ceil=False, kind="avg"), "no padding stage"),
    (dict(c=8, x=56, k=3, pad=0, ceil=True), "odd input row (57)"),
    (dict(c=16, x=28, k=3, pad=1, ceil=False, layout="NHWC"), "not read with stride 2"),
])
def test_other_pools_keep_the_generic_rule(kw, reason):
    func, _ = _pool(kw.pop("c"), kw.pop("x"), kw.pop("k"), 2, kw.pop("pad"), kw.pop("ceil"),
                    **kw)
    m, why = PoolRule().analyze(func, Context("k", TARGET, cpu_info(TARGET), Options()))
    assert m is None and reason in str(why)
