"""Relax readers shared by the graph passes (passes/relax_util.py)."""

from __future__ import annotations

import numpy as np
from tvm import relax

from fluidml_tvm.passes.relax_util import callee, is_call_tir, static_nbytes, use_counts


def test_readers():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(x, x))
            out = bb.emit_output(relax.op.multiply(y, relax.const(np.ones((2, 3), "f4"))))
        bb.emit_func_output(out)
    func = bb.get()["main"]
    assert static_nbytes(x.ty) == 24
    assert static_nbytes(relax.TensorType(None, "float32", ndim=2)) is None
    counts = use_counts(func)
    assert counts[x] == 2 and counts[y] == 1
    call = func.body.blocks[0].bindings[0].value
    assert callee(call) == "relax.add" and not is_call_tir(call)


def test_dataflow_blocks_gives_bindings_users_and_block_outputs():
    from tvm import relax

    from fluidml_tvm.passes.relax_util import dataflow_blocks

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.add(x, x))
            b = bb.emit(relax.op.multiply(a, a))
            c = bb.emit(relax.op.subtract(a, b))
            out = bb.emit_output(c)
        bb.emit_func_output(out)
    func = bb.get()["main"]
    (block, value_of, users, outside), = list(dataflow_blocks(func))
    names = {v.name: v for v in value_of}
    assert isinstance(block, relax.DataflowBlock) and len(value_of) == 4
    assert sorted(u.name for u in users[names[a.name]]) == sorted([b.name,
                                                                             c.name])
    assert [v.name for v in outside] == [out.name]


def test_const_value_through_a_bound_var_and_a_reshape():
    import numpy as np
    import tvm
    from tvm import relax

    from fluidml_tvm.passes.relax_util import const_value, is_op

    c = relax.const(np.arange(4, dtype="float32"))
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    bound, reshaped = relax.Var("b", c.ty), relax.Var("r", relax.TensorType((1, 4, 1, 1),
                                                                             "float32"))
    value_of = {bound: c, reshaped: relax.op.reshape(bound, (1, 4, 1, 1))}
    value_of[reshaped] = relax.BlockBuilder().normalize(value_of[reshaped])
    np.testing.assert_array_equal(const_value(c), np.arange(4))
    np.testing.assert_array_equal(const_value(bound, value_of), np.arange(4))
    assert const_value(reshaped, value_of).shape == (1, 4, 1, 1)
    assert const_value(bound) is None and const_value(x, value_of) is None
    assert is_op(value_of[reshaped], tvm.ir.Op.get("relax.reshape"))
    assert not is_op(c, tvm.ir.Op.get("relax.reshape"))
