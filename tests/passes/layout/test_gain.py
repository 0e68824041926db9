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


def _plan(cost, default_cost=1.0):
    from types import SimpleNamespace

    return SimpleNamespace(layouts={"lv1": (0, 2, 3, 1)}, cost=cost, default_cost=default_cost,
                           notes=[], model="measured")


def test_a_plan_of_too_small_modelled_gain_is_not_applied_unmeasured(tmp_path):
    """Under 1% of the modelled run: within the model's error, so the stage keeps the default
    layouts (with the reason) unless an end-to-end measurement of the plan keeps it."""
    from types import SimpleNamespace

    import tvm

    from fluidml_tvm.options import Options
    from fluidml_tvm.passes.layout import FluidMLLayout

    assert "modelled gain 0.2% < 1%" in layout_gain.too_small(_plan(0.998))
    assert layout_gain.too_small(_plan(0.95)) is None
    assert layout_gain.too_small(_plan(0.0, default_cost=0.0)) is None
    stage = FluidMLLayout(tvm.target.Target("llvm"), Options(cache_dir=str(tmp_path)))
    g = SimpleNamespace(nodes=[], tensors={})
    small, large = _plan(0.998), _plan(0.95)
    d = stage._summary("main", g, small, SimpleNamespace(db=None))
    assert d.choice == "not applied" and not d.data["applied"]
    assert any("NOT APPLIED: modelled gain 0.2%" in n for n in small.notes)
    d = stage._summary("main", g, large, SimpleNamespace(db=None))
    assert d.choice == "applied" and d.data["unmeasured"]
    # a stored end-to-end measurement that keeps the plan decides, not the modelled gain
    db = CostDB(str(tmp_path))
    pid = layout_gain.plan_id(g, small.layouts)
    layout_gain.record(db, layout_gain.target_key(tvm.target.Target("llvm")), pid,
                       {"ratio": 0.95, "q25": 0.94, "q75": 0.96, "rounds": 5, "on_s": 1e-3,
                        "off_s": 1e-3, "threads": 2, "load": "1.0", "at": 1.0})
    again = _plan(0.998)
    d = stage._summary("main", g, again, SimpleNamespace(db=db))
    assert d.choice == "applied" and not d.data["unmeasured"]
