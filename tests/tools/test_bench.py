"""The benchmark instrument on tiny models (CI runs the whole tiny zoo through it)."""

import json
import os
import subprocess
import sys

from onnx_models import mlp

import fluidml_tvm
from fluidml_tvm.tools import bench, zoo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_memory_numbers_match_the_hand_computation():
    """benchmarks/README.md: MLP 32->64->48->16, batch 4: bound = 1024 + 768 bytes."""
    for flag in ("fluidml=0", "fluidml=1"):
        c = fluidml_tvm.compile(mlp(batch=4, sizes=(32, 64, 48, 16)), pass_config=[flag])
        assert c.memory_bound == {"main": 1792}
        assert c.planned_memory == {"main": 1792}


def test_heap_and_rss_probes_see_allocations():
    import numpy as np

    before = bench.heap_bytes()
    block = np.ones(8 * 2**20, dtype=np.uint8)  # 8 MB
    assert bench.heap_bytes() - before >= 8 * 2**20
    assert bench.peak_rss_bytes() >= block.nbytes


def test_tiny_zoo_suite(tmp_path):
    """All engines on every tiny zoo model: files written, outputs match ONNX Runtime."""
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run_zoo.py"), "--size", "tiny",
         "--rounds", "1", "--repeat", "3", "--budget", "2", "--out", str(tmp_path),
         "--name", "tiny"], capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert [r["model"] for r in result["rows"]] == [f"{m}:tiny" for m in zoo.MODELS]
    info = result["info"]  # where and how it ran (issue #15: honest results)
    assert info["commit"] and not info["commit"].startswith("unknown"), info["commit"]
    assert info["cpu"] and info["llvm_cpu"] and isinstance(info["isa"], list)
    assert len(info["load_before"]) == 3 and len(info["load_after"]) == 3
    assert "first run" in info["memory_method"]
    for row in result["rows"]:
        for engine, m in row["engines"].items():
            assert m["samples"] >= 1 and m["median_ms"] > 0, (row["model"], engine)
            assert m["peak_rss_bytes"] > 0
            assert m["max_abs_diff_vs_ort"] < 1e-3, (row["model"], engine, m)
            if engine != "ort":
                assert m["planned_bytes"] >= m["bound_bytes"] > 0
                assert m["peak_activation_bytes"] > 0
                assert m["peak_activation_bytes_second_run"] > 0
                assert m["pass_config"][0] == ("fluidml=1" if engine == "fluidml" else "fluidml=0")
                assert m["options"]["fluidml"] is (engine == "fluidml")
            else:
                assert m["options"]["intra_op_num_threads"] == result["info"]["threads"]
        assert set(row["ratios"]) == {"fluidml/ort", "fluidml/tvm", "tvm/ort"}
    table = (tmp_path / "tiny.md").read_text()
    assert "fluidml/ort" in table and "bert:tiny" in table
    assert f"Commit {info['commit']}; ISA " in table and "- fluidml: pass-config `fluidml=1`" \
        in table
    from needs import require

    try:
        import matplotlib  # noqa: F401
        missing = None
    except ImportError as err:
        missing = str(err)
    require(missing, "matplotlib (pip install -e '.[plot]')")
    assert (tmp_path / "tiny-ratios.png").stat().st_size > 1000
    assert (tmp_path / "tiny-bert_tiny-memory.png").stat().st_size > 1000


def test_cli_benchmark_rejects_bad_engine(capsys):
    from fluidml_tvm import cli

    assert cli.main(["benchmark", "zoo:bert:tiny", "--engines", "fluidml,onnx"]) == 2
    assert "--engines takes a subset" in capsys.readouterr().err


def test_markdown_table():
    """The report's two tables, '-' where an engine has no value (ORT compiles nothing)."""
    info = {"cpu": "CPU", "cores": 2, "threads": 2, "tvm": "0.27", "onnxruntime": "1.2",
            "date": "D"}
    engines = {
        "fluidml": {"median_ms": 1.0, "min_ms": 0.9, "max_ms": 1.5, "samples": 3,
                    "compile_seconds": 2.25, "planned_bytes": 2e6, "bound_bytes": 1e6,
                    "peak_activation_bytes": 3e6, "peak_rss_bytes": 50e6,
                    "max_abs_diff_vs_ort": 1.5e-6},
        "ort": {"median_ms": 2.0, "min_ms": 2.0, "max_ms": 2.0, "samples": 3,
                "compile_seconds": None, "peak_rss_bytes": 100e6},
    }
    rows = [{"model": "bert:tiny", "engines": engines, "ratios": {"fluidml/ort": 0.5}}]
    lines = bench.markdown_table(rows, info).splitlines()
    assert lines[0] == "Host: CPU, 2 cores, 2 threads per engine; TVM 0.27, ONNX Runtime 1.2; D"
    assert lines[4] == ("| bert:tiny | fluidml | 1.00 (0.90-1.50, 3) | 2.2 | 2.00 | 1.00 | 3.00 "
                        "| 50.00 | 1.50e-06 |")
    assert lines[5] == "| bert:tiny | ort | 2.00 (2.00-2.00, 3) | - | - | - | - | 100.00 | - |"
    assert lines[-1] == "| bert:tiny | 0.5x | - | - | - | 0.50x |"


def test_markdown_header_records_provenance():
    """Commit, ISA, load before/after, the memory method and each engine's options."""
    info = {"cpu": "CPU", "cores": 2, "threads": 2, "tvm": "0.27", "onnxruntime": "1.2",
            "date": "D", "commit": "abc123+dirty", "isa": ["avx2", "fma"], "llvm_cpu": "znver4",
            "load_before": [1.0, 2.0, 3.0], "load_after": [1.5, 2.0, 3.0],
            "memory_method": "first run"}
    eng = {"median_ms": 1.0, "min_ms": 1.0, "max_ms": 1.0, "samples": 1}
    engines = {"fluidml": {**eng, "pass_config": ["fluidml=1", "fluidml.layout=0"],
                           "options": {**fluidml_tvm.Options().to_dict(), "fluidml.layout": False}},
               "tvm": {**eng, "pass_config": ["fluidml=0"], "options": {"fluidml": False}},
               "ort": {**eng, "options": {"intra_op_num_threads": 2}}}
    lines = bench.markdown_table([{"model": "m", "engines": engines, "ratios": {}}], info)
    lines = lines.splitlines()
    assert lines[1] == ("Commit abc123+dirty; ISA avx2 fma (LLVM cpu znver4); load average "
                        "(1/5/15 min) 1.0/2.0/3.0 before, 1.5/2.0/3.0 after.")
    assert lines[2] == "Memory: first run."
    assert lines[3] == ("- fluidml: pass-config `fluidml=1 fluidml.layout=0`; options off the "
                        "defaults: fluidml.layout=False")
    assert lines[4] == "- tvm: pass-config `fluidml=0`"
    assert lines[5] == "- ort: intra_op_num_threads=2"
