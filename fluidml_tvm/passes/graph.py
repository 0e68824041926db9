"""Operator DAG of a Relax function and FluidML sequence extraction (FLUIDML.md section 2).

:func:`build_graph` reads the bindings of a Relax function (any stage: high-level ops before
legalization, or ``call_tir`` kernels after FuseTIR, each one node) into a plain-Python
:class:`OpGraph`: tensors (graph inputs, constants, values) and nodes (one per bound call).

:func:`extract_sequences` splits the nodes into non-overlapping chains as FluidML does: every node
gets its longest-path depth from the graph's sources (counted in nodes, or weighted by a cost per
node), the deepest node is backtracked to a source - that chain is the main sequence - it is
removed, the remaining nodes fall into weakly connected components, and each is split again.
A chain's node takes its chain predecessor's output as its main input; any other input is a free
side input. :func:`dump` prints the chains readably.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import relax


@dataclass
class Tensor:
    """One value of the graph. ``kind``: ``input`` (a function parameter), ``const``, ``value``
    (a node's output). ``shape`` is None when not static; ``output``: returned by the function."""

    name: str
    shape: tuple | None
    dtype: str
    kind: str
    output: bool = False

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape or ():
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        digits = "".join(c for c in self.dtype if c.isdigit())
        bits = 8 if self.dtype == "bool" else int(digits or 32)
        return self.size * max(1, bits // 8)


@dataclass
class Node:
    """One bound call: ``output = op(inputs...)``. ``inputs`` are tensor names (non-tensor
    arguments such as shapes are left out); ``attrs`` holds what the layout stage needs."""

    name: str
    op: str
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)


@dataclass
class OpGraph:
    tensors: dict[str, Tensor]
    nodes: list[Node]
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self):
        self.index()

    def index(self) -> None:
        self.producer = {n.output: i for i, n in enumerate(self.nodes)}
        self.consumers = {t: [] for t in self.tensors}
        for i, n in enumerate(self.nodes):
            for t in dict.fromkeys(n.inputs):
                self.consumers.setdefault(t, []).append(i)

    def preds(self, i: int) -> list[int]:
        """Producer nodes of node ``i``'s inputs, in argument order, without repeats."""
        out = [self.producer[t] for t in self.nodes[i].inputs if t in self.producer]
        return list(dict.fromkeys(out))


def _shape(ty):
    shape = getattr(ty, "shape", None)
    if shape is None or not hasattr(shape, "values") and not hasattr(shape, "__iter__"):
        return None
    try:
        dims = shape.values if hasattr(shape, "values") else shape
        return tuple(int(d) for d in dims)
    except (TypeError, ValueError, AttributeError):
        return None


def _is_tensor(ty) -> bool:
    return isinstance(ty, relax.TensorType)


def build_graph(func: relax.Function) -> tuple[OpGraph, dict]:
    """The operator DAG of ``func``; also returns ``{tensor name: relax expr}`` for the rewrite."""
    tensors: dict[str, Tensor] = {}
    exprs: dict = {}
    names: dict = {}  # relax Var / Constant -> unique tensor name

    def add(expr, kind, base) -> str:
        if expr in names:
            return names[expr]
        name = base
        k = 1
        while name in tensors:
            name, k = f"{base}#{k}", k + 1
        ty = expr.ty
        tensors[name] = Tensor(name, _shape(ty), str(getattr(ty, "dtype", "")), kind)
        names[expr] = name
        exprs[name] = expr
        return name

    for p in func.params:
        if _is_tensor(p.ty):
            add(p, "input", p.name)
    nodes: list[Node] = []
    body = func.body
    for block in body.blocks:
        for b in block.bindings:
            if not isinstance(b, relax.VarBinding) or not _is_tensor(b.var.ty):
                continue
            value = b.value
            args, attrs, op = [], {}, "opaque"
            if isinstance(value, relax.Call):
                op = value.op.name if hasattr(value.op, "name") else "call"
                if op == "relax.call_tir":
                    attrs["kernel"] = value.args[0].name_hint
                    flat = list(value.args[1].fields)
                else:
                    flat = []
                    for a in value.args:
                        flat.extend(a.fields if isinstance(a, relax.Tuple) else [a])
                for a in flat:
                    if isinstance(a, tvm.ir.GenericConst) and _is_tensor(a.ty):
                        args.append(add(a, "const", f"const{len(tensors)}"))
                    elif isinstance(a, relax.Var) and a in names:
                        args.append(names[a])
                if op == "relax.permute_dims":
                    ax = value.attrs.axes
                    shape_in = tensors[args[0]].shape if args else None
                    if ax is None and shape_in is not None:
                        attrs["axes"] = tuple(reversed(range(len(shape_in))))
                    elif ax is not None:
                        attrs["axes"] = tuple(int(x) for x in ax)
            elif isinstance(value, relax.Var) and value in names:
                op, args = "alias", [names[value]]
            out = add(b.var, "value", b.var.name)
            nodes.append(Node(out, op, args, out, attrs))
    ret = body.body
    for e in ret.fields if isinstance(ret, relax.Tuple) else [ret]:
        if e in names:
            tensors[names[e]].output = True
    return OpGraph(tensors, nodes), exprs


# ---- sequence extraction -----------------------------------------------------------------------
def _depths(g: OpGraph, alive: set[int], weight) -> dict[int, float]:
    depth: dict[int, float] = {}
    for i in sorted(alive):  # nodes are in topological (binding) order
        best = max((depth[p] for p in g.preds(i) if p in alive), default=0.0)
        depth[i] = best + weight(i)
    return depth


def _components(g: OpGraph, alive: set[int]) -> list[set[int]]:
    adj: dict[int, set[int]] = {i: set() for i in alive}
    for i in alive:
        for p in g.preds(i):
            if p in alive:
                adj[i].add(p)
                adj[p].add(i)
    seen: set[int] = set()
    comps = []
    for i in sorted(alive):
        if i in seen:
            continue
        stack, comp = [i], set()
        while stack:
            j = stack.pop()
            if j in comp:
                continue
            comp.add(j)
            stack.extend(adj[j] - comp)
        seen |= comp
        comps.append(comp)
    return comps


def extract_sequences(g: OpGraph, weight=None) -> list[list[int]]:
    """Non-overlapping chains of node indices covering every node, longest first.

    ``weight(i)`` is node ``i``'s weight in the longest-path depth (default 1: counts nodes, as
    FluidML's C++ code does; pass a cost to weigh by time, as its later version does). Ties go to
    the earliest node and, when backtracking, to the first argument (the main input).
    """
    weight = weight or (lambda i: 1.0)
    chains: list[list[int]] = []
    work = [set(range(len(g.nodes)))]
    while work:
        alive = work.pop()
        if not alive:
            continue
        depth = _depths(g, alive, weight)
        end = max(sorted(alive), key=lambda i: depth[i])
        chain = [end]
        while True:
            ps = [p for p in g.preds(chain[-1]) if p in alive]
            if not ps:
                break
            chain.append(max(ps, key=lambda p: (depth[p], -ps.index(p))))
        chain.reverse()
        chains.append(chain)
        work.extend(_components(g, alive - set(chain)))
    chains.sort(key=lambda c: (-len(c), c[0]))
    return chains


def chain_input(g: OpGraph, chain: list[int], pos: int) -> str | None:
    """The tensor through which ``chain[pos]`` continues the chain (None for the first node)."""
    if pos == 0:
        return None
    return g.nodes[chain[pos - 1]].output


def dump(g: OpGraph, chains: list[list[int]], limit: int = 12) -> str:
    """A readable listing: one line per chain, ``op(out shape)`` steps joined by arrows."""
    lines = [f"{len(g.nodes)} nodes in {len(chains)} sequences"]
    for k, chain in enumerate(chains):
        steps = []
        for i in chain[:limit]:
            n = g.nodes[i]
            shape = g.tensors[n.output].shape
            steps.append(f"{n.op.replace('relax.', '')}:{n.output}{list(shape or [])}")
        more = f" ... (+{len(chain) - limit})" if len(chain) > limit else ""
        lines.append(f"  seq {k} [{len(chain)} ops]: " + " -> ".join(steps) + more)
    return "\n".join(lines)
