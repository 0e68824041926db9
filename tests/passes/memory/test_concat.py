"""In-place concatenation (passes/memory/concat.py): a concat's inputs are written into their
slabs of its output and the copy is dropped, only where that is exactly the same computation;
the verifier checks every plan, ONNX Runtime the outputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from memory_models import OPTS, TARGET, concat_of, dense_block, fire
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm import pipeline
from fluidml_tvm.passes.memory import FluidMLMemoryPlan
from fluidml_tvm.passes.memory.concat import slab_offsets
from fluidml_tvm.pipeline import lower_to_memory_slot


def _lowered(model):
    return lower_to_memory_slot(from_onnx(model, keep_params_in_input=False), TARGET, OPTS)


def _run(model, x, **options):
    opts = OPTS.replace(**options) if hasattr(OPTS, "replace") else type(OPTS)(
        **{**OPTS.__dict__, **options})
    mod = from_onnx(model, keep_params_in_input=False)
    ex = tvm.compile(mod, TARGET, relax_pipeline=pipeline.get_pipeline(TARGET, opts))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _calls(func) -> list[str]:
    names = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.GlobalVar):
            names.append(e.op.name_hint)

    relax.analysis.post_order_visit(func, visit)
    return names


@pytest.mark.parametrize("size, expand", [(10, 8), (13, 16), (7, 32)])
def test_fire_concats_are_written_in_place(size, expand):
    model = fire(size=size, expand=expand)
    plan = FluidMLMemoryPlan(verify=True)
    planned = plan(_lowered(model))
    notes = plan.plans["main"].concats
    assert len(notes) == 2 and all(": in place - 2 inputs" in n for n in notes), notes
    assert not [n for n in _calls(planned["main"]) if n.startswith("concatenate")]
    assert "R.memory.view" in planned["main"].script()
    assert plan.plans["main"].order.startswith("order original")
    x = np.random.default_rng(2).standard_normal((1, 8, size, size)).astype("float32")
    want = _ort(model, x)
    np.testing.assert_allclose(_run(model, x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(model, x, memory_concat=False), want, rtol=1e-5, atol=1e-5)


def test_kill_switch_keeps_the_copy():
    plan = FluidMLMemoryPlan(verify=True, concat=False)
    planned = plan(_lowered(fire()))
    assert plan.plans["main"].concats == []
    assert [n for n in _calls(planned["main"]) if n.startswith("concatenate")]


@pytest.mark.parametrize("shape, axis, with_input, why", [
    ((1, 16, 4, 4), 1, True, "a parameter or constant"),  # x itself is a slab
    ((1, 16, 4, 4), 2, False, "not 1: slabs are not contiguous"),  # rows of every channel
    ((1, 1, 3, 3), 1, False, "not a multiple of 64 bytes"),  # a 36-byte slab
])
def test_concats_that_are_not_taken_say_why_and_stay_correct(shape, axis, with_input, why):
    model = concat_of(shape, axis, with_input)
    plan = FluidMLMemoryPlan(verify=True)
    planned = plan(_lowered(model))
    notes = plan.plans["main"].concats
    assert len(notes) == 1 and ": copied - " in notes[0] and why in notes[0], notes
    assert [n for n in _calls(planned["main"]) if n.startswith("concatenate")]
    x = np.random.default_rng(3).standard_normal(shape).astype("float32")
    np.testing.assert_allclose(_run(model, x), _ort(model, x), rtol=1e-5, atol=1e-6)


def test_slab_offsets_reject_a_kernel_that_computes():
    """A kernel named like a concat that does more than copy (an add) is not taken."""
    from tvm import te, topi

    a = te.placeholder((1, 16, 4, 4), name="a")
    b = te.placeholder((1, 16, 4, 4), name="b")
    c = topi.concatenate([a, b], axis=1)
    ok, _ = slab_offsets(te.create_prim_func([a, b, c]))
    assert ok == [0, 16 * 16 * 4]
    d = te.compute(c.shape, lambda *i: c(*i) + 1.0, name="d")
    func = te.create_prim_func([a, b, d])
    offsets, why = slab_offsets(func)
    assert offsets is None and "more than a copy" in why


def test_a_function_with_unseen_effects_keeps_its_copies():
    """An extern call (or an in-place kernel) may write a slab after the concat would have
    copied it: no concat of that function is taken."""
    from fluidml_tvm.passes.memory.concat import in_place_concats
    from fluidml_tvm.passes.memory.lifetimes import collect_lifetimes

    mod = _lowered(fire())
    func = mod["main"]
    taken, notes = in_place_concats(mod, func, collect_lifetimes(mod, "main"))
    assert taken is not None and notes
    bindings = list(func.body.blocks[0].bindings)
    x = func.params[0]
    call = relax.Call(relax.ExternFunc("fluidml.test.noop"), [x])
    extra = relax.VarBinding(relax.Var("noop", relax.TensorType((1, 8, 10, 10), "float32")), call)
    body = relax.SeqExpr([relax.BindingBlock([extra] + bindings)], func.body.body)
    func = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
    taken, notes = in_place_concats(mod, func, collect_lifetimes(mod, "main", func))
    assert taken is None and len(notes) == 1 and "effects unknown" in notes[0], notes


def test_chained_concats_take_the_first_and_copy_the_rest():
    """DenseNet: a concat's output is the next concat's first input; only one of the two can
    own those bytes, so the first is taken and the next ones copy (the test light model that
    found it: caffe2's densenet121)."""
    model = dense_block()
    plan = FluidMLMemoryPlan(verify=True)
    plan(_lowered(model))
    notes = plan.plans["main"].concats
    # the first concat is fused with the ReLU of x (not a copy kernel): the next two remain
    assert len(notes) == 2 and ": in place" in notes[0], notes
    assert "is an in-place concat's output" in notes[1], notes
    x = np.random.default_rng(4).standard_normal((1, 16, 8, 8)).astype("float32")
    np.testing.assert_allclose(_run(model, x), _ort(model, x), rtol=1e-5, atol=1e-5)
