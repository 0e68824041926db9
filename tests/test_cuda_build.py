"""CUDA libraries built on a machine without a GPU hold compiled kernels (a fatbin with SASS and
PTX for the target's arch), not CUDA source. Running them needs a GPU and is not tested here."""

from __future__ import annotations

import shutil

import pytest
from cross_models import tiny_conv

import fluidml_tvm
from fluidml_tvm import cuda
from fluidml_tvm.runtime import read_metadata

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc (CUDA toolkit)")


@pytest.mark.parametrize("pass_config", [[], ["fluidml=0"]], ids=["fluidml", "stock"])
def test_cuda_library_holds_a_fatbin(tmp_path, pass_config):
    lib = str(tmp_path / "conv_cuda.so")
    fluidml_tvm.compile(tiny_conv(), target="cuda", pass_config=pass_config).export(lib)
    info = cuda.kernel_binary(lib)
    assert info["compiled"] and info["fatbin"], info
    assert info["entries"] == ["sm_80 ptx", "sm_80 sass"], info
    assert read_metadata(lib)["target_kind"] == "cuda"
    assert cuda.runtime_loaded()
