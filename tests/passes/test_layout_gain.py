"""Expected vs measured layout gain in the report (fluidml-tvm compile --report)."""

from __future__ import annotations

import fluidml_tvm
from fluidml_tvm import zoo
from fluidml_tvm.costdb import CostDB
from fluidml_tvm.passes import layout_gain


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
