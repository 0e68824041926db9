"""What the planner cannot handle goes to the stock planner, with the reason recorded."""

from __future__ import annotations

import tvm
from tvm import relax

from fluidml_tvm.passes.memory import FluidMLMemoryPlan
from fluidml_tvm.passes.memory.lifetimes import planned_bytes
from fluidml_tvm.passes.memory.verify import verify_module


def _kernel(arity: int) -> tvm.tirx.PrimFunc:
    params = [tvm.tirx.Var(f"p{i}", "handle") for i in range(arity)]
    return tvm.tirx.PrimFunc(params, tvm.tirx.Evaluate(tvm.tirx.const(0, "int32")))


def _alloc(bb, shape):
    return bb.emit(relax.op.builtin.alloc_tensor(relax.ShapeExpr(shape), "float32", 0))


def test_symbolic_shapes_fall_back_per_tensor():
    n = tvm.tirx.Var("n", "int64")
    x = relax.Var("x", relax.TensorType([n, 16], "float32"))
    bb = relax.BlockBuilder()
    k = bb.add_func(_kernel(2), "k")
    with bb.function("main", [x]):
        a = _alloc(bb, [n, 16])  # symbolic: left to the stock planner
        bb.emit(relax.Call(k, [x, a]))
        b = _alloc(bb, [4, 16])  # static: planned
        bb.emit(relax.Call(k, [a, b]))
        c = _alloc(bb, [4, 16])
        bb.emit(relax.Call(k, [b, c]))
        bb.emit_func_output(c)
    mod = bb.get()
    planner = FluidMLMemoryPlan(verify=True)
    out = planner(mod)
    plan = planner.plans["main"]
    assert any("symbolic shape" in f for f in plan.fallback)
    assert plan.planned == 1 and plan.arena == 256
    assert verify_module(out) == []
    text = out["main"].script()
    assert "fluidml_arena" in text and "R.builtin.alloc_tensor" in text  # c is returned


def test_control_flow_falls_back_per_function():
    x = relax.Var("x", relax.TensorType([4], "float32"))
    cond = relax.Var("cond", relax.TensorType([], "bool"))
    bb = relax.BlockBuilder()
    k = bb.add_func(_kernel(2), "k")
    with bb.function("main", [x, cond]):
        a = _alloc(bb, [4])
        bb.emit(relax.Call(k, [x, a]))
        then_ = relax.SeqExpr([], a)
        else_ = relax.SeqExpr([], x)
        r = bb.emit(relax.If(cond, then_, else_))
        bb.emit_func_output(r)
    mod = bb.get()
    planner = FluidMLMemoryPlan(verify=True)
    out = planner(mod)
    assert any("control flow" in f for f in planner.plans["main"].fallback)
    assert "fluidml_arena" not in out["main"].script()
    assert (
        planned_bytes(out)["main"]
        == planned_bytes(relax.transform.StaticPlanBlockMemory()(mod))["main"]
    )
