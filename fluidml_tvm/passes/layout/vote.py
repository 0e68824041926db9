"""Whole-graph layout plan: per-sequence DPs, conflict voting, refinement (FLUIDML.md section 4).

:func:`plan_layouts` runs, on an :class:`~.graph.OpGraph` and a cost model:

1. One DP per sequence (:func:`~.layout_dp.chain_dp`) with every other tensor at its default, as
   FluidML runs them independently; each sequence also states the layout it wants for each of
   its side inputs (the one that makes its kernel cheapest).
2. Voting: each tensor gets a vote from the sequence that produces it and from every sequence
   that reads it as a side input, weighted by that sequence's cost difference (its DP's saving
   over all-default, or the saving of the side-input wish); the heaviest layout wins, ties go to
   the default.
3. Refinement: with the winners fixed, each sequence's DP runs again with its neighbours fixed
   (a consumer that wanted another layout gets its kernel regenerated for the winner, or an
   explicit transform if that is cheaper), and every region of tensors tied by layout-keeping
   ops (:func:`regions`) may move to a shared layout at once; a change is kept only if the whole
   graph's modelled cost drops. The same descent also runs from the all-default plan and the
   cheaper of the two wins, so the plan is never worse, in the model, than the default layout.

Every tensor that was contested or ends up non-default gets a :class:`Decision` with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...decisions import Decision
from .cost import axis_inputs, layoutable, op_kind, plan_cost
from .dp import candidates, chain_dp, chain_objective
from .graph import OpGraph, extract_sequences
from .layouts import default_of, is_blocked, layout_name


@dataclass
class LayoutPlan:
    layouts: dict  # tensor -> layout, non-default ones only
    decisions: list[Decision]
    chains: list[list[int]]
    cost: float
    default_cost: float
    voted_cost: float
    model: str
    notes: list[str] = field(default_factory=list)


def _us(s: float) -> str:
    return f"{s * 1e6:.1f}us"


def _delta(g: OpGraph, model, layouts: dict, change: dict) -> float:
    """Modelled cost change of applying ``change`` to ``layouts`` (touched nodes only)."""
    nodes = set()
    for t in change:
        if t in g.producer:
            nodes.add(g.producer[t])
        nodes.update(g.consumers.get(t, []))
    new = {**layouts, **change}
    return sum(model.node(g, i, new) - model.node(g, i, layouts) for i in nodes)


def regions(g: OpGraph, cands: dict) -> list[list[str]]:
    """Groups of layoutable tensors tied by ops that keep a layout (elementwise ops and their
    same-shape inputs; slice/concat/softmax/layer_norm and their same-rank inputs).

    A layout pays only when a whole group takes it: a rotary embedding is a web of slices,
    negations, concats and products between a permute and a matmul, where changing one
    sequence alone would put transposes on its side inputs. Groups of one are left out.
    """
    parent: dict[str, str] = {}

    def find(t):
        while parent.setdefault(t, t) != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for i, n in enumerate(g.nodes):
        kind = op_kind(g, i)
        if not layoutable(g, n.output) or len(cands[n.output]) < 2:
            continue
        if kind == "elemwise":
            tied = [t for t in n.inputs if g.tensors[t].shape == g.tensors[n.output].shape]
        elif kind == "axis":
            tied = [n.inputs[j] for j in axis_inputs(g, i)]
        elif kind == "pool":
            tied = [n.inputs[0]]
        else:
            continue
        for t in tied:
            if layoutable(g, t) and len(cands[t]) > 1:
                parent[find(t)] = find(n.output)
    groups: dict[str, list[str]] = {}
    for t in parent:
        groups.setdefault(find(t), []).append(t)
    return [sorted(m, key=lambda t: g.producer.get(t, -1)) for m in groups.values() if len(m) > 1]


def _region_moves(g, groups, cands, model, layouts: dict, log: list) -> bool:
    """Move each group to the candidate layout all its tensors share, where the graph's
    modelled cost drops; returns whether anything changed."""
    changed = False
    for members in groups:
        common = set(cands[members[0]])
        for t in members[1:]:
            common &= set(cands[t])
        best, best_d = None, -1e-12
        for lay in sorted(common):
            change = {t: lay for t in members
                      if layouts.get(t, default_of(lay)) != lay}
            if not change:
                continue
            d = _delta(g, model, layouts, change)
            if d < best_d:
                best, best_d = change, d
        if best:
            layouts.update(best)
            log.append(("region", best, best_d))
            changed = True
    return changed


def _descend(g, chains, cands, model, layouts: dict, rounds: int = 3) -> tuple[dict, list]:
    layouts = dict(layouts)
    log = []
    groups = regions(g, cands)
    for _ in range(rounds):
        changed = _region_moves(g, groups, cands, model, layouts, log)
        for k, chain in enumerate(chains):
            plan, j = chain_dp(g, chain, cands, model, layouts)
            cur = {t: layouts.get(t, default_of(lay)) for t, lay in plan.items()}
            if j >= chain_objective(g, chain, model, layouts, cur) - 1e-12:
                continue
            change = {t: lay for t, lay in plan.items() if lay != cur[t]}
            d = _delta(g, model, layouts, change)
            if change and d < -1e-12:
                layouts.update(change)
                changed = True
                log.append((k, change, d))
        if not changed:
            break
    return layouts, log


def _clean(layouts: dict) -> dict:
    return {t: lay for t, lay in layouts.items() if lay != default_of(lay)}


def plan_layouts(g: OpGraph, model, chains=None, weight=None, cands=None) -> LayoutPlan:
    """The layout of every tensor of ``g``, with a reason for each contested/non-default one."""
    chains = chains if chains is not None else extract_sequences(g, weight)
    cands = cands if cands is not None else candidates(g)
    votes: dict[str, dict[tuple, list]] = {}
    for k, chain in enumerate(chains):
        plan, j = chain_dp(g, chain, cands, model, {})
        default = {t: default_of(lay) for t, lay in plan.items()}
        gain = chain_objective(g, chain, model, {}, default) - j
        for t, lay in plan.items():
            if len(cands[t]) > 1:
                votes.setdefault(t, {}).setdefault(lay, []).append((gain, f"seq {k}"))
        on = {g.nodes[i].output for i in chain}
        for i in chain:  # side-input wishes, with this sequence's plan in place
            for y in g.nodes[i].inputs:
                if y in on or not layoutable(g, y) or len(cands[y]) < 2:
                    continue
                base = model.node(g, i, plan)
                best = min(cands[y], key=lambda lay, y=y: model.node(g, i, {**plan, y: lay}))
                save = base - model.node(g, i, {**plan, y: best})
                if save > 0:
                    votes.setdefault(y, {}).setdefault(best, []).append((save, f"seq {k} side"))
    voted, why = {}, {}
    for t, by_layout in votes.items():
        tally = {lay: sum(w for w, _ in vs) for lay, vs in by_layout.items()}
        win = max(tally, key=lambda lay: (tally[lay], lay == default_of(lay)))
        if tally[win] <= 0:
            win = default_of(win)
        voted[t] = win
        why[t] = "; ".join(
            f"{list(lay)} {_us(tally[lay])} ({', '.join(s for _, s in vs)})"
            for lay, vs in sorted(by_layout.items(), key=lambda kv: -tally[kv[0]])
        )
    default_cost = plan_cost(g, model, {})
    voted_cost = plan_cost(g, model, voted)
    from_vote, log_v = _descend(g, chains, cands, model, voted)
    from_default, log_d = _descend(g, chains, cands, model, {})
    cost_v, cost_d = plan_cost(g, model, from_vote), plan_cost(g, model, from_default)
    final, start = (from_vote, "voted") if cost_v <= cost_d else (from_default, "default")
    final = _clean(final)
    moved = {}  # tensor -> why its whole region moved (slice/concat/elementwise webs)
    for kind, change, d in (log_v if start == "voted" else log_d):
        if kind == "region":
            for t, lay in change.items():
                if final.get(t) == lay:
                    saved = (f"modelled {_us(d)}" if abs(d) < 1.0 else
                             "removes explicit transforms the vote left")
                    moved[t] = (f"moved with its region of {len(change)} tensors tied by "
                                f"layout-keeping ops ({saved})")
    decisions = []
    contested = {t for t, by in votes.items() if len(by) > 1}
    for t in sorted(contested | set(final), key=lambda t: g.producer.get(t, -1)):
        lay = final.get(t, default_of(cands[t][0]))
        parts = []
        if t in why:
            parts.append(f"votes: {why[t]}")
        if t in voted and voted[t] != lay:
            parts.append(f"vote winner {list(voted[t])} overridden by refinement")
        if lay != default_of(lay):
            parts.append(f"kept by descent from the {start} plan")
        if t in moved:
            parts.append(moved[t])
        decisions.append(Decision("layout", t, layout_str(lay), "; ".join(parts) or "default",
                                  {"layout": list(lay)}))
    notes = [
        f"modelled cost ({model.name}): default {_us(default_cost)}, voted {_us(voted_cost)}, "
        f"final {_us(plan_cost(g, model, final))} (descent from vote {_us(cost_v)}, "
        f"from default {_us(cost_d)}; {len(log_v)}/{len(log_d)} sequence updates)"
    ]
    return LayoutPlan(final, decisions, chains, plan_cost(g, model, final), default_cost,
                      voted_cost, model.name, notes)


def layout_str(lay) -> str:
    """``[0, 2, 1, 3]`` for a permutation, ``NCHW16c`` for a blocked layout."""
    return layout_name(lay) if is_blocked(lay) else str(list(lay))


def report(plan: LayoutPlan) -> str:
    """The chosen layouts with reasons, one line per decision (``fluidml-tvm compile --report``)."""
    lines = list(plan.notes)
    lines += [str(d) for d in plan.decisions]
    return "\n".join(lines)
