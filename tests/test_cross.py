"""Cross-compilation for aarch64 (rasp4b): the library is an aarch64 ELF, it computes what ONNX
Runtime computes (run under qemu-user with the aarch64 TVM runtime), and loading it on the wrong
machine fails with one clear line.

Needs ``scripts/install-aarch64-runtime.sh`` (cross gcc/g++, qemu-user, aarch64 TVM runtime and
runner); without them the tests are skipped with the reason here, and fail in CI
(``tests/needs.py``).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from cross_models import assert_close_to_ort, e_machine, tiny_conv, tiny_conv_inputs
from needs import require

import fluidml_tvm
from fluidml_tvm import cli, cross
from fluidml_tvm.errors import FluidMLError
from fluidml_tvm.runtime import read_metadata
from fluidml_tvm.tools import zoo

EM_AARCH64 = 183



def _needs_cross():
    require(cross.cross_compiler_missing(), "the aarch64 cross compiler")


@pytest.fixture
def needs_cross():
    _needs_cross()


def _needs_qemu():
    require(cross.qemu_missing(), "qemu-user with the aarch64 TVM runtime")


@pytest.fixture(scope="module")
def bert_rasp4b(tmp_path_factory):
    """tiny BERT compiled by the CLI exactly as a user would: ``--target rasp4b -o x.so``."""
    _needs_cross()
    out = tmp_path_factory.mktemp("cross") / "bert_rasp4b.so"
    assert cli.main(["compile", "zoo:bert:tiny", "--target", "rasp4b", "-o", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def conv_rasp4b(tmp_path_factory):
    _needs_cross()
    out = tmp_path_factory.mktemp("cross") / "conv_rasp4b.so"
    fluidml_tvm.compile(tiny_conv(), target="rasp4b").export(str(out))
    return out


@pytest.mark.usefixtures("needs_cross")
def test_cli_writes_an_aarch64_shared_object(bert_rasp4b):
    assert e_machine(str(bert_rasp4b)) == EM_AARCH64
    assert cross.elf_machine(str(bert_rasp4b)) == "aarch64"
    meta = read_metadata(str(bert_rasp4b))
    assert meta["cross_compiler"] == "aarch64-linux-gnu-gcc"
    assert meta["target"]["mtriple"] == "aarch64-linux-gnu"
    described = subprocess.run(["file", "-L", str(bert_rasp4b)], capture_output=True, text=True)
    if described.returncode == 0:  # `file` is optional; the header check above is the proof
        assert "aarch64" in described.stdout, described.stdout


@pytest.mark.usefixtures("needs_cross")
def test_bert_tiny_under_qemu_matches_onnxruntime(bert_rasp4b):
    _needs_qemu()
    model = zoo.build("bert", size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    outputs, times = cross.run_under_qemu(str(bert_rasp4b), feeds, repeat=2, timeout=120)
    worst = assert_close_to_ort(model, outputs, feeds)
    assert worst < 1e-4
    assert len(times) == 2 and all(t > 0 for t in times)


@pytest.mark.usefixtures("needs_cross")
def test_tiny_conv_under_qemu_matches_onnxruntime(conv_rasp4b):
    _needs_qemu()
    feeds = tiny_conv_inputs()
    outputs, _ = cross.run_under_qemu(str(conv_rasp4b), feeds, timeout=120)
    assert_close_to_ort(tiny_conv(), outputs, feeds)


@pytest.mark.usefixtures("needs_cross")
def test_winograd_convolution_under_qemu_matches_onnxruntime(tmp_path):
    """The Winograd rewrite runs for aarch64 builds too (NEON: 4 lanes a vector)."""
    _needs_qemu()
    import numpy as np
    from passes.test_winograd import _model

    model = _model(c=16, k=32, hw=10)
    lib = fluidml_tvm.compile(model, target="rasp4b")
    assert [d.choice for d in lib.decisions["winograd"]] == ["F(4x4,3x3)"]
    path = lib.export(str(tmp_path / "winograd_rasp4b.so"))
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 16, 10, 10)).astype("float32")}
    outputs, _ = cross.run_under_qemu(str(path), feeds, timeout=120)
    assert_close_to_ort(model, outputs, feeds)


@pytest.mark.usefixtures("needs_cross")
def test_loading_an_aarch64_library_here_fails_with_one_line(conv_rasp4b, capsys):
    t0 = time.monotonic()
    assert cli.main(["run", str(conv_rasp4b)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "built for aarch64" in err and cross.host_machine() in err, err
    assert time.monotonic() - t0 < 10
    with pytest.raises(FluidMLError, match="built for aarch64"):
        cross.check_loadable(str(conv_rasp4b))


def test_elf_machine_of_this_interpreter_is_the_host():
    assert cross.elf_machine(sys.executable) in (cross.host_machine(), None)
    assert cross.normalize_machine("arm64") == "aarch64"
    assert cross.normalize_machine("AMD64") == "x86_64"


def test_missing_cross_compiler_is_one_clear_error(tmp_path):
    compiled = fluidml_tvm.compile(tiny_conv(), target="x86")
    with pytest.raises(FluidMLError, match="not found on PATH"):
        compiled.export(str(tmp_path / "x.so"), cross_compiler="no-such-gcc-for-fluidml")


@pytest.mark.usefixtures("needs_cross")
def test_external_weights_under_qemu(tmp_path):
    """fluidml.weights=external: NAME.weights beside the library, read by the runner from disk."""
    _needs_qemu()
    lib = str(tmp_path / "conv_rasp4b_ext.so")
    model = tiny_conv(channels=64, classes=32)
    # schedule=0: externalizing weights does not depend on schedules; measuring them costs seconds
    fluidml_tvm.compile(model, target="rasp4b",
                        pass_config=["fluidml.weights=external", "fluidml.schedule=0"]).export(lib)
    assert read_metadata(lib).get("weights"), "fluidml.weights=external kept them inside"
    feeds = tiny_conv_inputs()
    assert read_metadata(lib)["weights"]["count"] >= 2
    outputs, _ = cross.run_under_qemu(lib, feeds, timeout=120)
    assert_close_to_ort(model, outputs, feeds)
