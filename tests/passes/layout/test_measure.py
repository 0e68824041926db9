"""Measured layout variants: kernels, timings, re-measuring loaded ones (layout/measure.py)."""

from __future__ import annotations

import numpy as np

from fluidml_tvm.passes.layout.graph import Node, OpGraph, Tensor


def test_measured_kernel_variants_compute_the_right_thing():
    """The PrimFuncs whose timings drive the measured model compute what the rewrite emits."""
    import tvm

    from fluidml_tvm.passes.layout.variants import matmul_variant, reshape_transpose_variant

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 6, 8)).astype("float32")
    f = reshape_transpose_variant((1, 6, 8), (1, 6, 2, 4), (0, 2, 1, 3), (1, 2, 24))
    lib = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), "llvm")
    out = tvm.runtime.tensor(np.zeros((1, 2, 24), "float32"))
    lib["main"](tvm.runtime.tensor(x), out)
    want = x.reshape(1, 6, 2, 4).transpose(0, 2, 1, 3).reshape(1, 2, 24)
    np.testing.assert_allclose(out.numpy(), want)
    # A held as [1, 6, 2, 4] (logical [1, 2, 6, 4]), B logical [1, 2, 4, 3], C held transposed
    a = rng.standard_normal((1, 6, 2, 4)).astype("float32")
    b = rng.standard_normal((1, 2, 4, 3)).astype("float32")
    f = matmul_variant((1, 2, 6, 4), (1, 2, 4, 3), (1, 2, 6, 3), (0, 2, 1, 3), (0, 1, 2, 3),
                       (0, 1, 3, 2))
    lib = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), "llvm")
    c = tvm.runtime.tensor(np.zeros((1, 2, 3, 6), "float32"))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    want = (a.transpose(0, 2, 1, 3) @ b).transpose(0, 1, 3, 2)
    np.testing.assert_allclose(c.numpy(), want, rtol=1e-5, atol=1e-5)


def test_loaded_measurements_are_measured_again_on_retune(tmp_path, monkeypatch):
    """A variant cached only from a loaded machine is used as it is (a warm compile measures
    nothing); with fluidml.retune it is measured again (up to the attempts limit), and a quiet
    measurement settles it and replaces the loaded time."""
    import tvm

    from fluidml_tvm.costdb import NOISY_LOAD, REMEASURE_ATTEMPTS, CostDB
    from fluidml_tvm.options import Options
    from fluidml_tvm.passes.layout import measure as layout_measure
    from fluidml_tvm.schedules.measure import Timing

    calls = []

    def fake(funcs, target, options, timings=False):
        calls.append(len(funcs))
        return [Timing(2e-6, 0.0, 1, 1) for _ in funcs]  # quiet

    monkeypatch.setattr(layout_measure, "schedule_and_time", fake)
    g = OpGraph({"x": Tensor("x", (4, 8), "float32", "input"),
                 "y": Tensor("y", (4, 8), "float32", "value"),
                 "z": Tensor("z", (8, 4), "float32", "value"),
                 "o": Tensor("o", (8, 4), "float32", "value", output=True)},
                [Node("y", "relax.exp", ["x"], "y"),
                 Node("z", "relax.permute_dims", ["y"], "z", {"axes": (1, 0)}),
                 Node("o", "relax.exp", ["z"], "o")])
    cands = {"x": [(0, 1)], "y": [(0, 1)], "z": [(0, 1)], "o": [(0, 1)]}
    db = CostDB(str(tmp_path))
    target = tvm.target.Target({"kind": "llvm"})
    m = layout_measure.MeasuredCost(target, Options(), db)
    (key,) = m.variants(g, cands)
    db.record(m.tkey, "layout", key, {"variant": key}, 5e-3, load=NOISY_LOAD + 0.5)
    assert m.prepare(g, cands) == 0 and calls == [] and m.table[key] == 5e-3
    m = layout_measure.MeasuredCost(target, Options(retune=True), db)
    assert m.prepare(g, cands) == 1 and calls == [1]
    assert m.table[key] == 2e-6 and key not in m.loaded
    assert len(db.measured(m.tkey, "layout", key)) == 2
    # settled: the next model with the same variant reads it without measuring
    m2 = layout_measure.MeasuredCost(target, Options(), db)
    assert m2.prepare(g, cands) == 0 and m2.table[key] == 2e-6
    # never quiet: measured again only until REMEASURE_ATTEMPTS loaded rows exist
    db2 = CostDB(str(tmp_path / "loaded"))
    for j in range(REMEASURE_ATTEMPTS):
        db2.record(m.tkey, "layout", key, {"variant": key, "attempt": j}, 1e-3 * (j + 1),
                   load=1.0)
    m3 = layout_measure.MeasuredCost(target, Options(retune=True), db2)
    assert m3.prepare(g, cands) == 0 and m3.table[key] == 1e-3 and key in m3.loaded
