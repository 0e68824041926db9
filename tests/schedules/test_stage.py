"""The schedule stage's front door (FluidMLSchedule): every kernel of a model scheduled and right
against ONNX Runtime, decisions as records on the module, unmatched kernels reported by name,
board targets scheduled from their own attributes, and every zoo kernel computing what it
computed before scheduling."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm import decisions
from fluidml_tvm.options import Options
from fluidml_tvm.schedules import FluidMLSchedule, cpu_info, schedule_passes
from fluidml_tvm.schedules.constants import constant_args, pack_array
from fluidml_tvm.schedules.rules import Context
from fluidml_tvm.schedules.stage import schedule_kernel

from .models import TARGET, bert_layer, build, compile_run, fused, gemm_model, opts, run_ort
from .models import schedule as run_schedule


def test_bert_layer_matches_ort_and_every_kernel_is_scheduled(tmp_path):
    model = bert_layer()
    x = np.random.default_rng(1).standard_normal((1, 16, 32)).astype(np.float32)
    out = compile_run(model, {"x": x}, opts(tmp_path))
    np.testing.assert_allclose(out, run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)
    out, dec = run_schedule(model, tmp_path)
    assert all(d.choice != "none" for d in dec.values()), [str(d) for d in dec.values()]
    text = decisions.render(decisions.from_module(out, "schedule"))
    assert all(f"{k}: {d.choice}" in text for k, d in dec.items())
    rules = {k: d.choice for k, d in dec.items()}
    # the 6 matmuls (4 projections / FFN with bias, GELU or residual epilogues, 2 attention)
    assert sum(r == "matmul" for r in rules.values()) == len([k for k in rules if "matmul" in k])
    assert rules["softmax"] == "reduction" and rules["layer_norm"] == "reduction"
    assert any(r == "injective" for r in rules.values())


def test_decisions_are_records_on_the_module(tmp_path):
    """Each kernel's decision is a fluidml_tvm.decisions.Decision (stage schedule, subject the
    kernel, choice the rule, data: config / measured / seconds), the same on the pass object
    and in the module attribute fluidml.decisions.schedule; a fallback rule's reason says why
    the better rules did not apply."""
    p = FluidMLSchedule(TARGET, Options(cost="analytic", cache_dir=str(tmp_path)))
    with TARGET:
        out = p(fused(bert_layer()))
    assert "fluidml.decisions.schedule" in out.attrs
    found = decisions.from_module(out, "schedule")
    assert found == p.decisions and found
    assert all(isinstance(d, decisions.Decision) and d.stage == "schedule" for d in found)
    for d in found:
        assert {"config", "measured", "seconds", "flops", "bytes"} <= set(d.data)
        assert d.data["measured"] == 0 and d.data["seconds"] == 0.0  # analytic
        if d.choice == "matmul":  # a measuring rule also says where its config came from
            assert d.data["source"] == "analytic" and d.data["rank"] == 0
    mm = [d for d in found if d.choice == "matmul"]
    assert mm and all(d.data["config"]["nv"] >= 1 and "(analytic)" in d.reason for d in mm)
    (softmax,) = [d for d in found if d.subject == "softmax"]
    assert softmax.choice == "reduction"
    assert " | not matmul: " in softmax.reason and "; not conv2d: " in softmax.reason


def test_already_scheduled_kernel_is_skipped():
    from tvm.script import tirx as T

    @T.prim_func
    def done(a: T.handle):
        A = T.match_buffer(a, (4,), "float32")
        for i in range(4):
            A[i] = T.float32(0)

    mod = tvm.IRModule({"done_kernel": done.with_attr("tirx.is_scheduled", True)})
    p = FluidMLSchedule(TARGET, Options(cost="analytic"))
    with TARGET:
        out = p(mod)
    (d,) = p.decisions
    assert (d.subject, d.choice, d.reason) == ("done_kernel", "skipped", "already scheduled")
    tvm.ir.assert_structural_equal(out["done_kernel"], mod["done_kernel"])


@pytest.mark.parametrize("op, dtype, reason", [
    ("Add", "BFLOAT16", "bfloat16 buffers"),  # ONNX's bf16 attention cases
    ("Cosh", "FLOAT", "calls tirx.cosh"),  # test_cosh
])
def test_kernel_tvm_cannot_vectorize_is_left_to_tvm(op, dtype, reason):
    """Found by ONNX's conformance cases: with fluidml=1 only, the bf16 attention cases failed to
    build ("dtype mismatch on BufferStore: ... uint16 ... bfloat16x8": TVM lowers bf16 through
    integer storage, element by element) and so did Cosh/Sinh ("unknown intrinsic tirx.cosh":
    lowered only as a scalar libm call). Such kernels are left as stock TVM leaves them, with
    the reason, and the model gives stock TVM's outputs."""
    import ml_dtypes
    from onnx import TensorProto, helper

    import fluidml_tvm

    elem = getattr(TensorProto, dtype)
    names = ["a", "b"][: 2 if op == "Add" else 1]
    graph = helper.make_graph(
        [helper.make_node(op, names, ["s"]), helper.make_node("Mul", ["s", "a"], ["y"])],
        "g", [helper.make_tensor_value_info(n, elem, [4, 64]) for n in names],
        [helper.make_tensor_value_info("y", elem, [4, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    p = FluidMLSchedule(TARGET, Options(cost="analytic"))
    with TARGET:
        p(fused(model))
    assert p.decisions and all(d.choice == "skipped" and d.reason.startswith(reason)
                               for d in p.decisions), [str(d) for d in p.decisions]
    np_dtype = ml_dtypes.bfloat16 if dtype == "BFLOAT16" else np.float32
    rng = np.random.default_rng(0)
    inputs = {n: rng.standard_normal((4, 64)).astype(np_dtype) for n in names}
    outs = [fluidml_tvm.compile(model, pass_config=[f"fluidml={on}", "fluidml.cost=analytic"])
            .load().run(inputs)["y"] for on in (1, 0)]
    assert outs[0].dtype == np_dtype
    np.testing.assert_array_equal(outs[0].astype(np.float32), outs[1].astype(np.float32))


def test_unmatched_kernel_is_reported_by_name():
    from tvm.script import tirx as T

    @T.prim_func
    def opaque(a: T.handle):
        A = T.match_buffer(a, (4,), "float32")
        for i in range(4):
            A[i] = T.float32(0)

    mod = tvm.IRModule({"opaque_kernel": opaque})
    p = FluidMLSchedule(TARGET, Options(cost="analytic"))
    with pytest.warns(UserWarning, match="opaque_kernel"):
        with TARGET:
            p(mod)
    assert p.decisions[0].choice == "none"
    # every rule said why not (the blocked-conv and conv+pool rules: in their own words)
    assert p.decisions[0].reason.startswith("matmul: ")
    assert "; injective: " in p.decisions[0].reason


def test_schedule_passes_is_one_pass():
    (p,) = schedule_passes(TARGET, Options())
    assert isinstance(p, tvm.transform.Pass) and p.info.name == "FluidMLSchedule"


def test_analytic_cost_measures_nothing(tmp_path):
    import os

    from fluidml_tvm.costdb import CostDB

    model = gemm_model(M=64, N=64, K=128, trans_b=0)
    mod = fused(model)
    p = FluidMLSchedule(TARGET, Options(cost="analytic", cache_dir=str(tmp_path)))
    with TARGET:
        p(mod)
    assert all(d.data["measured"] == 0 for d in p.decisions)
    assert not os.path.exists(os.path.join(tmp_path, CostDB.FILENAME))


# ---- per-target attributes --------------------------------------------------------------------
def test_aarch64_target_schedules_and_builds(tmp_path):
    """A board target is scheduled from its own attributes (NEON, 4 lanes) and cross-built;
    it cannot be measured here, so the analytic choice is used."""
    target = tvm.target.Target("raspberry-pi/4b-aarch64")
    mod = fused(gemm_model(M=32, N=32, K=32, trans_b=0), target)
    p = FluidMLSchedule(target, Options(tune_trials=4, cache_dir=str(tmp_path)))
    with target:
        out = p(mod)
    dec = [d for d in p.decisions if d.choice == "matmul"]
    assert dec and dec[0].data["measured"] == 0 and dec[0].data["config"]["nv"] * 4 <= 32
    ex = tvm.compile(out, target, relax_pipeline=relax.get_pipeline("default"))
    assert ex is not None


# ---- every kernel of the zoo models: scheduled == unscheduled ---------------------------------
@pytest.mark.parametrize("name", ["bert", "vgg11", "mobilenet"])
def test_every_zoo_kernel_computes_what_it_computed_before(name):
    """Each PrimFunc of a tiny zoo model, run alone on random inputs, gives the same output
    scheduled (constant weights packed as the pass packs them) as unscheduled."""
    from fluidml_tvm.schedules.measure import random_args
    from fluidml_tvm.tools import zoo

    model = zoo.build(name, size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    mod = from_onnx(model, shape_dict={k: list(v.shape) for k, v in feeds.items()},
                    keep_params_in_input=False)
    with TARGET:
        seq = cpu_generic.library_dispatch_passes(TARGET) + cpu_generic.legalize_passes(TARGET)
        mod = tvm.transform.Sequential(seq)(mod)
    consts = constant_args(mod)
    options = Options(cost="analytic")
    cpu = cpu_info(TARGET)
    dev = tvm.cpu()
    checked = 0
    for gv, f in mod.functions_items():
        if not isinstance(f, tvm.tirx.PrimFunc):
            continue
        ctx = Context(gv.name_hint, TARGET, cpu, options, consts.get(gv.name_hint, {}))
        new, dec, pack = schedule_kernel(f, ctx)
        assert new is not None, dec
        ref_lib = build(f)
        new_lib = build(new)
        args = random_args(f, dev, seed=1)
        new_args = []
        for i, x in enumerate(args[:-1]):
            arr = x.numpy()
            if pack and i in pack:
                arr = pack_array(arr, *pack[i])
            new_args.append(tvm.runtime.tensor(arr, dev))
        out = args[-1].numpy()
        new_args.append(tvm.runtime.tensor(np.zeros_like(out), dev))
        ref_lib["main"](*args)
        new_lib["main"](*new_args)
        ref = args[-1].numpy()
        np.testing.assert_allclose(new_args[-1].numpy(), ref, rtol=1e-4, atol=1e-4,
                                   err_msg=f"{gv.name_hint}: {dec}")
        checked += 1
    assert checked >= 8
