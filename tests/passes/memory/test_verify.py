"""The independent verifier accepts valid plans (ours and the stock planner's) and catches
deliberately broken ones."""

from __future__ import annotations

import pytest
import tvm
from memory_models import bert_like, branchy
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm.options import Options
from fluidml_tvm.passes.memory import FluidMLMemoryPlan
from fluidml_tvm.passes.memory.lifetimes import MEM_ALLOC_TENSOR, collect_lifetimes
from fluidml_tvm.passes.memory.verify import (
    MemoryPlanError,
    check_intervals,
    check_module,
    verify_module,
)
from fluidml_tvm.pipeline import lower_to_memory_slot

TARGET = tvm.target.Target({"kind": "llvm"})
OPTS = Options(schedule=False, layout=False)


@pytest.fixture(scope="module")
def lowered():
    return lower_to_memory_slot(from_onnx(bert_like(), keep_params_in_input=False), TARGET, OPTS)


@pytest.fixture(scope="module")
def planned(lowered):
    return FluidMLMemoryPlan(stock_fallback=False)(lowered)


def _allocs(mod):
    """(binding index, binding) of every memory.alloc_tensor in main, in order."""
    out = []
    for i, b in enumerate(mod["main"].body.blocks[0].bindings):
        v = b.value
        if isinstance(v, relax.Call) and v.op.same_as(MEM_ALLOC_TENSOR):
            out.append((i, b))
    return out


def _with_offset(mod, which: int, offset: int, keep_ezo: bool = True):
    """Copy of ``mod`` whose ``which``-th alloc_tensor sits at ``offset``."""
    func = mod["main"]
    blk = func.body.blocks[0]
    idx, b = _allocs(mod)[which]
    storage, _, shape, dtype = b.value.args[:4]
    bindings = list(blk.bindings)
    bindings[idx] = relax.VarBinding(
        b.var, relax.op.memory.alloc_tensor(storage, offset, shape, dtype)
    )
    if not keep_ezo and idx + 1 < len(bindings):
        nxt = bindings[idx + 1]
        if (
            isinstance(nxt.value, relax.Call)
            and nxt.value.op.name == "relax.memory.ensure_zero_offset"
        ):
            bindings[idx + 1] = relax.VarBinding(nxt.var, b.var)
    body = relax.SeqExpr([relax.BindingBlock(bindings)], func.body.body)
    new = mod.clone()
    new["main"] = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
    return new


def test_valid_plans_pass(lowered, planned):
    assert verify_module(planned) == []
    check_module(planned)
    # The stock planner's output (reused storages at offset 0) is valid under the same rules.
    assert verify_module(relax.transform.StaticPlanBlockMemory()(lowered)) == []


def test_catches_overlap(planned):
    # Put every tensor at the offset of the first one: tensors live together now share bytes.
    first = int(_allocs(planned)[0][1].value.args[1].value)
    broken = planned
    for k in range(len(_allocs(planned))):
        broken = _with_offset(broken, k, first)
    problems = verify_module(broken)
    assert any("overlaps" in p for p in problems), problems
    with pytest.raises(MemoryPlanError):
        check_module(broken)


def test_catches_one_moved_tensor(planned):
    # Move a single tensor onto a neighbour that is live at the same time.
    allocs = _allocs(planned)
    a_off = int(allocs[1][1].value.args[1].value)
    b_off = int(allocs[2][1].value.args[1].value)
    assert a_off != b_off  # they are live together, so the planner separated them
    broken = _with_offset(planned, 2, a_off)
    assert any("overlaps" in p for p in verify_module(broken))


def test_catches_misaligned_and_out_of_bounds(planned):
    assert any("aligned" in p for p in verify_module(_with_offset(planned, 0, 32)))
    arena = int(planned["main"].body.blocks[0].bindings[0].value.args[0].values[0])
    assert any("exceeds" in p for p in verify_module(_with_offset(planned, 0, arena)))


def test_catches_missing_ensure_zero_offset(planned):
    allocs = _allocs(planned)
    k = next(k for k, (_, b) in enumerate(allocs) if int(b.value.args[1].value) != 0)
    off = int(allocs[k][1].value.args[1].value)
    broken = _with_offset(planned, k, off, keep_ezo=False)
    assert any("ensure_zero_offset" in p for p in verify_module(broken))


def test_catches_returned_arena_tensor():
    mod = lower_to_memory_slot(from_onnx(branchy(), keep_params_in_input=False), TARGET, OPTS)
    planned = FluidMLMemoryPlan(stock_fallback=False)(mod)
    func = planned["main"]
    allocs = _allocs(planned)
    # Return an arena tensor as well as the real outputs.
    body = relax.SeqExpr(func.body.blocks, relax.Tuple([func.body.body, allocs[0][1].var]))
    new = planned.clone()
    ret = relax.TupleType([func.ret_ty, allocs[0][1].var.ty])
    new["main"] = relax.Function(func.params, body, ret, func.is_pure, func.attrs)
    assert any("returned" in p for p in verify_module(new))


def test_abstract_checker_catches_broken_plans():
    ivs = [(128, 0, 3), (64, 2, 5), (64, 6, 7)]
    assert check_intervals(ivs, [0, 128, 0], 192) == []
    assert check_intervals(ivs, [0, 64, 0], 192)  # 0 and 1 overlap in bytes and time
    assert check_intervals(ivs, [0, 130, 0], 256)  # misaligned
    assert check_intervals(ivs, [0, 128, 0], 150)  # outside the arena


def test_accepts_planned_inplace_handovers_only_for_elementwise_kernels(lowered):
    planner = FluidMLMemoryPlan(stock_fallback=False)
    planned = planner(lowered)
    assert planner.plans["main"].inplace  # residual adds overwrite their dying input...
    assert verify_module(planned) == []  # ... and the verifier checks and accepts them.
    # Now hand a transpose's output the bytes of its dying input, as if it were elementwise.
    life = collect_lifetimes(planned, "main")
    allocs = [i for i, _ in _allocs(planned)]
    for j, b in enumerate(life.bindings):
        v = b.value
        if not (isinstance(v, relax.Call) and "reshape_transpose" in str(v.op)):
            continue
        (src,) = life.var_tensors[v.args[0]]
        (dst,) = life.var_tensors[v.args[1]]
        s, d = life.tensors[src], life.tensors[dst]
        if s.end == j and s.nbytes == d.nbytes:
            broken = _with_offset(planned, allocs.index(d.index), s.offset)
            problems = verify_module(broken)
            assert any(s.var.name in p and d.var.name in p and "overlaps" in p for p in problems)
            return
    raise AssertionError("no transpose with a dying input of the same size in bert_like")


def test_verify_option_fails_loudly_on_a_bad_plan(lowered, monkeypatch):
    # A planner bug (every tensor at offset 0) must stop compilation when verify is on.
    from fluidml_tvm.passes.memory import plan as memory_plan
    from fluidml_tvm.passes.memory.pack import Packing

    def broken_pack(intervals, *args, **kwargs):
        p = Packing([0] * len(intervals), max(iv.size for iv in intervals), "broken")
        return p

    monkeypatch.setattr(memory_plan, "pack", broken_pack)
    # (raised inside a TVM pass, it comes back through the FFI as its base, RuntimeError)
    with pytest.raises(RuntimeError, match="invalid memory plan"):
        FluidMLMemoryPlan(verify=True)(lowered)
    from fluidml_tvm.pipeline import get_pipeline

    mod = from_onnx(bert_like(), keep_params_in_input=False)
    pipeline = get_pipeline(TARGET, Options(schedule=False, layout=False, verify=True))
    with pytest.raises(RuntimeError, match="invalid memory plan"):
        tvm.compile(mod, TARGET, relax_pipeline=pipeline)
