"""Gather tables (embeddings) among the external weights: detected, marked, mapped for random
access, and the model still matches ONNX Runtime."""

import json
import mmap

import numpy as np
import tvm
from onnx_models import ort_run
from tvm.relax.frontend.onnx import from_onnx

import fluidml_tvm
from fluidml_tvm.options import Options
from fluidml_tvm.passes.external_weights import ExternalizeWeights, gathers
from fluidml_tvm.pipeline import lower_to_memory_slot
from fluidml_tvm.runtime.weights import write_weights
from fluidml_tvm.tools import zoo


def test_embedding_is_the_only_gather_table():
    model = zoo.build("gpt-neox", size="tiny", seed=0)
    low = lower_to_memory_slot(from_onnx(model, keep_params_in_input=False),
                               tvm.target.Target({"kind": "llvm"}), Options(cost="analytic"))
    found = {gv.name_hint: [i for i in range(len(f.params)) if gathers(f, i)]
             for gv, f in low.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert {k: v for k, v in found.items() if v} == {"take1": [0]}
    ext = ExternalizeWeights()
    ext(low)
    emb = [a for n, a in ext.weights if n in ext.gathered]
    assert len(ext.gathered) == 1 and emb[0].shape == (512, 64)  # tiny vocab x hidden


def test_gather_table_marked_and_mapped_random(tmp_path, monkeypatch):
    model = zoo.build("gpt-neox", size="tiny", seed=0)
    feeds = zoo.random_inputs(model, seed=0)
    compiled = fluidml_tvm.compile(model, options=Options(cost="analytic"))
    assert compiled.gathered_weights
    lib = compiled.export(tmp_path / "gpt.so")
    index = json.loads((tmp_path / "gpt.json").read_text())["weights"]["index"]
    marked = [e["name"] for e in index if e.get("access") == "gather"]
    assert marked == list(compiled.gathered_weights)
    advised = []
    real = np.memmap

    class Recorder:
        def __init__(self, m):
            self._m = m

        def madvise(self, *args):
            advised.append(args[0])
            return self._m.madvise(*args)

        def __getattr__(self, name):
            return getattr(self._m, name)

    def memmap(*args, **kwargs):
        arr = real(*args, **kwargs)
        arr._mmap = Recorder(arr._mmap)
        return arr

    monkeypatch.setattr(np, "memmap", memmap)
    out = fluidml_tvm.load(lib).run(feeds)
    assert advised == [mmap.MADV_RANDOM]
    np.testing.assert_allclose(list(out.values())[0], ort_run(model, feeds)[0], rtol=1e-4,
                               atol=1e-4)


def test_write_weights_without_gather_tables_is_unchanged(tmp_path):
    arrays = [("a", np.ones((3, 5), np.float32)), ("b", np.arange(7, dtype=np.int64))]
    index = write_weights(str(tmp_path / "w.bin"), arrays)
    assert all("access" not in e for e in index)
    index = write_weights(str(tmp_path / "g.bin"), arrays, gathered={"a"})
    assert [e.get("access") for e in index] == ["gather", None]
