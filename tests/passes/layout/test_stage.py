"""The layout stage on the tiny zoo: numerics vs ONNX Runtime and transpose kernels removed.

``fluidml.cost=analytic`` is used where the test needs the rewrite to happen whatever this
machine measures (the analytic model folds every attention transpose); the default (measured)
cost is exercised on BERT.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

import fluidml_tvm
from fluidml_tvm import frontend, targets
from fluidml_tvm.decisions import from_module, render
from fluidml_tvm.passes.layout import FluidMLLayout
from fluidml_tvm.passes.layout.cost import AnalyticCost
from fluidml_tvm.passes.layout.graph import build_graph, transpose_kernels
from fluidml_tvm.tools import zoo

MODELS = ["bert", "gpt-neox", "vgg11", "resnet50", "mobilenet"]


@pytest.fixture
def applied(monkeypatch):
    """The pipeline's layout stage with the rewrite applied (the default only reports)."""
    import functools

    import fluidml_tvm.passes.layout as layout

    applied = functools.partial(layout.layout_passes, apply=True)
    monkeypatch.setattr(layout, "layout_passes", applied)


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)


def _err(out, ref):
    return max(float(np.max(np.abs(o - r))) for o, r in zip(out.values(), ref))


@pytest.mark.parametrize("name", MODELS)
def test_zoo_numerics_with_layout_on(name, applied):
    model = zoo.build(name, size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    ref = _ort(model, feeds)
    on = fluidml_tvm.compile(model, "x86",
                             pass_config=["fluidml.layout=1", "fluidml.cost=analytic"])
    err_on = _err(on.load().run(feeds), ref)
    if err_on > 1e-4:  # say whether the layout stage is to blame; fail either way
        off = fluidml_tvm.compile(model, "x86", pass_config=["fluidml.layout=0"])
        err_off = _err(off.load().run(feeds), ref)
        pytest.fail(f"{name}: max |fluidml - ort| = {err_on:.3g} with layouts on, "
                    f"{err_off:.3g} with fluidml.layout=0")


@pytest.mark.parametrize("name", ["vgg11", "mobilenet"])
def test_conv_zoo_numerics_layout_only(name, applied):
    """Conv models with the schedule stage off, so ORT checks the layout stage alone."""
    model = zoo.build(name, size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    c = fluidml_tvm.compile(model, "x86", pass_config=[
        "fluidml.layout=1", "fluidml.cost=analytic", "fluidml.schedule=0"])
    assert _err(c.load().run(feeds), _ort(model, feeds)) <= 1e-4


def test_bert_default_cost_numerics(applied):
    """Measured costs (the default), rewrite applied."""
    model = zoo.build("bert", size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    c = fluidml_tvm.compile(model, "x86", pass_config=["fluidml.layout=1"])
    assert _err(c.load().run(feeds), _ort(model, feeds)) <= 1e-4


def test_default_stage_reports_without_rewriting():
    from fluidml_tvm.options import Options
    from fluidml_tvm.passes.layout import layout_passes as layout_stage

    tgt, _ = targets.resolve("x86")
    mod = frontend.import_onnx(zoo.build("bert", size="tiny", seed=0), None).mod
    (stage,) = layout_stage(tgt, Options(cost="analytic"))
    with tgt:
        out = stage(mod)
    assert layout_stage(tgt, Options())[0].apply  # measured decisions are applied
    text = render(from_module(out, "layout"))
    assert "lv30: [0, 2, 1, 3]" in text
    assert "analysis only" in text
    tvm.ir.assert_structural_equal(tvm.IRModule(dict(out.functions_items())), mod)


def fused(name: str, layout: bool):
    tgt, _ = targets.resolve("x86")
    mod = frontend.import_onnx(zoo.build(name, size="tiny", seed=0), None).mod
    passes = cpu_generic.library_dispatch_passes(tgt)
    if layout:
        passes.append(FluidMLLayout(tgt, model=AnalyticCost()))
    passes += cpu_generic.legalize_passes(tgt)
    with tgt, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(passes)(mod)


def _permutes(mod) -> int:
    op = tvm.ir.Op.get("relax.permute_dims")
    found = []
    tvm.relax.analysis.post_order_visit(
        mod["main"], lambda e: found.append(e) if isinstance(e, tvm.relax.Call) and
        e.op.same_as(op) else None)
    return len(found)


def test_rotary_layouts_flow_through_slices_and_concats():
    """GPT-NeoX: Q and K stay in the [B, S, H, D] order of the QKV projection through the rotary
    embedding's slices, negations, concats and products (moved as one region); of the five
    permutes per layer only K's one to K^T is left, with absorbed layouts only."""
    mod = frontend.import_onnx(zoo.build("gpt-neox", size="tiny", seed=0), None).mod
    p = FluidMLLayout(model=AnalyticCost(conversion_penalty=10.0), explicit_transforms=False)
    out = p(mod)
    assert _permutes(mod) == 10 and _permutes(out) == 2
    assert "moved with its region" in render(from_module(out, "layout"))
    layouts = p.plans["main"].layouts
    ops = {n.output: n.op for n in build_graph(mod["main"])[0].nodes}
    assert any(ops[t] == "relax.concat" for t in layouts)
    assert any(ops[t] == "relax.strided_slice" for t in layouts)


def test_dynamic_shapes_keep_default_layouts():
    """Symbolic batch/sequence: no tensor is layoutable; the pass leaves a well-formed module."""
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(zoo.build("bert", size="tiny", seed=0, dynamic=True),
                    keep_params_in_input=False)
    p = FluidMLLayout(model=AnalyticCost())
    out = p(mod)
    assert tvm.relax.analysis.check_well_formed(out)
    assert p.plans["main"].layouts == {}


@pytest.mark.parametrize("name,before", [("bert", 8), ("gpt-neox", 4)])
def test_transpose_kernels_removed(name, before):
    """Runtime transpose kernels (call sites after FuseTIR): all attention ones go."""
    assert transpose_kernels(fused(name, False))["calls"] == before
    assert transpose_kernels(fused(name, True))["calls"] == 0
