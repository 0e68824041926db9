"""FluidMLWinograd (passes/winograd.py, passes/winograd_kernels.py): 3x3 stride-1 convolutions
through Winograd F(4x4, 3x3); the transform kernels against a direct convolution in numpy, the
rewrite's decisions, and whole models against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import fluidml_tvm
from fluidml_tvm.passes import winograd_kernels as wk
from fluidml_tvm.schedules.target_info import host_target

RNG = np.random.default_rng(0)


def _conv(x, w, pads):
    """Direct convolution in float64: NCHW data, OIHW 3x3 weight, pads (top, left, bottom,
    right)."""
    pt, pl, pb, pr = pads
    xp = np.pad(x.astype("f8"), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    return np.einsum("nchwij,kcij->nkhw", win, w.astype("f8"))


def _build(func):
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                       target=host_target())["main"]


@pytest.mark.parametrize("n, c, k, h, w, pads, act, lanes", [
    (1, 16, 32, 12, 12, (1, 1, 1, 1), "relu", 16),   # whole tiles
    (2, 24, 16, 9, 11, (1, 1, 1, 1), None, 8),       # batch 2, odd sizes: partial tiles
    (1, 20, 20, 10, 7, (0, 0, 0, 0), None, 16),      # no padding, 20 = 5 vectors of 4
    (1, 16, 16, 8, 8, (0, 2, 1, 0), "relu", 16),     # asymmetric padding
])
def test_transform_kernels_compute_the_convolution(n, c, k, h, w, pads, act, lanes):
    m, a = 4, 6  # F(4x4, 3x3)
    ho, wo = h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2
    tiles = n * -(-ho // m) * -(-wo // m)
    x = RNG.standard_normal((n, c, h, w)).astype("f4")
    weight = (RNG.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype("f4")
    bias = RNG.standard_normal(k).astype("f4")
    fin = _build(wk.parse(wk.input_transform(n, c, h, w, pads[:2], (ho, wo), m, lanes)))
    fout = _build(wk.parse(wk.output_transform(n, k, (ho, wo), m, bias=True, activation=act,
                                               lanes=lanes)))
    v = tvm.runtime.tensor(np.zeros((a * a, tiles, c), "f4"))
    fin(tvm.runtime.tensor(x), v)
    mm = np.matmul(v.numpy(), wk.weight_transform(weight, m))  # the 36 matmuls
    y = tvm.runtime.tensor(np.full((n, k, ho, wo), np.nan, "f4"))
    fout(tvm.runtime.tensor(mm), tvm.runtime.tensor(bias), y)
    ref = _conv(x, weight, pads) + bias[None, :, None, None]
    ref = np.maximum(ref, 0) if act == "relu" else ref
    assert not np.isnan(y.numpy()).any()  # every output element written
    np.testing.assert_allclose(y.numpy(), ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def _model(c=16, k=32, hw=10, stride=1, group=1, act="Relu", bias=True):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(
        (RNG.standard_normal((k, c // group, 3, 3)) / np.sqrt(9 * c)).astype("f4"), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(RNG.standard_normal(k).astype("f4"), "b"))
        ins.append("b")
    nodes = [helper.make_node("Conv", ins, ["c"], pads=[1, 1, 1, 1], strides=[stride, stride],
                              group=group)]
    if act == "Relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    elif act == "Clip":
        inits += [numpy_helper.from_array(np.array(0, "f4"), "lo"),
                  numpy_helper.from_array(np.array(6, "f4"), "hi")]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    else:  # a second user of the conv output: the activation stays a kernel of its own
        nodes += [helper.make_node("Relu", ["c"], ["r"]),
                  helper.make_node("Add", ["c", "r"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("kwargs, choice, reason", [
    ({}, "F(4x4,3x3)", "16 -> 32 channels, output 10x10: 36 matmuls [tiles x 16] @ [16 x 32]; "
                       "bias + relu in the output transform"),
    ({"act": "Clip", "bias": False}, "F(4x4,3x3)", "output 10x10: 36 matmuls [tiles x 16] @ "
                                                   "[16 x 32]"),  # Clip: TE kernels after it
    ({"act": "two users"}, "F(4x4,3x3)", "; bias in the output transform"),
    ({"stride": 2}, "direct", "stride [2, 2]"),
    ({"group": 4, "k": 16}, "direct", "4 groups"),
    ({"c": 8}, "direct", "8 -> 32 channels (fewer than 16)"),
    ({"hw": 3}, "direct", "output 3x3 smaller than a 4x4 tile"),
])
def test_decisions_and_numbers_against_onnx_runtime(kwargs, choice, reason):
    model = _model(**kwargs)
    c = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    hw = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    feeds = {"x": RNG.standard_normal((1, c, hw, hw)).astype("f4")}
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    lib = fluidml_tvm.compile(model, pass_config=["fluidml.cost=analytic"])
    (record,) = lib.decisions["winograd"]
    assert record.choice == choice and reason in record.reason, record
    kernels = {d.subject for d in lib.decisions["schedule"]}
    assert any(s.startswith("winograd_") for s in kernels) == (choice != "direct")
    np.testing.assert_allclose(lib.load().run(feeds)["y"], ref, rtol=0,
                               atol=2e-5 * np.abs(ref).max())


def test_kill_switch_and_stock_pipeline_leave_the_convolution_direct():
    model = _model()
    for config in (["fluidml.cost=analytic", "fluidml.winograd=0"], ["fluidml=0"]):
        lib = fluidml_tvm.compile(model, pass_config=config)
        assert not lib.decisions.get("winograd")
        kernels = {d.subject for d in lib.decisions.get("schedule") or []}
        assert not any(s.startswith("winograd_") for s in kernels)


def test_parsed_kernels_are_cached_as_json(tmp_path, monkeypatch):
    """With a cache directory a kernel's TVMScript is parsed once: the next parse reads TVM's
    JSON of the PrimFunc back (the same function, no parser call); a torn file is parsed again
    and replaced; without a directory it is parsed every time."""
    import tvm.script

    script = wk.output_transform(1, 16, (8, 8), 4, bias=True, activation="relu", lanes=16)
    first = wk.parse(script, str(tmp_path))
    (path,) = (tmp_path / "kernels").iterdir()
    calls = []
    real = tvm.script.from_source
    monkeypatch.setattr(tvm.script, "from_source",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    again = wk.parse(script, str(tmp_path))
    assert calls == []
    tvm.ir.assert_structural_equal(again, first)
    path.write_text(path.read_text()[:100])  # torn
    tvm.ir.assert_structural_equal(wk.parse(script, str(tmp_path)), first)
    assert calls == [1]
    tvm.ir.assert_structural_equal(tvm.ir.load_json(path.read_text()), first)  # replaced
    wk.parse(script)  # no cache directory: parsed, nothing read or written
    assert calls == [1, 1] and len(list((tmp_path / "kernels").iterdir())) == 1
