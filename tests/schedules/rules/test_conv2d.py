"""The conv2d rule (and which rule each kind of convolution gets): NCHW convolutions of every
kind against ONNX Runtime, the 1x1 tile over rows x columns, every tile with and without
reduction blocking computing what the unscheduled kernel computes."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from fluidml_tvm.schedules import cpu_info
from fluidml_tvm.schedules.common import called_ops
from fluidml_tvm.schedules.constants import pack_array

from ..models import TARGET, compile_run, conv_model, fused, onnx_model, opts, run_ort
from ..models import schedule as run_schedule


@pytest.mark.parametrize(
    "kw,rule",
    [
        (dict(), "conv2d"),  # 3x3, pad 1
        (dict(k=1, pad=0, O=32), "conv2d"),  # 1x1
        (dict(C=32, k=1, pad=0, O=32), "conv2d"),  # 1x1, 32 input planes: rows staged
        (dict(stride=2, H=16, W=16), "conv2d"),  # strided
        (dict(C=3, H=12, W=12), "conv2d"),  # RGB input layer
        (dict(C=16, O=16, group=16), "depthwise"),  # depthwise, 14 columns: one vector
        (dict(C=16, O=16, group=16, H=16, W=16), "depthwise"),  # 16 columns: 2 x 8 lanes
        (dict(C=16, O=16, group=16, H=16, W=16, stride=2), "depthwise"),  # strided
        (dict(C=16, O=32, group=8), "conv2d"),  # grouped (4 channels a group): split
    ],
)
def test_conv2d_matches_ort(tmp_path, kw, rule):
    model = conv_model(**kw)
    shape = [1, kw.get("C", 8), kw.get("H", 14), kw.get("W", 14)]
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    out = compile_run(model, {"x": x}, opts(tmp_path))
    np.testing.assert_allclose(out, run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)
    _, dec = run_schedule(model, tmp_path)
    assert [d.choice for d in dec.values() if "conv" in d.subject] == [rule]


@pytest.mark.parametrize("epilogue", [True, False])
def test_pointwise_tile_over_rows_and_columns(epilogue):
    """1x1 stride-1 conv on a 14x14 map: a tile of positions that straddles rows (the rows x
    columns axis, conv1x1), with a bias+ReLU epilogue and without, matches ORT."""
    from fluidml_tvm.schedules.rules import conv2d

    if epilogue:
        model = conv_model(C=16, H=14, W=14, O=48, k=1, pad=0)
    else:
        w = (np.random.default_rng(0).standard_normal((48, 16, 1, 1)) * 0.1).astype(np.float32)
        model = onnx_model([h.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])],
                       [h.make_tensor_value_info("x", TP.FLOAT, [1, 16, 14, 14])],
                       [h.make_tensor_value_info("y", TP.FLOAT, [1, 48, 14, 14])],
                       [nh.from_array(w, "w")])
    mod = fused(model)
    (gv,) = [gv for gv, f in mod.functions_items() if "conv" in gv.name_hint]
    m, _ = conv2d.analyze(mod[gv])
    assert m.rows == 14
    (tile,) = conv2d.candidates_pointwise(m, cpu_info(TARGET), 1)
    assert 14 % tile[0] != 0 and 196 % tile[0] == 0
    sch, why, pack = conv2d.schedule_conv2d(mod[gv], cpu_info(TARGET), {}, tile, fuse_rows=True)
    assert "rows x columns (196)" in why and pack is None
    mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    x = np.random.default_rng(3).standard_normal([1, 16, 14, 14]).astype(np.float32)
    ex = tvm.compile(mod, TARGET, relax_pipeline=cpu_generic.get_default_pipeline(TARGET))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)


def test_expansion_takes_column_vectors_first(tmp_path):
    """A 1x1 expansion with a short reduction (16 -> 96 channels, MobileNet/EfficientNet's) ranks
    the column-vector tiles first (no re-lay of each tile into NCHW), alternating with the
    channel tiles; the first one with its bias + ReLU epilogue matches ORT. A projection
    (96 -> 16) and a 3x3 kernel keep the channel tiles first."""
    from fluidml_tvm.options import Options
    from fluidml_tvm.schedules.rules import conv2d
    from fluidml_tvm.schedules.rules.base import Context

    lanes = cpu_info(TARGET).lanes(32)
    model = conv_model(C=16, H=2 * lanes, W=2 * lanes, O=96, k=1, pad=0)
    mod = fused(model)
    (gv,) = [gv for gv, f in mod.functions_items() if "conv" in gv.name_hint]
    rule = conv2d.Conv2dRule()
    # the channel / column tiles underneath the position vectors (test_pointwise_cols.py)
    off = "conv1x1,pointwise_cols"
    ctx = Context(gv.name_hint, TARGET, cpu_info(TARGET),
                  Options(tune_trials=4, schedule_off=off), const_args={1: True})
    m, _ = rule.analyze(mod[gv], ctx)
    assert conv2d.expansion_cols(m)
    cands = rule.candidates(m, ctx)
    assert [bool(c.get("cols")) for c in cands] == [True, False, True, False]
    run_ctx = Context(gv.name_hint, TARGET, cpu_info(TARGET),
                      Options(tune_trials=4, schedule_off=off))
    func, why, _ = rule.apply(mod[gv], rule.analyze(mod[gv], run_ctx)[0], cands[0], run_ctx)
    assert "vectors along columns" in why and "at run time" in why, why
    mod[gv] = func.with_attr("tirx.is_scheduled", True)
    x = np.random.default_rng(4).standard_normal([1, 16, 2 * lanes, 2 * lanes]).astype("f4")
    ex = tvm.compile(mod, TARGET, relax_pipeline=cpu_generic.get_default_pipeline(TARGET))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)
    for kw in (dict(C=96, O=16, k=1, pad=0), dict(C=16, O=96, k=3, pad=1)):
        mod = fused(conv_model(H=2 * lanes, W=2 * lanes, **kw))
        (gv,) = [gv for gv, f in mod.functions_items() if "conv" in gv.name_hint]
        m, _ = rule.analyze(mod[gv], ctx)
        assert not conv2d.expansion_cols(m)
        assert not rule.candidates(m, ctx)[0].get("cols"), kw
    # columns no vector divides (56 of 16 lanes): padded column tiles are not offered first
    mod = fused(conv_model(C=24, O=144, k=1, pad=0, H=56, W=56)) \
        if lanes == 16 else None
    if mod is not None:
        (gv,) = [gv for gv, f in mod.functions_items() if "conv" in gv.name_hint]
        m, _ = rule.analyze(mod[gv], ctx)
        assert conv2d.expansion_cols(m) and not rule.candidates(m, ctx)[0].get("cols")


@pytest.mark.parametrize("tile", [(4, 1, 0), (4, 1, 32), (2, 2, 32)])
def test_conv2d_tiles_and_reduction_blocking_compute_the_same(tile):
    from fluidml_tvm.schedules.measure import random_args
    from fluidml_tvm.schedules.rules import conv2d

    mod = fused(conv_model(C=64, H=8, W=8, O=32))  # 2 x 16 lanes (AVX-512) divide O
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    sch, why, pack = conv2d.schedule_conv2d(func, cpu_info(TARGET), {1: True}, tile)
    assert sch is not None, why
    assert ("reduction blocks of 32" in why) == (tile[2] == 32)
    dev = tvm.cpu()
    args = random_args(func, dev, seed=7)
    new_args = [tvm.runtime.tensor(pack_array(a.numpy(), *pack[i]) if i in pack else a.numpy())
                for i, a in enumerate(args[:-1])]
    new_args.append(tvm.runtime.tensor(np.zeros(args[-1].shape, "f4")))
    for f, a in ((func, args), (sch.mod["main"], new_args)):
        tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), TARGET)["main"](
            *a
        )
    np.testing.assert_allclose(new_args[-1].numpy(), args[-1].numpy(), rtol=1e-4, atol=1e-4)


def _te_conv(c, f, x, k):
    from tvm import te, topi

    data = te.placeholder((1, c, x, x), "float32", "data")
    w = te.placeholder((f, c, k, k), "float32", "weight")
    return te.create_prim_func([data, w, topi.nn.conv2d_nchw(data, w, 1, k // 2, 1)])


@pytest.mark.parametrize("mcpu,regs", [("skylake-avx512", 32), ("haswell", 16)])
def test_windowed_conv_tiles_leave_registers_for_the_window(mcpu, regs):
    """A 3x3 kernel's first tile takes at most two thirds of the vector registers as
    accumulators (ResNet's 256-channel 14x14 layer: 14x2 = 28 accumulators ran 2.1x slower
    than 7x2 on AVX-512, benchmarks/results/2026-12-06-conv-tiles.md); a 1x1 kernel of the same
    shape may still take them all, on a 56-column map it may not (96->24: 14x2 1.8x slower)."""
    from fluidml_tvm.schedules.rules import conv2d

    cpu = cpu_info(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
    assert cpu.vector_registers == regs
    for k, cap in ((3, regs * 2 // 3), (1, regs)):
        m, why = conv2d.analyze(_te_conv(256, 256, 14, k))
        assert m is not None, why
        assert conv2d.max_accumulators(m, cpu) == cap
        first = conv2d.candidates(m, cpu, 4)[0]
        assert first[0] * first[1] <= cap
    m3, _ = conv2d.analyze(_te_conv(256, 256, 14, 3))
    m1, _ = conv2d.analyze(_te_conv(256, 256, 14, 1))
    if regs == 32:  # 7x2 for the window, 14x2 for the 1x1
        assert conv2d.candidates(m3, cpu, 1)[0][:2] == (7, 2)
        assert conv2d.candidates(m1, cpu, 1)[0][:2] == (14, 2)
    m, _ = conv2d.analyze(_te_conv(96, 24, 56, 1))
    assert conv2d.max_accumulators(m, cpu) == regs * 3 // 4
    mr, nv = conv2d.padded_candidates(m, cpu, 1)[0][:2]
    assert mr * nv <= regs * 3 // 4


def test_1x1_kernels_reading_many_planes_stage_their_input_rows():
    """A 1x1 kernel reading >= 32 NCHW input planes directly (TVM's pad_temp of no padding
    inlined) copies one row of each per output row, and computes what ORT does; few planes, many
    output channels a plane, or weights too many to sweep every row keep reading the input in
    place."""
    from fluidml_tvm.options import Options
    from fluidml_tvm.schedules.common import inline_plain_copies
    from fluidml_tvm.schedules.rules import conv2d
    from fluidml_tvm.schedules.rules.base import Context

    rule = conv2d.Conv2dRule()
    for (c, o), staged in (((64, 32), True), ((24, 72), False), ((40, 240), False),
                           ((512, 512), False)):  # 1 MB of weights: each row would sweep them
        model = conv_model(C=c, O=o, k=1, pad=0, H=12, W=12)
        mod = fused(model)
        (gv,) = [gv for gv, f in mod.functions_items() if "conv" in gv.name_hint]
        func = inline_plain_copies(mod[gv])
        # the channel tiles (the position vectors, test_pointwise_cols.py, switched off)
        ctx = Context(gv.name_hint, TARGET, cpu_info(TARGET),
                      Options(tune_trials=4, schedule_off="conv1x1,pointwise_cols"))
        m, _ = rule.analyze(func, ctx)
        assert conv2d.stages_input_rows(m) == staged, (c, o)
        cand = rule.candidates(m, ctx)[0]
        new, why, _ = rule.apply(func, m, cand, ctx)
        assert ("input planes copied per row" in why) == staged, why
        if not staged:
            continue
        mod[gv] = new.with_attr("tirx.is_scheduled", True)
        x = np.random.default_rng(5).standard_normal([1, c, 12, 12]).astype("f4")
        ex = tvm.compile(mod, TARGET, relax_pipeline=cpu_generic.get_default_pipeline(TARGET))
        out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_allclose(out, run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("C,HW", [(40, 7), (32, 12)])
def test_squeeze_excitation_gate_is_computed_once_per_channel(tmp_path, C, HW):
    """A squeeze-excitation block (global pool, 1x1 conv, ReLU, 1x1 conv, Sigmoid, times the
    activation): the second conv's kernel keeps the sigmoid a block of its own, computed once
    per channel and then broadcast over the H x W positions (inlined into the multiply it would
    run H x W times a channel), and the model computes what ORT does."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((8, C, 1, 1)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((C, 8, 1, 1)) * 0.3).astype(np.float32)
    b2 = rng.standard_normal(C).astype(np.float32)
    n = [h.make_node("GlobalAveragePool", ["x"], ["p"]),
         h.make_node("Conv", ["p", "w1"], ["s"], kernel_shape=[1, 1]),
         h.make_node("Relu", ["s"], ["r"]),
         h.make_node("Conv", ["r", "w2", "b2"], ["e"], kernel_shape=[1, 1]),
         h.make_node("Sigmoid", ["e"], ["g"]),
         h.make_node("Mul", ["x", "g"], ["y"])]
    model = onnx_model(n, [h.make_tensor_value_info("x", TP.FLOAT, [1, C, HW, HW])],
                       [h.make_tensor_value_info("y", TP.FLOAT, [1, C, HW, HW])],
                       [nh.from_array(w1, "w1"), nh.from_array(w2, "w2"), nh.from_array(b2, "b2")])
    x = rng.standard_normal([1, C, HW, HW]).astype(np.float32)
    out = compile_run(model, {"x": x}, opts(tmp_path))
    np.testing.assert_allclose(out, run_ort(model, {"x": x}), rtol=1e-5, atol=1e-5)
    mod, dec = run_schedule(model, tmp_path, fast_math=False)  # sigmoid stays a call
    (gate,) = [d for d in dec.values() if "sigmoid" in d.subject]
    assert gate.choice == "conv2d" and "1 costly epilogue(s) computed once" in gate.reason
    (func,) = [f for gv, f in mod.functions_items() if gv.name_hint.startswith(gate.subject)]
    names = []  # the blocks that call the sigmoid

    def visit(block):
        if "tirx.sigmoid" in called_ops(block.body):
            names.append(block.name_hint)
        return block

    tvm_ffi.structural_map(func.body, [(tvm.s_tir.SBlock, visit)])
    sch = tvm.s_tir.Schedule(func)
    sigmoids = [int(np.prod([int(sch.get(lp).extent) for lp in sch.get_loops(sch.get_sblock(n))]))
                for n in names]  # how many times each runs
    assert sigmoids and max(sigmoids) <= C + 16, sigmoids  # channels (padded), not C x H x W
