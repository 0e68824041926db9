"""Decisions as data (fluidml_tvm/decisions.py): records, their JSON round trip on a module."""

from __future__ import annotations

import tvm

from fluidml_tvm import decisions as dec


def test_decision_text_and_round_trip_through_a_module():
    d = dec.Decision("schedule", "fused_matmul", "matmul", "b1m16n64k64 (measured)",
                     {"config": {"mr": 4}, "measured": 3, "seconds": 1.5e-5})
    n = dec.note("schedule", "measured 1 kernel")
    assert str(d) == "fused_matmul: matmul - b1m16n64k64 (measured)"
    assert str(n) == "measured 1 kernel"
    mod = dec.attach(tvm.IRModule(), "schedule", [d, n])
    assert dec.from_module(mod, "schedule") == [d, n]
    assert dec.from_module(mod, "layout") is None
    assert dec.render([d, n]) == f"{d}\n{n}"
    assert dec.loads(dec.dumps([d])) == [d]
