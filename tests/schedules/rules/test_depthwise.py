"""The depthwise rule: NHWC (channels innermost) and NCHW tiles against the unscheduled kernel
and ONNX Runtime; ``fluidml.schedule_off=depthwise`` gives the kernel to the reduction rule."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, te
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from fluidml_tvm.schedules import FluidMLSchedule, cpu_info

from ..models import TARGET, conv_model, fused, opts, run_ort


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_nhwc(stride):
    """NHWC depthwise (channels innermost): vector along the channels, every tile exact."""
    from tvm import topi

    from fluidml_tvm.schedules.rules import depthwise

    X = te.placeholder((1, 12, 12, 32), name="X")
    W = te.placeholder((3, 3, 32, 1), name="W")
    Y = topi.nn.depthwise_conv2d_nhwc(X, W, stride, 1, 1)
    func = te.create_prim_func([X, W, Y])
    m, why = depthwise.analyze(func)
    assert m is not None and m.f_is_vector, why
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 12, 12, 32)).astype("f4")
    w = rng.standard_normal((3, 3, 32, 1)).astype("f4")
    shape = [int(d) for d in Y.shape]
    ref = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), TARGET)
    want = tvm.runtime.tensor(np.zeros(shape, "f4"))
    ref["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), want)
    for nv in depthwise.candidates(m, cpu_info(TARGET)):
        sch, why = depthwise.schedule_depthwise(func, cpu_info(TARGET), nv)
        assert "channels innermost" in why
        lib = tvm.compile(
            tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), TARGET)
        got = tvm.runtime.tensor(np.zeros(shape, "f4"))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), got)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c,hw,k,stride", [
    (32, 12, 3, 1), (32, 12, 3, 2), (72, 14, 5, 2), (36, 7, 3, 1), (33, 9, 3, 1), (64, 5, 5, 1)])
def test_depthwise_nhwc_column_tiles(c, hw, k, stride):
    """Channels innermost, every column tile of :func:`depthwise.nhwc_candidates` (half/quarter
    vectors for 72 and 36 channels, channels padded for 33, 7/8/4/1-column tiles) with a bias +
    ReLU epilogue computes what the unscheduled kernel does."""
    from tvm import topi

    from fluidml_tvm.schedules.rules import depthwise

    X = te.placeholder((1, hw, hw, c), name="X")
    W = te.placeholder((k, k, c, 1), name="W")
    B = te.placeholder((1, 1, 1, c), name="B")
    Y = topi.nn.relu(topi.add(topi.nn.depthwise_conv2d_nhwc(X, W, stride, k // 2, 1), B))
    func = te.create_prim_func([X, W, B, Y])
    m, why = depthwise.analyze(func)
    assert m is not None and m.f_is_vector and m.cols == int(Y.shape[2]), why
    rng = np.random.default_rng(1)
    args = [rng.standard_normal([int(d) for d in t.shape]).astype("f4") for t in (X, W, B)]
    shape = [int(d) for d in Y.shape]
    ref = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), TARGET)
    want = tvm.runtime.tensor(np.zeros(shape, "f4"))
    ref["main"](*map(tvm.runtime.tensor, args), want)
    cands = depthwise.nhwc_candidates(m, cpu_info(TARGET), 8)
    assert cands and all(c_["mr"] >= 1 for c_ in cands)
    for cfg in cands:
        sch, why = depthwise.schedule_depthwise(func, cpu_info(TARGET), cfg["nv"], mr=cfg["mr"],
                                                vl=cfg.get("vl", 0))
        assert f"tile {cfg['mr'] if shape[2] % cfg['mr'] == 0 else 1} columns" in why, why
        lib = tvm.compile(
            tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), TARGET)
        got = tvm.runtime.tensor(np.zeros(shape, "f4"))
        lib["main"](*map(tvm.runtime.tensor, args), got)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=f"{cfg}: {why}")


@pytest.mark.parametrize("size,pairs", [(64, True), (112, False)])
def test_depthwise_nchw_stride2_even_odd_copy_is_vectorized(size, pairs):
    """NCHW stride 2: the padded input is stored even columns, then odd ones. A plane up to
    ``PAIRS_PLANE_BYTES`` (66x66 floats) is zeroed, then the in-bound copy iterates pairs of
    source columns (no guard); a larger one (114x114) keeps the guarded copy over the padded
    columns' pairs. Either way the pair is unrolled and the pair loop left to LLVM's loop
    vectorizer, which loads whole vectors and splits them with shuffles (TVM's vectors gathered
    every other element; the guarded copy got masked gathers in some kernels); the result is
    the unscheduled kernel's."""
    from tvm import topi

    from fluidml_tvm.schedules.rules import depthwise

    X = te.placeholder((1, 4, size, size), name="X")
    W = te.placeholder((4, 1, 3, 3), name="W")
    func = te.create_prim_func([X, W, topi.nn.group_conv2d_nchw(X, W, 2, 1, 1, 4)])
    sch, why = depthwise.schedule_depthwise(func, cpu_info(TARGET))
    assert "split even/odd" in why, why
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    assert ("pad_temp_pad_const" in names) == pairs, names
    assert ("copied by pairs of columns" in why) == pairs, why
    loops = sch.get_loops(sch.get_sblock("pad_temp"))
    kinds = [int(sch.get(lp).kind) for lp in loops]  # ForKind: 0 serial, 3 unrolled
    extents = [int(sch.get(lp).extent) for lp in loops]
    pairs_in_row = size // 2 if pairs else size // 2 + 1
    assert kinds[-2:] == [0, 3] and extents[-2:] == [pairs_in_row, 2], (kinds, extents)
    asm = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}),
                      TARGET).mod.inspect_source("s")
    assert "vperm" in asm and "vgather" not in asm, "the even/odd copy gathers its elements"
    _same_as_unscheduled(func, sch.mod["main"], seed=5)


def _same_as_unscheduled(func, scheduled, seed: int) -> None:
    """``scheduled`` computes what the unscheduled ``func`` does, on the same random inputs."""
    from fluidml_tvm.schedules.measure import random_args

    dev = tvm.cpu()
    args = random_args(func, dev, seed=seed)
    new = [tvm.runtime.tensor(a.numpy(), dev) for a in args]
    for f_, a in ((func, args), (scheduled, new)):
        tvm.compile(tvm.IRModule({"main": f_.with_attr("global_symbol", "main")}),
                    TARGET)["main"](*a)
    np.testing.assert_allclose(new[-1].numpy(), args[-1].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nv", [1, 2])
def test_depthwise_tiles_compute_the_same(tmp_path, nv):
    """Each register tile of the depthwise rule (with the ReLU epilogue per tile) matches ORT,
    and fluidml.schedule_off=depthwise gives the kernel back to the generic rule."""
    from fluidml_tvm.schedules.rules import depthwise

    model = conv_model(C=16, O=16, group=16, H=16, W=32)  # 2 x 16 lanes (AVX-512) divide W
    mod = fused(model)
    (gv,) = [gv for gv, f in mod.functions_items() if "conv" in gv.name_hint]
    m, _ = depthwise.analyze(mod[gv])
    assert m is not None and m.v_extent == 32 and not m.f_is_vector
    sch, why = depthwise.schedule_depthwise(mod[gv], cpu_info(TARGET), nv)
    assert f"tile {nv} x 8 lanes" in why or f"tile {nv} x 16 lanes" in why
    mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    x = np.random.default_rng(2).standard_normal([1, 16, 16, 32]).astype(np.float32)
    ex = tvm.compile(mod, TARGET, relax_pipeline=cpu_generic.get_default_pipeline(TARGET))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)
    off = FluidMLSchedule(TARGET, opts(tmp_path, schedule_off="depthwise"))
    with TARGET:
        off(fused(model))
    assert [d.choice for d in off.decisions if "conv" in d.subject] == ["reduction"]


@pytest.mark.parametrize("x, k, stride, want", [
    (14, 5, 2, [{"nv": 1, "vl": 8}]),  # 7 output columns: one vector of 8
    (14, 3, 1, [{"nv": 1}]),  # 14: one vector of 16
    (56, 5, 2, [{"nv": 2}]),  # 28: two vectors
    (112, 3, 2, []),  # 56 = 3 x 16 + 8: a power-of-two tail is one load already
    (32, 3, 1, []),  # whole vectors
])
def test_depthwise_short_rows_padded_to_whole_vectors(x, k, stride, want):
    """NCHW rows short of a few vectors (7, 14, 28 columns) are padded to whole vectors of a
    power of two lanes, the extra columns computed and not stored; the result is the
    unscheduled kernel's."""
    from tvm import topi

    from fluidml_tvm.schedules.rules import depthwise

    c = 4
    X = te.placeholder((1, c, x, x), name="X")
    W = te.placeholder((c, 1, k, k), name="W")
    func = te.create_prim_func([X, W, topi.nn.group_conv2d_nchw(X, W, stride, k // 2, 1, c)])
    m, why = depthwise.analyze(func)
    assert m is not None and not m.f_is_vector, why
    cpu = cpu_info(TARGET)
    assert cpu.lanes(32) == 16
    got = depthwise.short_row_candidates(m, cpu)
    assert got == want
    for cfg in got:
        sch, why = depthwise.schedule_depthwise(func, cpu, cfg["nv"], vl=cfg.get("vl", 0))
        assert "padded to" in why, why
        _same_as_unscheduled(func, sch.mod["main"], seed=7)


@pytest.mark.parametrize("c,hw,k,stride,mr", [
    (8, 7, 5, 1, 7),  # 7 columns in a vector of 8 lanes, 7 rows a tile
    (4, 14, 3, 1, 7),  # one vector of 16 (14 columns), 7 rows
    (4, 28, 5, 1, 4),  # two vectors: 4 rows (8 accumulators)
    (4, 56, 3, 1, 2),  # one vector of 56 (4 registers): 2 rows
    (4, 28, 5, 2, 2),  # stride 2, even/odd columns: 2 rows
    (4, 14, 3, 2, 7),  # stride 2, 7 output rows of 7: 7 rows
])
def test_depthwise_nchw_row_tiles(c, hw, k, stride, mr):
    """Columns innermost, the first tile of the rule is a tile of several output rows
    (:func:`depthwise_tiles.row_tile`: rows per tile by stride and accumulator registers), and it
    (with a bias + ReLU epilogue) computes what the unscheduled kernel does."""
    from tvm import topi

    from fluidml_tvm.options import Options
    from fluidml_tvm.schedules.rules import depthwise
    from fluidml_tvm.schedules.rules.base import Context

    X = te.placeholder((1, c, hw, hw), name="X")
    W = te.placeholder((c, 1, k, k), name="W")
    B = te.placeholder((1, c, 1, 1), name="B")
    Y = topi.nn.relu(topi.add(topi.nn.group_conv2d_nchw(X, W, stride, k // 2, 1, c), B))
    func = te.create_prim_func([X, W, B, Y])
    cpu = cpu_info(TARGET)
    assert cpu.lanes(32) == 16 and cpu.vector_registers == 32
    rule = depthwise.DepthwiseRule()
    ctx = Context("k", TARGET, cpu, Options())
    m, why = rule.analyze(func, ctx)
    assert m is not None and m.rows == (hw + stride - 1) // stride, why
    cfg = rule.candidates(m, ctx)[0]
    assert cfg.get("mr") == mr, rule.candidates(m, ctx)
    sch, why = depthwise.schedule_depthwise(func, cpu, cfg["nv"], mr=cfg["mr"],
                                            vl=cfg.get("vl", 0))
    assert f"tile {mr} rows x " in why, why
    _same_as_unscheduled(func, sch.mod["main"], seed=11)
    one, _ = depthwise.schedule_depthwise(func, cpu, cfg["nv"], vl=cfg.get("vl", 0))
    _same_as_unscheduled(func, one.mod["main"], seed=11)


@pytest.mark.parametrize("k,first", [
    (5, {"nv": 0, "mr": 7}),  # 11x11 planes pair; padded to rows of 8 lanes (11x12) they do not
    (3, {"nv": 1, "vl": 8, "mr": 7}),  # 9x9 and 9x10 planes both pair: the padded rows first
])
def test_depthwise_tiles_whose_planes_pair_come_first(k, first):
    """7x7 maps, columns innermost: the first tile is one whose padded planes are computed two
    channels at a time (:func:`depthwise_tiles.planes_pair`), where padding the row to whole
    vectors would widen the plane past the 1 KB that pairs; it computes the unscheduled kernel."""
    from tvm import topi

    from fluidml_tvm.options import Options
    from fluidml_tvm.schedules.rules import depthwise
    from fluidml_tvm.schedules.rules.base import Context

    X = te.placeholder((1, 8, 7, 7), name="X")
    W = te.placeholder((8, 1, k, k), name="W")
    func = te.create_prim_func([X, W, topi.nn.group_conv2d_nchw(X, W, 1, k // 2, 1, 8)])
    cpu = cpu_info(TARGET)
    rule = depthwise.DepthwiseRule()
    m, why = rule.analyze(func, Context("k", TARGET, cpu, Options()))
    assert m is not None and m.plane == (7 + k - 1, 7 + k - 1) and m.channels == 8, why
    cands = rule.candidates(m, Context("k", TARGET, cpu, Options()))
    assert cands[0] == first, cands
    sch, why = depthwise.schedule_depthwise(func, cpu, first["nv"], mr=first["mr"],
                                            vl=first.get("vl", 0))
    assert "padding per 2 channels" in why, why
    _same_as_unscheduled(func, sch.mod["main"], seed=13)
