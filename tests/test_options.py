"""Options (every switch in one table), the fluidml.* PassContext keys (config_keys.py)."""

import pytest

from fluidml_tvm.errors import FluidMLError
from fluidml_tvm.options import Options, help_text, resolve, table


def test_options_from_pass_config():
    o = Options.from_pass_config(["fluidml.layout=0", "fluidml.tune_trials=3", "fluidml=1"])
    assert o.enable and not o.layout and o.memory and o.tune_trials == 3
    assert Options.from_pass_config({"fluidml.enable": False}).enable is False
    with pytest.raises(FluidMLError, match="unknown pass-config key"):
        Options.from_pass_config(["fluidml.nope=1"])
    with pytest.raises(FluidMLError, match="integer"):
        Options.from_pass_config(["fluidml.tune_trials=many"])
    with pytest.raises(FluidMLError, match="KEY=VALUE"):
        Options.from_pass_config(["fluidml.layout"])
    with pytest.raises(FluidMLError, match="measured, learned or analytic"):
        Options.from_pass_config(["fluidml.cost=guess"])


def test_every_switch_has_help_and_is_described():
    rows = table()
    keys = [k for k, _, _ in rows]
    assert keys == [k for k in Options.keys() if k != "fluidml.enable"]
    assert all(text and default for _, default, text in rows)
    text = help_text()
    assert all(f"{k}=" in text for k in keys)
    assert Options().describe() == "fluidml pipeline, stages on: layout, memory, schedule"
    changed = Options(layout=False, memory_split=False, schedule_off="", cost="analytic")
    assert changed.describe() == ("fluidml pipeline, stages on: memory, schedule; off: layout; "
                                  "fluidml.schedule_off='', fluidml.memory_split=0, "
                                  "fluidml.cost=analytic")
    assert Options(enable=False).describe() == "stock TVM pipeline (fluidml=0)"


def test_rule_switches_and_choices():
    assert not Options().rule_on("conv1x1") and Options().rule_on("depthwise")
    assert Options(schedule_off="").rule_on("conv1x1")
    assert not Options(schedule_off="depthwise, conv1x1").rule_on("depthwise")
    with pytest.raises(FluidMLError, match="fluidml.weights must be auto, external or embedded"):
        Options.from_pass_config(["fluidml.weights=cloud"])


def test_resolve_splits_fluidml_and_tvm_keys():
    opts, theirs = resolve(Options(layout=False), ["fluidml.memory=0", "relax.x=3"])
    assert not opts.layout and not opts.memory and theirs == {"relax.x": "3"}
    opts, theirs = resolve(None, {"fluidml.verify": 1})
    assert opts.verify and theirs == {}


def test_cache_dir_follows_fluidml_tvm_cache_then_xdg(monkeypatch, tmp_path):
    """The measurement cache: FLUIDML_TVM_CACHE, else $XDG_CACHE_HOME/fluidml-tvm (a fresh
    XDG_CACHE_HOME is a cold cache), else ~/.cache/fluidml-tvm."""
    from fluidml_tvm.options import default_cache_dir

    monkeypatch.delenv("FLUIDML_TVM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "fluidml-tvm")
    assert Options().cache_dir == str(tmp_path / "xdg" / "fluidml-tvm")
    monkeypatch.setenv("FLUIDML_TVM_CACHE", str(tmp_path / "own"))
    assert default_cache_dir() == str(tmp_path / "own")
    monkeypatch.delenv("FLUIDML_TVM_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "fluidml-tvm")
