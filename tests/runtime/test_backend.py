"""The runtime-only run path: ``fluidml-tvm run`` and ``fluidml_tvm.load`` map the TVM runtime
library alone (checked in ``/proc/self/maps`` of a fresh process), import nothing of the compiler
side, match ONNX Runtime, and a later compile in that process fails in one line; the opt-out
loads the full TVM and compiles."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx_models import assert_matches_ort, mlp

import fluidml_tvm
from fluidml_tvm.runtime import backend

# What the run path must never import (the compile side, and what only it needs).
HEAVY = ["onnx", "onnxsim", "onnxscript", "xgboost", "fluidml_tvm.compiler",
         "fluidml_tvm.passes", "fluidml_tvm.schedules", "fluidml_tvm.frontend", "tvm.relax"]

PROBE = """
import json, sys
def report(extra=None):
    maps = open("/proc/self/maps").read()
    libs = sorted(set(ln.split()[-1].rsplit("/", 1)[-1] for ln in maps.splitlines()
                      if ".so" in ln))
    heavy = [m for m in HEAVY if m in sys.modules]
    print("PROBE " + json.dumps(dict(tvm_libs=[x for x in libs if "tvm" in x], heavy=heavy,
                                     tvm_imported="tvm" in sys.modules, **(extra or dict()))))
HEAVY = """ + repr(HEAVY) + "\n"


def probe(code: str, **env) -> dict:
    """Run ``PROBE + code`` in a fresh interpreter (no TVM_USE_RUNTIME_LIB or opt-out inherited,
    plus ``env``); returns its ``report(...)`` with its stdout and stderr."""
    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_USE_RUNTIME_LIB",
                                                             backend.OPT_OUT)}
    proc = subprocess.run([sys.executable, "-c", PROBE + code], capture_output=True, text=True,
                          timeout=300, env={**clean, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")][-1]
    return {**json.loads(line[6:]), "stdout": proc.stdout, "stderr": proc.stderr}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """An MLP compiled with FluidML's pipeline (external weights), its inputs and model."""
    model = mlp(batch=4, sizes=(32, 64, 16))
    d = tmp_path_factory.mktemp("backend")
    path = fluidml_tvm.compile(model).export(d / "mlp.so")
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 32)).astype("float32")}
    np.savez(d / "in.npz", **feeds)
    return {"lib": str(path), "npz": str(d / "in.npz"), "out": str(d / "out.npz"),
            "model": model, "feeds": feeds}


def test_cli_run_maps_the_runtime_alone(lib):
    """The process of ``fluidml-tvm run`` (its main, in a fresh interpreter)."""
    got = probe(f"""
from fluidml_tvm.cli import main
rc = main(["run", {lib['lib']!r}, "--inputs", {lib['npz']!r}, "--outputs", {lib['out']!r},
           "--repeat", "3", "--print-time"])
assert rc == 0
report()
""")
    assert "libtvm_runtime.so" in got["tvm_libs"]
    assert "libtvm_compiler.so" not in got["tvm_libs"], got["tvm_libs"]
    assert got["heavy"] == [] and not got["tvm_imported"]
    assert "Execution time summary" in got["stdout"]
    with np.load(lib["out"]) as out:
        assert_matches_ort(lib["model"], {k: out[k] for k in out.files}, lib["feeds"])


def test_load_maps_the_runtime_alone_and_compile_then_fails_in_one_line(lib):
    got = probe(f"""
import numpy as np
import fluidml_tvm
model = fluidml_tvm.load({lib['lib']!r})
out = model.run({{"x": np.load({lib['npz']!r})["x"]}})
np.savez({lib['out']!r}, **out)
times = model.time(repeat=3, number=2)
assert len(times) == 3 and all(t > 0 for t in times)
maps_before = open("/proc/self/maps").read()
try:
    fluidml_tvm.compile("whatever.onnx")
    error = None
except fluidml_tvm.FluidMLError as err:
    error = str(err)
report({{"error": error}})
""")
    assert "libtvm_compiler.so" not in got["tvm_libs"] and got["heavy"] == []
    assert got["error"] and "\n" not in got["error"]
    assert "runtime alone" in got["error"] and "runtime_only=False" in got["error"]
    with np.load(lib["out"]) as out:
        assert_matches_ort(lib["model"], {k: out[k] for k in out.files}, lib["feeds"])


def test_cli_compile_after_a_run_in_the_same_process_exits_2(lib, tmp_path):
    """``cli.main(["compile", ...])`` after ``cli.main(["run", ...])``: one line, exit code 2."""
    onnx_path = tmp_path / "mlp.onnx"
    import onnx

    onnx.save(lib["model"], onnx_path)
    got = probe(f"""
from fluidml_tvm.cli import main
assert main(["run", {lib['lib']!r}, "--inputs", {lib['npz']!r}]) == 0
rc = main(["compile", {str(onnx_path)!r}, "-o", {str(tmp_path / 'again.so')!r}])
report({{"rc": rc}})
""")
    assert got["rc"] == 2
    err = [ln for ln in got["stderr"].splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("fluidml-tvm: error: this process loaded a model "
                                               "with the TVM runtime alone"), got["stderr"]


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_opt_out_loads_all_of_tvm_and_compiles(lib, tmp_path, how):
    import onnx

    onnx.save(lib["model"], tmp_path / "m.onnx")
    arg = ", runtime_only=False" if how == "argument" else ""
    env = {backend.OPT_OUT: "0"} if how == "environment" else {}
    got = probe(f"""
import numpy as np
import fluidml_tvm
x = np.load({lib['npz']!r})["x"]
model = fluidml_tvm.load({lib['lib']!r}{arg})
model.run({{"x": x}})
again = fluidml_tvm.compile({str(tmp_path / 'm.onnx')!r}, pass_config=["fluidml=0"])
report({{"compiled": list(again.load().run({{"x": x}})["y"].shape)}})
""", **env)
    assert "libtvm_compiler.so" in got["tvm_libs"] and got["tvm_imported"]
    assert got["compiled"] == [4, 16]


def test_runtime_library_found_without_importing_tvm():
    path = backend.runtime_library_path()
    assert os.path.basename(path) == "libtvm_runtime.so" and os.path.exists(path)


def test_lean_virtual_machine_matches_ort(lib):
    """:class:`backend.VirtualMachine` (tvm_ffi alone) against ONNX Runtime, in this process."""
    import tvm_ffi

    from fluidml_tvm.runtime import Model, read_metadata
    from fluidml_tvm.runtime.weights import load_weights

    meta = read_metadata(lib["lib"])
    dev = backend.cpu()
    vm = backend.VirtualMachine(tvm_ffi.load_module(lib["lib"]), dev, "naive")
    model = Model(vm, dev, meta, 1, load_weights(lib["lib"], meta, dev))
    assert_matches_ort(lib["model"], model.run(lib["feeds"]), lib["feeds"])
    times = model.time(lib["feeds"], repeat=4, number=1)
    assert len(times) == 4 and all(t > 0 for t in times)
    with pytest.raises(ValueError, match="memory_cfg"):
        backend.VirtualMachine(tvm_ffi.load_module(lib["lib"]), dev, "huge")


def test_tensor_round_trip_keeps_dtype_and_values():
    dev = backend.cpu()
    for a in (np.arange(12, dtype="float32").reshape(3, 4), np.array([True, False, True]),
              np.arange(5, dtype="int64")[::2]):
        t = backend.tensor(a, dev)
        back = backend.to_numpy(t)
        assert back.dtype == a.dtype and np.array_equal(back, a)


def test_run_path_does_not_import_torch_that_tvm_ffi_would(lib, tmp_path):
    """tvm_ffi imports torch whenever it is installed (470 MB of RSS); the run path keeps it
    out, and the process can import it afterwards. A stand-in ``torch`` package comes first on
    the path, so this holds with or without the real one installed."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = 'stand-in'\n")
    out = probe(f"""
import numpy as np, fluidml_tvm
m = fluidml_tvm.load({lib['lib']!r})
m.run(dict(np.load({lib['npz']!r})))
during = "torch" in sys.modules
import torch
report(dict(torch_during=during, torch_after=torch.__version__))
""", PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    assert out["torch_during"] is False and out["torch_after"] == "stand-in", out
    assert not out["tvm_imported"]
