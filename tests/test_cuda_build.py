"""CUDA libraries built on a machine without a GPU hold compiled kernels (a fatbin with SASS and
PTX for the target's arch), not CUDA source. Running them needs a GPU and is not tested here."""

from __future__ import annotations

import shutil

import pytest
from cross_models import tiny_conv

import fluidml_tvm
from fluidml_tvm import cross, cuda
from fluidml_tvm.runtime import read_metadata

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc (CUDA toolkit)")


def test_cuda_library_holds_a_fatbin(tmp_path):
    lib = str(tmp_path / "conv_cuda.so")
    fluidml_tvm.compile(tiny_conv(), target="cuda").export(lib)
    info = cuda.kernel_binary(lib)
    assert info["compiled"] and info["fatbin"], info
    assert info["entries"] == ["sm_80 ptx", "sm_80 sass"], info
    assert read_metadata(lib)["target_kind"] == "cuda"
    assert cross.elf_machine(lib) == cross.host_machine()
    assert cuda.runtime_loaded()


@pytest.mark.skipif(cross.cross_compiler_missing() is not None, reason="no aarch64 toolchain")
def test_jetson_orin_library_stock_pipeline(tmp_path):
    """aarch64 host code + an sm_87 fatbin; the stock pipeline (fluidml=0) gets the same."""
    lib = str(tmp_path / "conv_orin.so")
    fluidml_tvm.compile(tiny_conv(), target="jetson-orin", pass_config=["fluidml=0"]).export(lib)
    assert cross.elf_machine(lib) == "aarch64"
    info = cuda.kernel_binary(lib)
    assert info["compiled"] and info["entries"] == ["sm_87 ptx", "sm_87 sass"], info
