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




def _epilogue_graph(extra_user: bool):
    """x @ w -> + b -> relu (-> out), and exp(x) of the graph input; ``extra_user``: the matmul's
    result is also returned, so FuseOps cannot put the add into its kernel."""
    t = {"x": Tensor("x", (1, 8, 16), "float32", "input"),
         "w": Tensor("w", (16, 16), "float32", "const"),
         "b": Tensor("b", (16,), "float32", "const"),
         "mm": Tensor("mm", (1, 8, 16), "float32", "value", output=extra_user),
         "ad": Tensor("ad", (1, 8, 16), "float32", "value"),
         "r": Tensor("r", (1, 8, 16), "float32", "value", output=True),
         "e": Tensor("e", (1, 8, 16), "float32", "value", output=True)}
    nodes = [Node("mm", "relax.matmul", ["x", "w"], "mm"),
             Node("ad", "relax.add", ["mm", "b"], "ad"),
             Node("r", "relax.nn.relu", ["ad"], "r"),
             Node("e", "relax.exp", ["x"], "e")]
    if extra_user:
        t["m2"] = Tensor("m2", (1, 8, 16), "float32", "value", output=True)
        nodes.append(Node("m2", "relax.negative", ["mm"], "m2"))
    return OpGraph(t, nodes)


def test_fused_epilogues_cost_no_kernel_of_their_own():
    """A bias add and a ReLU after a matmul run in its kernel (FuseOps): no launch, no pass
    over the tensor; an elementwise op of the graph input, or of a value with another user,
    costs its own kernel."""
    from fluidml_tvm.passes.layout.cost import fused_epilogue

    g = _epilogue_graph(extra_user=False)
    m = AnalyticCost()
    assert [fused_epilogue(g, i) for i in range(4)] == [False, True, True, False]
    assert m.kernel(g, 1) == m.kernel(g, 2) == 0.0
    assert m.kernel(g, 3) == m.launch + 2 * g.tensors["e"].nbytes / m.bandwidth
    g2 = _epilogue_graph(extra_user=True)
    assert not fused_epilogue(g2, 1) and fused_epilogue(g2, 2)
    assert m.kernel(g2, 1) > m.launch


def test_a_concat_along_its_outermost_axis_costs_nothing():
    """NCHW channels of one image are contiguous slabs: the memory stage writes the inputs into
    them (fluidml.memory_concat), so the copy is free; along NHWC's channels, or with the
    in-place concat off, it is a kernel."""
    from fluidml_tvm.passes.layout.cost import concat_in_place

    t = {"a": Tensor("a", (1, 4, 5, 5), "float32", "input"),
         "b": Tensor("b", (1, 4, 5, 5), "float32", "input"),
         "c": Tensor("c", (1, 8, 5, 5), "float32", "value", output=True)}
    g = OpGraph(t, [Node("c", "relax.concat", ["a", "b"], "c", {"axis_list": [1]})])
    nhwc = (0, 2, 3, 1)
    assert concat_in_place(g, 0, (0, 1, 2, 3)) and not concat_in_place(g, 0, nhwc)
    assert AnalyticCost().node(g, 0, {}) == 0.0
    off = AnalyticCost(inplace_concat=False)
    assert off.node(g, 0, {}) == off.kernel(g, 0) > 0.0
    t2 = {"a": Tensor("a", (2, 4, 5, 5), "float32", "input"),
          "b": Tensor("b", (2, 4, 5, 5), "float32", "input"),
          "c": Tensor("c", (2, 8, 5, 5), "float32", "value", output=True)}
    assert not concat_in_place(OpGraph(t2, g.nodes), 0, (0, 1, 2, 3))  # batch 2: not slabs
