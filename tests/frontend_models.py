"""Small ONNX models for the frontend tests: an If on a sample-rate input, LSTM/GRU nodes, and a
graph TVM's importer cannot convert."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, inits=(), opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _const(name, value):
    return helper.make_node("Constant", [], [name], name=f"const_{name}",
                            value=numpy_helper.from_array(np.asarray(value, np.int64), name))


def _frames_branch(prefix: str, chunk: int):
    """Reshape(x, [1, N / chunk, chunk]) with N read from the outer-scope x at run time."""
    p = prefix
    nodes = [
        helper.make_node("Shape", ["x"], [f"{p}_shape"], name=f"{p}_shape"),
        _const(f"{p}_i1", [1]), _const(f"{p}_chunk", [chunk]), _const(f"{p}_one", [1]),
        helper.make_node("Gather", [f"{p}_shape", f"{p}_i1"], [f"{p}_n"], name=f"{p}_gather",
                         axis=0),
        helper.make_node("Div", [f"{p}_n", f"{p}_chunk"], [f"{p}_count"], name=f"{p}_div"),
        helper.make_node("Concat", [f"{p}_one", f"{p}_count", f"{p}_chunk"], [f"{p}_new_shape"],
                         name=f"{p}_concat", axis=0),
        helper.make_node("Reshape", ["x", f"{p}_new_shape"], [f"{p}_frames"],
                         name=f"{p}_reshape"),
    ]
    out = helper.make_tensor_value_info(f"{p}_frames", TensorProto.FLOAT, [1, "M", chunk])
    return helper.make_graph(nodes, f"{p}_branch", [], [out])


def voice_activity(samples="N") -> onnx.ModelProto:
    """Like a voice-activity model: ``If sr == 16000`` picks frames of 4 samples, else of 2 (a
    Reshape whose shape depends on the branch), then a mean per frame and a projection."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, samples])
    sr = helper.make_tensor_value_info("sr", TensorProto.INT64, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "M"])
    nodes = [
        helper.make_node("Equal", ["sr", "k16000"], ["is_16k"], name="is_16k"),
        helper.make_node("If", ["is_16k"], ["frames"], name="pick_rate",
                         then_branch=_frames_branch("then", 4),
                         else_branch=_frames_branch("else", 2)),
        helper.make_node("ReduceMean", ["frames", "last"], ["energy"], name="energy",
                         keepdims=0),
        helper.make_node("Mul", ["energy", "gain"], ["y"], name="scale"),
    ]
    inits = [numpy_helper.from_array(np.array(16000, np.int64), "k16000"),
             numpy_helper.from_array(np.array([2], np.int64), "last"),
             numpy_helper.from_array(np.array(1.5, np.float32), "gain")]
    return _model(nodes, [x, sr], [y], inits)


def nested_switch() -> onnx.ModelProto:
    """``If sr == 16000`` whose then-branch holds a second ``If`` on ``flag`` that reads a value of
    the then-branch (onnxsim 0.8.1 fails on this graph), with branch-local initializers."""
    def branch(p, chunk, inner):
        nodes = [_const(f"{p}_shape", [1, -1, chunk]),
                 helper.make_node("Reshape", ["h", f"{p}_shape"], [f"{p}_r"], name=f"{p}_reshape"),
                 helper.make_node("Mul", [f"{p}_r", f"{p}_w"], [f"{p}_o"], name=f"{p}_mul")]
        out = f"{p}_o"
        if inner:
            def leaf(op, suffix):
                return helper.make_graph(
                    [helper.make_node(op, [f"{p}_o"], [f"{p}_{suffix}"], name=f"{p}_{suffix}")],
                    f"{p}_{suffix}", [],
                    [helper.make_tensor_value_info(f"{p}_{suffix}", TensorProto.FLOAT,
                                                   [1, "M", chunk])])
            nodes.append(helper.make_node("If", ["flag_b"], [f"{p}_sel"], name=f"{p}_if",
                                          then_branch=leaf("Neg", "neg"),
                                          else_branch=leaf("Identity", "same")))
            out = f"{p}_sel"
        w = numpy_helper.from_array(np.linspace(0.5, 2, chunk).astype(np.float32), f"{p}_w")
        return helper.make_graph(nodes, p, [], [helper.make_tensor_value_info(
            out, TensorProto.FLOAT, [1, "M", chunk])], [w])

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    sr = helper.make_tensor_value_info("sr", TensorProto.INT64, [1])
    flag = helper.make_tensor_value_info("flag", TensorProto.INT64, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "M"])
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"),
             helper.make_node("Cast", ["flag"], ["flag_b"], name="flag_b", to=TensorProto.BOOL),
             helper.make_node("Equal", ["sr", "k16000"], ["is_16k_1"], name="is_16k"),
             helper.make_node("Squeeze", ["is_16k_1"], ["is_16k"], name="squeeze"),
             helper.make_node("If", ["is_16k"], ["frames"], name="pick_rate",
                              then_branch=branch("t", 4, True), else_branch=branch("e", 2, False)),
             helper.make_node("ReduceSum", ["frames", "last"], ["y"], name="sum", keepdims=0)]
    inits = [numpy_helper.from_array(np.array([16000], np.int64), "k16000"),
             numpy_helper.from_array(np.array([2], np.int64), "last")]
    return _model(nodes, [x, sr, flag], [y], inits, opset=17)


def scaled_by_vector() -> onnx.ModelProto:
    """y = x * w + flag, with w a [2] input and flag a bool input (frozen as small tensors)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])
    nodes = [helper.make_node("Cast", ["flag"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "w"], ["xw"]),
             helper.make_node("Add", ["xw", "f"], ["y"])]
    return _model(nodes, [x, w, flag], [y])


def reshape_by_input() -> onnx.ModelProto:
    """Reshape(x, shape) with the new shape a run-time input: TVM's importer cannot convert it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["y"], name="reshape_by_input")]
    return _model(nodes, [x, shape], [y])


# ---- LSTM / GRU --------------------------------------------------------------------------------
GATES = {"LSTM": 4, "GRU": 3}
# Which of Y, Y_h, Y_c each variant uses ("" = unused), cycled over the variants of a model.
OUTPUT_PATTERNS = [("Y", "Y_h", "Y_c"), ("", "Y_h", ""), ("Y", "", ""), ("", "", "Y_c"),
                   ("Y", "Y_h", "")]


def rnn_model(kind: str, direction: str, variants, seq=3, batch=2, size=4, hidden=5,
              seed=0, extra_attrs=None, sequence_lens=None):
    """One model with one ``kind`` node per variant, all reading the same X.

    ``variants``: dicts with ``initial`` (initial states as graph inputs), ``bias`` and, for GRU,
    ``lbr`` (linear_before_reset). W, R and B are initializers. Returns ``(model, inputs)``."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[kind]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [seq, batch, size])
    inputs, feeds = [x], {"X": rng.standard_normal((seq, batch, size)).astype(np.float32)}
    outputs, nodes, inits = [], [], []
    if sequence_lens is not None:
        inits.append(numpy_helper.from_array(np.asarray(sequence_lens, np.int32), "lens"))
    for k, var in enumerate(variants):
        w = (rng.standard_normal((dirs, g * hidden, size)) * 0.5).astype(np.float32)
        r = (rng.standard_normal((dirs, g * hidden, hidden)) * 0.5).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{k}"), numpy_helper.from_array(r, f"R{k}")]
        ins = ["X", f"W{k}", f"R{k}", "", "lens" if sequence_lens is not None else ""]
        if var.get("bias"):
            b = (rng.standard_normal((dirs, 2 * g * hidden)) * 0.5).astype(np.float32)
            inits.append(numpy_helper.from_array(b, f"B{k}"))
            ins[3] = f"B{k}"
        states = ["h"] + (["c"] if kind == "LSTM" else [])
        if var.get("initial"):
            for s in states:
                name = f"{s}0_{k}"
                inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                            [dirs, batch, hidden]))
                feeds[name] = rng.standard_normal((dirs, batch, hidden)).astype(np.float32)
                ins.append(name)
        while ins and ins[-1] == "":
            ins.pop()
        pattern = OUTPUT_PATTERNS[k % len(OUTPUT_PATTERNS)][:2 if kind == "GRU" else 3]
        if not any(pattern):
            pattern = ("Y",) + pattern[1:]
        outs = [f"{p}_{k}" if p else "" for p in pattern]
        shapes = {"Y": [seq, dirs, batch, hidden], "Y_h": [dirs, batch, hidden],
                  "Y_c": [dirs, batch, hidden]}
        outputs += [helper.make_tensor_value_info(f"{p}_{k}", TensorProto.FLOAT, shapes[p])
                    for p in pattern if p]
        while outs and outs[-1] == "":
            outs.pop()
        attrs = {"hidden_size": hidden, "direction": direction, **(extra_attrs or {})}
        if kind == "GRU":
            attrs["linear_before_reset"] = int(var.get("lbr", 0))
        nodes.append(helper.make_node(kind, ins, outs, name=f"{kind.lower()}{k}", **attrs))
    return _model(nodes, inputs, outputs, inits, opset=14), feeds
