"""ONNX import: shapes, folding, unsupported operators, bad files."""

import numpy as np
import onnx
import pytest
from onnx_models import assert_matches_ort, computed_reshape, mlp, with_unsupported_ops

import fluidml_tvm
from fluidml_tvm import frontend
from fluidml_tvm.errors import FluidMLError


def test_parse_input_shapes_tvmc_syntax():
    got = frontend.parse_input_shapes("input_ids:[1,128] mask:[1, 128]  scope/in:0:[2]")
    assert got == {"input_ids": [1, 128], "mask": [1, 128], "scope/in:0": [2]}
    assert frontend.parse_input_shapes("") == {}


@pytest.mark.parametrize("bad, words", [
    ("x", "malformed --input-shapes"),
    ("x:[1,a]", "dims must be integers"),
    ("x:[1,2] trailing", "near 'trailing'"),
    ("x:[0,3]", "must be positive"),
    ("x:[1] x:[2]", "twice"),
])
def test_parse_input_shapes_rejects(bad, words):
    with pytest.raises(FluidMLError, match=words):
        frontend.parse_input_shapes(bad)


def test_dynamic_input_without_shape_names_input_and_flag():
    with pytest.raises(FluidMLError) as err:
        frontend.import_onnx(computed_reshape())
    msg = str(err.value)
    assert "'x'" in msg and "--input-shapes" in msg and "x:[N,N,8]" in msg


def test_input_shapes_must_name_real_inputs_and_match_rank():
    with pytest.raises(FluidMLError, match="does not have; its inputs are: x"):
        frontend.import_onnx(computed_reshape(), {"y": [1, 2]})
    with pytest.raises(FluidMLError, match="rank 2"):
        frontend.import_onnx(computed_reshape(), {"x": [1, 2]})
    with pytest.raises(FluidMLError, match="contradicts"):
        frontend.import_onnx(mlp(batch=4), {"x": [5, 32]})


@pytest.mark.parametrize("known_output_shape", [False, True])
def test_computed_reshape_folds_and_matches_ort(known_output_shape):
    model = computed_reshape(known_output_shape)
    imported = frontend.import_onnx(model, {"x": [2, 5, 8]})
    assert "onnxsim" in imported.folding
    ops = [n.op_type for n in imported.onnx_model.graph.node]
    assert "Shape" not in ops and "Concat" not in ops, ops
    assert imported.outputs[0].shape == (2, 5, 2, 4)
    compiled = fluidml_tvm.compile(model, "x86", input_shapes="x:[2,5,8]")
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype("float32")
    assert_matches_ort(model, compiled.load().run({"x": x}), {"x": x}, rtol=1e-5, atol=1e-6)


def test_all_unsupported_ops_reported_at_once_with_counts():
    with pytest.raises(FluidMLError) as err:
        frontend.import_onnx(with_unsupported_ops())
    msg = str(err.value)
    assert "2 operator type(s)" in msg
    assert "com.example.FrobnicateA x2" in msg and "com.example.FrobnicateB x1" in msg
    assert "\n" not in msg


def test_bad_files(tmp_path):
    with pytest.raises(FluidMLError, match="not found"):
        frontend.load_model(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(FluidMLError, match="cannot read .* as an ONNX model|is not an ONNX model"):
        frontend.load_model(garbage)
    text = tmp_path / "text.onnx"
    text.write_text("hello, this is not a model\n")
    with pytest.raises(FluidMLError, match="ONNX model"):
        frontend.load_model(text)
    good = mlp().SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(FluidMLError, match="truncated|not an ONNX model"):
        frontend.load_model(truncated)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(FluidMLError, match="empty"):
        frontend.load_model(empty)
    with pytest.raises(FluidMLError, match="directory"):
        frontend.load_model(tmp_path)


def test_opset_newer_than_onnx_knows():
    model = mlp()
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    with pytest.raises(FluidMLError, match="opset .* is newer"):
        frontend.load_model(model)


def test_int64_inputs_keep_their_dtype():
    from fluidml_tvm.tools import zoo

    imported = frontend.import_onnx(zoo.build("bert", size="tiny"))
    assert {s.dtype for s in imported.inputs} == {"int64"}
