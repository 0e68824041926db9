"""Compile observability (instruments.py): per-pass times, IR after a pass, IR dumps, progress."""

from __future__ import annotations

from onnx_models import mlp

import fluidml_tvm
from fluidml_tvm.pipeline import dump_names


def test_dump_ir_writes_every_stage_and_print_ir_after_prints(tmp_path, capsys):
    out = tmp_path / "ir"
    fluidml_tvm.compile(mlp(), pass_config=["fluidml.cost=analytic"], dump_ir=str(out),
                        print_ir_after="fluidml.memory")
    written = sorted(p.name for p in out.iterdir())
    assert written and all(name.endswith(".py") or name.endswith(".txt") for name in written)
    stages = {n.split("fluidml.")[1].split(".")[0] for n in written if "fluidml." in n}
    assert {"split", "layout", "legalize", "schedule", "lower", "memory"} <= stages
    assert "R.memory.alloc_storage" in capsys.readouterr().out


def test_timing_table_and_progress(capsys):
    c = fluidml_tvm.compile(mlp(), pass_config=["fluidml.cost=analytic"], progress=True,
                            timing=True)
    err = capsys.readouterr().err
    assert "[fluidml-tvm]   schedule  done in" in err and "slowest passes" in err
    assert c.pass_times and all(t >= 0 for t in c.pass_times.values())


def test_dump_names_come_from_the_phase_list():
    names = dump_names()
    assert names[0] == "fluidml.dispatch" and "fluidml.weights" not in names
    assert "FuseTIR" in names and "StaticPlanBlockMemory" in names
