"""Operator graphs and sequence extraction (passes/layout/graph.py)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from layout_graphs import random_graph

from fluidml_tvm.passes.layout.graph import extract_sequences


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


