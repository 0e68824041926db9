"""The rule interface (rules/base.py) and RULES: the stage's order, every rule answering analyze()
with a reason for a kernel it does not match, and the cache keys (workload strings) the measuring
rules give, which must not change (a change re-measures every user's kernels)."""

from __future__ import annotations

import pytest
from tvm import te

from fluidml_tvm.options import Options
from fluidml_tvm.schedules import cpu_info
from fluidml_tvm.schedules.constants import constant_args
from fluidml_tvm.schedules.rules import RULES, Context, Rule, Unrelated

from ..models import TARGET, conv_model, fused, gemm_model

ORDER = ["matmul", "conv2d_nchwc", "conv_pool", "conv2d_transpose", "conv2d", "depthwise",
         "pool", "reduction", "injective"]


def _ctx(options=None, const_args=None, name="k"):
    return Context(name, TARGET, cpu_info(TARGET), options or Options(), const_args or {})


def _elementwise():
    A = te.placeholder((8, 32), name="A")
    B = te.compute((8, 32), lambda i, j: A[i, j] * 2.0, name="B")
    return te.create_prim_func([A, B])


def _row_sum():
    A = te.placeholder((8, 32), name="A")
    k = te.reduce_axis((0, 32), name="k")
    B = te.compute((8,), lambda i: te.sum(A[i, k], axis=k), name="B")
    return te.create_prim_func([A, B])


def test_rules_in_the_stage_order():
    assert [r.name for r in RULES] == ORDER
    assert all(isinstance(r, Rule) for r in RULES)
    assert [r.name for r in RULES if r.measures] == ORDER[:6]
    assert [r.name for r in RULES if r.generic] == ["reduction", "injective"]
    assert [r.name for r in RULES if r.optional] == ["depthwise", "pool"]  # schedule_off


@pytest.mark.parametrize("rule", RULES, ids=ORDER)
def test_each_rule_says_why_it_does_not_match(rule):
    func = _row_sum() if rule.name == "injective" else _elementwise()
    match, why = rule.analyze(func, _ctx())
    assert match is None
    assert isinstance(why, str) and why
    # the blocked-conv, conv+pool, transposed-conv and pool rules: "not my kind of kernel",
    # left out of the reasons
    unrelated = ("conv2d_nchwc", "conv_pool", "conv2d_transpose", "pool")
    assert isinstance(why, Unrelated) == (rule.name in unrelated)


def _rule(name):
    return next(r for r in RULES if r.name == name)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_matmul_workload_and_flops(trans_b):
    mod = fused(gemm_model(M=64, N=48, K=32, trans_b=trans_b))
    (gv,) = [gv for gv, _ in mod.functions_items() if "matmul" in gv.name_hint]
    rule = _rule("matmul")
    for consts, b in ((constant_args(mod)[gv.name_hint], "constB"), ({}, "B")):
        ctx = _ctx(const_args=consts, name=gv.name_hint)
        m, why = rule.analyze(mod[gv], ctx)
        assert m is not None, why
        cands = rule.candidates(m, ctx)
        assert cands and all(set(c) == {"mr", "nv", "mc", "order", "kc", "pack"} for c in cands)
        assert rule.workload(m, cands, ctx) == f"b1m64n48k32:{b}:v2"
        assert rule.flops(m) == 2.0 * 64 * 48 * 32
        new, reason, pack = rule.apply(mod[gv], m, cands[0], ctx)
        assert reason.startswith("b1m64n48k32 rows ")
        assert (pack is not None) == (b == "constB")


@pytest.mark.parametrize("conv1x1", [False, True])
def test_conv2d_workload(conv1x1):
    """A 1x1 stride-1 conv on a 14x14 map: with conv1x1 on, one more tile over rows x columns
    joins the race under its own cache entry (``:p``)."""
    mod = fused(conv_model(C=16, H=14, W=14, O=32, k=1, pad=0))
    (gv,) = [gv for gv, _ in mod.functions_items() if "conv" in gv.name_hint]
    # (the position vectors of pointwise_cols off: they have their own key, test_pointwise_cols)
    ctx = _ctx(Options(schedule_off="pointwise_cols" if conv1x1 else "conv1x1,pointwise_cols"))
    rule = _rule("conv2d")
    m, why = rule.analyze(mod[gv], ctx)
    assert m is not None, why
    cands = rule.candidates(m, ctx)
    assert any("p" in c for c in cands) is conv1x1
    assert rule.workload(m, cands, ctx) == "f32x14" + (":p" if conv1x1 else "")
    assert rule.flops(m) == 2.0 * 32 * 14 * 14 * 16
