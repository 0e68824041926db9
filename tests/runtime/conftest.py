"""A small library compiled once for the runtime tests: an MLP, stock pipeline (fast to build)."""

import pytest
from onnx_models import mlp

import fluidml_tvm


@pytest.fixture(scope="session")
def mlp_lib(tmp_path_factory):
    """``(library path, ONNX model)`` of a 4x32 -> 64 -> 16 MLP exported with its metadata."""
    model = mlp()
    lib = str(tmp_path_factory.mktemp("runtime") / "mlp.so")
    fluidml_tvm.compile(model, pass_config=["fluidml=0"]).export(lib)
    return lib, model
