"""FluidMLLayout's rewrite: TVMScript before/after, and numerics on random Relax graphs."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from fluidml_tvm.decisions import from_module, render
from fluidml_tvm.passes.layout import FluidMLLayout, explain, report
from fluidml_tvm.passes.layout.cost import AnalyticCost
from fluidml_tvm.passes.layout.kernels import permuted_matmul


def strip(mod):
    """The module without the decisions attribute the pass leaves on it."""
    assert "fluidml.decisions.layout" in mod.attrs
    return tvm.IRModule(dict(mod.functions_items()))


def rewrite(mod):
    return strip(FluidMLLayout(model=AnalyticCost())(mod))


def test_transpose_pair_through_elementwise_disappears():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((2, 3, 4), "float32"):
            with R.dataflow():
                a = R.permute_dims(x, axes=[0, 2, 1])
                b = R.exp(a)
                c = R.permute_dims(b, axes=[0, 2, 1])
                R.output(c)
            return c

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((2, 3, 4), "float32"):
            with R.dataflow():
                b = R.exp(x)
                c = b
                R.output(c)
            return c

    tvm.ir.assert_structural_equal(rewrite(Before), Expected)


def test_broadcast_constant_is_stored_prepermuted():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((2, 3, 4), "float32"):
            with R.dataflow():
                a = R.permute_dims(x, axes=[0, 2, 1])
                b = R.add(a, R.const(np.array([1.0, 2.0, 3.0], "float32")))
                c = R.permute_dims(b, axes=[0, 2, 1])
                R.output(c)
            return c

    # the (3,) bias broadcast over a (2, 4, 3) tensor, stored for the (2, 3, 4) physical layout
    bias = np.array([1.0, 2.0, 3.0], "float32").reshape(1, 3, 1)

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((2, 3, 4), "float32"):
            with R.dataflow():
                b = R.add(x, R.const(bias))
                c = b
                R.output(c)
            return c

    after = rewrite(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    # FoldConstant has nothing to fold back: no permute of a constant is left
    tvm.ir.assert_structural_equal(relax.transform.FoldConstant()(after), Expected)


def test_attention_transposes_fold_into_one_matmul_kernel():
    @I.ir_module
    class Before:
        @R.function
        def main(q: R.Tensor((1, 8, 2, 4), "float32"), k: R.Tensor((1, 8, 2, 4), "float32")):
            with R.dataflow():
                qt = R.permute_dims(q, axes=[0, 2, 1, 3])
                kt = R.permute_dims(k, axes=[0, 2, 3, 1])
                s = R.matmul(qt, kt)
                p = R.nn.softmax(s, axis=-1)
                R.output(p)
            return p

    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((1, 8, 2, 4), "float32"))
    k = relax.Var("k", relax.TensorType((1, 8, 2, 4), "float32"))
    with bb.function("main", [q, k]):
        with bb.dataflow():
            s = bb.emit(bb.call_te(
                lambda a, b: permuted_matmul(a, b, (0, 2, 1, 3), (0, 3, 1, 2), (0, 1, 2, 3),
                                             (1, 2, 8, 4), (1, 2, 4, 8), (1, 2, 8, 8), "float32"),
                q, k, primfunc_name_hint="matmul_layout"), "s")
            p = bb.emit_output(relax.op.nn.softmax(s, axis=-1), "p")
        bb.emit_func_output(p)
    tvm.ir.assert_structural_equal(rewrite(Before), bb.get())


def test_absorbed_layout_is_reported_and_apply_false_keeps_ir():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((2, 3, 4), "float32"):
            with R.dataflow():
                a = R.permute_dims(x, axes=[0, 2, 1])
                b = R.exp(a)
                c = R.permute_dims(b, axes=[0, 2, 1])
                R.output(c)
            return c

    p = FluidMLLayout(model=AnalyticCost(), apply=False)
    after = p(Before)
    tvm.ir.assert_structural_equal(strip(after), Before)
    text = report(p)
    assert render(from_module(after, "layout")) == text
    assert "a: [0, 2, 1]" in text and "b: [0, 2, 1]" in text and "votes" in text
    assert explain(Before, model=AnalyticCost()) == text


# ---- numerics on random graphs --------------------------------------------------------------
def random_module(seed: int):
    """x (and y) through random permutes, elementwise ops, matmuls and softmax."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in rng.choice([1, 2, 3, 4], size=rng.integers(2, 5)))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            cur, vals = x, [x]
            for _ in range(int(rng.integers(2, 7))):
                op = rng.choice(["permute", "permute", "exp", "add", "bias", "matmul", "softmax"])
                s = tuple(int(d) for d in cur.ty.shape)
                if op == "permute":
                    cur = bb.emit(relax.op.permute_dims(cur, [int(a) for a in
                                                              rng.permutation(len(s))]))
                elif op == "exp":
                    cur = bb.emit(relax.op.tanh(cur))
                elif op == "add":
                    same = [v for v in vals if tuple(int(d) for d in v.ty.shape) == s]
                    cur = bb.emit(relax.op.add(cur, same[int(rng.integers(len(same)))]))
                elif op == "bias":
                    c = rng.standard_normal(s[-1:]).astype("float32")
                    cur = bb.emit(relax.op.multiply(cur, relax.const(c)))
                elif op == "matmul":
                    w = rng.standard_normal((s[-1], 3)).astype("float32")
                    cur = bb.emit(relax.op.matmul(cur, relax.const(w)))
                else:
                    cur = bb.emit(relax.op.nn.softmax(cur, axis=-2))
                vals.append(cur)
            out = bb.emit_output(relax.op.add(cur, cur))
        bb.emit_func_output(out)
    return bb.get(), shape


def _run(mod, x):
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10**6))
def test_random_graphs_keep_their_numbers(seed):
    mod, shape = random_module(seed)
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    after = rewrite(mod)
    assert relax.analysis.check_well_formed(after)
    np.testing.assert_allclose(_run(after, x), _run(mod, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [1, 2, 4, 7, 8, 16, 19, 23])
def test_rewritten_graphs_keep_their_numbers(seed):
    """Seeds whose plan is not all-default: the rewrite changes the IR, numbers stay."""
    mod, shape = random_module(seed)
    after = rewrite(mod)
    assert relax.analysis.check_well_formed(after)
    with pytest.raises(ValueError):
        tvm.ir.assert_structural_equal(after, mod)
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    np.testing.assert_allclose(_run(after, x), _run(mod, x), rtol=1e-5, atol=1e-5)


def _permutes(mod) -> int:
    op = tvm.ir.Op.get("relax.permute_dims")
    found = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: found.append(e) if isinstance(e, relax.Call) and
        e.op.same_as(op) else None)
    return len(found)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**6))
def test_absorbed_only_never_adds_a_transpose(seed):
    """explicit_transforms=False (the pipeline's setting): permutes only disappear."""
    mod, _ = random_module(seed)
    p = FluidMLLayout(model=None, explicit_transforms=False,
                      options=__import__("fluidml_tvm").options.Options(cost="analytic"))
    after = strip(p(mod))
    assert _permutes(after) <= _permutes(mod)
    assert p.plans["main"].cost <= p.plans["main"].default_cost


# ---- layouts through slice / concat / softmax / layer_norm (rotary embeddings) ----------------
def test_layout_flows_through_slice_concat_softmax():
    """A rotate-half web between two permutes runs in the permuted layout: both permutes go,
    the slices, concat and softmax get physical axes."""

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 4, 5), "float32")) -> R.Tensor((2, 4, 5), "float32"):
            with R.dataflow():
                a = R.permute_dims(x, axes=[0, 2, 1])
                s1 = R.strided_slice(a, axes=[2], begin=[0], end=[2])
                s2 = R.strided_slice(a, axes=[2], begin=[2], end=[4])
                n = R.negative(s2)
                c = R.concat((n, s1), axis=2)
                y = R.nn.softmax(c, axis=1)
                out = R.permute_dims(y, axes=[0, 2, 1])
                R.output(out)
            return out

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 4, 5), "float32")) -> R.Tensor((2, 4, 5), "float32"):
            with R.dataflow():
                s1 = R.strided_slice(x, axes=[1], begin=[0], end=[2])
                s2 = R.strided_slice(x, axes=[1], begin=[2], end=[4])
                n = R.negative(s2)
                c = R.concat((n, s1), axis=1)
                y = R.nn.softmax(c, axis=2)
                out = y
                R.output(out)
            return out

    after = rewrite(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    x = np.random.default_rng(0).standard_normal((2, 4, 5)).astype("float32")
    np.testing.assert_allclose(_run(after, x), _run(Before, x), rtol=1e-5, atol=1e-6)


def random_axis_module(seed: int):
    """Permutes around slices, concats, softmax, layer_norm and elementwise ops (rank 3-4)."""
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(3, 5))
    shape = tuple(int(d) for d in rng.choice([2, 3, 4], size=rank))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            perm = [int(a) for a in rng.permutation(rank)]
            cur = bb.emit(relax.op.permute_dims(x, perm))
            for _ in range(int(rng.integers(2, 6))):
                s = tuple(int(d) for d in cur.ty.shape)
                ax = int(rng.integers(rank))
                op = rng.choice(["slicecat", "softmax", "layer_norm", "tanh", "bias"])
                if op == "slicecat" and s[ax] >= 2:
                    h = s[ax] // 2
                    lo = bb.emit(relax.op.strided_slice(cur, [ax], [0], [h]))
                    hi = bb.emit(relax.op.strided_slice(cur, [ax], [h], [s[ax]]))
                    cur = bb.emit(relax.op.concat([relax.op.negative(hi), lo], axis=ax))
                elif op == "softmax":
                    cur = bb.emit(relax.op.nn.softmax(cur, axis=ax))
                elif op == "layer_norm":
                    g = rng.standard_normal(s[-1:]).astype("float32")
                    cur = bb.emit(relax.op.nn.layer_norm(cur, relax.const(g), relax.const(g * 0),
                                                         axes=[-1]))
                elif op == "bias":
                    c = rng.standard_normal(s[-1:]).astype("float32")
                    cur = bb.emit(relax.op.add(cur, relax.const(c)))
                else:
                    cur = bb.emit(relax.op.tanh(cur))
            out = bb.emit_output(relax.op.permute_dims(cur, [perm.index(d) for d in range(rank)]))
        bb.emit_func_output(out)
    return bb.get(), shape


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10**6))
def test_axis_op_graphs_keep_their_numbers(seed):
    mod, shape = random_axis_module(seed)
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    # without in-place concats: with them a plan may rightly trade a transpose for a dropped
    # concat copy, and the permute count is no bound
    after = strip(FluidMLLayout(model=AnalyticCost(inplace_concat=False))(mod))
    assert relax.analysis.check_well_formed(after)
    assert _permutes(after) <= _permutes(mod)
    np.testing.assert_allclose(_run(after, x), _run(mod, x), rtol=1e-4, atol=1e-5)
