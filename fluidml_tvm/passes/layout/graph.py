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

from .layouts import POOL_OPS


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


AXIS_OPS = ("relax.strided_slice", "relax.concat", "relax.nn.softmax", "relax.nn.log_softmax",
            "relax.nn.layer_norm", "relax.mean")


def _axis_attrs(op: str, call, out_shape) -> tuple | None:
    """The (non-negative) axes an axis-parametrized op works on, when static (else None): the
    layout stage remaps them to physical axes so the op runs on a permuted tensor as is."""
    if op not in AXIS_OPS or out_shape is None:
        return None
    rank = len(out_shape)
    try:
        if op == "relax.strided_slice":
            axes_arg = call.args[1]
            if not isinstance(axes_arg, relax.Tuple):
                return None
            axes = [int(f.value) for f in axes_arg.fields]
        elif op == "relax.nn.layer_norm":
            axes = [int(a) for a in call.attrs.axes]
        elif op == "relax.mean":  # a global pool (squeeze-excitation) of a 4-d activation
            if not bool(call.attrs.keepdims) or call.attrs.axis is None or rank != 4:
                return None
            axes = [int(a) for a in call.attrs.axis]
            if sorted(a % rank for a in axes) != [2, 3]:
                return None  # a transformer's norm reduces its last axis: left as it is
        else:
            axes = [int(call.attrs.axis)]
    except (AttributeError, TypeError, ValueError):
        return None
    return tuple(a % rank for a in axes) if rank else None


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
    pinned: set[str] = set()
    body = func.body
    tuples: dict = {}
    for block in body.blocks:
        for b in block.bindings:
            if isinstance(b, relax.VarBinding) and isinstance(b.value, relax.Tuple):
                tuples[b.var] = list(b.value.fields)
            if not isinstance(b, relax.VarBinding) or not _is_tensor(b.var.ty):
                # a tuple-valued call (batch_norm, split): not a node, so the cost model cannot
                # see it read its inputs; they keep the default layout
                if isinstance(b, relax.VarBinding) and isinstance(b.value, relax.Call):
                    for v in relax.analysis.free_vars(b.value):
                        if v in names:
                            pinned.add(names[v])
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
                axis = _axis_attrs(op, value, _shape(b.var.ty))
                if axis is not None:
                    attrs["axis_list"] = axis
                if op == "relax.nn.conv2d" or op in POOL_OPS:
                    from .conv import conv_attrs, pool_attrs

                    found = conv_attrs(value) if op == "relax.nn.conv2d" else pool_attrs(value)
                    if found is not None:
                        attrs["conv" if op == "relax.nn.conv2d" else "pool"] = found
            elif isinstance(value, relax.Var) and value in names:
                op, args = "alias", [names[value]]
            out = add(b.var, "value", b.var.name)
            nodes.append(Node(out, op, args, out, attrs))
    ret = body.body
    rets = list(ret.fields) if isinstance(ret, relax.Tuple) else tuples.get(ret, [ret])
    for e in rets:
        if e in names:
            tensors[names[e]].output = True
    for name in pinned:
        if tensors[name].kind == "value":
            tensors[name].output = True
    for e, name in names.items():  # used outside its dataflow block: keep its layout
        if isinstance(e, relax.Var) and not isinstance(e, relax.DataflowVar):
            if tensors[name].kind == "value":
                tensors[name].output = True
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


# ---- runtime layout kernels --------------------------------------------------------------------
def _is_copy_kernel(func) -> bool:
    """A PrimFunc whose every block stores a plain load (a transpose/layout copy), and that TVM
    does not see as a reshape (those become views)."""
    from tvm import s_tir, tirx

    if relax.analysis.has_reshape_pattern(func):
        return False
    try:
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # noqa: BLE001 - no root block: not a plain kernel
        return False
    reorders = False
    for b in blocks:
        stmt = sch.get(b)
        value = getattr(stmt.body, "value", None)
        while isinstance(value, tirx.Cast):
            value = value.value
        if not isinstance(stmt.body, tirx.BufferStore) or type(value).__name__ not in (
                "BufferLoad", "TensorLoad") or stmt.init is not None:
            return False
        order = {}
        for v in _vars(stmt.body.indices):
            order.setdefault(v, len(order))
        try:
            loaded = list(dict.fromkeys(_vars(value.indices, gather_fails=True)))
        except ValueError:  # an index that is itself a load: a gather, not a layout copy
            return False
        ranks = [order[v] for v in loaded if v in order]
        reorders = reorders or ranks != sorted(ranks)  # else a slice/copy, not a transpose
    return reorders


def _vars(exprs, gather_fails=False) -> list:
    """Iteration variables in index expressions, left to right (as ``Var`` objects)."""
    from tvm import tirx

    out = []
    for e in exprs:
        if isinstance(e, tirx.Var):
            out.append(e)
        elif type(e).__name__ in ("BufferLoad", "TensorLoad"):
            if gather_fails:
                raise ValueError("gather")
        elif hasattr(e, "a") and hasattr(e, "b"):
            out += _vars([e.a, e.b], gather_fails)
        elif hasattr(e, "value") and not isinstance(e, (tirx.IntImm, tirx.FloatImm)):
            out += _vars([e.value], gather_fails)
    return out


def transpose_kernels(mod) -> dict:
    """Pure transpose/layout-copy PrimFuncs of a module after FuseTIR: ``{"kernels": distinct
    PrimFuncs, "calls": call sites in Relax functions, "names": [...]}``."""
    names = [gv.name_hint for gv, f in mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and _is_copy_kernel(f)]
    calls = 0
    op = tvm.ir.Op.get("relax.call_tir")
    for _, f in mod.functions_items():
        if isinstance(f, relax.Function):
            hits = []
            relax.analysis.post_order_visit(
                f, lambda e, hits=hits: hits.append(e) if isinstance(e, relax.Call)
                and e.op.same_as(op) and e.args[0].name_hint in names else None)
            calls += len(hits)
    return {"kernels": len(names), "calls": calls, "names": sorted(names)}
