"""Loading and running a library: outputs match ONNX Runtime, inputs are checked and made in
tvmc's fill modes, the thread count is set before TVM's pool starts, and every user error is one
line."""

import os

import numpy as np
import pytest
import tvm
from onnx_models import assert_matches_ort

import fluidml_tvm
from fluidml_tvm.errors import FluidMLError
from fluidml_tvm.runtime import Model, load, set_num_threads

SPECS = {"inputs": [{"name": "x", "shape": [2, 3], "dtype": "float32"},
                    {"name": "ids", "shape": [4], "dtype": "int64"},
                    {"name": "flag", "shape": [1], "dtype": "bool"}],
         "outputs": [{"name": "y", "shape": [2, 3], "dtype": "float32"}]}


def _unloaded():
    """A Model around no VM: enough to make and check inputs."""
    return Model(None, tvm.cpu(), SPECS, 1)


def _one_line(match, fn, *args):
    with pytest.raises(FluidMLError, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_load_run_and_time(mlp_lib, capfd):
    lib, onnx_model = mlp_lib
    model = load(lib)
    assert isinstance(model, Model)
    assert model.input_names == ["x"] and model.output_names == ["y"]
    assert model.num_threads == int(os.environ["TVM_NUM_THREADS"])
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 32)).astype("float32")}
    assert_matches_ort(onnx_model, model.run(feeds), feeds)
    assert_matches_ort(onnx_model, model.run([feeds["x"]]), feeds)  # positional inputs
    assert_matches_ort(onnx_model, model.run({"x": feeds["x"].astype("float64")}), feeds)
    assert "notice: input x is float64, the model takes float32: cast" in capfd.readouterr().err
    times = model.time(feeds, repeat=3, number=2)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert fluidml_tvm.load(lib).run(feeds)["y"].shape == (4, 16)  # the package's front door


def test_random_inputs_in_every_fill_mode():
    model = _unloaded()
    zeros, ones = model.random_inputs("zeros"), model.random_inputs("ones")
    for spec in SPECS["inputs"]:
        for feeds, value in ((zeros, 0), (ones, 1)):
            a = feeds[spec["name"]]
            assert a.shape == tuple(spec["shape"]) and a.dtype == np.dtype(spec["dtype"])
            assert (a == value).all()
    rand = model.random_inputs("random", seed=3)
    assert rand["x"].dtype == np.float32 and rand["x"].std() > 0
    assert set(np.unique(rand["ids"])) <= {0, 1} and rand["flag"].dtype == bool
    again = model.random_inputs(seed=3)
    assert all(np.array_equal(rand[k], again[k]) for k in rand)
    _one_line("fill_mode must be random, zeros or ones, got 'nan'", model.random_inputs, "nan")


def test_input_errors_are_one_line(capfd):
    model = _unloaded()
    good = model.random_inputs()
    assert len(model._arrays(good)) == 3
    assert len(model._arrays({"x": good["x"]})) == 3  # the others filled, with a notice
    assert "input(s) ids, flag not in the inputs: filled" in capfd.readouterr().err
    _one_line("which the model does not take", model._arrays, {**good, "extra": good["x"]})
    _one_line(r"input x has shape \[3, 2\], the model was compiled for \[2, 3\]",
              model._arrays, {**good, "x": good["x"].T})


def test_load_errors_are_one_line(mlp_lib, tmp_path):
    _one_line("library not found", load, str(tmp_path / "none.so"))
    lib, _ = mlp_lib
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"not a shared object")
    (tmp_path / "bad.json").write_text(open(os.path.splitext(lib)[0] + ".json").read())
    _one_line(r"cannot load .*bad\.so", load, str(bad))


def test_set_num_threads(monkeypatch):
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    assert set_num_threads(None) == (os.cpu_count() or 1)
    assert set_num_threads(3) == 3 and os.environ["TVM_NUM_THREADS"] == "3"
    monkeypatch.setenv("TVM_NUM_THREADS", "5")
    assert set_num_threads(0) == 5  # an explicit environment wins over the default
    assert set_num_threads(1) == 1  # and an explicit count over the environment


def test_scalar_inputs_stay_scalars():
    """ONNX's 54 Clip cases (min/max as rank-0 inputs) failed at run time on both pipelines:
    np.ascontiguousarray made each scalar a [1] array ("expect Tensor with ndim 0 but get 1")."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("lo", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("hi", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    feeds = {"x": x, "lo": np.array(-1, np.float32), "hi": np.array(1, np.float32)}
    for flag in ("fluidml=0", "fluidml=1"):
        out = fluidml_tvm.compile(model, pass_config=[flag, "fluidml.cost=analytic"]).load()
        np.testing.assert_array_equal(out.run(feeds)["y"], np.clip(x, -1, 1))
