"""Peak RSS of a user-style run per engine (:mod:`fluidml_tvm.tools.bench.rss`): what the run
process itself held, never the measuring process's memory."""

import numpy as np
import onnx
import pytest
from onnx_models import mlp

import fluidml_tvm
from fluidml_tvm.tools.bench import rss


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rss")
    model = mlp(batch=4, sizes=(256, 1024, 16))  # 1 MB of weights
    onnx.save(model, d / "m.onnx")
    lib = fluidml_tvm.compile(model).export(d / "m.so")
    np.savez(d / "in.npz", x=np.ones((4, 256), "float32"))
    return str(d / "m.onnx"), str(lib), str(d / "in.npz")


def test_each_engine_reports_its_own_peak(files):
    model, lib, inputs = files
    fat = np.ones(400 * 2**20, np.uint8)  # this process: > 400 MB resident
    peaks = {e: rss.measure(e, model, lib if e != "ort" else None, inputs, 1, 2)
             for e in ("fluidml", "ort")}
    del fat
    for engine, peak in peaks.items():
        # a Python process with numpy and its engine: tens of MB, never this process's 400
        assert 20 * 2**20 < peak < 250 * 2**20, (engine, peak / 2**20)


def test_a_failing_run_is_one_line(files, tmp_path):
    model, _, inputs = files
    with pytest.raises(RuntimeError, match="failed .exit 2.: .*library not found"):
        rss.measure("fluidml", model, str(tmp_path / "none.so"), inputs, 1, 1)
