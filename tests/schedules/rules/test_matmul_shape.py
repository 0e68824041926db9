"""rules/matmul_shape.py: which tiles a matmul gets (dividing ones as before, padded where none
divides) and the padded kernel computing what the unpadded one computed."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from fluidml_tvm.schedules import cpu_info
from fluidml_tvm.schedules.constants import pack_array
from fluidml_tvm.schedules.measure import random_args
from fluidml_tvm.schedules.rules import matmul as mm
from fluidml_tvm.schedules.rules.matmul_shape import dividing_tiles, picked_tiles

from ..models import TARGET, build, fused, matmul_func
from . import odd_models as om

CPU = cpu_info(TARGET)


def test_dividing_shapes_keep_their_tiles():
    m, _ = mm.analyze(matmul_func(128, 768, 768))
    got, padded = picked_tiles(m, CPU)
    assert not padded and got == dividing_tiles(m, CPU)


@pytest.mark.parametrize("M,N,K", [(1, 1000, 64), (197, 197, 64), (7, 13, 5), (100, 1001, 7)])
def test_odd_shapes_get_padded_tiles(M, N, K):
    m, _ = mm.analyze(matmul_func(M, N, K))
    got, padded = picked_tiles(m, CPU)
    assert got and (padded or not dividing_tiles(m, CPU))


@pytest.mark.parametrize("M,N,K,lead", [(13, 40, 24, ()), (7, 1000, 16, ()), (5, 40, 8, (1, 3))])
def test_padded_kernel_computes_the_same(M, N, K, lead):
    mod = fused(om.matmul(M=M, N=N, K=K, lead=lead)[0])
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    m, why = mm.analyze(func)
    assert m is not None, why
    cfg = mm.MatmulConfig.from_dict(mm.MatmulRule().candidates(m, _ctx(func))[0])
    sch = mm.apply(func, m, cfg, CPU, True)
    args = [a.numpy() for a in random_args(func, tvm.cpu(), seed=6)]
    ref = [tvm.runtime.tensor(a) for a in args]
    build(func)["main"](*ref)
    mine = list(args)
    mine[m.b_param] = pack_array(args[m.b_param], tuple(m.roles_b), cfg.nv * CPU.lanes(32))
    out = [tvm.runtime.tensor(a) for a in mine]
    build(sch.mod["main"])["main"](*out)
    np.testing.assert_allclose(out[-1].numpy(), ref[-1].numpy(), rtol=1e-5, atol=1e-5)


def _ctx(func):
    from fluidml_tvm.options import Options
    from fluidml_tvm.schedules.rules import Context

    return Context("k", TARGET, CPU, Options(), {1: True})
