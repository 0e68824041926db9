"""Invariants of sequence extraction, the layout DP and voting on many random graphs (hypothesis).

Graphs are built directly as :class:`OpGraph` (no TVM needed): random chains of permute /
elementwise / matmul / reshape / opaque ops with constant and graph-input side inputs and
off-chain taps. The DP's optimum must equal a brute force over every candidate assignment, under
the analytic model and under arbitrary random cost tables; voting + refinement must never give a
plan whose modelled cost is above the all-default plan's.
"""

from __future__ import annotations

import hashlib
import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from fluidml_tvm.passes.layout.cost import AnalyticCost, identity, op_kind, plan_cost
from fluidml_tvm.passes.layout.dp import brute_force, candidates, chain_dp, chain_objective
from fluidml_tvm.passes.layout.graph import Node, OpGraph, Tensor, extract_sequences
from fluidml_tvm.passes.layout.vote import plan_layouts


class RandomCost:
    """An arbitrary cost table: T_n(layouts) is a hash of the node and its layouts."""

    name = "random"

    def __init__(self, seed: int):
        self.seed = seed

    def node(self, g, i, layouts):
        n = g.nodes[i]
        key = [n.output, self.seed]
        for t in (*n.inputs, n.output):
            key.append(layouts.get(t) or identity(len(g.tensors[t].shape or ())))
        h = hashlib.sha256(repr(key).encode()).digest()
        return int.from_bytes(h[:4], "little") / 2**32


def random_graph(seed: int, length: int, taps: bool, dag: bool) -> tuple[OpGraph, list[int]]:
    """A random graph; returns it and its main chain (node indices in order)."""
    rng = random.Random(seed)
    tensors, nodes = {}, []

    def tensor(name, shape, kind="value"):
        tensors[name] = Tensor(name, tuple(shape), "float32", kind)
        return name

    rank = rng.choice([2, 3, 4])
    shape = [rng.choice([1, 2, 3, 4]) for _ in range(rank)]
    cur = tensor("x", shape, "input")
    chain, values = [], [cur]
    for k in range(length):
        op = rng.choice(["permute", "permute", "exp", "add_const", "add_bcast", "matmul",
                         "matmul_in", "reshape", "softmax"] + (["add_skip"] * dag))
        shape = list(tensors[cur].shape)
        ins, out_shape, attrs, name = [cur], shape, {}, f"t{k}"
        if op == "permute":
            axes = list(range(len(shape)))
            rng.shuffle(axes)
            attrs["axes"] = tuple(axes)
            out_shape = [shape[a] for a in axes]
            opname = "relax.permute_dims"
        elif op == "exp":
            opname = "relax.exp"
        elif op in ("add_const", "add_bcast"):
            cshape = shape if op == "add_const" else [1] * (len(shape) - 1) + shape[-1:]
            ins.append(tensor(f"c{k}", cshape, "const"))
            opname = "relax.add"
        elif op == "add_skip":
            other = rng.choice(values)
            if tensors[other].shape != tuple(shape):
                other = cur
            ins.append(other)
            opname = "relax.add"
        elif op in ("matmul", "matmul_in"):
            n = rng.choice([1, 2, 3])
            kind = "const" if op == "matmul" else "input"
            ins.append(tensor(f"w{k}", [*shape[:-2], shape[-1], n], kind))
            out_shape = [*shape[:-1], n]
            opname = "relax.matmul"
        elif op == "reshape":
            size = 1
            for d in shape:
                size *= d
            out_shape = [size] if len(shape) == 2 else [shape[0], size // shape[0]]
            opname = "relax.reshape"
        else:
            opname = "relax.nn.softmax"
        tensor(name, out_shape)
        nodes.append(Node(name, opname, ins, name, attrs))
        chain.append(len(nodes) - 1)
        if taps and rng.random() < 0.3:
            tap = tensor(f"tap{k}", [1])
            tensors[tap].output = True
            nodes.append(Node(tap, "relax.sum", [name], tap))
        values.append(name)
        cur = name
    tensors[cur].output = True
    return OpGraph(tensors, nodes), chain


graphs = st.builds(random_graph, st.integers(0, 10**9), st.integers(1, 6), st.booleans(),
                   st.just(False))


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


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9), st.integers(1, 8), st.booleans())
def test_sequences_partition_the_graph(seed, length, taps):
    g, _ = random_graph(seed, length, taps, dag=True)
    chains = extract_sequences(g)
    flat = [i for c in chains for i in c]
    assert sorted(flat) == list(range(len(g.nodes)))
    for c in chains:
        for a, b in itertools.pairwise(c):
            assert g.nodes[a].output in g.nodes[b].inputs
    # the first sequence is a longest path of the whole graph
    depth = {}
    for i in range(len(g.nodes)):
        depth[i] = 1 + max((depth[p] for p in g.preds(i)), default=0)
    assert len(chains[0]) == max(depth.values())
    assert [len(c) for c in chains] == sorted((len(c) for c in chains), reverse=True)


def test_candidates_keep_unit_dims_and_default_first():
    g, chain = random_graph(7, 6, False, False)
    for name, cands in candidates(g).items():
        t = g.tensors[name]
        assert cands[0] == identity(len(t.shape))
        for lay in cands:
            assert all(lay[d] == d for d in range(len(t.shape)) if t.shape[d] == 1)


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
