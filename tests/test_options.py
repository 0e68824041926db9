"""Options (every switch in one table), the fluidml.* PassContext keys (config_keys.py)."""

import pytest
import tvm
from needs import require
from onnx_models import mlp

import fluidml_tvm
from fluidml_tvm import config_keys
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


def test_passcontext_keys_registered_and_read():
    require(None if config_keys.register() else "no C++ compiler for tvm_ffi.cpp.load_inline",
            "a C++ compiler (fluidml.* PassContext keys; Options work without it)")
    known = tvm.transform.PassContext.list_configs()
    for key in ("fluidml", "fluidml.enable", "fluidml.layout", "fluidml.memory",
                "fluidml.schedule", "fluidml.verify"):
        assert key in known
    with tvm.transform.PassContext(config={"fluidml.layout": False, "fluidml.enable": True}):
        opts = Options.from_context()
    assert opts.enable and not opts.layout
    # Registering again is a no-op (a second C++ registration would abort the process).
    assert config_keys.register()


def test_passcontext_keys_drive_compile():
    require(None if config_keys.register() else "no C++ compiler for tvm_ffi.cpp.load_inline",
            "a C++ compiler (fluidml.* PassContext keys)")
    with tvm.transform.PassContext(config={"fluidml.enable": False}):
        compiled = fluidml_tvm.compile(mlp(), "x86")
    assert compiled.options.enable is False
    # Explicit pass_config overrides the context.
    with tvm.transform.PassContext(config={"fluidml.enable": False}):
        compiled = fluidml_tvm.compile(mlp(), "x86", pass_config=["fluidml=1"])
    assert compiled.options.enable is True


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
