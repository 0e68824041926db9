"""Conv layouts (NCHW/NHWC) in the layout stage: before/after, numerics, the kill switch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from fluidml_tvm import frontend, targets
from fluidml_tvm.options import Options
from fluidml_tvm.passes.layout import FluidMLLayout
from fluidml_tvm.passes.layout.conv import block_weight
from fluidml_tvm.passes.layout.cost import AnalyticCost
from fluidml_tvm.passes.layout.dp import candidates
from fluidml_tvm.passes.layout.graph import build_graph
from fluidml_tvm.passes.layout.kernels import blocked_conv2d, permuted_conv2d
from fluidml_tvm.passes.layout.layouts import NHWC, blocked, from_blocked, is_blocked
from fluidml_tvm.passes.layout.rewrite import _Rewriter
from fluidml_tvm.pipeline import get_pipeline
from fluidml_tvm.tools import zoo


@dataclass(frozen=True)
class NHWCFavoured(AnalyticCost):
    """A model in which a conv writing NHWC is twice as fast (what a measurement may find)."""

    def conv(self, g, i, lin, lout):
        return super().conv(g, i, lin, lout) * (0.5 if lout == NHWC else 1.0)


W1 = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype("float32")
W2 = np.random.default_rng(1).standard_normal((4, 8, 1, 1)).astype("float32")


def _before():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 4, 4), "float32"):
            with R.dataflow():
                c1 = R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1])
                r = R.nn.relu(c1)
                p = R.nn.max_pool2d(r, pool_size=[2, 2], strides=[2, 2])
                c2 = R.nn.conv2d(p, R.const(W2))
                R.output(c2)
            return c2

    return Before


def _run(mod, x):
    ex = tvm.compile(mod, target="llvm")
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def test_conv_chain_runs_nhwc_between_nchw_ends():
    """The first conv reads the NCHW input and writes NHWC, relu and the pool run on NHWC, the
    last conv reads NHWC and writes the NCHW output: no transpose anywhere."""
    before = _before()
    p = FluidMLLayout(model=NHWCFavoured(conversion_penalty=10.0), explicit_transforms=False)
    after = tvm.IRModule(dict(p(before).functions_items()))

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            c1 = bb.emit(bb.call_te(
                lambda d, w: permuted_conv2d(d, w, (0, 1, 2, 3), NHWC, (1, 8, 8, 8), (1, 1),
                                             (1, 1, 1, 1), (1, 1), "float32"),
                x, relax.const(W1), primfunc_name_hint="conv2d_layout"), "c1")
            r = bb.emit(relax.op.nn.relu(c1), "r")
            pool = bb.emit(relax.op.nn.max_pool2d(r, [2, 2], [2, 2], layout="NHWC",
                                                  out_layout="NHWC"), "p")
            c2 = bb.emit_output(bb.call_te(
                lambda d, w: permuted_conv2d(d, w, NHWC, (0, 1, 2, 3), (1, 4, 4, 4), (1, 1),
                                             (0, 0, 0, 0), (1, 1), "float32"),
                pool, relax.const(W2), primfunc_name_hint="conv2d_layout"), "c2")
        bb.emit_func_output(c2)
    tvm.ir.assert_structural_equal(after, bb.get())
    xv = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype("float32")
    np.testing.assert_allclose(_run(after, xv), _run(before, xv), rtol=1e-4, atol=1e-4)


def test_kill_switch_and_measured_default():
    g, _ = build_graph(_before()["main"])
    assert NHWC in candidates(g)["c1"] and NHWC in candidates(g)["p"]
    assert candidates(g, conv_layouts=False)["c1"] == [(0, 1, 2, 3)]
    p = FluidMLLayout(model=NHWCFavoured(), options=Options(layout_conv=False))
    p(_before())
    assert p.plans["main"].layouts == {}
    # the analytic model has no preference: NCHW stays
    p = FluidMLLayout(model=AnalyticCost())
    p(_before())
    assert p.plans["main"].layouts == {}


def test_vgg_nhwc_with_fluidml_schedules_matches_onnxruntime():
    """Tiny VGG-11 with every conv activation in NHWC, then the rest of the fluidml pipeline
    (conv2d and conv+pool schedule rules on the NHWC kernels, memory planner): ORT's numbers."""
    model = zoo.build("vgg11", size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    tgt, _ = targets.resolve("x86")
    mod = frontend.import_onnx(model, None).mod
    p = FluidMLLayout(tgt, model=NHWCFavoured(conversion_penalty=10.0),
                      explicit_transforms=False)
    with tgt:
        hi = p(mod)
    assert sum(lay == NHWC for lay in p.plans["main"].layouts.values()) >= 8
    opts = Options(layout=False, cost="analytic", verify=True)
    with tvm.transform.PassContext(opt_level=3):
        ex = tvm.compile(hi, target=tgt, relax_pipeline=get_pipeline(tgt, opts))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](
        *[tvm.runtime.tensor(v) for v in feeds.values()])
    out = out.numpy() if hasattr(out, "numpy") else out[0].numpy()
    assert float(np.max(np.abs(out - ref))) <= 1e-4


def _depthwise_block():
    """An inverted-residual block as torch exports it (MobileNetV3, EfficientNet): 1x1 conv,
    ReLU, 3x3 depthwise (stride 2), ReLU, squeeze-excitation, 1x1 conv."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((48, 16, 1, 1)).astype("float32") * 0.3
    wd = rng.standard_normal((48, 1, 3, 3)).astype("float32") * 0.3
    bd = rng.standard_normal((48,)).astype("float32")
    ws1 = rng.standard_normal((8, 48, 1, 1)).astype("float32") * 0.3
    ws2 = rng.standard_normal((48, 8, 1, 1)).astype("float32") * 0.3
    w2 = rng.standard_normal((24, 48, 1, 1)).astype("float32") * 0.3
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["c2"], group=48, strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        # squeeze-excitation: global pool, two 1x1 convs, sigmoid, channel multiply
        helper.make_node("ReduceMean", ["r2"], ["m"], axes=[2, 3], keepdims=1),
        helper.make_node("Conv", ["m", "ws1"], ["s1"]),
        helper.make_node("Relu", ["s1"], ["s2"]),
        helper.make_node("Conv", ["s2", "ws2"], ["s3"]),
        helper.make_node("Sigmoid", ["s3"], ["s4"]),
        helper.make_node("Mul", ["r2", "s4"], ["e"]),
        helper.make_node("Conv", ["e", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 14, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, 7, 7])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (wd, "wd"), (bd, "bd"),
                                                    (ws1, "ws1"), (ws2, "ws2"), (w2, "w2"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_depthwise_runs_nhwc_with_fluidml_schedules_matches_onnxruntime():
    """Depthwise convs are conv nodes of the stage and the SE's global pool (mean keeping dims)
    an axis op: the block runs NHWC from its first conv to its last (the depthwise one kernel,
    weight stored [KH, KW, C], no transpose), the depthwise schedule rule vectorizes it over the
    channels, and the numbers are ORT's."""
    from fluidml_tvm.passes.layout.conv import is_conv, is_depthwise

    model = _depthwise_block()
    xv = np.random.default_rng(8).standard_normal((1, 16, 14, 14)).astype("float32")
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": xv})[0]
    tgt, _ = targets.resolve("x86")
    mod = frontend.import_onnx(model, None).mod
    g, _ = build_graph(mod["main"])
    dws = [i for i in range(len(g.nodes)) if is_conv(g, i) and is_depthwise(g, i)]
    assert len(dws) == 1
    out = g.nodes[dws[0]].output
    assert NHWC in candidates(g)[out]
    p = FluidMLLayout(tgt, model=NHWCFavoured(conversion_penalty=10.0),
                      explicit_transforms=False)
    with tgt:
        hi = p(mod)
    layouts = p.plans["main"].layouts
    assert layouts.get(out) == NHWC
    means = [n for n in g.nodes if n.op == "relax.mean"]  # its [1, C, 1, 1]: NCHW = NHWC
    assert len(means) == 1 and layouts.get(means[0].inputs[0]) == NHWC
    names = [gv.name_hint for gv, _ in hi.functions_items()]
    assert sum(n.startswith("depthwise_layout") for n in names) == 1
    assert not any(n.startswith(("transpose", "permute_dims")) for n in names)
    opts = Options(layout=False, cost="analytic", verify=True)
    with tvm.transform.PassContext(opt_level=3):
        ex = tvm.compile(hi, target=tgt, relax_pipeline=get_pipeline(tgt, opts))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xv))
    got = got.numpy() if hasattr(got, "numpy") else got[0].numpy()
    assert float(np.max(np.abs(got - ref))) <= 1e-4


def test_depthwise_layout_kernel_gets_the_depthwise_rule_over_channels():
    from fluidml_tvm.passes.layout.kernels import permuted_depthwise
    from fluidml_tvm.schedules.rules import depthwise
    from fluidml_tvm.schedules.target_info import cpu_info

    d = tvm.te.placeholder((1, 14, 14, 72), "float32", "data")
    w = tvm.te.placeholder((3, 3, 72), "float32", "weight")
    o = permuted_depthwise(d, w, NHWC, NHWC, (1, 72, 7, 7), (2, 2), (1, 1, 1, 1), (1, 1),
                           "float32")
    func = tvm.te.create_prim_func([d, w, o])
    m, why = depthwise.analyze(func)
    assert m is not None and m.f_is_vector and m.v_extent == 72, why
    sch, reason = depthwise.schedule_depthwise(func, cpu_info(AVX512))
    assert sch is not None and "channels innermost" in reason
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((1, 14, 14, 72)).astype("float32")
    wv = rng.standard_normal((3, 3, 72)).astype("float32")
    lib = tvm.compile(sch.mod, target="llvm")
    out = tvm.runtime.tensor(np.zeros((1, 7, 7, 72), "float32"))
    lib["main"](tvm.runtime.tensor(xv), tvm.runtime.tensor(wv), out)
    xp = np.pad(xv, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.zeros((1, 7, 7, 72), "float32")
    for ky in range(3):
        for kx in range(3):
            ref += xp[:, ky:ky + 13:2, kx:kx + 13:2, :] * wv[ky, kx]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4)


# ---- blocked NCHW[b]c ------------------------------------------------------------------------
AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})  # 16 lanes: NCHW16c
# blocked layouts are off by default (see Options); Winograd off: the 3x3 16-channel convs of
# these tests would keep NCHW for it (test_winograd_convs_keep_nchw)
BLOCKED = Options(layout_blocked=True, winograd=False)


@dataclass(frozen=True)
class BlockedFavoured(AnalyticCost):
    """A model in which a conv writing NCHW[b]c is twice as fast."""

    def conv(self, g, i, lin, lout):
        return super().conv(g, i, lin, lout) * (0.5 if is_blocked(lout) else 1.0)


@dataclass(frozen=True)
class ReadsBlockedFavoured(AnalyticCost):
    """Blocked output: half the time; blocked input and output: a quarter."""

    def conv(self, g, i, lin, lout):
        f = 0.25 if is_blocked(lin) and is_blocked(lout) else 0.5 if is_blocked(lout) else 1.0
        return super().conv(g, i, lin, lout) * f


W3 = np.random.default_rng(3).standard_normal((16, 16, 3, 3)).astype("float32")
W4 = np.random.default_rng(4).standard_normal((32, 16, 1, 1)).astype("float32")
B3 = np.random.default_rng(5).standard_normal((1, 16, 1, 1)).astype("float32")


def _before_blocked():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 16, 16, 16), "float32")) -> R.Tensor((1, 32, 8, 8), "float32"):
            with R.dataflow():
                c1 = R.nn.conv2d(x, R.const(W3), padding=[1, 1, 1, 1])
                a = R.add(c1, R.const(B3))
                r = R.nn.relu(a)
                p = R.nn.max_pool2d(r, pool_size=[2, 2], strides=[2, 2])
                c2 = R.nn.conv2d(p, R.const(W4))
                R.output(c2)
            return c2

    return Before


def test_conv_chain_runs_nchw16c_with_blocked_weights():
    """Before/after: the first conv reads the NCHW input and writes NCHW16c with its weight
    stored blocked, the bias is stored blocked, relu and the pool run on NCHW16c, and one
    layout_transform returns the pool's output to NCHW for the last conv (whose output is the
    graph's)."""
    before = _before_blocked()
    p = FluidMLLayout(AVX512, BLOCKED, model=BlockedFavoured(conversion_penalty=10.0),
                      explicit_transforms=False)
    with AVX512:
        after = tvm.IRModule(dict(p(before).functions_items()))
    b = blocked(16)
    assert p.plans["main"].layouts == {"c1": b, "a": b, "r": b, "p": b}

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 16, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            c1 = bb.emit(bb.call_te(
                lambda d, w: blocked_conv2d(d, w, (0, 1, 2, 3), 16, (1, 16, 16, 16), (1, 1),
                                            (1, 1, 1, 1), (1, 1), "float32"),
                x, relax.const(block_weight(W3, (0, 1, 2, 3), 16)),
                primfunc_name_hint="conv2d_nchwc"), "c1")
            a = bb.emit(relax.op.add(c1, relax.const(
                B3.reshape(1, 1, 16, 1, 1).transpose(0, 1, 3, 4, 2).copy())), "a")
            r = bb.emit(relax.op.nn.relu(a), "r")
            pool = bb.emit(relax.op.nn.max_pool2d(r, [2, 2], [2, 2], layout="NCHW16c",
                                                  out_layout="NCHW16c"), "p")
            back = bb.emit(relax.op.layout_transform(pool, from_blocked(16)))
            c2 = bb.emit_output(relax.op.nn.conv2d(back, relax.const(W4)), "c2")
        bb.emit_func_output(c2)
    tvm.ir.assert_structural_equal(after, bb.get(), map_free_vars=True)
    xv = np.random.default_rng(6).standard_normal((1, 16, 16, 16)).astype("float32")
    np.testing.assert_allclose(_run(after, xv), _run(before, xv), rtol=1e-4, atol=1e-4)


def test_blocked_candidates_and_kill_switch():
    g, _ = build_graph(_before_blocked()["main"])
    b = blocked(16)
    cands = candidates(g, conv_block=16)
    assert b in cands["c1"] and b in cands["r"] and b in cands["p"]
    assert all(b not in c for c in candidates(g)["c1"])  # conv_block=0: none
    assert b not in candidates(_graph_of(_before()), conv_block=16)["c1"]  # 8 channels
    for opts in (Options(), Options(layout_blocked=False)):  # off by default
        p = FluidMLLayout(AVX512, opts, model=BlockedFavoured(conversion_penalty=10.0),
                          explicit_transforms=False)
        with AVX512:
            p(_before_blocked())
        assert not any(is_blocked(lay) for lay in p.plans["main"].layouts.values())


def _graph_of(mod):
    return build_graph(mod["main"])[0]


@pytest.mark.parametrize("name, least", [("vgg11", 8), ("resnet50", 0)])
def test_nchwc_with_fluidml_schedules_matches_onnxruntime(name, least):
    """Tiny VGG-11 / ResNet-50 (batch_norm: a tuple-valued op between convs) with conv
    activations in NCHW[lanes]c (this host's lanes), then the rest of the fluidml pipeline (the
    conv2d_nchwc rule, conv+pool fusion, memory planner): ORT's numbers."""
    model = zoo.build(name, size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    tgt, _ = targets.resolve("x86")
    mod = frontend.import_onnx(model, None).mod
    p = FluidMLLayout(tgt, BLOCKED, model=BlockedFavoured(conversion_penalty=10.0),
                      explicit_transforms=False)
    with tgt:
        hi = p(mod)
    assert sum(is_blocked(lay) for lay in p.plans["main"].layouts.values()) >= least
    opts = Options(layout=False, cost="analytic", verify=True)
    with tvm.transform.PassContext(opt_level=3):
        ex = tvm.compile(hi, target=tgt, relax_pipeline=get_pipeline(tgt, opts))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](
        *[tvm.runtime.tensor(v) for v in feeds.values()])
    out = out.numpy() if hasattr(out, "numpy") else out[0].numpy()
    assert float(np.max(np.abs(out - ref))) <= 1e-4


def test_blocked_layout_next_to_a_tuple_valued_op():
    """conv -> batch_norm (a tuple) -> [0] -> relu -> conv: the relu and the second conv run on
    NCHW16c, the TupleGetItem's result is converted once; the numbers do not change."""
    rng = np.random.default_rng(7)
    w1, w2 = (rng.standard_normal((16, 16, 3, 3)).astype("float32") for _ in range(2))
    gamma, beta, mean = (rng.standard_normal(16).astype("float32") for _ in range(3))
    var = rng.uniform(0.5, 2.0, 16).astype("float32")

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 16, 16, 16), "float32")) -> R.Tensor((1, 16, 16, 16),
                                                                       "float32"):
            with R.dataflow():
                c1 = R.nn.conv2d(x, R.const(w1), padding=[1, 1, 1, 1])
                bn = R.nn.batch_norm(c1, R.const(gamma), R.const(beta), R.const(mean),
                                     R.const(var), axis=1)
                y = bn[0]
                r = R.nn.relu(y)
                c2 = R.nn.conv2d(r, R.const(w2), padding=[1, 1, 1, 1])
                o = R.nn.relu(c2)
                R.output(o)
            return o

    p = FluidMLLayout(AVX512, BLOCKED,
                      model=ReadsBlockedFavoured(conversion_penalty=10.0, flops=10e9),
                      explicit_transforms=False)
    with AVX512:
        planned = p(Before)
    assert is_blocked(p.plans["main"].layouts.get("r"))
    # the plan a measured model may also make: the TupleGetItem's result itself held blocked
    # (its op produces NCHW, converted once); rewritten directly
    g, exprs = build_graph(Before["main"])
    b = blocked(16)
    rw = _Rewriter(Before, g, exprs, {"y": b, "r": b, "c2": b})
    rw.builder_.update_func(Before.get_global_var("main"), rw.visit_expr(Before["main"]))
    forced = relax.transform.DeadCodeElimination()(rw.builder_.get())
    xv = rng.standard_normal((1, 16, 16, 16)).astype("float32")
    inference = relax.transform.DecomposeOpsForInference()
    want = _run(inference(Before), xv)
    for after in (planned, forced):
        np.testing.assert_allclose(_run(inference(after), xv), want, rtol=1e-4, atol=1e-4)


W_MID = np.random.default_rng(3).standard_normal((8, 8, 3, 3)).astype("float32")


def _three_convs():
    @I.ir_module
    class Three:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            with R.dataflow():
                c1 = R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1])
                c2 = R.nn.conv2d(c1, R.const(W_MID), padding=[1, 1, 1, 1])
                c3 = R.nn.conv2d(c2, R.const(W2))
                R.output(c3)
            return c3

    return Three


@pytest.mark.parametrize("budget", [100.0, -1.0])
def test_bounded_budget_measures_layout_changing_conv_variants_where_a_plan_takes_them(
        budget, monkeypatch):
    """Within a bounded budget the middle conv's NCHW->NHWC and NHWC->NCHW variants are not
    measured with its NCHW->NCHW and NHWC->NHWC ones: the plan estimates them from those
    (the faster) and measures the one it takes, then plans again; the first and last conv
    (fixed NCHW input / output) measure theirs at once. Without a budget limit every variant
    is measured at once."""
    from fluidml_tvm import tuning
    from fluidml_tvm.passes.layout import measure as layout_measure

    times = {("c1", False, False): 1.0, ("c1", False, True): 5.0,
             ("c2", False, False): 1.0, ("c2", True, True): 0.2,
             ("c2", False, True): 0.3, ("c2", True, False): 0.3,
             ("c3", False, False): 1.0, ("c3", True, False): 0.2}
    batches = []

    def fake_measure(self, todo, session, nbytes=0):
        for k in todo:
            i, lx, lo = self.pairs[k]
            self.table[k] = 1e-3 * times[(self_g.nodes[i].output, lx == NHWC, lo == NHWC)]
        batches.append({(self_g.nodes[self.pairs[k][0]].output, self.pairs[k][1] == NHWC,
                         self.pairs[k][2] == NHWC) for k in todo})
        return len(todo)

    monkeypatch.setattr(layout_measure.MeasuredCost, "_measure", fake_measure)
    mod = _three_convs()
    self_g, _ = build_graph(mod["main"])
    model = layout_measure.MeasuredCost(tvm.target.Target({"kind": "llvm"}), Options(), None,
                                        conversion_penalty=10.0)
    p = FluidMLLayout(model=model, explicit_transforms=False)
    with tuning.TuneSession(budget=budget).activate():
        p(mod)
    every = set(times)
    if budget < 0:
        assert set().union(*batches) == every and len(batches) == 3  # a batch a node
    else:
        # c2's layout-changing variants wait; the plan takes c2: NCHW -> NHWC (modelled
        # 1.1 x min(1.0, 0.2)), which is then measured (0.3) and kept
        assert set().union(*batches[:-1]) == every - {("c2", False, True), ("c2", True, False)}
        assert batches[-1] == {("c2", False, True)}
        assert p.plans["main"].layouts == {"c2": NHWC}


W5 = np.random.default_rng(7).standard_normal((16, 16, 1, 1)).astype("float32")


def test_squeeze_excitation_gate_with_blocked_candidates():
    """A squeeze-excitation gate (pool, 1x1 conv, sigmoid) times the conv output: the gate
    [1, C, 1, 1] may be held NCHW16c while the product is not; the cost model takes it for the
    view it is (it raised an IndexError on such a broadcast operand), and the planned module
    computes what the original does."""
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 16, 16, 16), "float32")) -> R.Tensor((1, 16, 16, 16), "float32"):
            with R.dataflow():
                c1 = R.nn.conv2d(x, R.const(W3), padding=[1, 1, 1, 1])
                p = R.nn.adaptive_avg_pool2d(c1, output_size=[1, 1])
                e = R.nn.conv2d(p, R.const(W5))
                g = R.sigmoid(e)
                y = R.multiply(c1, g)
                R.output(y)
            return y

    p = FluidMLLayout(AVX512, BLOCKED, model=BlockedFavoured(conversion_penalty=10.0),
                      explicit_transforms=False)
    with AVX512:
        after = tvm.IRModule(dict(p(Before).functions_items()))
    assert any(is_blocked(lay) for lay in p.plans["main"].layouts.values())
    xv = np.random.default_rng(6).standard_normal((1, 16, 16, 16)).astype("float32")
    np.testing.assert_allclose(_run(after, xv), _run(Before, xv), rtol=1e-4, atol=1e-4)


def _winograd_then_pointwise():
    rng = np.random.default_rng(3)
    w3 = rng.standard_normal((16, 16, 3, 3)).astype("float32")
    w1 = rng.standard_normal((8, 16, 1, 1)).astype("float32")

    @I.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((1, 16, 8, 8), "float32")) -> R.Tensor((1, 8, 8, 8), "float32"):
            with R.dataflow():
                c1 = R.nn.conv2d(x, R.const(w3), padding=[1, 1, 1, 1])
                r = R.nn.relu(c1)
                c2 = R.nn.conv2d(r, R.const(w1))
                R.output(c2)
            return c2

    return Mod


@pytest.mark.parametrize("winograd", [True, False])
def test_winograd_convs_keep_nchw(winograd, monkeypatch):
    """A 3x3 stride-1 conv of 16 channels each side is computed by the Winograd pass if it stays
    NCHW: the layout stage offers it no NHWC, times none of its variants (direct convs, not the
    kernel that runs; NCHW is the only one left) and says so; with fluidml.winograd=0 they are
    timed as any conv's."""
    from fluidml_tvm import tuning
    from fluidml_tvm.passes.layout import measure as layout_measure
    from fluidml_tvm.passes.layout.conv import winograd_nodes

    timed = []

    def fake_measure(self, todo, session, nbytes=0):
        for k in todo:
            self.table[k] = 1e-3
            timed.append(self.pairs.get(k))
        return len(todo)

    monkeypatch.setattr(layout_measure.MeasuredCost, "_measure", fake_measure)
    mod = _winograd_then_pointwise()
    g, _ = build_graph(mod["main"])
    target = tvm.target.Target({"kind": "llvm"})
    opts = Options(winograd=winograd)
    assert winograd_nodes(g, opts, target) == ({0} if winograd else set())
    assert winograd_nodes(g, opts, None) == set()  # no CPU target: no Winograd pass
    model = layout_measure.MeasuredCost(target, opts, None, conversion_penalty=10.0)
    p = FluidMLLayout(target, opts, model=model, explicit_transforms=False)
    with tuning.TuneSession(budget=-1).activate(), target:
        p(mod)
    conv0 = [(lx, lo) for i, lx, lo in filter(None, timed) if i == 0]
    notes = " | ".join(d.reason for d in p.decisions)
    if winograd:
        assert conv0 == []  # its lone NCHW variant decides nothing: not timed either
        assert "r" not in p.plans["main"].layouts and "c1" not in p.plans["main"].layouts
        assert "NCHW kept for 1 3x3 convolutions Winograd computes" in notes
        assert any(k.startswith("conv:") and "0,2,3,1" in k for k in model.refused)
    else:
        assert ((0, 1, 2, 3), NHWC) in conv0 and len(conv0) == 2  # input fixed NCHW: 2 outputs
        assert "Winograd" not in notes
