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


def test_running_a_cuda_library_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    """No GPU here: 'run' must say so in one line, not crash in TVM's runtime."""
    from fluidml_tvm import cli

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH: cannot build a CUDA library")
    lib = tmp_path / "cu.so"
    assert cli.main(["compile", "zoo:bert:tiny", "--target", "cuda", "-o", str(lib), "-q"]) == 0
    capsys.readouterr()
    code = cli.main(["run", str(lib)])
    err = capsys.readouterr().err
    if code == 0:
        pytest.skip("this machine has a GPU: the library ran")
    assert code == 2 and "no usable NVIDIA GPU" in err, err
