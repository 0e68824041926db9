"""Expected vs measured layout gain in the report (fluidml-tvm compile --report)."""

from __future__ import annotations

import fluidml_tvm
from fluidml_tvm.costdb import CostDB
from fluidml_tvm.passes import layout_gain
from fluidml_tvm.tools import zoo


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


def test_report_states_expected_and_measured_gain(tmp_path):
    """The measured plan of tiny GPT-NeoX: its report has the modelled gain; after
    measure_gain, a new compile of the same plan reports the measured on/off ratio."""
    model = zoo.build("gpt-neox", size="tiny", seed=0)
    cfg = [f"fluidml.cache_dir={tmp_path}"]
    on = fluidml_tvm.compile(model, "x86", pass_config=[*cfg, "fluidml.layout=1"])
    text = on.report()
    assert "expected gain (measured model)" in text
    (pid,) = layout_gain.plan_ids(text)
    res = layout_gain.measure_gain(model, "x86", pass_config=cfg, rounds=2, repeat=2,
                                   compiled_on=on)
    assert res["ids"] == [pid] and res["ratio"] > 0 and res["q25"] <= res["q75"]
    db = CostDB(str(tmp_path))
    line = layout_gain.measured_line(db, layout_gain.target_key(on.target), pid, {"x": (1, 0)})
    assert f"latency on/off {res['ratio']:.3f}" in line
    again = fluidml_tvm.compile(model, "x86", pass_config=[*cfg, "fluidml.layout=1"]).report()
    (pid2,) = layout_gain.plan_ids(again)
    if "none to measure" in again:  # an all-default plan has nothing to measure
        return
    if pid2 == pid:
        assert f"latency on/off {res['ratio']:.3f}" in again
    else:  # a loaded machine re-measured the variants and the plan changed: a new plan id
        assert "not measured yet" in again


def test_cli_measure_layout_gain(tmp_path, capsys):
    from fluidml_tvm.cli import main

    out = tmp_path / "m.so"
    assert main(["compile", "zoo:bert:tiny", "-o", str(out), "--report", "-q",
                 "--measure-layout-gain", "--pass-config", f"fluidml.cache_dir={tmp_path}"]) == 0
    text = capsys.readouterr().out
    assert "expected gain" in text and "measured gain: latency on/off" in text
    assert out.exists()


def _analytic_plans(monkeypatch):
    """The analytic model's plan of tiny BERT (transposes absorbed: non-default, deterministic)
    instead of measured kernels, so the test does not depend on this machine's timings."""
    from fluidml_tvm.passes import layout_cost, layout_measure

    monkeypatch.setattr(layout_measure, "make_model",
                        lambda target=None, options=None, conversion_penalty=0.0, measure=True:
                        layout_cost.AnalyticCost(conversion_penalty=conversion_penalty))


def _timed(monkeypatch, ratio, calls):
    def fake_time_pair(on, off, rounds=7, repeat=10):
        calls.append((rounds, repeat))
        # both libraries really run: the verification times what it returns
        on.run(off.random_inputs())
        off.run(off.random_inputs())
        return {"ratio": ratio, "q25": ratio - 0.01, "q75": ratio + 0.01, "rounds": rounds,
                "on_s": ratio * 1e-3, "off_s": 1e-3}

    monkeypatch.setattr(layout_gain, "time_pair", fake_time_pair)


def _first_compile(tmp_path, monkeypatch, ratio):
    """Tiny BERT's analytic plan, compiled with fluidml.layout_verify and a fake end-to-end
    timing of ``ratio``: (model, pass_config, timing calls, the compile)."""
    _analytic_plans(monkeypatch)
    calls = []
    _timed(monkeypatch, ratio, calls)
    model = zoo.build("bert", size="tiny", seed=0)
    cfg = [f"fluidml.cache_dir={tmp_path}", "fluidml.layout_verify=1"]
    return model, cfg, calls, fluidml_tvm.compile(model, "x86", pass_config=cfg)


def test_layout_verify_drops_a_plan_measured_slower(tmp_path, monkeypatch):
    """fluidml.layout_verify: a new plan measured no faster end to end is not kept (the library
    is the layouts-off compile) and a later compile of the same plan skips it without timing."""
    model, cfg, calls, first = _first_compile(tmp_path, monkeypatch, 1.2)
    text = first.report()
    assert len(calls) == 1
    assert "NOT APPLIED (fluidml.layout_verify): measured gain: latency on/off 1.200" in text
    assert first.options.layout  # the stage ran and decided
    off = fluidml_tvm.compile(model, "x86", pass_config=[*cfg, "fluidml.layout=0"])
    on = fluidml_tvm.compile(model, "x86", pass_config=[*cfg, "fluidml.layout_verify=0"])
    assert _kernels(on) != _kernels(off)  # the plan changes the kernels ...
    assert _kernels(first) == _kernels(off)  # ... and the library returned has none of them
    again = fluidml_tvm.compile(model, "x86", pass_config=cfg)
    assert len(calls) == 1  # the cached ratio decides: no second timing
    layout_text = again.reports["layout"]
    assert "NOT APPLIED (fluidml.layout_verify): measured end to end on/off 1.200" in layout_text
    assert _kernels(again) == _kernels(off)
    # timing the dropped plan's compile (the layouts-off library) says nothing about the plan:
    # measure_gain does not store it under the plan's id
    _timed(monkeypatch, 0.5, calls)
    layout_gain.measure_gain(model, "x86", pass_config=cfg, rounds=1, repeat=1,
                             compiled_on=again)
    (pid,) = layout_gain.plan_ids(layout_text)
    stored = layout_gain.lookup(CostDB(str(tmp_path)), layout_gain.target_key(first.target), pid)
    assert stored["ratio"] == 1.2


def _kernels(compiled) -> list[str]:
    """The kernels the schedule stage saw (its report has one line per kernel)."""
    return sorted(line.split(":")[0] for line in compiled.reports["schedule"].splitlines())


def test_layout_verify_keeps_a_plan_measured_faster(tmp_path, monkeypatch):
    model, cfg, calls, first = _first_compile(tmp_path, monkeypatch, 0.9)
    assert len(calls) == 1
    assert "verified (fluidml.layout_verify): measured gain: latency on/off 0.900" in \
        first.reports["layout"]
    again = fluidml_tvm.compile(model, "x86", pass_config=cfg)
    assert len(calls) == 1
    assert "measured gain: latency on/off 0.900" in again.reports["layout"]
    assert "NOT APPLIED" not in again.reports["layout"]
    off = fluidml_tvm.compile(model, "x86", pass_config=[*cfg, "fluidml.layout=0"])
    assert _kernels(first) == _kernels(again) != _kernels(off)  # the plan's kernels, kept


def test_keep_rule_needs_a_clear_gain():
    """Median at least 0.5% below 1 and three quarters of the rounds faster."""
    assert layout_gain.keeps({"ratio": 0.94, "q75": 0.95})
    assert not layout_gain.keeps({"ratio": 0.998, "q75": 1.002})  # no real gain: dropped
    assert not layout_gain.keeps({"ratio": 0.99, "q75": 1.01})  # too spread
    assert not layout_gain.keeps({"ratio": 1.02, "q75": 1.03})
