"""Packing buffers with known lifetimes into one arena (offline dynamic storage allocation).

``pack(intervals)`` gives every buffer an ``ALIGN``-aligned offset such that two buffers live at
the same program point never share a byte, and returns the smallest arena found among several
heuristics: orders greedy by size (FluidML / TFLite), by breadth (TFLite), by lifetime area, by
length and by start, each with best-fit and first-fit gap choice; then seeded random perturbations
of greedy-by-size, a bounded exact search at the live-set bound (:func:`exact_at`) and a local
search over the placement order, stopping early at the live-set bound (which no packing can
beat). Works on abstract intervals: fast enough for property tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

ALIGN = 64


def align_up(x: int, a: int = ALIGN) -> int:
    return (x + a - 1) // a * a


@dataclass(frozen=True)
class Interval:
    """A buffer of ``size`` bytes live at program points ``start..end`` (inclusive)."""

    size: int
    start: int
    end: int

    def overlaps(self, other: Interval) -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class Packing:
    offsets: list[int]
    size: int
    strategy: str
    tried: dict[str, int] = field(default_factory=dict)


def live_bound(intervals: list[Interval], align: int = 1) -> int:
    """Max over program points of the summed (aligned) sizes live there."""
    events = []
    for iv in intervals:
        events.append((iv.start, 0, align_up(iv.size, align)))
        events.append((iv.end, 1, -align_up(iv.size, align)))
    best = acc = 0
    for _, _, d in sorted(events):
        acc += d
        best = max(best, acc)
    return best


def _place(intervals: list[Interval], order: list[int], best_fit: bool, align: int) -> list[int]:
    offsets = [-1] * len(intervals)
    placed: list[int] = []
    for i in order:
        iv = intervals[i]
        size = align_up(iv.size, align)
        busy = sorted(
            (offsets[j], offsets[j] + align_up(intervals[j].size, align))
            for j in placed
            if intervals[j].overlaps(iv)
        )
        chosen, chosen_gap, cursor = None, None, 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= size and (chosen is None or (best_fit and gap < chosen_gap)):
                chosen, chosen_gap = cursor, gap
                if not best_fit:
                    break
            cursor = max(cursor, hi)
        offsets[i] = cursor if chosen is None else chosen
        placed.append(i)
    return offsets


def _orders(intervals: list[Interval]) -> dict[str, list[int]]:
    n = range(len(intervals))
    iv = intervals
    orders = {
        "size": sorted(n, key=lambda i: (-iv[i].size, iv[i].start, -iv[i].end)),
        "area": sorted(n, key=lambda i: (-iv[i].size * (iv[i].end - iv[i].start + 1), iv[i].start)),
        "length": sorted(n, key=lambda i: (-(iv[i].end - iv[i].start), -iv[i].size)),
        "start": sorted(n, key=lambda i: (iv[i].start, -iv[i].size)),
    }
    # Greedy by breadth (TFLite): program points by live bytes, largest first; at each, its
    # tensors by size.
    if intervals:
        last = max(x.end for x in intervals)
        live = [0] * (last + 2)
        for x in intervals:
            for p in range(x.start, x.end + 1):
                live[p] += x.size
        seen, breadth = set(), []
        for p in sorted(range(last + 1), key=lambda p: -live[p]):
            for i in sorted(
                (i for i in n if iv[i].start <= p <= iv[i].end), key=lambda i: -iv[i].size
            ):
                if i not in seen:
                    seen.add(i)
                    breadth.append(i)
        orders["breadth"] = breadth
    return orders


def pack(
    intervals: list[Interval], align: int = ALIGN, random_tries: int = 16, seed: int = 0
) -> Packing:
    """Assign an ``align``-aligned offset to every interval; the smallest of several heuristics.

    Two intervals that overlap in time never overlap in bytes. The arena size is the largest
    ``offset + align_up(size)``.
    """
    if not intervals:
        return Packing([], 0, "empty")
    bound = live_bound(intervals, align)
    best: Packing | None = None
    tried: dict[str, int] = {}

    def consider(name: str, order: list[int], best_fit: bool):
        nonlocal best
        offs = _place(intervals, order, best_fit, align)
        size = max(o + align_up(iv.size, align) for o, iv in zip(offs, intervals))
        tried[name] = size
        if best is None or size < best.size:
            best = Packing(offs, size, name)

    for name, order in _orders(intervals).items():
        for best_fit in (True, False):
            consider(f"{name}/{'best' if best_fit else 'first'}-fit", order, best_fit)
            if best.size <= bound:
                break
        if best.size <= bound:
            break
    rng = random.Random(seed)
    base = _orders(intervals)["size"] if best.size > bound else []
    for k in range(random_tries if base else 0):
        # Perturb greedy-by-size: sort by size times a random factor in [0.7, 1.3].
        noisy = sorted(base, key=lambda i: -intervals[i].size * rng.uniform(0.7, 1.3))
        consider(f"size+noise#{k}/best-fit", noisy, True)
        if best.size <= bound:
            break
    if best.size > bound and len(intervals) > 1:
        offs = exact_at(intervals, bound, align)
        tried["exact/time-order"] = bound if offs is not None else -1
        if offs is not None:
            best = Packing(offs, bound, "exact/time-order")
    if best.size > bound and len(intervals) > 1:
        _local_search(intervals, best, bound, align, rng, tried)
    best.tried = tried
    return best


def exact_at(
    intervals: list[Interval], capacity: int, align: int = ALIGN, budget: int = 20000
) -> list[int] | None:
    """Offsets that fit every interval into ``capacity`` bytes, or None (not found in ``budget``
    search nodes).

    Depth-first search placing the intervals in order of start time; each one tries the offsets
    where it touches the arena's bottom or top or a buffer already placed that overlaps it in
    time, lowest first. Finds packings that greedy orders miss when a large buffer must sit
    between long-lived small ones (GPT-NeoX: the 1 MB MLP activation between the residual
    stream and the LayerNorm output, alternating sides from layer to layer).
    """
    n = len(intervals)
    sizes = [align_up(iv.size, align) for iv in intervals]
    order = sorted(range(n), key=lambda i: (intervals[i].start, -sizes[i], intervals[i].end))
    prev: list[list[int]] = [[] for _ in range(n)]  # placed earlier and overlapping in time
    active: list[int] = []
    for i in order:
        active = [j for j in active if intervals[j].end >= intervals[i].start]
        prev[i] = list(active)
        active.append(i)
    offs = [-1] * n

    def options(i):
        s = sizes[i]
        cands = {0, capacity - s}
        for j in prev[i]:
            cands.add(offs[j] + sizes[j])
            cands.add(offs[j] - s)
        ok = []
        for o in sorted(cands):
            if 0 <= o <= capacity - s and all(
                o >= offs[j] + sizes[j] or offs[j] >= o + s for j in prev[i]
            ):
                ok.append(o)
        return iter(ok)

    stack = [options(order[0])] if n else []
    nodes = 0
    while stack:
        k = len(stack) - 1
        o = next(stack[-1], None)
        if o is None:
            stack.pop()
            offs[order[k]] = -1
            continue
        nodes += 1
        if nodes > budget:
            return None
        offs[order[k]] = o
        if k + 1 == n:
            return offs
        stack.append(options(order[k + 1]))
    return None


def _local_search(intervals, best: Packing, bound: int, align: int, rng, tried) -> None:
    """Improve ``best`` in place: move one tensor earlier in the placement order, keep if not worse.

    The placement order is recovered from the best packing (by offset, then size); the number of
    moves is limited so that the work stays near 2e6 overlap tests.
    """
    n = len(intervals)
    order = sorted(range(n), key=lambda i: (best.offsets[i], -intervals[i].size))
    moves = max(8, min(400, 2_000_000 // (n * n)))
    cur = best.size
    for _ in range(moves):
        i, j = sorted(rng.sample(range(n), 2))
        cand = order[:i] + [order[j]] + order[i:j] + order[j + 1 :]
        offs = _place(intervals, cand, True, align)
        size = max(o + align_up(iv.size, align) for o, iv in zip(offs, intervals))
        if size <= cur:
            order, cur = cand, size
            if size < best.size:
                best.offsets, best.size, best.strategy = offs, size, "local-search/best-fit"
                if size <= bound:
                    break
    tried["local-search/best-fit"] = cur
