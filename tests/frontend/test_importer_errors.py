"""A failure inside TVM's ONNX importer: one line naming the node, nothing else printed."""

import onnx
import pytest
from frontend_models import reshape_by_input, voice_activity

from fluidml_tvm import cli, frontend
from fluidml_tvm.errors import FluidMLError


def test_importer_failure_is_one_line_naming_the_node(capfd):
    with pytest.raises(FluidMLError) as err:
        frontend.import_onnx(reshape_by_input())
    msg = str(err.value)
    assert msg.startswith("TVM's ONNX importer failed at node 'reshape_by_input' (Reshape): ")
    assert "\n" not in msg
    out, errtext = capfd.readouterr()
    assert out == "" and errtext == ""  # TVM printed the Relax inputs and a BlockBuilder warning


def test_cli_prints_only_the_error_line(tmp_path, capfd):
    path = tmp_path / "bad.onnx"
    onnx.save(reshape_by_input(), str(path))
    code = cli.main(["compile", str(path), "-o", str(tmp_path / "bad.so"), "-q"])
    out, err = capfd.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("fluidml-tvm: error: TVM's ONNX importer "
                                                   "failed at node 'reshape_by_input' (Reshape)")


def test_debug_shows_what_tvm_printed(monkeypatch, capfd):
    monkeypatch.setenv("FLUIDML_TVM_DEBUG", "1")
    with pytest.raises(FluidMLError, match="reshape_by_input"):
        frontend.import_onnx(reshape_by_input())
    out, err = capfd.readouterr()
    assert "Error converting operator Reshape" in err and "Traceback" in err


def test_node_inside_an_if_branch_names_the_if():
    with pytest.raises(FluidMLError) as err:
        frontend.import_onnx(voice_activity(samples=16))
    assert "at node 'then_reshape' (Reshape) inside node 'pick_rate' (If)" in str(err.value)


def test_unnamed_node_is_described_by_its_output():
    model = reshape_by_input()
    for node in model.graph.node:
        node.name = ""
    with pytest.raises(FluidMLError, match=r"at unnamed Reshape node \(output 'y'\)"):
        frontend.import_onnx(model)


def test_captured_output_restores_the_descriptors(capfd):
    import os

    with frontend.captured_output() as printed:
        os.write(1, b"to fd 1\n")
        os.write(2, b"to fd 2\n")
        print("from python")
    assert "to fd 1" in printed[0] and "to fd 2" in printed[0] and "from python" in printed[0]
    os.write(1, b"after\n")
    print("after, python")
    out, _ = capfd.readouterr()
    assert out == "after\nafter, python\n"
