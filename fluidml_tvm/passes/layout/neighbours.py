"""Layout costs of conv nodes a tune budget did not reach, from their measured neighbours.

A bounded budget (:mod:`fluidml_tvm.tuning`) measures the layout variants of some conv nodes;
the others used to keep NCHW (a layout change needed a measurement). On conv nets that left
most of a network NCHW: SqueezeNet at its 5 s budget measured 21 of 29 nodes' variants and kept
4 tensors NHWC, where measuring every node put all 83 NHWC and ran 1.4x faster (3.3 vs 4.7 ms,
2-core host): the NCHW squeeze convs (1x1, 16-64 output channels) run at 9-30% of the host's
peak, NHWC at 60-90%.

So an unmeasured conv node takes, for a layout ``L`` it may run in, its analytic NCHW cost
times the measured ratio ``t(L, L) / t(NCHW, NCHW)`` of its nearest measured neighbour: a conv
node of the same kind (depthwise or not) whose variants in both layouts were timed in this
compile or are in the cache. Distance (:func:`distance`): log2 steps of input channels, output
channels and output pixels, plus :data:`SHAPE_STEP` for a different kernel size or stride; no
neighbour within :data:`MAX_DISTANCE` leaves the node as before (NCHW). The ratio is what the
layout decides (how a kernel walks memory for its channel counts and map size), and it carries
between similar shapes where absolute times do not. So that each kind has a measured node, the
budget measures the first node of each kind (in the memory-bound-first order) before the
others (:func:`one_of_each_kind_first`). A plan resting on such estimates is reported so; it is
checked end to end where the budget allows (``fluidml.layout_verify``).
"""

from __future__ import annotations

import math

from .layouts import identity

# A different kernel size or stride counts as this many log2 steps of channels or pixels.
SHAPE_STEP = 1.5
# Farther than this (log2 steps) and no measured node stands in for an unmeasured one.
MAX_DISTANCE = 2.0


def conv_features(g, i) -> tuple:
    """``(kind, numbers)`` of conv node ``i``: kind is (depthwise, kernel, strides), numbers
    log2 of input channels, output channels and output pixels."""
    from .conv import is_depthwise

    n = g.nodes[i]
    x, w = (g.tensors[t] for t in n.inputs)
    o = g.tensors[n.output]
    kind = (is_depthwise(g, i), tuple(w.shape[2:]), tuple(n.attrs["conv"]["strides"]))
    nums = (math.log2(max(1, x.shape[1])), math.log2(max(1, o.shape[1])),
            math.log2(max(1, o.shape[2] * o.shape[3])))
    return kind, nums


def distance(a: tuple, b: tuple) -> float:
    """Distance between two :func:`conv_features` (inf across depthwise and not)."""
    (dw_a, k_a, s_a), na = a
    (dw_b, k_b, s_b), nb = b
    if dw_a != dw_b:
        return math.inf
    return (sum(abs(x - y) for x, y in zip(na, nb))
            + SHAPE_STEP * ((k_a != k_b) + (s_a != s_b)))


def estimate(g, unmeasured: list[int], measured: dict[int, dict]) -> dict[tuple, tuple]:
    """``{(node, layout): (ratio, neighbour node, distance)}`` for each unmeasured conv node
    and each non-default layout ``L`` its nearest measured neighbour has timed.

    ``measured``: ``{node: {layout: seconds}}`` of conv nodes with pure variants (input and
    output in one layout) timed, the default (identity) among them."""
    feats = {i: conv_features(g, i) for i in (*unmeasured, *measured)}
    out: dict[tuple, tuple] = {}
    for i in unmeasured:
        for j, times in measured.items():
            base = times.get(identity(4))
            d = distance(feats[i], feats[j])
            if not base or d > MAX_DISTANCE:
                continue
            for lay, t in times.items():
                best = out.get((i, lay))
                if lay != identity(4) and (best is None or d < best[2]):
                    out[(i, lay)] = (t / base, j, d)
    return out


def one_of_each_kind_first(g, groups: list) -> list:
    """``[(node, variants)]`` with the first conv node of each kind (:func:`conv_features`:
    depthwise or not, kernel, strides) moved ahead of the other conv nodes, each part in its
    order: a node the budget does not reach is estimated from a measured one of its kind
    (SqueezeNet at 5 s, memory-bound nodes first, measured only 1x1 convs: its 3x3 ones came
    last)."""
    from .cost import op_kind

    first, rest, kinds = [], [], set()
    for it in groups:
        if op_kind(g, it[0]) == "conv":
            kind = conv_features(g, it[0])[0]
            if kind in kinds:
                rest.append(it)
                continue
            kinds.add(kind)
        first.append(it)
    return first + rest


def estimate_unmeasured(model, g, cands) -> None:
    """Fill ``model.estimated`` (a :class:`~.measure.MeasuredCost`) with the pure layout
    variants of the conv nodes its budget left unmeasured (``model.unmeasured``): their analytic
    NCHW cost, and that times the nearest measured neighbour's ratio (:func:`estimate`) for each
    layout both have; a node without one keeps NCHW. Adds the report line to
    ``model.estimate_notes``."""
    from .conv import conv_key
    from .cost import AnalyticCost, op_kind

    measured: dict[int, dict] = {}
    for k, (i, lx, lo) in model.pairs.items():
        if lx == lo and k in model.table and i not in model.unmeasured:
            measured.setdefault(i, {})[lx] = model.table[k]
    todo = [i for i in sorted(model.unmeasured) if op_kind(g, i) == "conv"]
    names, nodes = [], set()
    for (i, lay), (ratio, j, d) in sorted(estimate(g, todo, measured).items()):
        n = g.nodes[i]
        if lay not in cands[n.inputs[0]] or lay not in cands[n.output]:
            continue
        base = AnalyticCost.conv(model, g, i, identity(4), identity(4))
        model.estimated[conv_key(g, i, identity(4), identity(4))] = base
        model.estimated[conv_key(g, i, lay, lay)] = base * ratio
        names.append(f"{n.output} {ratio:.2f}x from {g.nodes[j].output} (distance {d:.1f})")
        nodes.add(i)
    if names:
        model.estimate_notes.append(
            f"{len(names)} layout variants of {len(nodes)} conv nodes "
            f"the tune budget did not measure take the measured layout ratio of their nearest "
            f"measured conv: " + "; ".join(names[:8]) + ("; ..." if len(names) > 8 else ""))
