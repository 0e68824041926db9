"""Random operator graphs (no TVM) and an arbitrary cost table for the layout stage's tests."""

from __future__ import annotations

import hashlib
import random

from hypothesis import strategies as st

from fluidml_tvm.passes.layout.graph import Node, OpGraph, Tensor
from fluidml_tvm.passes.layout.layouts import identity


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
