"""The flat depthwise kernel (depthwise_flat.py): NCHW stride-1 depthwise convolutions on maps
whose rows fill less than two whole vectors computed over each channel's flattened padded plane;
the same values as the unscheduled kernel and ONNX Runtime; the shapes it does not take; its
kill switch ``fluidml.schedule_off=depthwise_flat``."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, te, topi
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from fluidml_tvm.schedules import FluidMLSchedule, cpu_info
from fluidml_tvm.schedules.rules import depthwise, depthwise_flat
from fluidml_tvm.schedules.rules.base import Context

from ..models import TARGET, conv_model, fused, opts, run_ort


def _kernel(c, hw, k, act, stride=1):
    X = te.placeholder((1, c, hw, hw), name="X")
    W = te.placeholder((c, 1, k, k), name="W")
    B = te.placeholder((1, c, 1, 1), name="B")
    Y = topi.nn.depthwise_conv2d_nchw(X, W, stride, k // 2, 1)
    if act == "silu":
        Z = topi.add(Y, B)
        Y = topi.multiply(Z, topi.sigmoid(Z))
    elif act == "relu":
        Y = topi.nn.relu(topi.add(Y, B))
    args = [X, W, B, Y] if act else [X, W, Y]
    return te.create_prim_func(args), args


def _run(func, arrays):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), TARGET)
    out = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*out)
    return out[-1].numpy()


@pytest.mark.parametrize("c,hw,k,act", [(8, 7, 3, "silu"), (6, 14, 5, "relu"), (4, 28, 5, None),
                                        (5, 13, 3, "silu"), (3, 7, 5, "relu")])
def test_flat_kernel_computes_what_the_unscheduled_one_does(c, hw, k, act):
    func, args = _kernel(c, hw, k, act)
    lanes = cpu_info(TARGET).lanes(32)
    m, why = depthwise.analyze(func)
    assert m is not None, why
    fs, why = depthwise_flat.match(func, m, lanes)
    if hw > 2 * lanes or hw % lanes == 0:  # an AVX2 host's 8 lanes: 28 is beyond two vectors
        assert fs is None
        return
    assert fs is not None, why
    sch, why = depthwise_flat.schedule_flat(func, m, fs, lanes)
    assert f"flattened padded plane: rows of {hw + k - 1}" in why, why
    rng = np.random.default_rng(c * hw + k)
    arrays = [rng.standard_normal([int(d) for d in a.shape]).astype("f4") for a in args]
    want = _run(func, arrays)
    got = _run(sch.mod["main"], arrays)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_shapes_the_flat_kernel_does_not_take():
    lanes = cpu_info(TARGET).lanes(32)
    for c, hw, k, stride, act in ((8, 14, 3, 2, "silu"), (8, 56, 3, 1, "silu"),
                                  (8, 2 * lanes, 3, 1, "silu"), (8, 7, 3, 1, "relu")):
        func, _ = _kernel(c, hw, k, act, stride)
        m, _ = depthwise.analyze(func)
        fs, why = depthwise_flat.match(func, m, lanes)
        assert fs is None and why, (c, hw, k, stride, act)
    X = te.placeholder((1, 14, 14, 8), name="X")  # channels innermost
    W = te.placeholder((3, 3, 8, 1), name="W")
    func = te.create_prim_func([X, W, topi.nn.depthwise_conv2d_nhwc(X, W, 1, 1, 1)])
    m, _ = depthwise.analyze(func)
    assert depthwise_flat.match(func, m, lanes)[0] is None


def test_flat_kernel_through_the_schedule_stage_matches_ort_and_switches_off(tmp_path):
    """A 7x7 map, 5x5 depthwise conv + bias + ReLU from ONNX: the flat kernel is a candidate of
    the stage after the row tiles (the analytic first choice, faster: 1152ch 7x7 5x5 44 us vs 61
    cold), the model's output is ORT's with either; schedule_off=depthwise_flat drops it."""
    model = conv_model(C=16, O=16, group=16, H=7, W=7, k=5, pad=2)
    x = np.random.default_rng(3).standard_normal([1, 16, 7, 7]).astype(np.float32)
    stage = FluidMLSchedule(TARGET, opts(tmp_path / "on", cost="analytic"))
    with TARGET:
        mod = stage(fused(model))
    (d,) = [d for d in stage.decisions if "conv" in d.subject]
    assert d.choice == "depthwise" and "7 rows x" in d.reason, d.reason
    ex = tvm.compile(mod, TARGET, relax_pipeline=cpu_generic.get_default_pipeline(TARGET))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)
    mod = fused(model)
    (gv,) = [gv for gv, f in mod.functions_items() if "conv" in gv.name_hint]
    rule = depthwise.DepthwiseRule()
    for off in ("depthwise_flat", ""):
        ctx = Context(gv.name_hint, TARGET, cpu_info(TARGET),
                      opts(tmp_path / "c", schedule_off=off, tune_trials=3))
        m, _ = rule.analyze(mod[gv], ctx)
        assert ({"nv": 0, "flat": 1} in rule.candidates(m, ctx)) == (not off)
    func, why, _ = rule.apply(mod[gv], m, {"nv": 0, "flat": 1}, ctx)
    assert "flattened" in why, why
    mod[gv] = func.with_attr("tirx.is_scheduled", True)
    ex = tvm.compile(mod, TARGET, relax_pipeline=cpu_generic.get_default_pipeline(TARGET))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)
