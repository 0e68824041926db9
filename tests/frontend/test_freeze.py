"""Frozen inputs (--freeze-inputs, input_values): parsing, If folding, numerics, errors."""

import json

import numpy as np
import onnx
import pytest
from frontend_models import nested_switch, scaled_by_vector, voice_activity
from onnx_models import ort_run

import fluidml_tvm
from fluidml_tvm import cli, frontend
from fluidml_tvm.errors import FluidMLError

FAST = ["fluidml.cost=analytic"]


def test_parse_values_tvmc_like_syntax():
    got = frontend.parse_input_values("sr:16000 flag:true  scale:[0.5, 2] scope/in:0:-3 e:1e3")
    assert set(got) == {"sr", "flag", "scale", "scope/in:0", "e"}
    assert got["sr"].shape == () and got["sr"] == 16000
    assert got["flag"].dtype == bool and got["flag"]
    assert got["scale"].tolist() == [0.5, 2.0]
    assert got["scope/in:0"] == -3 and got["e"] == 1000.0
    assert frontend.parse_input_values("") == {} and frontend.parse_input_values(None) == {}


@pytest.mark.parametrize("bad, words", [
    ("sr", "malformed input_values"),
    ("sr:[1,2", "malformed input_values"),
    ("sr:abc", "cannot parse 'abc'"),
    ("v:[1,x]", r"cannot parse '\[1,x\]'"),
    ("sr:1 sr:2", "twice"),
])
def test_parse_values_rejects(bad, words):
    with pytest.raises(FluidMLError, match=words) as err:
        frontend.parse_input_values(bad)
    assert "\n" not in str(err.value)


def test_errors_name_the_flag_on_the_command_line_and_the_keyword_in_python():
    from fluidml_tvm.errors import cli_api

    with pytest.raises(FluidMLError, match=r"^input_values\['sr'\]: cannot parse 'x'"):
        frontend.parse_input_values("sr:x")
    with cli_api(), pytest.raises(FluidMLError, match="^--freeze-inputs sr: cannot parse 'x'"):
        frontend.parse_input_values("sr:x")
    with cli_api(), pytest.raises(FluidMLError, match="^malformed --freeze-inputs"):
        frontend.parse_input_values("sr")


@pytest.mark.parametrize("rate, frame", [(16000, 4), (8000, 2)])
def test_frozen_rate_folds_the_if_and_matches_ort(rate, frame):
    model = voice_activity()
    imported = frontend.import_onnx(model, {"x": [1, 16]}, {"sr": rate})
    ops = [n.op_type for n in imported.onnx_model.graph.node]
    assert "If" not in ops and "Shape" not in ops, ops
    assert [s.name for s in imported.inputs] == ["x"]
    assert imported.outputs[0].shape == (1, 16 // frame)
    assert f"froze sr={rate}" in imported.folding and "If 1 -> 0" in imported.folding

    compiled = fluidml_tvm.compile(model, input_shapes="x:[1,16]", input_values={"sr": rate},
                                   pass_config=FAST)
    assert [s.name for s in compiled.inputs] == ["x"]
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    got = compiled.load().run({"x": x})
    ref = ort_run(model, {"x": x, "sr": np.array(rate, np.int64)})[0]
    np.testing.assert_allclose(got["y"], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("values", ["sr:16000 flag:1", "sr:16000 flag:0", "sr:[8000] flag:1"])
def test_nested_if_folds_where_onnxsim_fails(values):
    model = nested_switch()
    frozen = frontend.parse_input_values(values)
    compiled = fluidml_tvm.compile(model, input_values=values, pass_config=FAST)
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    feeds = {"x": x, "sr": np.array(frozen["sr"], np.int64).reshape(1),
             "flag": np.array(frozen["flag"], np.int64)}
    np.testing.assert_allclose(compiled.load().run({"x": x})["y"], ort_run(model, feeds)[0],
                               rtol=1e-5, atol=1e-6)


def test_without_freezing_the_if_fails_in_one_line(capfd):
    with pytest.raises(FluidMLError) as err:
        fluidml_tvm.compile(voice_activity(), input_shapes="x:[1,16]", pass_config=FAST)
    msg = str(err.value)
    assert "\n" not in msg and "TVM's ONNX importer failed at node" in msg
    assert "(Reshape) inside node 'pick_rate' (If)" in msg
    out, errtext = capfd.readouterr()
    assert out == "" and errtext == ""


def test_cli_freeze_inputs_drops_the_input_from_the_metadata(tmp_path, capfd):
    path = tmp_path / "vad.onnx"
    onnx.save(voice_activity(), str(path))
    lib = tmp_path / "vad.so"
    code = cli.main(["compile", str(path), "--input-shapes", "x:[1,16]", "--freeze-inputs",
                     "sr:16000", "-o", str(lib), "-q", "--pass-config", FAST[0]])
    out, err = capfd.readouterr()
    assert code == 0, err
    meta = json.loads((tmp_path / "vad.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["x"]
    assert "froze sr=16000" in meta["shape_folding"]
    model = fluidml_tvm.load(str(lib))
    x = np.ones((1, 16), np.float32)
    np.testing.assert_allclose(model.run({"x": x})["y"], np.full((1, 4), 1.5), rtol=1e-6)


def test_small_tensor_and_bool_values():
    model = scaled_by_vector()
    compiled = fluidml_tvm.compile(model, input_values="w:[2,-1] flag:1", pass_config=FAST)
    assert [s.name for s in compiled.inputs] == ["x"]
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    want = ort_run(model, {"x": x, "w": np.array([2, -1], np.float32),
                           "flag": np.array([True])})[0]
    np.testing.assert_allclose(compiled.load().run({"x": x})["y"], want)


@pytest.mark.parametrize("values, words", [
    ({"rate": 16000}, "names 'rate', which the model does not have; its inputs are: x, sr"),
    ({"sr": [16000, 8000]}, r"shape \[2\] \(2 element\(s\)\) does not fit the input's shape \[\]"),
    ({"sr": 16000.5}, "16000.5 is not a valid int64 value"),
    ({"sr": "fast"}, "is not a number"),
    ("sr:16k", "cannot parse '16k'"),
])
def test_freeze_errors_are_one_line(values, words):
    with pytest.raises(FluidMLError, match=words) as err:
        frontend.import_onnx(voice_activity(), {"x": [1, 16]}, values)
    assert "\n" not in str(err.value)


def test_freeze_shape_checks():
    model = scaled_by_vector()
    with pytest.raises(FluidMLError, match=r"does not fit the input's shape \[2\]"):
        frontend.import_onnx(model, None, {"w": [1, 2, 3]})
    with pytest.raises(FluidMLError, match="not a valid bool"):
        frontend.import_onnx(model, None, {"flag": 2})
    # a scalar for a one-element input, and an --input-shapes entry for a frozen input are fine
    imported = frontend.import_onnx(model, {"w": [2]}, {"w": np.array([1.0, 2.0]), "flag": 0})
    assert [s.name for s in imported.inputs] == ["x"]
