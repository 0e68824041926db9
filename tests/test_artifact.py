"""What a compile produces (artifact.py): metadata, the report's sections, export's files."""

from __future__ import annotations

import json

import pytest
from onnx_models import mlp

import fluidml_tvm
from fluidml_tvm.errors import FluidMLError
from fluidml_tvm.options import Options
from fluidml_tvm.pipeline import DECISION_STAGES


@pytest.fixture(scope="module")
def compiled():
    return fluidml_tvm.compile(mlp(), pass_config=["fluidml.cost=analytic"])


def test_metadata_describes_the_library(compiled):
    meta = compiled.metadata()
    assert meta["format"] == "fluidml-tvm" and meta["target_kind"] == "llvm"
    assert [i["name"] for i in meta["inputs"]] == ["x"]
    assert set(meta["options"]) == {k for k in Options.keys() if k != "fluidml.enable"}
    assert meta["kernels"] and all({"rule", "flops", "bytes"} <= set(r)
                                   for r in meta["kernels"].values())
    assert meta["planned_memory_bytes"]["main"] > 0


def test_report_has_every_stage_in_order(compiled):
    text = compiled.report()
    heads = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    shown = [h for h in heads if h in DECISION_STAGES]
    assert shown == [s for s in DECISION_STAGES if s in shown]
    assert {"fold_batchnorm", "layout", "schedule", "memory", "roofline"} <= set(heads)


def test_export_writes_library_and_metadata(compiled, tmp_path):
    out = compiled.export(str(tmp_path / "m.so"))
    meta = json.loads((tmp_path / "m.json").read_text())
    assert out.endswith("m.so") and (tmp_path / "m.so").stat().st_size > 0
    assert meta["inputs"] == compiled.metadata()["inputs"]
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically
    with pytest.raises(FluidMLError, match="output directory does not exist"):
        compiled.export(str(tmp_path / "missing" / "m.so"))
