"""FluidMLFoldBatchNorm (passes/fold_batchnorm.py): BatchNorm folded into the conv weights or a
per-channel multiply-add; no kernel of its own; the numbers of ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import fluidml_tvm
from fluidml_tvm.decisions import from_module
from fluidml_tvm.frontend import import_onnx
from fluidml_tvm.passes.fold_batchnorm import FluidMLFoldBatchNorm

RNG = np.random.default_rng(0)
C = 8


def _bn(name, x, out, const_stats=True):
    inits = [numpy_helper.from_array(RNG.uniform(0.5, 2, C).astype("f4"), f"{name}_g"),
             numpy_helper.from_array(RNG.standard_normal(C).astype("f4"), f"{name}_b"),
             numpy_helper.from_array(RNG.standard_normal(C).astype("f4"), f"{name}_m"),
             numpy_helper.from_array(RNG.uniform(0.1, 3, C).astype("f4"), f"{name}_v")]
    names = [i.name for i in inits]
    if not const_stats:
        names[0] = "gamma_in"
        inits = inits[1:]
    node = helper.make_node("BatchNormalization", [x, *names], [out], epsilon=1e-5)
    return node, inits


def _model(kind: str):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(RNG.standard_normal((C, 4, 3, 3)).astype("f4"), "w")
    nodes, inits, inputs = [], [w], [x]
    if kind == "conv":
        nodes.append(helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]))
    elif kind == "conv_bias":
        inits.append(numpy_helper.from_array(RNG.standard_normal(C).astype("f4"), "bias"))
        nodes.append(helper.make_node("Conv", ["x", "w", "bias"], ["c"], pads=[1, 1, 1, 1]))
    else:  # a BatchNorm after an add of two conv outputs: no single conv to fold into
        nodes += [helper.make_node("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1]),
                  helper.make_node("Conv", ["x", "w"], ["c2"], pads=[1, 1, 1, 1], group=1),
                  helper.make_node("Add", ["c1", "c2"], ["c"])]
    const = kind != "input_stats"
    if not const:
        inputs.append(helper.make_tensor_value_info("gamma_in", TensorProto.FLOAT, [C]))
    bn, more = _bn("bn", "c", "n", const_stats=const)
    nodes += [bn, helper.make_node("Relu", ["n"], ["y"])]
    graph = helper.make_graph(nodes, "g", inputs, [y], inits + more)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def _ops(mod) -> set:
    text = mod.script()
    return {op for op in ("nn.batch_norm", "nn.conv2d", "multiply") if f"R.{op}(" in text}


@pytest.mark.parametrize("kind, folded, how", [
    ("conv", True, "folded into the weights"),
    ("conv_bias", True, "folded into the weights"),
    ("add", True, "multiply-add per channel"),
    ("input_stats", False, "gamma/beta/mean/var are not all constants"),
])
def test_fold_structure_decisions_and_numbers(kind, folded, how):
    model = _model(kind)
    before = import_onnx(model).mod
    after = FluidMLFoldBatchNorm()(before)
    (record,) = from_module(after, "fold_batchnorm")
    assert record.choice == ("folded" if folded else "kept") and how in record.reason
    assert ("nn.batch_norm" in _ops(after)) != folded
    if how.startswith("folded into"):
        assert "multiply" not in _ops(after)  # the scale went into the weight
    feeds = {"x": RNG.standard_normal((1, 4, 9, 9)).astype("f4")}
    if kind == "input_stats":
        feeds["gamma_in"] = RNG.uniform(0.5, 2, C).astype("f4")
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    for fold in (1, 0):
        c = fluidml_tvm.compile(model, pass_config=["fluidml.cost=analytic",
                                                    f"fluidml.fold_batchnorm={fold}"])
        np.testing.assert_allclose(c.load().run(feeds)["y"], ref, rtol=1e-5, atol=1e-5)


def test_no_batch_norm_kernel_left_on_resnet():
    from fluidml_tvm.tools import zoo

    model = zoo.build("resnet50", size="tiny", seed=0)
    on = fluidml_tvm.compile(model, pass_config=["fluidml.cost=analytic"])
    off = fluidml_tvm.compile(model, pass_config=["fluidml.cost=analytic",
                                                  "fluidml.fold_batchnorm=0"])
    kernels_on = [d.subject for d in on.decisions["schedule"]]
    kernels_off = [d.subject for d in off.decisions["schedule"]]
    assert not any("batch_norm" in k for k in kernels_on)
    assert sum("batch_norm" in k for k in kernels_off) >= 5
    assert len(kernels_on) < len(kernels_off)
