"""Packing lifetimes into one arena (passes/memory/pack.py): no overlap, the live-set bound
where it is reachable."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from memory_cases import GPT_LAYERS, intervals_st

from fluidml_tvm.passes.memory.pack import ALIGN, Interval, align_up, live_bound, pack
from fluidml_tvm.passes.memory.verify import check_intervals


@settings(max_examples=2500, deadline=None)
@given(intervals_st)
def test_random_lifetimes_pack_without_overlap(ivs):
    p = pack(ivs, random_tries=2)
    sized = [(align_up(iv.size, ALIGN), iv.start, iv.end) for iv in ivs]
    assert check_intervals(sized, p.offsets, p.size) == []
    assert p.size >= live_bound(ivs, ALIGN)  # nobody beats the live-set bound
    assert p.size <= sum(s for s, _, _ in sized)  # never worse than no reuse at all


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=30))
def test_chain_reaches_the_bound(sizes):
    # A chain: tensor i lives from step i to step i+1 (read by the next op). Greedy by breadth
    # or by size must reach the live-set bound exactly on two-at-a-time lifetimes.
    ivs = [Interval(s, i, i + 1) for i, s in enumerate(sizes)]
    assert pack(ivs).size == live_bound(ivs, ALIGN)


def test_exact_search_reaches_the_bound_where_greedy_orders_do_not():
    ivs = [Interval(int(u * 4096), a, b) for u, a, b in GPT_LAYERS]
    p = pack(ivs)
    assert p.size == live_bound(ivs, ALIGN) == 6 * 4096
    assert p.strategy == "exact/time-order"
    assert min(v for k, v in p.tried.items() if k != "exact/time-order") == 7 * 4096
    sized = [(align_up(iv.size, ALIGN), iv.start, iv.end) for iv in ivs]
    assert check_intervals(sized, p.offsets, p.size) == []
