"""Layout plans verified end to end (fluidml_tvm/layout_verify.py, fluidml.layout_verify) and the
expected vs measured gain in the report (fluidml-tvm compile --report)."""

from __future__ import annotations

import fluidml_tvm
from fluidml_tvm import layout_verify
from fluidml_tvm.compiler import measure_layout_gain
from fluidml_tvm.costdb import CostDB
from fluidml_tvm.decisions import render
from fluidml_tvm.passes.layout import gain as layout_gain
from fluidml_tvm.tools import zoo


def _plan_ids(compiled) -> list[str]:
    return [d.data["plan_id"] for d in layout_verify.plans(compiled)]


def test_report_states_expected_and_measured_gain(tmp_path):
    """The measured plan of tiny GPT-NeoX: its report has the modelled gain; after
    measure_gain, a new compile of the same plan reports the measured on/off ratio."""
    model = zoo.build("gpt-neox", size="tiny", seed=0)
    cfg = [f"fluidml.cache_dir={tmp_path}"]
    on = fluidml_tvm.compile(model, "x86", pass_config=[*cfg, "fluidml.layout=1"])
    text = on.report()
    assert "expected gain (measured model)" in text
    (pid,) = _plan_ids(on)
    res = measure_layout_gain(model, "x86", pass_config=cfg, rounds=2, repeat=2, compiled_on=on)
    assert res["ids"] == [pid] and res["ratio"] > 0 and res["q25"] <= res["q75"]
    db = CostDB(str(tmp_path))
    line = layout_gain.measured_line(db, layout_gain.target_key(on.target), pid, {"x": (1, 0)})
    assert f"latency on/off {res['ratio']:.3f}" in line
    compiled = fluidml_tvm.compile(model, "x86", pass_config=[*cfg, "fluidml.layout=1"])
    again = compiled.report()
    (pid2,) = _plan_ids(compiled)
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
    from fluidml_tvm.passes.layout import cost, stage

    monkeypatch.setattr(stage, "make_model",
                        lambda target=None, options=None, conversion_penalty=0.0, measure=True:
                        cost.AnalyticCost(conversion_penalty=conversion_penalty))


def _timed(monkeypatch, ratio, calls):
    def fake_time_pair(on, off, rounds=7, repeat=10):
        calls.append((rounds, repeat))
        # both libraries really run: the verification times what it returns
        on.run(off.random_inputs())
        off.run(off.random_inputs())
        return {"ratio": ratio, "q25": ratio - 0.01, "q75": ratio + 0.01, "rounds": rounds,
                "on_s": ratio * 1e-3, "off_s": 1e-3}

    monkeypatch.setattr(layout_verify, "time_pair", fake_time_pair)


def _first_compile(tmp_path, monkeypatch, ratio):
    """Tiny BERT's analytic plan, compiled with fluidml.layout_verify and a fake end-to-end
    timing of ``ratio``: (model, pass_config, timing calls, the compile). No tune budget limit:
    under the default one a slow machine leaves the plan unchecked (the test below covers that),
    and these tests are about what the check decides."""
    _analytic_plans(monkeypatch)
    calls = []
    _timed(monkeypatch, ratio, calls)
    model = zoo.build("bert", size="tiny", seed=0)
    cfg = [f"fluidml.cache_dir={tmp_path}", "fluidml.layout_verify=1", "fluidml.tune_budget=-1"]
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
    layout_text = render(again.decisions["layout"])
    assert "NOT APPLIED (fluidml.layout_verify): measured end to end on/off 1.200" in layout_text
    assert _kernels(again) == _kernels(off)
    # timing the dropped plan's compile (the layouts-off library) says nothing about the plan:
    # measure_layout_gain does not store it under the plan's id
    _timed(monkeypatch, 0.5, calls)
    measure_layout_gain(model, "x86", pass_config=cfg, rounds=1, repeat=1, compiled_on=again)
    (pid,) = _plan_ids(again)
    stored = layout_gain.lookup(CostDB(str(tmp_path)), layout_gain.target_key(first.target), pid)
    assert stored["ratio"] == 1.2


def _kernels(compiled) -> list[str]:
    """The kernels the schedule stage saw (its report has one line per kernel)."""
    return sorted(d.subject for d in compiled.decisions["schedule"])


def test_layout_verify_keeps_a_plan_measured_faster(tmp_path, monkeypatch):
    model, cfg, calls, first = _first_compile(tmp_path, monkeypatch, 0.9)
    assert len(calls) == 1
    assert "verified (fluidml.layout_verify): measured gain: latency on/off 0.900" in \
        first.report()
    again = fluidml_tvm.compile(model, "x86", pass_config=cfg)
    assert len(calls) == 1
    assert "measured gain: latency on/off 0.900" in render(again.decisions["layout"])
    assert "NOT APPLIED" not in again.report()
    off = fluidml_tvm.compile(model, "x86", pass_config=[*cfg, "fluidml.layout=0"])
    assert _kernels(first) == _kernels(again) != _kernels(off)  # the plan's kernels, kept


def test_a_plan_the_budget_cannot_check_is_kept_unchecked_until_retune(tmp_path, monkeypatch):
    """Checking a plan costs a second build: beyond the tune budget it is applied unchecked and
    the decision says so; a warm compile keeps it so (measures nothing); --retune with a larger
    budget checks it."""
    _analytic_plans(monkeypatch)
    calls = []
    _timed(monkeypatch, 0.9, calls)
    model = zoo.build("bert", size="tiny", seed=0)
    cfg = [f"fluidml.cache_dir={tmp_path}", "fluidml.layout_verify=1"]
    first = fluidml_tvm.compile(model, "x86", pass_config=[*cfg, "fluidml.tune_budget=0"])
    (d,) = first.decisions["layout_verify"]
    assert calls == [] and d.choice == "not checked" and "beyond the tune budget" in d.reason
    assert any(p.data["applied"] for p in layout_verify.plans(first))
    warm = fluidml_tvm.compile(model, "x86", pass_config=cfg)  # the default budget
    (d,) = warm.decisions["layout_verify"]
    assert calls == [] and "an earlier compile's tune budget left it unchecked" in d.reason
    assert "layout check" not in warm.timing
    # --retune with no budget limit (under the default one a slow machine may again not afford it)
    again = fluidml_tvm.compile(model, "x86", pass_config=[*cfg, "fluidml.retune=1",
                                                           "fluidml.tune_budget=-1"])
    assert len(calls) == 1 and "layout check" in again.timing
    assert "verified (fluidml.layout_verify): measured gain: latency on/off 0.900" in \
        again.report()


def test_the_layout_stage_keeps_budget_for_the_check_of_a_new_plan(tmp_path, monkeypatch):
    """Applying a plan nothing has measured end to end, the layout stage keeps
    LAYOUT_CHECK_SHARE of the tune budget from the schedule stage's measuring; the compile then
    checks the plan within the budget (its second build is compile work, its timed runs
    measuring)."""
    from fluidml_tvm import tuning

    _analytic_plans(monkeypatch)
    calls, kept = [], []
    _timed(monkeypatch, 0.9, calls)
    real = tuning.TuneSession.reserve

    def reserve(self, what, seconds):
        kept.append((what, seconds))
        real(self, what, seconds)

    monkeypatch.setattr(tuning.TuneSession, "reserve", reserve)
    model = zoo.build("bert", size="tiny", seed=0)
    cfg = [f"fluidml.cache_dir={tmp_path}", "fluidml.layout_verify=1", "fluidml.tune_budget=20"]
    first = fluidml_tvm.compile(model, "x86", pass_config=cfg)
    assert ("layout check", tuning.LAYOUT_CHECK_SHARE * 20) in kept
    assert len(calls) == 1 and "layout check" in first.timing
    assert "verified (fluidml.layout_verify)" in first.report()
    assert first.tuning["spent_s"] <= 20 + 1  # the check's build is not charged as measuring
