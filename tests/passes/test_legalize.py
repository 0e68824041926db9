"""The fluidml pipeline's LegalizeOps (passes/legalize.py): take lowered without TVM's warning,
to the same TensorIR as TVM's own legalization."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from fluidml_tvm.passes.legalize import legalize_ops


def _gather_module():
    bb = relax.BlockBuilder()
    table = relax.Var("table", relax.TensorType((10, 4), "float32"))
    ids = relax.Var("ids", relax.TensorType((3,), "int64"))
    with bb.function("main", [table, ids]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.take(table, ids, axis=0))
        bb.emit_func_output(out)
    return bb.get()


def test_same_kernel_as_tvm_without_the_warning(capfd):
    mod = _gather_module()
    stock = relax.transform.LegalizeOps()(mod)
    assert "Fast mode segfaults" in capfd.readouterr().err  # TVM's own legalization warns
    ours = legalize_ops()(mod)
    assert capfd.readouterr().err == ""
    tvm.ir.assert_structural_equal(ours, stock)
    ex = tvm.compile(ours, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    table = np.arange(40, dtype="float32").reshape(10, 4)
    got = vm["main"](tvm.runtime.tensor(table), tvm.runtime.tensor(np.array([7, 0, 3]))).numpy()
    np.testing.assert_array_equal(got, table[[7, 0, 3]])
