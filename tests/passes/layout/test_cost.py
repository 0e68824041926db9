"""Cost models of the layout stage: analytic terms, the learned model's ranking, variants."""

from __future__ import annotations

from fluidml_tvm.passes.layout.cost import AnalyticCost
from fluidml_tvm.passes.layout.graph import Node, OpGraph, Tensor


def test_analytic_transpose_costs_bytes_and_aliases_are_free():
    t = {"a": Tensor("a", (1, 64, 8, 64), "float32", "input"),
         "c": Tensor("c", (1, 8, 64, 64), "float32", "value")}
    g = OpGraph(t, [Node("c", "relax.permute_dims", ["a"], "c", {"axes": (0, 2, 1, 3)})])
    m = AnalyticCost()
    full = m.node(g, 0, {})
    assert full == m.transpose(t["c"].nbytes) > m.launch
    assert m.node(g, 0, {"c": (0, 2, 1, 3)}) == 0.0  # alias of its input


def test_strided_read_beats_a_transpose_only_when_launch_dominates():
    m = AnalyticCost()
    small, large = 4 * 16 * 16 * 4, 12 * 128 * 64 * 4
    assert m.strided_read * small / m.bandwidth < m.transpose(small)
    assert m.strided_read * large / m.bandwidth > m.transpose(large)


