"""LSTM and GRU expanded into plain ops: numerics against ONNX Runtime, and one-line refusals."""

import numpy as np
import pytest
from frontend_models import rnn_model
from onnx import TensorProto, helper
from onnx_models import ort_run

import fluidml_tvm
from fluidml_tvm import frontend
from fluidml_tvm.errors import FluidMLError
from fluidml_tvm.frontend import rnn

FAST = ["fluidml=1", "fluidml.cost=analytic"]
DIRECTIONS = ["forward", "reverse", "bidirectional"]
# Every combination of initial states (graph inputs) and bias, one node each; the nodes use
# different subsets of Y, Y_h, Y_c (frontend_models.OUTPUT_PATTERNS).
LSTM_VARIANTS = [{"initial": i, "bias": b} for i in (False, True) for b in (False, True)]
GRU_VARIANTS = [{**v, "lbr": lbr} for lbr in (0, 1) for v in LSTM_VARIANTS]


def _compare(model, feeds, input_values=None, rtol=1e-4, atol=1e-5):
    compiled = fluidml_tvm.compile(model, pass_config=FAST, input_values=input_values)
    run_feeds = {k: v for k, v in feeds.items() if k not in (input_values or {})}
    got = compiled.load().run(run_feeds)
    want = dict(zip([o.name for o in model.graph.output], ort_run(model, feeds)))
    assert list(got) == list(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol, err_msg=name)
    return compiled


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_lstm_matches_ort(direction):
    model, feeds = rnn_model("LSTM", direction, LSTM_VARIANTS)
    _compare(model, feeds)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gru_matches_ort(direction):
    model, feeds = rnn_model("GRU", direction, GRU_VARIANTS, seed=1)
    _compare(model, feeds)


def test_expansion_leaves_no_rnn_node_and_says_so():
    model, _ = rnn_model("GRU", "bidirectional", GRU_VARIANTS[:2])
    imported = frontend.import_onnx(model)
    ops = {n.op_type for n in imported.onnx_model.graph.node}
    assert not ops & {"LSTM", "GRU", "Gather"}, ops
    assert "expanded 2 LSTM/GRU node(s)" in imported.folding and "(12 steps)" in imported.folding


def test_full_length_sequence_lens_constant_and_frozen():
    model, feeds = rnn_model("LSTM", "bidirectional", LSTM_VARIANTS[3:], sequence_lens=[3, 3])
    _compare(model, feeds)
    # sequence_lens as a run-time input: refused, with the flag that fixes it
    model.graph.initializer.pop([i.name for i in model.graph.initializer].index("lens"))
    model.graph.input.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [2]))
    with pytest.raises(FluidMLError, match=r"sequence_lens 'lens' is a run-time input .*"
                                           r"input_values=\{\"lens\": \[3, 3\]\}"):
        frontend.import_onnx(model)
    from fluidml_tvm.errors import cli_api

    with cli_api(), pytest.raises(FluidMLError, match=r"sequence_lens 'lens' is a run-time "
                                                      r"input .*--freeze-inputs \"lens:\[3,3\]\""):
        frontend.import_onnx(model)
    _compare(model, {**feeds, "lens": np.array([3, 3], np.int32)},
             input_values={"lens": [3, 3]})


def test_shorter_sequence_lens_is_refused():
    model, _ = rnn_model("GRU", "forward", GRU_VARIANTS[:1], sequence_lens=[3, 2])
    with pytest.raises(FluidMLError, match=r"GRU node 'gru0': unsupported: sequence_lens=\[3, 2\]"):
        frontend.import_onnx(model)


def test_explicit_default_activations_are_accepted():
    acts = ["Sigmoid", "Tanh", "Tanh"] * 2
    model, feeds = rnn_model("LSTM", "bidirectional", LSTM_VARIANTS[3:],
                             extra_attrs={"activations": acts})
    _compare(model, feeds)


@pytest.mark.parametrize("kind, attrs, words", [
    ("LSTM", {"activations": ["Relu", "Tanh", "Tanh"]}, "activations=Relu,Tanh,Tanh"),
    ("GRU", {"clip": 3.0}, "clip=3"),
    ("LSTM", {"layout": 1}, "layout=1"),
    ("LSTM", {"input_forget": 1}, "input_forget=1"),
    ("GRU", {"activations": ["Sigmoid", "HardSigmoid"]}, "activations=Sigmoid,HardSigmoid"),
])
def test_unsupported_attributes_are_one_line_errors(kind, attrs, words):
    variants = [{"bias": True}]
    model, _ = rnn_model(kind, "forward", variants, extra_attrs=attrs)
    with pytest.raises(FluidMLError) as err:
        frontend.import_onnx(model)
    msg = str(err.value)
    assert msg.startswith(f"{kind} node '{kind.lower()}0': unsupported: ") and words in msg, msg
    assert "\n" not in msg


def test_peepholes_are_refused():
    model, _ = rnn_model("LSTM", "forward", [{"bias": True}])
    node = model.graph.node[0]
    while len(node.input) < 7:
        node.input.append("")
    node.input.append("P")
    model.graph.input.append(helper.make_tensor_value_info("P", TensorProto.FLOAT, [1, 15]))
    with pytest.raises(FluidMLError, match=r"LSTM node 'lstm0': unsupported: peepholes "
                                           r"\(input P 'P'\)"):
        frontend.import_onnx(model)


def test_sequence_length_must_be_static():
    model, _ = rnn_model("LSTM", "forward", [{"bias": False}])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "S"
    with pytest.raises(FluidMLError, match=r"the sequence length of X 'X' is not static "
                                           r"\(shape \[\?,2,4\]\).*input_shapes"):
        rnn.expand_rnns(model, 14)
    # with --input-shapes the sequence is static again, and unrolled over it
    imported = frontend.import_onnx(model, {"X": [2, 2, 4]})
    assert "(2 steps)" in imported.folding
