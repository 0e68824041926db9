"""Options, the fluidml pipeline registration, and the fluidml.* PassContext keys."""

import numpy as np
import pytest
import tvm
from onnx_models import assert_matches_ort, mlp
from tvm import relax

import fluidml_tvm
from fluidml_tvm import config_keys, frontend
from fluidml_tvm.errors import FluidMLError
from fluidml_tvm.options import Options
from fluidml_tvm.pipeline import get_pipeline, phases


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


def test_phases_and_kill_switches():
    target = tvm.target.Target({"kind": "llvm"})
    names = [n for n, _ in phases(target, Options())]
    assert names == ["dispatch", "split", "layout", "legalize", "schedule", "lower", "memory",
                     "weights", "finalize"]
    off = dict(phases(target, Options(layout=False, memory=False, schedule=False,
                                      split_projection=False, residual_order=False)))
    assert off["layout"] == [] and off["schedule"] == [] and off["split"] == []
    assert [p.info.name for p in off["memory"]] == ["StaticPlanBlockMemory"]


def test_registered_pipeline_compiles_in_a_plain_tvm_flow():
    model = mlp()
    imported = frontend.import_onnx(model)
    target = tvm.target.Target({"kind": "llvm"})
    pipe = relax.get_pipeline("fluidml", target=target)
    ex = tvm.compile(imported.mod, target=target, relax_pipeline=pipe)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = np.random.default_rng(0).standard_normal((4, 32)).astype("float32")
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert_matches_ort(model, {"y": out}, {"x": x})


def test_stock_pipeline_is_tvms_default():
    target = tvm.target.Target({"kind": "llvm"})
    stock = get_pipeline(target, Options(enable=False))
    assert stock.info.name == relax.get_default_pipeline(target).info.name


def test_passcontext_keys_registered_and_read():
    if not config_keys.register():
        pytest.skip("no C++ compiler: fluidml.* PassContext keys unavailable (Options still work)")
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
    if not config_keys.register():
        pytest.skip("no C++ compiler")
    with tvm.transform.PassContext(config={"fluidml.enable": False}):
        compiled = fluidml_tvm.compile(mlp(), "x86")
    assert compiled.options.enable is False
    # Explicit pass_config overrides the context.
    with tvm.transform.PassContext(config={"fluidml.enable": False}):
        compiled = fluidml_tvm.compile(mlp(), "x86", pass_config=["fluidml=1"])
    assert compiled.options.enable is True
