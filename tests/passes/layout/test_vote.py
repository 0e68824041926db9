"""Conflict voting and refinement (passes/layout/vote.py): never worse than the default plan."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from layout_graphs import RandomCost, random_graph

from fluidml_tvm.passes.layout.cost import AnalyticCost, identity, op_kind, plan_cost
from fluidml_tvm.passes.layout.dp import candidates
from fluidml_tvm.passes.layout.graph import Node, OpGraph, Tensor
from fluidml_tvm.passes.layout.vote import plan_layouts


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9), st.integers(2, 8), st.booleans(), st.integers(0, 3))
def test_voting_never_worse_than_default(seed, length, taps, model_seed):
    g, _ = random_graph(seed, length, taps, dag=True)
    for model in (AnalyticCost(), RandomCost(model_seed)):
        plan = plan_layouts(g, model)
        assert plan.cost <= plan.default_cost + 1e-12
        assert abs(plan.cost - plan_cost(g, model, plan.layouts)) <= 1e-12
        cands = candidates(g)
        for t, lay in plan.layouts.items():
            assert lay in cands[t] and lay != identity(len(lay))
            assert not g.tensors[t].output and g.tensors[t].kind == "value"


def test_transpose_pair_cancels():
    """x -> permute -> exp -> permute back: the DP makes both permutes aliases (cost 0)."""
    t = {"x": Tensor("x", (1, 3, 4, 5), "float32", "input")}
    for n, s in (("a", (1, 4, 3, 5)), ("b", (1, 4, 3, 5)), ("c", (1, 3, 4, 5))):
        t[n] = Tensor(n, s, "float32", "value")
    t["c"].output = True
    perm = (0, 2, 1, 3)
    g = OpGraph(t, [Node("a", "relax.permute_dims", ["x"], "a", {"axes": perm}),
                    Node("b", "relax.exp", ["a"], "b"),
                    Node("c", "relax.permute_dims", ["b"], "c", {"axes": perm})])
    assert [op_kind(g, i) for i in range(3)] == ["permute", "elemwise", "permute"]
    model = AnalyticCost()
    plan = plan_layouts(g, model)
    assert plan.layouts == {"a": perm, "b": perm}
    assert model.node(g, 0, plan.layouts) == 0.0 and model.node(g, 2, plan.layouts) == 0.0
    assert plan.cost < plan.default_cost
    assert any("votes" in d.reason for d in plan.decisions)
