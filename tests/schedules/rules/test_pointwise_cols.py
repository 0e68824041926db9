"""The position-vector kernel of 1x1 stride-1 NCHW convolutions (conv2d_cols.py,
``schedule_pointwise_cols``): offered first among the conv2d rule's candidates under its own cache
key, the same values as ONNX Runtime with and without a guarded last tile, the guarded tile peeled
off by LoopPartition (every other tile unguarded), and its kill switch
``fluidml.schedule_off=pointwise_cols``."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from fluidml_tvm.options import Options
from fluidml_tvm.schedules import cpu_info
from fluidml_tvm.schedules.rules import conv2d
from fluidml_tvm.schedules.rules.base import Context

from ..models import TARGET, conv_model, fused, run_ort


def _conv(C, O, H, W, off="conv1x1", const=True):  # noqa: E741
    model = conv_model(C=C, O=O, H=H, W=W, k=1, pad=0)
    mod = fused(model)
    (gv,) = [gv for gv, _ in mod.functions_items() if "conv" in gv.name_hint]
    ctx = Context(gv.name_hint, TARGET, cpu_info(TARGET),
                  Options(tune_trials=4, schedule_off=off), const_args={1: True} if const else {})
    return model, mod, gv, ctx


def test_offered_first_under_its_own_key_and_switched_off():
    rule = conv2d.Conv2dRule()
    _, mod, gv, ctx = _conv(16, 64, 11, 13)
    m, why = rule.analyze(mod[gv], ctx)
    assert m is not None, why
    cands = rule.candidates(m, ctx)
    assert cands[0].get("pw") and any(not c.get("pw") for c in cands), cands
    assert rule.workload(m, cands, ctx).endswith(":pw")
    _, mod, gv, ctx = _conv(16, 64, 11, 13, off="conv1x1,pointwise_cols")
    cands = rule.candidates(rule.analyze(mod[gv], ctx)[0], ctx)
    assert not any(c.get("pw") for c in cands) and not rule.workload(m, cands, ctx).endswith(":pw")
    # a 1x1 map (squeeze-and-excitation), a 7x7 one (too few positions) or a 3x3 window: not
    # this kernel
    for model in (conv_model(C=24, O=8, H=1, W=1, k=1, pad=0),
                  conv_model(C=64, O=32, H=7, W=7, k=1, pad=0), conv_model(C=16, O=32, H=9, W=9)):
        mod = fused(model)
        (gv,) = [gv for gv, _ in mod.functions_items() if "conv" in gv.name_hint]
        m, _ = rule.analyze(mod[gv], ctx)
        assert not any(c.get("pw") for c in rule.candidates(m, ctx))


@pytest.mark.parametrize("C,O,H,W", [(16, 24, 11, 13), (24, 48, 8, 16), (8, 16, 9, 15),
                                     (40, 48, 14, 14), (96, 16, 53, 53)])
def test_computes_what_ort_does(C, O, H, W):  # noqa: E741
    """Last tiles of 4 to 15 positions (143, 135, 196, 2809) and none (128); the projection
    (96 -> 16) with the position tiles outer, the expansions with the channel panels outer;
    weights packed at run time."""
    rule = conv2d.Conv2dRule()
    model, mod, gv, ctx = _conv(C, O, H, W, const=False)
    orig = mod[gv]
    m, _ = rule.analyze(orig, ctx)
    for cand in [c for c in rule.candidates(m, ctx) if c.get("pw")][:2]:
        func, why, _ = rule.apply(orig, m, cand, ctx)
        assert "1x1 NCHW" in why and "at run time" in why, why
        assert ("position tiles outer" in why) is (C >= O), why
        mod[gv] = func.with_attr("tirx.is_scheduled", True)
        x = np.random.default_rng(C + H).standard_normal([1, C, H, W]).astype("f4")
        ex = tvm.compile(mod, TARGET, relax_pipeline=cpu_generic.get_default_pipeline(TARGET))
        out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_allclose(out, run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)


def test_only_the_last_tile_is_guarded():
    """After LoopPartition the loop over whole tiles holds no condition: the vectorizer runs
    them as vectors (with the guard in every tile it ran them lane by lane, 3-4x slower)."""
    from tvm.ir.instrument import pass_instrument

    rule = conv2d.Conv2dRule()
    _, mod, gv, ctx = _conv(16, 16, 12, 11)  # 132 positions: 8 whole vectors and 4 lanes
    m, _ = rule.analyze(mod[gv], ctx)
    cand = {"mr": 8, "nv": 1, "rb": 0, "pw": 1}
    func, _, _ = rule.apply(mod[gv], m, cand, ctx)
    lanes = cpu_info(TARGET).lanes(32)
    whole = 132 // lanes
    seen = {}

    @pass_instrument
    class Grab:
        def run_after_pass(self, mod, info):
            if info.name == "s_tir.LoopPartition":
                seen["mod"] = mod

    with tvm.transform.PassContext(instruments=[Grab()]):
        tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), TARGET)
    lines = seen["mod"]["main"].script().splitlines()
    guards = []  # per loop over the whole tiles: the conditions left in its body
    for i, line in enumerate(lines):
        if line.strip().startswith("for ") and line.rstrip().endswith(f"range({whole}):"):
            indent = len(line) - len(line.lstrip())
            body = []
            for inner in lines[i + 1:]:
                if inner.strip() and len(inner) - len(inner.lstrip()) <= indent:
                    break
                body.append(inner.strip())
            guards.append([b for b in body if b.startswith("if ") and b != "if T.bool(True):"])
    assert guards and min(len(g) for g in guards) == 0, guards


def test_not_offered_for_an_nhwc_output():
    """The layout stage's variant reading NCHW and writing NHWC (positions no longer the
    output's innermost axis) keeps the channel tiles: with the position vectors it stored a
    value per position and channel, and took 0.9 s to time."""
    from tvm import te

    from fluidml_tvm.passes.layout.kernels import permuted_conv2d

    x = te.placeholder((1, 16, 12, 12), "float32", name="x")
    w = te.placeholder((32, 16, 1, 1), "float32", name="w")
    for lout, offered in (((0, 1, 2, 3), True), ((0, 2, 3, 1), False)):
        shape = [1, 32, 12, 12] if offered else [1, 12, 12, 32]
        y = permuted_conv2d(x, w, (0, 1, 2, 3), lout, shape, (1, 1), (0, 0, 0, 0), (1, 1),
                            "float32")
        func = te.create_prim_func([x, w, y])
        rule = conv2d.Conv2dRule()
        ctx = Context("k", TARGET, cpu_info(TARGET), Options(tune_trials=4, schedule_off=""),
                      const_args={1: True})
        m, why = rule.analyze(func, ctx)
        assert m is not None, why
        assert any(c.get("pw") for c in rule.candidates(m, ctx)) is offered, lout


def test_a_conv_without_epilogue():
    """No bias, no activation: the output block is the conv block's own write-back."""
    from tvm import te, topi

    from fluidml_tvm.schedules.rules import conv2d_cols

    x = te.placeholder((1, 24, 9, 15), "float32", name="x")
    w = te.placeholder((16, 24, 1, 1), "float32", name="w")
    func = te.create_prim_func([x, w, topi.nn.conv2d_nchw(x, w, 1, 0, 1)])
    m, why = conv2d.analyze(func)
    assert m is not None and m.rows, why
    sch, why, _ = conv2d_cols.schedule_pointwise_cols(func, m, cpu_info(TARGET), {}, (8, 2))
    assert sch is not None, why
    rng = np.random.default_rng(7)
    xs = rng.standard_normal((1, 24, 9, 15)).astype("f4")
    ws = rng.standard_normal((16, 24, 1, 1)).astype("f4")
    lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"]}), TARGET)
    out = tvm.runtime.tensor(np.zeros((1, 16, 9, 15), "f4"))
    lib["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(ws), out)
    want = np.einsum("nchw,fc->nfhw", xs, ws[:, :, 0, 0])
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4)
