"""Invariants of sequence extraction, the layout DP and voting on many random graphs (hypothesis).

Graphs are built directly as :class:`OpGraph` (no TVM needed): random chains of permute /
elementwise / matmul / reshape / opaque ops with constant and graph-input side inputs and
off-chain taps. The DP's optimum must equal a brute force over every candidate assignment, under
the analytic model and under arbitrary random cost tables; voting + refinement must never give a
plan whose modelled cost is above the all-default plan's.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from layout_graphs import RandomCost, graphs, random_graph

from fluidml_tvm.passes.layout.cost import AnalyticCost, identity, plan_cost
from fluidml_tvm.passes.layout.dp import brute_force, candidates, chain_dp, chain_objective


@settings(max_examples=300, deadline=None)
@given(graphs, st.integers(0, 3))
def test_dp_equals_brute_force(case, model_seed):
    g, chain = case
    cands = candidates(g)
    for model in (AnalyticCost(), RandomCost(model_seed)):
        plan, j = chain_dp(g, chain, cands, model, {})
        _, best = brute_force(g, chain, cands, lambda a, m=model: plan_cost(g, m, a))
        # on a pure chain J is the whole graph's cost: the DP's plan is a global optimum
        assert abs(j - best) <= 1e-9 * max(1.0, abs(best))
        assert abs(plan_cost(g, model, plan) - j) <= 1e-9 * max(1.0, abs(j))
        assert abs(chain_objective(g, chain, model, {}, plan) - j) <= 1e-9 * max(1.0, abs(j))


def test_candidates_keep_unit_dims_and_default_first():
    g, chain = random_graph(7, 6, False, False)
    for name, cands in candidates(g).items():
        t = g.tensors[name]
        assert cands[0] == identity(len(t.shape))
        for lay in cands:
            assert all(lay[d] == d for d in range(len(t.shape)) if t.shape[d] == 1)


