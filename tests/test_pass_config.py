"""TVM's own pass-config keys through --pass-config: typed as TVM declares them, one-line errors
for unknown keys (with the TVM 0.27 name of a tvmc-era one) and bad values (options.py)."""

from __future__ import annotations

import pytest
from onnx_models import mlp

from fluidml_tvm.cli import main
from fluidml_tvm.errors import FluidMLError
from fluidml_tvm.options import tvm_pass_config


def test_values_get_the_declared_type():
    got = tvm_pass_config({"tirx.disable_vectorize": "1", "relax.FuseOps.max_depth": "4",
                           "tirx.noalias": "false"})
    assert got == {"tirx.disable_vectorize": True, "relax.FuseOps.max_depth": 4,
                   "tirx.noalias": False}


@pytest.mark.parametrize("item, message", [
    ("tir.disable_vectorize=1", "did you mean tirx.disable_vectorize"),
    ("tirx.disable_vectorise=1", "did you mean tirx.disable_vectorize"),
    ("tirx.disable_vectorize=maybe", "expects 0 or 1 (bool), got 'maybe'"),
    ("relax.FuseOps.max_depth=deep", "expects an integer, got 'deep'"),
    ("tirx.UnrollLoop=2", "takes a tirx.transform.UnrollLoopConfig object"),
])
def test_bad_keys_and_values_are_one_line_errors(item, message, tmp_path, capsys):
    key, value = item.split("=")
    with pytest.raises(FluidMLError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tvm_pass_config({key: value})
    model = tmp_path / "m.onnx"
    model.write_bytes(mlp().SerializeToString())
    assert main(["compile", str(model), "-o", str(tmp_path / "m.so"), "-q",
                 "--pass-config", item]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_tvm_keys_reach_the_compile(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(mlp().SerializeToString())
    out = tmp_path / "m.so"
    assert main(["compile", str(model), "-o", str(out), "-q",
                 "--pass-config", "tirx.disable_vectorize=1",
                 "--pass-config", "relax.FuseOps.max_depth=4",
                 "--pass-config", "fluidml.cost=analytic"]) == 0
    assert out.exists()
