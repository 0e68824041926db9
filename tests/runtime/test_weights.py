"""External weights: the library holds no large constant; NAME.weights is mapped at load."""

import os
import subprocess
import sys

import numpy as np
import pytest
from onnx_models import ort_run

import fluidml_tvm
from fluidml_tvm.errors import FluidMLError
from fluidml_tvm.runtime.weights import write_weights
from fluidml_tvm.tools import zoo


@pytest.fixture(scope="module")
def bert():
    model = zoo.build("bert", size="tiny", seed=1)
    inputs = zoo.random_inputs(model, seed=1)
    return model, inputs, ort_run(model, inputs)


def _max_diff(outputs, ref):
    return max(float(np.abs(o - r).max()) for o, r in zip(outputs.values(), ref))


def test_external_weights_export_and_load(bert, tmp_path):
    model, inputs, ref = bert
    ext = fluidml_tvm.compile(model, pass_config=["fluidml.weights=external"])
    emb = fluidml_tvm.compile(model, pass_config=["fluidml.weights=embedded"])
    assert emb.weights is None and ext.weights
    big = sum(a.nbytes for _, a in ext.weights)
    assert big > 100_000
    assert _max_diff(ext.load().run(inputs), ref) < 1e-4  # in-process, without export
    lib_e = ext.export(tmp_path / "ext.so")
    lib_m = emb.export(tmp_path / "emb.so")
    assert os.path.exists(tmp_path / "ext.weights")
    assert not os.path.exists(tmp_path / "emb.weights")
    # The weights left the library.
    assert os.path.getsize(lib_m) - os.path.getsize(lib_e) > 0.8 * big
    loaded = fluidml_tvm.load(lib_e)
    assert _max_diff(loaded.run(inputs), ref) < 1e-4
    assert loaded.metadata["weights"]["count"] == len(ext.weights)


def test_external_weights_with_the_runtime_alone(bert, tmp_path):
    """What a board has: TVM_USE_RUNTIME_LIB=1, the CLI's run command."""
    model, inputs, ref = bert
    lib = fluidml_tvm.compile(model, pass_config=["fluidml.weights=external"]).export(
        tmp_path / "m.so")
    np.savez(tmp_path / "in.npz", **inputs)
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    proc = subprocess.run([sys.executable, "-m", "fluidml_tvm.cli", "run", str(lib), "--inputs",
                           str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "out.npz")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "out.npz") as out:
        assert _max_diff({k: out[k] for k in out.files}, ref) < 1e-4


def test_missing_or_truncated_weights_file(bert, tmp_path):
    model, _, _ = bert
    lib = fluidml_tvm.compile(model, pass_config=["fluidml.weights=external"]).export(
        tmp_path / "m.so")
    wfile = tmp_path / "m.weights"
    data = wfile.read_bytes()
    wfile.write_bytes(data[: len(data) // 2])
    with pytest.raises(FluidMLError, match="truncated"):
        fluidml_tvm.load(lib)
    os.remove(wfile)
    with pytest.raises(FluidMLError, match="missing"):
        fluidml_tvm.load(lib)


def test_weights_file_offsets_are_aligned(tmp_path):
    arrays = [("a", np.arange(3, dtype="float32")), ("b", np.ones((5, 7), "float64")),
              ("c", np.zeros(1, "int8"))]
    index = write_weights(str(tmp_path / "w.bin"), arrays)
    assert [e["offset"] % 4096 for e in index] == [0, 0, 0]
    assert [e["shape"] for e in index] == [[3], [5, 7], [1]]


def test_stock_pipeline_keeps_weights_embedded(bert):
    model, _, _ = bert
    stock = fluidml_tvm.compile(model, pass_config=["fluidml=0", "fluidml.weights=external"])
    assert stock.weights is None
