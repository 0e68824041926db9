"""The conv_pool rule on a kernel FluidMLFuseConvPool made (conv + bias + ReLU + 2x2 max-pool):
both placements of the padding among the candidates, every candidate computing what the
unfused-schedule kernel computes, and the fallback when the chosen placement fails."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm import pipeline
from fluidml_tvm.options import Options
from fluidml_tvm.schedules import cpu_info
from fluidml_tvm.schedules.constants import constant_args, pack_array
from fluidml_tvm.schedules.measure import random_args
from fluidml_tvm.schedules.rules import Context, Unrelated, conv_pool

from ..models import TARGET, build, matmul_func, onnx_model


def _conv_relu_pool(hw=32, c_in=8, c_out=16):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((c_out, c_in, 3, 3)) * 0.1).astype("f4")
    b = rng.standard_normal(c_out).astype("f4")
    n = [h.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
         h.make_node("Relu", ["c"], ["r"]),
         h.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    return onnx_model(n, [h.make_tensor_value_info("x", TP.FLOAT, [1, c_in, hw, hw])],
                      [h.make_tensor_value_info("y", TP.FLOAT, [1, c_out, hw // 2, hw // 2])],
                      [nh.from_array(w, "w"), nh.from_array(b, "b")])


@pytest.fixture(scope="module")
def kernel():
    """(PrimFunc, Context) of the fused conv+pool kernel, as the schedule stage sees it."""
    mod = from_onnx(_conv_relu_pool(), keep_params_in_input=False)
    opts = Options(layout=False, cost="analytic", tune_trials=4)
    seq = cpu_generic.library_dispatch_passes(TARGET) + pipeline.legalize_passes(TARGET, opts)
    with TARGET:
        mod = tvm.transform.Sequential(seq)(mod)
    (gv,) = [gv for gv, f in mod.functions_items() if "max_pool" in gv.name_hint
             and isinstance(f, tvm.tirx.PrimFunc)]
    ctx = Context(gv.name_hint, TARGET, cpu_info(TARGET), opts,
                  constant_args(mod).get(gv.name_hint, {}))
    return mod[gv], ctx


def test_candidates_and_workload(kernel):
    func, ctx = kernel
    rule = conv_pool.ConvPoolRule()
    cm, why = rule.analyze(func, ctx)
    assert cm is not None, why
    assert (cm.conv.f, cm.conv.x, cm.s, cm.row_blocks) == (16, 32, 2, 16)
    cands = rule.candidates(cm, ctx)
    assert {c["pad_rows"] for c in cands} == {0, 1} and cands[0]["pad_rows"] == 1
    assert rule.workload(cm, cands, ctx) == "f16x32s2p1"
    assert rule.flops(cm) == cm.conv.flops > 0


def test_every_candidate_computes_the_same(kernel):
    func, ctx = kernel
    rule = conv_pool.ConvPoolRule()
    cm, _ = rule.analyze(func, ctx)
    dev = tvm.cpu()
    args = random_args(func, dev, seed=4)
    build(func)["main"](*args)
    for cfg in rule.candidates(cm, ctx)[:2]:  # one tile, both placements of the padding
        new, why, pack = rule.apply(func, cm, cfg, ctx)
        assert pack and "conv2d+max-pool" in why
        new_args = [tvm.runtime.tensor(pack_array(a.numpy(), *pack[i]) if i in pack
                                       else a.numpy(), dev) for i, a in enumerate(args[:-1])]
        new_args.append(tvm.runtime.tensor(np.zeros(args[-1].shape, "f4"), dev))
        build(new)["main"](*new_args)
        np.testing.assert_allclose(new_args[-1].numpy(), args[-1].numpy(), rtol=1e-4,
                                   atol=1e-4, err_msg=str(cfg))


def test_falls_back_when_the_chosen_placement_fails(kernel, monkeypatch):
    func, ctx = kernel
    rule = conv_pool.ConvPoolRule()
    cm, _ = rule.analyze(func, ctx)
    real = conv_pool.schedule_conv_pool

    def flaky(func, cpu, const_args=None, tile=None, match=None):
        if tile is not None and len(tile) > 3 and tile[3]:
            raise ValueError("padding rows refused (test)")
        return real(func, cpu, const_args, tile, match)

    monkeypatch.setattr(conv_pool, "schedule_conv_pool", flaky)
    chosen = rule.candidates(cm, ctx)[0]
    assert chosen["pad_rows"] == 1
    with pytest.raises(ValueError):
        rule.build(func, cm, chosen, ctx)  # timing a candidate: no fallback
    _, why, _ = rule.apply(func, cm, chosen, ctx)
    assert f"(chosen {chosen} failed: ValueError)" in why and "padded input copied whole" in why


def test_other_kernels_are_not_its_kind():
    m, why = conv_pool.ConvPoolRule().analyze(matmul_func(16, 16, 16), None)
    assert m is None and isinstance(why, Unrelated)
