"""The fluidml-tvm command line: compile, run, targets, and one-line errors with exit code 2."""

import json
import os
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli, save_mlp
from onnx_models import computed_reshape, mlp, ort_run, with_unsupported_ops


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    return save_mlp(tmp_path_factory)


def test_compile_then_run_matches_ort(mlp_file, tmp_path, capsys):
    lib = tmp_path / "mlp.so"
    code, _, err = run_cli(["compile", mlp_file, "-o", lib, "--pass-config", "fluidml=1"], capsys)
    assert code == 0, err
    assert "importing" in err and "wrote" in err  # progress output
    meta = json.loads((tmp_path / "mlp.json").read_text())
    assert meta["inputs"] == [{"name": "x", "shape": [4, 32], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "y", "shape": [4, 16], "dtype": "float32"}]
    assert meta["options"]["fluidml"] is True and meta["target_kind"] == "llvm"
    assert meta["planned_memory_bytes"]["main"] > 0
    x = np.random.default_rng(3).standard_normal((4, 32)).astype("float32")
    np.savez(tmp_path / "in.npz", x=x)
    code, out, err = run_cli(["run", lib, "--inputs", tmp_path / "in.npz", "--outputs",
                              tmp_path / "out.npz", "--print-time", "--repeat", "3"], capsys)
    assert code == 0, err
    assert "median (ms)" in out
    got = np.load(tmp_path / "out.npz")["y"]
    np.testing.assert_allclose(got, ort_run(mlp(), {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_stock_and_fluidml_pipelines_both_selectable(mlp_file, tmp_path, capsys):
    for flag in ("fluidml=0", "fluidml=1"):
        lib = tmp_path / f"m{flag[-1]}.so"
        code, _, err = run_cli(["compile", mlp_file, "-o", lib, "-q", "--pass-config", flag],
                               capsys)
        assert code == 0, err
        meta = json.loads((tmp_path / f"m{flag[-1]}.json").read_text())
        assert meta["options"]["fluidml"] is (flag == "fluidml=1")
        assert ("stock" in meta["pipeline"]) is (flag == "fluidml=0")


def test_kill_switches_and_ir_dump(mlp_file, tmp_path, capsys):
    dump = tmp_path / "ir"
    code, out, err = run_cli(
        ["compile", mlp_file, "-o", tmp_path / "k.so", "--pass-config", "fluidml.layout=0",
         "--pass-config", "fluidml.memory=0", "--pass-config", "fluidml.schedule=0",
         "--dump-ir", dump, "--print-ir-after", "FuseTIR", "--timing"], capsys)
    assert code == 0, err
    assert "# IR after FuseTIR" in out and "def main" in out
    assert "slowest passes" in err
    dumped = sorted(os.listdir(dump))
    assert any("fluidml.legalize" in f for f in dumped), dumped
    meta = json.loads((tmp_path / "k.json").read_text())
    assert not meta["options"]["fluidml.layout"] and not meta["options"]["fluidml.memory"]


def test_run_fill_modes_and_print_top(mlp_file, tmp_path, capsys):
    lib = tmp_path / "f.so"
    assert run_cli(["compile", mlp_file, "-o", lib, "-q"], capsys)[0] == 0
    for mode in ("zeros", "ones", "random"):
        code, out, err = run_cli(["run", lib, "--fill-mode", mode, "--print-top", "3"], capsys)
        assert code == 0, err
        assert out.startswith("y: top 3")


def _expect_error(args, capsys, *words):
    code, out, err = run_cli(args, capsys)
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.splitlines() if ln.startswith("fluidml-tvm: error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in err


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, mlp_file):
    _expect_error(["compile", tmp_path / "nope.onnx"], capsys, "not found")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(3000))
    _expect_error(["compile", garbage], capsys, "ONNX")
    data = open(mlp_file, "rb").read()
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(data[: len(data) // 3])
    _expect_error(["compile", truncated], capsys, "ONNX")
    unsup = tmp_path / "unsup.onnx"
    onnx.save(with_unsupported_ops(), str(unsup))
    _expect_error(["compile", unsup], capsys, "FrobnicateA x2", "FrobnicateB x1")
    dyn = tmp_path / "dyn.onnx"
    onnx.save(computed_reshape(), str(dyn))
    _expect_error(["compile", dyn], capsys, "'x'", "--input-shapes")
    _expect_error(["compile", dyn, "--input-shapes", "x:[1,2"], capsys, "malformed")
    _expect_error(["compile", mlp_file, "--target", "potato"], capsys, "unknown target")
    _expect_error(["compile", mlp_file, "--target", '{"kind": "nope"}'], capsys, "invalid target")
    _expect_error(["compile", mlp_file, "--pass-config", "fluidml.bogus=1"], capsys,
                  "unknown pass-config key")
    _expect_error(["compile", mlp_file, "--pass-config", "fluidml.layout=maybe"], capsys,
                  "expects 0 or 1")
    _expect_error(["compile", mlp_file, "-o", tmp_path / "no" / "dir" / "x.so"], capsys,
                  "does not exist")
    _expect_error(["run", tmp_path / "missing.so"], capsys, "not found")


def test_run_errors(mlp_file, tmp_path, capsys):
    lib = tmp_path / "r.so"
    assert run_cli(["compile", mlp_file, "-o", lib, "-q"], capsys)[0] == 0
    np.savez(tmp_path / "bad.npz", z=np.zeros(3, "float32"))
    _expect_error(["run", lib, "--inputs", tmp_path / "bad.npz"], capsys, "does not take")
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 2), "float32"))
    _expect_error(["run", lib, "--inputs", tmp_path / "shape.npz"], capsys, "compiled for")
    (tmp_path / "notnpz.npz").write_text("no")
    _expect_error(["run", lib, "--inputs", tmp_path / "notnpz.npz"], capsys, "cannot read")


def test_targets_lists_presets(capsys):
    code, out, _ = run_cli(["targets"], capsys)
    assert code == 0
    for name in ("x86", "rasp4b", "jetson-orin", "cuda"):
        assert name in out


def test_console_script_exit_code(tmp_path):
    """The installed entry point: a real process, exit code 2, no traceback."""
    exe = shutil.which("fluidml-tvm")
    assert exe, "the fluidml-tvm console script is not installed (pip install -e .)"
    proc = subprocess.run([exe, "compile", str(tmp_path / "missing.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("fluidml-tvm: error: model file not")
    assert "Traceback" not in proc.stderr


def test_tvm_compile_error_becomes_one_line(mlp_file, tmp_path, capsys, monkeypatch):
    """TVM raises RuntimeError subclasses from C++; the CLI reports them in one line."""
    import tvm

    def broken(*_args, **_kwargs):
        raise RuntimeError("Traceback (most recent call last):\n  0: foo\nInternalError: boom")

    from fluidml_tvm import kernel_cache

    monkeypatch.setattr(tvm, "compile", broken)  # fluidml=0, kernel_cache=0, other targets
    monkeypatch.setattr(kernel_cache, "compile", broken)  # host LLVM compiles with FluidML
    _expect_error(["compile", mlp_file, "-o", tmp_path / "x.so"], capsys,
                  "TVM failed to compile the model", "InternalError: boom")


def test_compile_report_explains_decisions(tmp_path, capsys):
    code, out, err = run_cli(["compile", "zoo:bert:tiny", "-o", tmp_path / "b.so", "-q",
                              "--report"], capsys)
    assert code == 0, err
    assert "## layout" in out and "## schedule" in out and "## memory" in out
    assert "matmul - " in out  # the rule that scheduled each matmul kernel, with its reason
    assert "live-set lower bound" in out


def _ids_and_mask():
    """y = float(ids) * float(mask); both inputs [batch, seq] by dim_param names."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["ids_f", "m"], ["y"])],
        "g", [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
              for n in ("ids", "mask")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cli_and_python_api_treat_inputs_alike(tmp_path, capsys):
    """Issue #15's parity: a shape fixed on one input fixes the same dim names on the other (a
    notice in both); a missing input is filled with a notice in both; a float array for an int64
    input is an error in both; each message in the words of the API called."""
    import fluidml_tvm
    from fluidml_tvm.errors import FluidMLError

    path = tmp_path / "m.onnx"
    onnx.save(_ids_and_mask(), str(path))
    lib = tmp_path / "m.so"
    code, _, err = run_cli(["compile", path, "--input-shapes", "ids:[2,3]", "-o", lib, "-q",
                            "--pass-config", "fluidml=0"], capsys)
    assert code == 0, err
    assert "notice: input mask [batch,seq]: shape [2,3] inferred from ids" in err, err
    fluidml_tvm.compile(str(path), input_shapes={"ids": [2, 3]}, pass_config=["fluidml=0"])
    assert "notice: input mask [batch,seq]: shape [2,3] inferred from ids" in \
        capsys.readouterr().err

    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    np.savez(tmp_path / "ids.npz", ids=ids)
    code, _, err = run_cli(["run", lib, "--inputs", tmp_path / "ids.npz", "--fill-mode", "ones",
                            "--outputs", tmp_path / "out.npz"], capsys)
    assert code == 0, err
    assert "notice: input(s) mask not in --inputs: filled with ones values (--fill-mode ones)" \
        in err, err
    model = fluidml_tvm.load(str(lib))
    got = model.run({"ids": ids}, fill_mode="ones")["y"]
    assert "notice: input(s) mask not in the inputs: filled with ones values " \
        "(fill_mode='ones')" in capsys.readouterr().err
    np.testing.assert_array_equal(got, np.load(tmp_path / "out.npz")["y"])
    np.testing.assert_array_equal(got, ids)

    np.savez(tmp_path / "float.npz", ids=ids.astype(np.float64))
    _expect_error(["run", lib, "--inputs", tmp_path / "float.npz"], capsys,
                  "input ids is float64, the model takes int64")
    with pytest.raises(FluidMLError, match="input ids is float64, the model takes int64"):
        model.run({"ids": ids.astype(np.float64)})
