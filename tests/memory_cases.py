"""Random cases for the memory planner's invariant tests (hypothesis strategies).

Abstract lifetime sets (for passes/memory/pack.py, checked by the independent
``verify.check_intervals``) and random DAGs built as post-CallTIRRewrite Relax IR (for the pass,
checked by the IR verifier).
"""

from __future__ import annotations

import tvm
from hypothesis import strategies as st
from tvm import relax

from fluidml_tvm.passes.memory.pack import Interval

intervals_st = st.lists(
    st.tuples(st.integers(1, 5000), st.integers(0, 60), st.integers(0, 20)).map(
        lambda t: Interval(t[0], t[1], t[1] + t[2])
    ),
    min_size=0,
    max_size=40,
)


# Two GPT-NeoX layers after the QKV split and the residual rewrite, in units of 4 KiB (the real
# unit is 0.26 MB): a residual stream alternating between two tensors, the 4-unit MLP activation
# that must sit between the residual and the LayerNorm output, 2-unit attention scores. Every
# greedy order packs it into 7 units; the live-set bound is 6.
GPT_LAYERS = [(1 / 64, 0, 4), (1, 3, 43), (1, 6, 22), (1, 9, 13), (1, 12, 34), (1, 15, 19),
              (1, 18, 28), (1, 21, 25), (1, 24, 28), (2, 27, 31), (2, 30, 34), (1, 33, 37),
              (1, 36, 40), (1, 39, 88), (1, 42, 46), (4, 45, 49), (1, 51, 67), (1, 54, 58),
              (1, 57, 79), (1, 60, 64), (1, 63, 73), (1, 66, 70), (1, 69, 73), (2, 72, 76),
              (2, 75, 79), (1, 78, 82), (1, 81, 85), (1, 84, 105), (1, 87, 91), (4, 90, 94),
              (1, 96, 105), (1, 99, 103), (1, 102, 105)]


def _kernel(arity: int) -> tvm.tirx.PrimFunc:
    # An opaque PrimFunc with ``arity`` handle parameters: a kernel the planner cannot see into
    # (so no in-place reuse), called in destination-passing style; never run.
    params = [tvm.tirx.Var(f"p{i}", "handle") for i in range(arity)]
    return tvm.tirx.PrimFunc(params, tvm.tirx.Evaluate(tvm.tirx.const(0, "int32")))


def build_dag(spec, extern: bool = False) -> tvm.IRModule:
    """Post-CallTIRRewrite IR of a random DAG: ``spec`` = [(n_elems, [input indices]), ...].

    Node 0 is the function input; each op allocates its output with ``R.builtin.alloc_tensor``
    and calls a kernel with (inputs..., output): a PrimFunc of the module (the planner may then
    reorder), or with ``extern`` an extern function (order kept). The last node is returned.
    """
    x = relax.Var("x", relax.TensorType([16], "float32"))
    bb = relax.BlockBuilder()
    kernels = {n: bb.add_func(_kernel(n), f"kernel{n}") for n in range(2, 5)}
    with bb.function("main", [x]):
        vals = [x]
        for n, ins in spec:
            out = bb.emit(
                relax.op.builtin.alloc_tensor(relax.ShapeExpr([n]), "float32", 0), name_hint="alloc"
            )
            args = [vals[i % len(vals)] for i in ins] + [out]
            op = relax.ExternFunc("kernel") if extern else kernels[len(args)]
            bb.emit(relax.Call(op, args))
            vals.append(bb.emit(out, name_hint="lv"))
        bb.emit_func_output(vals[-1])
    return bb.get()


dag_st = st.lists(
    st.tuples(st.integers(1, 2048), st.lists(st.integers(0, 10**6), min_size=1, max_size=3)),
    min_size=1,
    max_size=25,
)


def kernel_calls(mod) -> list[str]:
    out = []
    for b in mod["main"].body.blocks[0].bindings:
        v = b.value
        if isinstance(v, relax.Call) and not isinstance(v.op, tvm.ir.Op):
            out.append(f"{v.op}({', '.join(a.name for a in v.args)})")
    return sorted(out)


