"""FluidMLFoldConstants (passes/fold_constants.py): the ops on constants it folds with numpy
give exactly what TVM's LegalizeOps + FoldConstant give, and nothing else is touched."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from fluidml_tvm.passes.fold_constants import FluidMLFoldConstants


def _module(rng):
    bias = rng.standard_normal(8).astype("float32")
    weight = rng.standard_normal((4, 8)).astype("float32")
    gamma = rng.standard_normal((1, 8)).astype("float32")
    beta = rng.standard_normal((1, 8)).astype("float32")
    ints = np.array([7, -7, 9], "int64")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w_t = bb.emit(relax.op.permute_dims(relax.const(weight)))            # [8, 4]
            w_r = bb.emit(relax.op.reshape(w_t, (2, 4, 4)))                       # of a fold
            b = relax.const(bias)
            b4 = bb.emit(relax.op.reshape(b, (1, 8)))
            b4_again = bb.emit(relax.op.reshape(b, (1, 8)))                       # same value
            scale = bb.emit(relax.op.multiply(relax.const(gamma), relax.const(beta)))
            quot = bb.emit(relax.op.divide(relax.const(gamma), relax.const(beta)))
            idiv = bb.emit(relax.op.divide(relax.const(ints), relax.const(np.full(3, 2))))
            y = bb.emit(relax.op.matmul(x, relax.const(weight)))                  # [2, 8]
            y = bb.emit(relax.op.add(y, b4))
            y = bb.emit(relax.op.add(y, b4_again))
            y = bb.emit(relax.op.multiply(y, scale))
            y = bb.emit(relax.op.add(y, quot))
            out = bb.emit_output(relax.Tuple([y, idiv, w_r]))
        bb.emit_func_output(out)
    return bb.get()


def _ops(mod) -> list[str]:
    found = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            found.append(e.op.name)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return found


def _run(mod, x):
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return [t.numpy() for t in vm["main"](tvm.runtime.tensor(x))]


def test_folds_exactly_what_foldconstant_computes():
    rng = np.random.default_rng(0)
    mod = _module(rng)
    folded = FluidMLFoldConstants()(mod)
    ops = _ops(folded)
    # the reshapes, the transpose and the float arithmetic on constants are gone; the ops on
    # the input stay, and the integer division (numpy floors, TVM truncates) is left alone
    assert "relax.permute_dims" not in ops and "relax.reshape" not in ops
    assert ops.count("relax.multiply") == 1 and ops.count("relax.divide") == 1
    assert ops.count("relax.matmul") == 1 and ops.count("relax.add") == 3
    x = rng.standard_normal((2, 4)).astype("float32")
    ours = _run(folded, x)
    stock = _run(mod, x)  # LegalizeOps + FoldConstant in TVM's own pipeline
    for a, b in zip(ours, stock):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ours[1], [3, -3, 4])  # TVM's integer division, untouched


def test_one_constant_for_one_value():
    mod = _module(np.random.default_rng(1))
    folded = FluidMLFoldConstants()(mod)
    consts = []

    for block in folded["main"].body.blocks:  # the constants the bindings hold
        consts.extend(b.value for b in block.bindings
                      if isinstance(b.value, tvm.ir.GenericConst))
    # the bias reshaped twice is added twice: one constant object for both
    biases = [c for c in consts if tuple(c.value.shape) == (1, 8)]
    distinct = []
    for c in biases:
        if not any(c.same_as(d) for d in distinct):
            distinct.append(c)
    # four bindings (the bias reshaped twice, gamma * beta, gamma / beta), three constants
    assert len(biases) == 4 and len(distinct) == 3
