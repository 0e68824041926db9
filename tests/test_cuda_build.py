"""CUDA libraries built on a machine without a GPU hold compiled kernels (a fatbin with SASS and
PTX for the target's arch), not CUDA source. nvcc comes from PATH or from the ``cuda`` extra's
PyPI wheels (``fluidml_tvm.cuda.find_nvcc``); without either these tests skip here and fail in CI
(``tests/needs.py``). Running the kernels needs a GPU: on a machine with one, the library runs
and must match ONNX Runtime."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from cross_models import tiny_conv
from needs import require

import fluidml_tvm
from fluidml_tvm import cross, cuda
from fluidml_tvm.runtime import read_metadata


def _needs_nvcc():
    require(None if cuda.find_nvcc() else "no nvcc on PATH and no nvidia-cuda-nvcc wheel",
            "nvcc (pip install -e '.[cuda]')")


def test_cuda_library_holds_a_fatbin(tmp_path):
    _needs_nvcc()
    lib = str(tmp_path / "conv_cuda.so")
    fluidml_tvm.compile(tiny_conv(), target="cuda").export(lib)
    info = cuda.kernel_binary(lib)
    assert info["compiled"] and info["fatbin"], info
    assert info["entries"] == ["sm_80 ptx", "sm_80 sass"], info
    assert read_metadata(lib)["target_kind"] == "cuda"
    assert cross.elf_machine(lib) == cross.host_machine()
    assert cuda.runtime_loaded()


def test_jetson_orin_library_stock_pipeline(tmp_path):
    """aarch64 host code + an sm_87 fatbin; the stock pipeline (fluidml=0) gets the same."""
    _needs_nvcc()
    require(cross.cross_compiler_missing(), "the aarch64 cross compiler")
    lib = str(tmp_path / "conv_orin.so")
    fluidml_tvm.compile(tiny_conv(), target="jetson-orin", pass_config=["fluidml=0"]).export(lib)
    assert cross.elf_machine(lib) == "aarch64"
    info = cuda.kernel_binary(lib)
    assert info["compiled"] and info["entries"] == ["sm_87 ptx", "sm_87 sass"], info


_WHEEL_BUILD = r"""
import shutil, sys
import fluidml_tvm
from cross_models import tiny_conv
from fluidml_tvm import cuda
assert shutil.which("nvcc") is None, shutil.which("nvcc")  # PATH holds no nvcc
fluidml_tvm.compile(tiny_conv(), target="cuda").export(sys.argv[1])
print(shutil.which("nvcc"))  # the one the build used: find_nvcc put its directory on PATH
print(cuda.kernel_binary(sys.argv[1])["entries"])
"""


def _wheel_nvcc() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for sub in sorted(os.listdir(root)):
            cand = os.path.join(root, sub, "bin", "nvcc")
            if sub.startswith("cu") and os.access(cand, os.X_OK):
                return cand
    return None


def test_cuda_build_uses_the_wheels_nvcc_without_one_on_path(tmp_path):
    """PATH stripped of every directory holding an nvcc (a system CUDA toolkit): the build finds
    the nvcc of the ``cuda`` extra (PyPI's nvidia-cuda-nvcc) and still writes a fatbin."""
    wheel = _wheel_nvcc()
    require(None if wheel else "the nvidia-cuda-nvcc wheel is not installed",
            "nvcc from the cuda extra (pip install -e '.[cuda]')")
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not os.path.exists(os.path.join(d, "nvcc")))
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PATH=path,
               PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    lib = str(tmp_path / "conv_cuda_wheel.so")
    proc = subprocess.run([sys.executable, "-c", _WHEEL_BUILD, lib], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    used, entries = proc.stdout.strip().splitlines()[-2:]
    assert os.path.realpath(used) == os.path.realpath(wheel), (used, wheel)
    assert entries == "['sm_80 ptx', 'sm_80 sass']", entries


def test_running_a_cuda_library_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    """No GPU here: 'run' says so in one line, not a crash in TVM's runtime. With a GPU the
    library runs, and its output must match ONNX Runtime's."""
    from fluidml_tvm import cli
    from fluidml_tvm.tools import zoo

    _needs_nvcc()
    lib = tmp_path / "cu.so"
    assert cli.main(["compile", "zoo:bert:tiny", "--target", "cuda", "-o", str(lib), "-q"]) == 0
    capsys.readouterr()
    model = zoo.build("bert", size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    np.savez(tmp_path / "in.npz", **feeds)
    code = cli.main(["run", str(lib), "--inputs", str(tmp_path / "in.npz"),
                     "--outputs", str(tmp_path / "out.npz")])
    err = capsys.readouterr().err
    if code == 0:  # a machine with a GPU: the kernels ran there
        import onnxruntime as ort

        want = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)
        got = np.load(tmp_path / "out.npz")
        for name, w in zip([o.name for o in model.graph.output], want):
            np.testing.assert_allclose(got[name], w, rtol=1e-3, atol=1e-4)
        return
    assert code == 2 and "no usable NVIDIA GPU" in err, err
