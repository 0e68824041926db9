"""common.py: the helpers the rules share, vectorize_inner's two forms in particular (the
injective/reduction/conv one and the matmul/depthwise one, ``whole=4, tail=False``)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te
from tvm.script import tirx as T

from fluidml_tvm.schedules.common import (
    SCALAR_ONLY_INTRINSICS,
    as_int,
    called_ops,
    inline_all,
    inline_plain_copies,
    iter_values,
    loop_kinds,
    match_sum_of_products,
    no_vector_form,
    root_blocks,
    undeclared_buffers,
    vectorize_inner,
)

from .models import matmul_func


def _copy(n):
    A = te.placeholder((4, n), name="A")
    B = te.compute((4, n), lambda i, j: A[i, j] + 1.0, name="B")
    sch = tvm.s_tir.Schedule(te.create_prim_func([A, B]))
    return sch, sch.get_sblock("B")


def _inner(sch, block):
    loops = sch.get_loops(block)
    return [int(sch.get(lp).extent) for lp in loops], sch.get(loops[-1]).kind


@pytest.mark.parametrize("n, whole, tail, vectorized, extents", [
    (64, 2, True, True, [4, 4, 16]),  # lanes divide it: split and vectorized
    (24, 2, True, True, [4, 24]),  # short: vectorized whole
    (40, 2, True, False, [4, 3, 16]),  # long with a tail: split, unroll-annotated only
    (40, 4, False, True, [4, 40]),  # the matmul / depthwise form: up to 4 vectors whole
    (72, 4, False, False, [4, 72]),  # ... and no tail split beyond
    (1, 2, True, False, [4, 1]),
])
def test_vectorize_inner(n, whole, tail, vectorized, extents):
    sch, b = _copy(n)
    assert vectorize_inner(sch, b, 16, whole=whole, tail=tail) is vectorized
    got, kind = _inner(sch, b)
    assert got == extents
    assert (kind == tvm.tirx.ForKind.VECTORIZED) is vectorized


def test_block_helpers():
    func = matmul_func(16, 8, 4)
    sch = tvm.s_tir.Schedule(func)
    (b,) = root_blocks(sch)
    assert loop_kinds(sch, b) == ["S", "S", "R"]
    assert len(iter_values(sch, b)) == 3
    sop, why = match_sum_of_products(func)
    assert sop is not None and sop.name == "C", why
    assert [sop.extents[v] for v in sop.reduction_vars()] == [4]
    assert as_int(tvm.tirx.IntImm("int32", 3)) == 3 and as_int(3) == 3 and as_int("x") is None


@T.prim_func(s_tir=True)
def _gather_then_opaque(A: T.Buffer((8,), "float32"), out: T.Buffer((8,), "float32")):
    G = T.sblock_alloc_buffer((8,))
    for i in range(8):
        with T.sblock("G"):
            vi = T.axis.spatial(8, i)
            T.reads(A[vi])
            T.writes(G[vi])
            G[vi] = A[7 - vi]
    with T.sblock("opaque"):  # as legalized NonMaxSuppression's blocks: accesses undeclared
        T.reads()
        T.writes()
        G[0] = T.float32(-1.0)
        for i in range(8):
            out[i] = G[i] * T.float32(2.0)


def test_inline_all_keeps_a_buffer_an_opaque_block_writes():
    """ONNX's NonMaxSuppression cases failed with "Buffer T_gather is used before its
    definition": inline_all inlined the gather although an opaque block (empty T.reads/T.writes)
    still wrote it. Such buffers are now left alone, and the kernel builds and computes."""
    sch = tvm.s_tir.Schedule(_gather_then_opaque)
    assert sorted(str(b) for b in undeclared_buffers(sch)) == ["G", "out"]
    inline_all(sch)
    assert [sch.get(b).name_hint for b in root_blocks(sch)] == ["G", "opaque"]
    func = sch.mod["main"].with_attr("global_symbol", "main")
    ex = tvm.compile(tvm.IRModule({"main": func}), tvm.target.Target({"kind": "llvm"}))
    a = np.arange(8, dtype="float32")
    out = tvm.runtime.tensor(np.zeros(8, "float32"))
    ex(tvm.runtime.tensor(a), out)
    expected = 2 * a[::-1]
    expected[0] = -2.0
    np.testing.assert_array_equal(out.numpy(), expected)


_UNARY = ["exp", "log", "sqrt", "erf", "tanh", "sigmoid", "sin", "cos", "tan", "asin", "acos",
          "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "log1p", "floor", "ceil", "round"]


@pytest.mark.parametrize("fn", _UNARY)
def test_scalar_only_intrinsics_are_exactly_those_tvm_cannot_vectorize(fn):
    """The list the schedule stage reads is measured, not guessed: every unary math op of tirx
    built in a vectorized loop; exactly the listed ones fail (a TVM upgrade that fixes one
    shows up here)."""
    A = te.placeholder((64,), name="A")
    B = te.compute((64,), lambda i: getattr(tvm.tirx, fn)(A[i]), name="B")
    sch = tvm.s_tir.Schedule(te.create_prim_func([A, B]))
    (loop,) = sch.get_loops(sch.get_sblock("B"))
    sch.vectorize(sch.split(loop, [None, 16])[1])
    func = sch.mod["main"].with_attr("global_symbol", "main")
    scalar_only = f"tirx.{fn}" in SCALAR_ONLY_INTRINSICS
    assert any(op.endswith(f".{fn}") for op in called_ops(func)), called_ops(func)
    assert bool(no_vector_form(func)) == scalar_only
    try:
        tvm.compile(tvm.IRModule({"main": func}), tvm.target.Target({"kind": "llvm"}))
        built = True
    except Exception as err:  # noqa: BLE001
        assert "unknown intrinsic" in str(err), err
        built = False
    assert built != scalar_only


def test_root_blocks_of_a_kernel_without_blocks_is_empty():
    """Legalized MaxUnpool is plain loops without blocks: fluidml=1 failed on ONNX's
    test_maxunpool_export_without_output_shape ("Cannot find a block with the name: root",
    raised from fuse_conv_pool's pool analysis); there are no root blocks to analyze."""

    @T.prim_func
    def loops_only(a: T.handle):
        A = T.match_buffer(a, (4,), "float32")
        for i in range(4):
            A[i] = T.float32(0)

    assert root_blocks(tvm.s_tir.Schedule(loops_only)) == []


def _block_names(func) -> list[str]:
    sch = tvm.s_tir.Schedule(func)
    return [sch.get(b).name_hint for b in root_blocks(sch)]


@pytest.mark.parametrize("pad, kept", [(0, False), (1, True)])
def test_inline_plain_copies_drops_a_padding_stage_of_no_padding(pad, kept):
    """TVM's conv2d writes its input into pad_temp even with no padding (every 1x1 conv): the
    copy is inlined, so the conv reads its input; a real padding stage stays (it is one the
    rules schedule), and the function computes the same."""
    from tvm import topi

    data = te.placeholder((1, 8, 6, 6), name="data")
    w = te.placeholder((4, 8, 1 + 2 * pad, 1 + 2 * pad), name="w")
    func = te.create_prim_func([data, w, topi.nn.conv2d_nchw(data, w, 1, pad, 1)])
    assert "pad_temp" in _block_names(func)
    out = inline_plain_copies(func)
    assert ("pad_temp" in _block_names(out)) == kept
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((1, 8, 6, 6)).astype("float32"),
            rng.standard_normal(tuple(int(d) for d in w.shape)).astype("float32")]
    results = []
    for f in (func, out):
        lib = tvm.compile(f, target="llvm")
        res = tvm.runtime.tensor(np.zeros((1, 4, 6, 6), "float32"))
        lib(*[tvm.runtime.tensor(a) for a in args], res)
        results.append(res.numpy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6)


def test_inline_plain_copies_keeps_a_copy_that_moves_elements():
    """A copy with other indices (a transposed conv's flipped kernel) is a stage the rules
    match: it stays."""
    a = te.placeholder((4, 5), name="a")
    t = te.compute((5, 4), lambda i, j: a[j, i], name="moved")
    b = te.compute((5, 4), lambda i, j: t[i, j] * 2.0, name="b")
    func = te.create_prim_func([a, b])
    assert inline_plain_copies(func).same_as(func)
