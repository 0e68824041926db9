"""FluidMLFuseConvPool + the conv_pool schedule: what is fused and why, that the convolution output
becomes a small per-iteration buffer in the lowered kernel, planned memory, numerics vs ONNX
Runtime (hand-built conv-ReLU-pool models, tiny VGG-11/16) with the memory plan verified."""

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm.relax.frontend.onnx import from_onnx

import fluidml_tvm
from fluidml_tvm.options import Options
from fluidml_tvm.passes.fuse_conv_pool import FluidMLFuseConvPool
from fluidml_tvm.passes.memory.lifetimes import live_set_lower_bound
from fluidml_tvm.pipeline import lower_to_memory_slot, phases
from fluidml_tvm.schedules.rules import conv_pool
from fluidml_tvm.tools import zoo

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})
# The fusion applies to the convolutions the Winograd rewrite leaves direct; these 3x3 stride-1
# ones it would take (passes/winograd.py), so it is off here.
OPTS = Options(layout=False, cost="analytic", winograd=False)


def _conv_relu_pool(hw=16, c_in=3, c_out=16, pool_k=2, pool_s=2, second_use=False, layers=1):
    """input -> [Conv3x3(pad 1)+bias -> Relu -> MaxPool] x layers (ONNX, random weights)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x, c = "input", c_in
    size = hw
    for i in range(layers):
        w = rng.standard_normal((c_out, c, 3, 3)).astype("float32") * 0.2
        b = rng.standard_normal(c_out).astype("float32") * 0.1
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"conv{i}"],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        nodes.append(helper.make_node("MaxPool", [f"relu{i}"], [f"pool{i}"],
                                      kernel_shape=[pool_k, pool_k], strides=[pool_s, pool_s]))
        x, c = f"pool{i}", c_out
        size = (size - pool_k) // pool_s + 1
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c_out, size, size])]
    if second_use:  # the ReLU output also leaves the graph: it must be materialized
        outputs.append(helper.make_tensor_value_info("relu0", TensorProto.FLOAT,
                                                     [1, c_out, hw, hw]))
    graph = helper.make_graph(
        nodes, "conv_relu_pool",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c_in, hw, hw])],
        outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort(model, inputs):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)


def _check_numerics(model, inputs, pass_config):
    ref = _ort(model, inputs)
    compiled = fluidml_tvm.compile(model, "x86", pass_config=[*pass_config, "fluidml.winograd=0"])
    got = list(compiled.load().run(inputs).values())
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        scale = float(np.abs(r).max())
        assert scale > 0 and float(np.std(r)) > 1e-4, "degenerate reference"
        err = float(np.abs(g - r).max())
        assert err <= 1e-4 * scale + 1e-5, f"max abs diff {err:.3g} vs scale {scale:.3g}"
    return compiled


def _input(model, seed=1):
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"input": np.random.default_rng(seed).standard_normal(shape).astype("float32")}


def _lowered_allocs(prim):
    """(name, shape, inside a parallel loop) of every buffer the lowered kernel allocates."""
    s = tvm.s_tir.transform
    low = tvm.transform.Sequential([
        s.LowerInitBlock(), s.PlanAndUpdateBufferAllocationLocation(),
        s.ConvertBlocksToOpaque(), s.CompactBufferAllocation(), s.LowerOpaqueBlock(),
    ])(tvm.IRModule({"main": prim.with_attr("global_symbol", "main")}))["main"]
    out = []

    def walk(st, par):
        t = tvm.tirx
        if isinstance(st, t.SeqStmt):
            for x in st.seq:
                walk(x, par)
        elif isinstance(st, t.For):
            walk(st.body, par or st.kind == t.ForKind.PARALLEL)
        elif isinstance(st, t.AllocBuffer):
            out.append((st.buffer.name, [int(d) for d in st.buffer.shape], par))
        elif getattr(st, "body", None) is not None:
            walk(st.body, par)

    walk(low.body, False)
    return out


def test_fused_kernel_keeps_only_a_row_tile_of_the_conv_output():
    model = _conv_relu_pool(hw=32, c_out=32)
    mod = lower_to_memory_slot(from_onnx(model), TARGET, OPTS)
    fused = [(gv.name_hint, f) for gv, f in mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and "max_pool2d" in gv.name_hint]
    assert len(fused) == 1 and "conv2d" in fused[0][0], [n for n, _ in fused]
    allocs = _lowered_allocs(fused[0][1])
    conv = [a for a in allocs if a[0].startswith("conv2d")]
    assert len(conv) == 1, allocs
    name, shape, in_parallel = conv[0]
    # 2 conv rows (the pool's stride) x 32 columns x one channel panel, per parallel iteration
    assert in_parallel, allocs
    assert int(np.prod(shape)) <= 2 * 32 * 32, shape
    assert shape[1] == 2 and shape[2] == 32, shape  # [n, y, x, f]: rows, all columns
    # the analytic first choice computes the padded input rows per row block: 2 + 3 - 1 rows
    pad = [a for a in allocs if a[0].startswith("pad")]
    assert len(pad) == 1 and pad[0][2] and pad[0][1] == [1, 3, 4, 34], allocs
    # the relax graph no longer has the 1x32x32x32 conv output
    assert "conv2d_nchw" not in str(mod["main"])


def test_planned_memory_drops_to_the_pool_outputs():
    model = _conv_relu_pool(hw=32, c_out=16, layers=2)
    mod = from_onnx(model)
    fused = live_set_lower_bound(lower_to_memory_slot(mod, TARGET, OPTS))["main"]
    off = Options(layout=False, cost="analytic", fuse_conv_pool=False, winograd=False)
    unfused = live_set_lower_bound(lower_to_memory_slot(mod, TARGET, off))["main"]
    conv0 = 16 * 32 * 32 * 4
    pool0 = 16 * 16 * 16 * 4
    assert unfused >= conv0 + pool0  # conv0's output live beside pool0's output ... before
    assert fused == pool0  # ... after: only the first pool's output (the second is the output)


def test_decisions_and_report():
    model = _conv_relu_pool(hw=16, c_out=16)
    compiled = _check_numerics(model, _input(model), ["fluidml.cost=analytic",
                                                      "fluidml.verify=1"])
    text = compiled.report()
    section = text[text.index("## fuse_conv_pool"):text.index("## schedule")]
    assert "fused into fused_conv2d_add_relu_max_pool2d" in section
    assert "conv output 16384 bytes" in section
    assert "conv_pool - conv2d+max-pool" in text


@pytest.mark.parametrize("case,why", [
    ("second_use", "uses (the pool must be its only consumer)"),
    ("overlapping", "overlapping pool windows"),
    ("drops_rows", "the pool drops conv rows"),
])
def test_refusals_are_reasoned_and_correct(case, why):
    kw = {"second_use": dict(second_use=True), "overlapping": dict(pool_k=3, pool_s=2),
          "drops_rows": dict(hw=15)}[case]
    model = _conv_relu_pool(**kw)
    compiled = _check_numerics(model, _input(model), ["fluidml.cost=analytic",
                                                      "fluidml.verify=1"])
    section = compiled.report().split("## fuse_conv_pool")[1].split("## schedule")[0]
    assert "not fused" in section and why in section, section
    assert "conv_pool -" not in compiled.report()


def test_kill_switch_and_schedule_dependency():
    names = lambda o: [p.info.name for _, ps in phases(TARGET, o) for p in ps]  # noqa: E731
    assert "FluidMLFuseConvPool" in names(OPTS)
    assert "FluidMLFuseConvPool" not in names(Options(fuse_conv_pool=False))
    assert "FluidMLFuseConvPool" not in names(Options(schedule=False))
    assert "FuseTIR" in names(OPTS) and "FuseTIR" in names(Options(fuse_conv_pool=False))
    model = _conv_relu_pool()
    compiled = _check_numerics(model, _input(model), ["fluidml.fuse_conv_pool=0",
                                                      "fluidml.cost=analytic"])
    assert "conv_pool -" not in compiled.report()


def test_check_false_fuses_what_the_rule_would_refuse():
    """Without the schedule check a pair the rule cannot tile is fused (so the check is what
    keeps a kernel holding the whole conv output from being made)."""
    from tvm.relax.backend.cpu_generic import pipeline as cg

    model = _conv_relu_pool(hw=16, c_out=4)  # 4 channels: no register tile of 8 lanes
    mod = from_onnx(model)
    with TARGET:
        mod = tvm.transform.Sequential(cg.legalize_passes(TARGET)[:-1])(mod)
        checked, unchecked = FluidMLFuseConvPool(), FluidMLFuseConvPool(check=False)
        checked(mod)
        unchecked(mod)
    assert "no register tile" in checked.decisions[0].reason
    assert checked.decisions[0].fused is None
    assert unchecked.decisions[0].fused == "fused_conv2d_add_relu_max_pool2d"


def test_analyze_pool():
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def pool(a: T.Buffer((1, 4, 8, 8), "float32"), p: T.Buffer((1, 4, 4, 4), "float32")):
        for n, c, y, x, ry, rx in T.grid(1, 4, 4, 4, 2, 2):
            with T.sblock("pool_max"):
                vn, vc, vy, vx, vry, vrx = T.axis.remap("SSSSRR", [n, c, y, x, ry, rx])
                with T.init():
                    p[vn, vc, vy, vx] = T.float32(-3.4e38)
                p[vn, vc, vy, vx] = T.max(p[vn, vc, vy, vx], a[vn, vc, vy * 2 + vry, vx * 2 + vrx])

    m, why = conv_pool.analyze_pool(pool)
    assert m is not None, why
    assert m.dims == [None, None, (2, 2), (2, 2)] and m.out_shape == [1, 4, 4, 4]


@pytest.mark.parametrize("name", ["vgg11", "vgg16"])
def test_tiny_vgg_matches_ort_with_fusion(name):
    model = zoo.build(name, size="tiny")
    inputs = zoo.random_inputs(model, size="tiny")
    compiled = _check_numerics(model, inputs, ["fluidml.cost=analytic", "fluidml.verify=1"])
    section = compiled.report().split("## fuse_conv_pool")[1].split("## schedule")[0]
    assert "fused into" in section


def test_bare_conv_without_epilogue_is_fused():
    """A conv with no bias/ReLU is a lone call_tir after FuseOps, not a group: wrapped in one."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 3, 3, 3)).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("MaxPool", ["c"], ["out"], kernel_shape=[2, 2], strides=[2, 2])],
        "conv_pool", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, 8, 8])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = _check_numerics(model, _input(model), ["fluidml.cost=analytic",
                                                      "fluidml.verify=1"])
    section = compiled.report().split("## fuse_conv_pool")[1].split("## schedule")[0]
    assert "conv2d + max_pool2d: fused into fused_conv2d_max_pool2d" in section, section
    assert "conv_pool - conv2d+max-pool" in compiled.report()


def test_rule_falls_back_when_the_chosen_schedule_fails(monkeypatch):
    """The fusion pass checked one schedule; if the chosen placement fails later, another
    candidate is used (never a fused kernel left to the generic rules)."""
    real = conv_pool.schedule_conv_pool

    def flaky(func, cpu, const_args=None, tile=None, match=None):
        if tile is not None and len(tile) > 3 and tile[3]:
            raise ValueError("padding rows refused (test)")
        return real(func, cpu, const_args, tile, match)

    monkeypatch.setattr(conv_pool, "schedule_conv_pool", flaky)
    model = _conv_relu_pool(hw=32, c_out=16)
    compiled = _check_numerics(model, _input(model), ["fluidml.cost=analytic"])
    lines = [ln for ln in compiled.report().splitlines() if "conv_pool - " in ln]
    assert len(lines) == 1 and "failed: ValueError" in lines[0], lines
    assert "padded input copied whole" in lines[0]


def _conv_conv_pool(c_mid=32, hw=32):
    """input(3 ch) -> Conv+Relu -> Conv+Relu -> MaxPool: VGG-16's first block, small."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype("float32"), n) for n, a in (
        ("w0", rng.standard_normal((c_mid, 3, 3, 3)) * 0.3), ("b0", rng.standard_normal(c_mid)),
        ("w1", rng.standard_normal((c_mid, c_mid, 3, 3)) * 0.1),
        ("b1", rng.standard_normal(c_mid) * 0.1))]
    nodes = [helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["out"], kernel_shape=[2, 2], strides=[2, 2])]
    graph = helper.make_graph(
        nodes, "conv_conv_pool",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, c_mid, hw // 2, hw // 2])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cheap_first_conv_is_computed_per_row_block_too():
    """conv(3->32) costs 9.4% of conv(32->32): both convolutions and the pool become one kernel,
    the first conv's output a 4-row buffer (2 rows + halo) per parallel iteration."""
    model = _conv_conv_pool()
    compiled = _check_numerics(model, _input(model), ["fluidml.cost=analytic",
                                                      "fluidml.verify=1"])
    section = compiled.report().split("## fuse_conv_pool")[1].split("## schedule")[0]
    assert "computed inside the row loop too" in section, section
    mod = lower_to_memory_slot(from_onnx(model), TARGET, OPTS)
    prims = [f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(prims) == 1  # the whole network is one kernel
    allocs = _lowered_allocs(prims[0])
    convs = sorted((a for a in allocs if a[0].startswith("conv2d")), key=lambda a: a[0])
    assert len(convs) == 2 and all(par for _, _, par in convs), allocs
    first = convs[0][1]
    assert int(np.prod(first)) == 4 * 32 * 32, first  # 2 x 2 rows (halo) x 32 cols x 32 ch
    assert int(np.prod(convs[1][1])) <= 2 * 32 * 32, convs[1]


def test_chain_kill_switch():
    model = _conv_conv_pool()
    compiled = _check_numerics(model, _input(model), ["fluidml.cost=analytic",
                                                      "fluidml.fuse_conv_chain=0"])
    section = compiled.report().split("## fuse_conv_pool")[1].split("## schedule")[0]
    assert "fused into" in section and "inside the row loop too" not in section, section


def test_expensive_first_conv_is_not_chained():
    model = _conv_conv_pool(c_mid=16)  # conv(3->16) is 3/16 = 19% of conv(16->16): > 10%
    compiled = _check_numerics(model, _input(model), ["fluidml.cost=analytic"])
    section = compiled.report().split("## fuse_conv_pool")[1].split("## schedule")[0]
    assert "fused into" in section and "inside the row loop too" not in section, section


def test_refused_chain_falls_back_to_the_plain_pair():
    model = _conv_conv_pool(hw=8)  # 4 row blocks: too few to compute the first conv per block
    compiled = _check_numerics(model, _input(model), ["fluidml.cost=analytic"])
    section = compiled.report().split("## fuse_conv_pool")[1].split("## schedule")[0]
    assert "the chain with the first conv was refused" in section, section
    assert "fused into" in section
