"""The command line's measuring flags and ``fluidml-tvm tune`` (cli_tuning.py): tune writes
records and no library, compile reads them (a notice for records of another thread count),
--timing says where the time went, a bad --tune-budget or records file is one line, exit 2."""

import json

import pytest
from cli_helpers import run_cli, save_mlp


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    return save_mlp(tmp_path_factory)


def test_tune_writes_records_that_compile_reads_and_timing(mlp_file, tmp_path, capsys,
                                                           monkeypatch):
    """fluidml-tvm tune -o FILE (no library), compile --tuning-records FILE (a record of another
    thread count: a notice, not silence), --timing (where the time went), -q keeps notices."""
    monkeypatch.setenv("FLUIDML_TVM_CACHE", str(tmp_path / "team"))
    rec = tmp_path / "records.jsonl"
    code, _, err = run_cli(["tune", mlp_file, "-o", rec, "--tune-budget", "30"], capsys)
    assert code == 0, err
    assert rec.exists() and f"records in {rec}" in err
    assert not list(tmp_path.glob("*.so"))
    lines = rec.read_text().splitlines()
    foreign = {"format": "fluidml-tvm-records", "version": 1, "table": "choices",
               "target": "llvm|avx2-256x16|threads=64", "tvm": fluidml_tvm_version(),
               "rule": "matmul", "workload": "x:y", "config": {"mr": 1}, "seconds": 1.0}
    rec.write_text("\n".join([*lines, json.dumps(foreign)]) + "\n")
    monkeypatch.setenv("FLUIDML_TVM_CACHE", str(tmp_path / "ci"))
    code, _, err = run_cli(["compile", mlp_file, "-o", tmp_path / "m.so", "-q", "--timing",
                            "--tuning-records", rec, "--save-tuning-records",
                            tmp_path / "used.jsonl"], capsys)
    assert code == 0, err
    assert "records ignored: measured for threads 64" in err
    for step in ("import", "stage schedule", "codegen", "export", "total",
                 "tune budget 5 s (auto)"):
        assert step in err, step
    assert (tmp_path / "used.jsonl").exists()
    for bad in ("-5", "fast"):
        code, _, err = run_cli(["compile", mlp_file, "--tune-budget", bad], capsys)
        assert code == 2 and "--tune-budget" in err and "Traceback" not in err
    code, _, err = run_cli(["compile", mlp_file, "-o", tmp_path / "a.so", "-q", "--timing",
                            "--tune-budget", "auto"], capsys)
    assert code == 0 and "tune budget 5 s (auto)" in err, err
    rec.write_text("garbage\n")
    code, _, err = run_cli(["compile", mlp_file, "-o", tmp_path / "m.so", "-q",
                            "--tuning-records", rec], capsys)
    assert code == 2 and "not a fluidml-tvm tuning record" in err


def fluidml_tvm_version():
    from fluidml_tvm.records import tvm_version

    return tvm_version()
