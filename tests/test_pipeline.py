"""The fluidml pipeline: phases, kill switches, registration, stock TVM's pipeline for fluidml=0."""

import numpy as np
import tvm
from onnx_models import assert_matches_ort, mlp
from tvm import relax

from fluidml_tvm import frontend
from fluidml_tvm.options import Options
from fluidml_tvm.pipeline import get_pipeline, phases


def test_phases_and_kill_switches():
    target = tvm.target.Target({"kind": "llvm"})
    names = [n for n, _ in phases(target, Options())]
    assert names == ["dispatch", "split", "layout", "legalize", "schedule", "lower", "memory",
                     "weights", "finalize"]
    off = dict(phases(target, Options(layout=False, memory=False, schedule=False,
                                      split_projection=False, residual_order=False,
                                      fold_batchnorm=False)))
    assert off["layout"] == [] and off["schedule"] == [] and off["split"] == []
    assert [p.info.name for p in off["memory"]] == ["StaticPlanBlockMemory"]


def test_registered_pipeline_compiles_in_a_plain_tvm_flow():
    model = mlp()
    imported = frontend.import_onnx(model)
    target = tvm.target.Target({"kind": "llvm"})
    pipe = relax.get_pipeline("fluidml", target=target)
    ex = tvm.compile(imported.mod, target=target, relax_pipeline=pipe)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = np.random.default_rng(0).standard_normal((4, 32)).astype("float32")
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert_matches_ort(model, {"y": out}, {"x": x})


def test_stock_pipeline_is_tvms_default():
    target = tvm.target.Target({"kind": "llvm"})
    stock = get_pipeline(target, Options(enable=False))
    assert stock.info.name == relax.get_default_pipeline(target).info.name
