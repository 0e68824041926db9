"""Candidate layouts and FluidML's dynamic programme along one sequence (FLUIDML.md section 3).

Candidates (:func:`candidates`): a tensor's layouts are permutations of its dims that keep every
size-1 dim in place, pruned to those some adjacent kernel can use - the layout that turns a
neighbouring ``permute_dims`` into an alias, the transposed form of a matmul operand/result - and
propagated through ops that pass a layout on unchanged (elementwise ops; slice, concat, softmax
and layer_norm, whose axes are remapped; and permutes, whose alias layout maps one side's
candidate onto the other's). The default is always a candidate;
graph inputs/outputs, constants and dynamic-shape tensors have only the default.

The DP (:func:`chain_dp`): for a chain ``n_1 .. n_k`` with outputs ``e_1 .. e_k`` and every tensor
outside the chain fixed (``fixed``: name -> layout, missing = default), it minimises exactly

    J(L_1..L_k) = sum_i T_{n_i}(L_{i-1} on its chain input, L_i on e_i, fixed elsewhere)
                + sum_i sum_{c consumes e_i, c not n_{i+1}} T_c(L_i on e_i, fixed elsewhere)

with states ``(e_i, L)`` and back-pointers. On a pure chain (no node reads two chain tensors)
``J`` is the whole graph's modelled cost up to a constant, so the DP's optimum equals a brute
force over all assignments (:func:`brute_force`; the property tests check this). A chain tensor
read by a non-adjacent chain node (a residual skip) is taken from ``fixed`` in that term.
"""

from __future__ import annotations

import itertools

from .cost import axis_inputs, axis_ok, layoutable, op_kind
from .graph import OpGraph
from .layouts import identity, inverse, is_blocked

MAX_CANDIDATES = 24


def _valid(perm, shape) -> bool:
    return all(perm[d] == d for d in range(len(shape)) if shape[d] == 1)


def _swap_last(rank: int) -> tuple:
    p = list(range(rank))
    p[-2], p[-1] = p[-1], p[-2]
    return tuple(p)


def candidates(g: OpGraph, matmul_transposes: bool = True,
               conv_layouts: bool = True, conv_block: int = 0,
               nchw_only=frozenset()) -> dict[str, list[tuple]]:
    """Candidate layouts of every tensor (default first).

    ``matmul_transposes=False`` drops the transposed forms seeded by matmuls themselves (they
    only pay with explicit transforms around them); permute-seeded layouts stay.
    ``conv_layouts``: NHWC for the activations of conv2d kernels (:mod:`.layout_conv`), and
    with ``conv_block`` > 0 also ``NCHW[conv_block]c`` where the block divides the channels
    (passed on only through elementwise ops and pools). Conv nodes in ``nchw_only`` (the ones
    Winograd computes, :func:`.conv.takes_winograd`) seed no candidate of their own.
    """
    from .layouts import NHWC, blocked

    cand: dict[str, set] = {}
    for name, t in g.tensors.items():
        rank = len(t.shape or ())
        cand[name] = {identity(rank)}
    for i, n in enumerate(g.nodes):
        kind = op_kind(g, i)
        if kind == "permute":
            ax = n.attrs["axes"]
            cand[n.output].add(inverse(ax))  # output aliases its default-layout input
            cand[n.inputs[0]].add(tuple(ax))  # input aliases its default-layout output
        elif kind == "conv" and conv_layouts and i not in nchw_only:
            from .conv import is_depthwise

            for t in (n.inputs[0], n.output):
                cand[t].add(NHWC)
                if conv_block and g.tensors[t].shape[1] % conv_block == 0 \
                        and not is_depthwise(g, i):
                    cand[t].add(blocked(conv_block))
        elif kind == "matmul" and matmul_transposes:
            for t in (*n.inputs, n.output):
                cand[t].add(_swap_last(len(g.tensors[t].shape)))
    changed = True
    while changed:  # pass layouts on through ops that keep them
        changed = False
        for i, n in enumerate(g.nodes):
            kind = op_kind(g, i)
            pairs = []
            if kind == "permute":
                ax = n.attrs["axes"]
                inv = inverse(ax)
                x = n.inputs[0]
                pairs.append((x, n.output, lambda lx, inv=inv: tuple(inv[d] for d in lx)))
                pairs.append((n.output, x, lambda le, ax=ax: tuple(ax[d] for d in le)))
            elif kind == "elemwise":
                out = g.tensors[n.output]
                for t in n.inputs:
                    if g.tensors[t].shape == out.shape:
                        pairs.append((t, n.output, tuple))
                        pairs.append((n.output, t, tuple))
            elif kind == "pool":  # pools run in NCHW or NHWC
                pairs.append((n.inputs[0], n.output, tuple))
                pairs.append((n.output, n.inputs[0], tuple))
            elif kind == "axis":  # slice/concat/softmax/layer_norm keep a layout, axes remapped
                def keep(lay, i=i):
                    return tuple(lay) if axis_ok(g, i, lay) else None

                for j in axis_inputs(g, i):
                    pairs.append((n.inputs[j], n.output, keep))
                    pairs.append((n.output, n.inputs[j], keep))
            for src, dst, fmap in pairs:
                if not layoutable(g, dst):
                    continue
                for lay in list(cand[src]):
                    if is_blocked(lay) and kind not in ("elemwise", "pool"):
                        continue  # NCHW[b]c only flows through these
                    new = fmap(lay)
                    if new is not None and new not in cand[dst] and len(cand[dst]) < MAX_CANDIDATES:
                        cand[dst].add(new)
                        changed = True
    out = {}
    for name, s in cand.items():
        t = g.tensors[name]
        rank = len(t.shape or ())
        if not layoutable(g, name):
            out[name] = [identity(rank)]
            continue
        keep = sorted(p for p in s if _valid(p, t.shape))
        out[name] = [identity(rank)] + [p for p in keep if p != identity(rank)]
    return out


def _terms(g: OpGraph, chain: list[int]):
    """Per position: the nodes whose cost depends on e_i (its chain successor excluded)."""
    on = set(chain)
    extra = []
    for pos, i in enumerate(chain):
        nxt = chain[pos + 1] if pos + 1 < len(chain) else None
        extra.append([c for c in g.consumers.get(g.nodes[i].output, []) if c != nxt
                      and c not in on])
    return extra


def chain_dp(g: OpGraph, chain: list[int], cands: dict, model, fixed: dict | None = None):
    """Exact minimum of ``J`` over the chain's output layouts.

    Returns ``(plan, J)``: ``plan`` maps each chain output to its layout.
    """
    base = dict(fixed or {})
    outs = [g.nodes[i].output for i in chain]
    extra = _terms(g, chain)
    prev_best: dict = {None: 0.0}
    back: list[dict] = []
    for pos, i in enumerate(chain):
        best: dict = {}
        ptr: dict = {}
        for lay in cands[outs[pos]]:
            mine = {**base, outs[pos]: lay}
            unary = sum(model.node(g, c, mine) for c in extra[pos])
            for prev, acc in prev_best.items():
                if pos:
                    mine[outs[pos - 1]] = prev
                v = acc + model.node(g, i, mine) + unary
                if lay not in best or v < best[lay] - 1e-15:
                    best[lay], ptr[lay] = v, prev
        back.append(ptr)
        prev_best = best
    lay = min(prev_best, key=lambda k: (prev_best[k], k != identity(len(k))))
    total = prev_best[lay]
    plan = {}
    for pos in range(len(chain) - 1, -1, -1):
        plan[outs[pos]] = lay
        lay = back[pos][lay]
    return plan, total


def chain_objective(g: OpGraph, chain: list[int], model, fixed: dict, plan: dict) -> float:
    """``J`` of one assignment (what :func:`chain_dp` minimises)."""
    extra = _terms(g, chain)
    total = 0.0
    outs = [g.nodes[i].output for i in chain]
    for pos, i in enumerate(chain):
        mine = {**fixed, outs[pos]: plan[outs[pos]]}
        total += sum(model.node(g, c, mine) for c in extra[pos])
        if pos:
            mine[outs[pos - 1]] = plan[outs[pos - 1]]
        total += model.node(g, i, mine)
    return total


def brute_force(g: OpGraph, chain: list[int], cands: dict, cost_fn):
    """Minimum of ``cost_fn(assignment)`` over every candidate assignment of the chain outputs."""
    outs = [g.nodes[i].output for i in chain]
    best = None
    for combo in itertools.product(*(cands[o] for o in outs)):
        v = cost_fn(dict(zip(outs, combo)))
        if best is None or v < best[1]:
            best = (dict(zip(outs, combo)), v)
    return best
