"""The metadata file beside a library: its path, and one-line errors for every way it can be bad."""

import json
import pathlib

import pytest

from fluidml_tvm.errors import FluidMLError
from fluidml_tvm.runtime import metadata_path, read_metadata


def test_metadata_path_replaces_the_extension():
    assert metadata_path("out/model.so") == "out/model.json"
    assert metadata_path(pathlib.Path("a.v1/model.tar")) == "a.v1/model.json"
    assert metadata_path("model") == "model.json"


def _one_line_error(lib, match):
    with pytest.raises(FluidMLError, match=match) as info:
        read_metadata(str(lib))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_metadata(tmp_path):
    msg = _one_line_error(tmp_path / "m.so", "no metadata file")
    assert str(tmp_path / "m.json") in msg and "fluidml-tvm compile" in msg


def test_metadata_that_is_not_json(tmp_path):
    (tmp_path / "m.json").write_text("{\n  'inputs': [")
    _one_line_error(tmp_path / "m.so", r"cannot read metadata .*m\.json: ")


def test_metadata_of_another_format(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"format": "tvmc", "inputs": []}))
    _one_line_error(tmp_path / "m.so", r"m\.json is not a fluidml-tvm metadata file")
    (tmp_path / "m.json").write_text("{}")
    _one_line_error(tmp_path / "m.so", "is not a fluidml-tvm metadata file")


def test_valid_metadata_is_returned_as_written(tmp_path):
    data = {"format": "fluidml-tvm", "inputs": [{"name": "x", "shape": [1], "dtype": "float32"}],
            "outputs": []}
    (tmp_path / "m.json").write_text(json.dumps(data))
    assert read_metadata(tmp_path / "m.so") == data


def test_exported_library_metadata(mlp_lib):
    lib, _ = mlp_lib
    meta = read_metadata(lib)
    assert meta["format"] == "fluidml-tvm"
    assert meta["inputs"] == [{"name": "x", "shape": [4, 32], "dtype": "float32"}]
    assert [o["name"] for o in meta["outputs"]] == ["y"]
