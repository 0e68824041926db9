"""fluidml_tvm.compile (compiler.py): one build, options from context/arguments, verification."""

from __future__ import annotations

import pytest
from onnx_models import mlp

import fluidml_tvm
from fluidml_tvm import compiler
from fluidml_tvm.errors import FluidMLError
from fluidml_tvm.options import Options


def test_arguments_override_options_override_defaults():
    c = fluidml_tvm.compile(mlp(), options=Options(layout=False, cost="analytic"),
                            pass_config=["fluidml.memory=0"])
    assert not c.options.layout and not c.options.memory and c.options.cost == "analytic"
    assert c.decisions["schedule"] and "memory" not in c.decisions


def test_build_never_verifies_layouts(monkeypatch):
    called = []
    monkeypatch.setattr(compiler, "_verify_layout", lambda *a, **k: called.append(a))
    compiler.build(mlp(), pass_config=["fluidml.cost=analytic", "fluidml.layout_verify=1"])
    assert called == []
    assert compiler._layout_off(["fluidml.layout=1", "fluidml.cost=analytic"]) == [
        "fluidml.cost=analytic", "fluidml.layout=0"]


def test_bad_input_shapes_are_one_line_errors():
    with pytest.raises(FluidMLError) as err:
        fluidml_tvm.compile(mlp(), input_shapes="x:[4,", pass_config=["fluidml.cost=analytic"])
    assert "\n" not in str(err.value)
