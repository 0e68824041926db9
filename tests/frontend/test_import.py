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
    ("x", "malformed input_shapes"),
    ("x:[1,a]", "dims must be integers"),
    ("x:[1,2] trailing", "near 'trailing'"),
    ("x:[0,3]", "must be positive"),
    ("x:[1] x:[2]", "twice"),
])
def test_parse_input_shapes_rejects(bad, words):
    with pytest.raises(FluidMLError, match=words):
        frontend.parse_input_shapes(bad)


def test_dynamic_input_without_shape_names_input_and_the_callers_option():
    """The Python API names the keyword argument and a dict, the CLI the flag and its syntax."""
    from fluidml_tvm.errors import cli_api

    with pytest.raises(FluidMLError) as err:
        frontend.import_onnx(computed_reshape())
    msg = str(err.value)
    assert "'x'" in msg and 'fix them with input_shapes={"x": [N, N, 8]}' in msg, msg
    with cli_api(), pytest.raises(FluidMLError) as err:
        frontend.import_onnx(computed_reshape())
    assert 'fix them with --input-shapes "x:[N,N,8]"' in str(err.value), str(err.value)
    with pytest.raises(FluidMLError, match=r"^input_shapes\['x'\]=\[1,2\] has rank 2"):
        frontend.import_onnx(computed_reshape(), {"x": [1, 2]})
    with cli_api(), pytest.raises(FluidMLError, match=r"^--input-shapes x=\[1,2\] has rank 2"):
        frontend.import_onnx(computed_reshape(), {"x": [1, 2]})
    with pytest.raises(FluidMLError, match=r"input_shapes\['x'\]: dims must be positive"):
        frontend.import_onnx(computed_reshape(), {"x": [2, 0, 8]})


def _two_inputs(dims_a, dims_b):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["ids_f", "m"], ["y"])],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, dims_a),
              helper.make_tensor_value_info("mask", TensorProto.INT64, dims_b)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_dim_fixed_on_one_input_fixes_the_same_dim_name_on_another(capfd):
    """input_ids:[1,128] also fixes attention_mask's [batch, seq] (the same dim_param names),
    with a notice; a dim name that stays unknown is still an error."""
    model = _two_inputs(["batch", "seq"], ["batch", "seq"])
    specs = frontend.input_specs(model, {"ids": [1, 128]})
    assert [s.shape for s in specs] == [(1, 128), (1, 128)]
    err = capfd.readouterr().err
    assert "notice: input mask [batch,seq]: shape [1,128] inferred from ids" in err, err
    compiled = fluidml_tvm.compile(model, input_shapes={"ids": [2, 3]}, pass_config=["fluidml=0"])
    ids, mask = np.arange(6).reshape(2, 3), np.ones((2, 3), np.int64)
    np.testing.assert_array_equal(compiled.load().run({"ids": ids, "mask": mask})["y"], ids)
    partly = _two_inputs(["batch", "seq"], ["batch", "other"])
    with pytest.raises(FluidMLError, match=r"input 'mask' has dynamic dims \[batch,other\]; "
                                           r"fix them with input_shapes=\{\"mask\": \[1, N\]\}"):
        frontend.input_specs(partly, {"ids": [1, 128]})
    with pytest.raises(FluidMLError, match=r"gives dim 'seq' two sizes: 128 \(ids\) and 64 "
                                           r"\(mask\); the model declares them equal"):
        frontend.input_specs(model, {"ids": [1, 128], "mask": [1, 64]})


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
