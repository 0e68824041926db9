"""Plan ids, stored end-to-end gains and the keep rule of layout plans (passes/layout/gain.py)."""

from __future__ import annotations

from fluidml_tvm.costdb import CostDB
from fluidml_tvm.passes.layout import gain as layout_gain


def test_measured_gain_is_stored_per_plan_and_read_back(tmp_path):
    db = CostDB(str(tmp_path))
    layouts = {"lv1": (0, 2, 1)}
    assert "not measured yet" in layout_gain.measured_line(db, "t", "abc", layouts)
    assert "none to measure" in layout_gain.measured_line(db, "t", "abc", {})
    old = {"ratio": 1.02, "q25": 1.0, "q75": 1.03, "rounds": 3, "on_s": 1e-3, "off_s": 1e-3,
           "threads": 2, "load": "1.0", "at": 100.0}
    new = dict(old, ratio=0.97, q25=0.95, q75=0.99, at=200.0)
    layout_gain.record(db, "t", "abc", old)
    layout_gain.record(db, "t", "abc", new)
    line = layout_gain.measured_line(db, "t", "abc", layouts)
    assert "on/off 0.970" in line and "0.950-0.990" in line  # the latest measurement
    assert "not measured yet" in layout_gain.measured_line(db, "t", "other", layouts)


def test_keep_rule_needs_a_clear_gain():
    """Median at least 0.5% below 1 and three quarters of the rounds faster."""
    assert layout_gain.keeps({"ratio": 0.94, "q75": 0.95})
    assert not layout_gain.keeps({"ratio": 0.998, "q75": 1.002})  # no real gain: dropped
    assert not layout_gain.keeps({"ratio": 0.99, "q75": 1.01})  # too spread
    assert not layout_gain.keeps({"ratio": 1.02, "q75": 1.03})
