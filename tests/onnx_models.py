"""Small ONNX models built in the tests, and a comparison helper against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def mlp(seed=0, batch=4, sizes=(32, 64, 16)) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, sizes[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, sizes[-1]])
    nodes, inits, cur = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array(rng.standard_normal((a, b)).astype("float32"), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(b).astype("float32"), f"b{i}")]
        last = i == len(sizes) - 2
        nodes += [helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"])]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
            cur = f"r{i}"
    return _model(nodes, [x], [y], inits)


def computed_reshape(output_shape_known=False) -> onnx.ModelProto:
    """x[B,S,8] -> Reshape(x, concat(B, S, 2, 4)) with B and S read by Shape at run time."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 8])
    y = helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, ["B", "S", 2, 4] if output_shape_known else None)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["s", "i1"], ["q"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax"], ["bu"]),
        helper.make_node("Unsqueeze", ["q", "ax"], ["qu"]),
        helper.make_node("Concat", ["bu", "qu", "c2", "c4"], ["ns"], axis=0),
        helper.make_node("Reshape", ["x", "ns"], ["r"]),
        helper.make_node("Softmax", ["r"], ["y"], axis=-1),
    ]
    ints = {"i0": np.array(0), "i1": np.array(1), "ax": np.array([0]), "c2": np.array([2]),
            "c4": np.array([4])}
    inits = [numpy_helper.from_array(v.astype(np.int64), k) for k, v in ints.items()]
    return _model(nodes, [x], [y], inits)


def with_unsupported_ops() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("FrobnicateA", ["x"], ["a"], domain="com.example"),
             helper.make_node("FrobnicateA", ["a"], ["b"], domain="com.example"),
             helper.make_node("FrobnicateB", ["b"], ["c"], domain="com.example"),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.example", 1)])


def ort_run(model: onnx.ModelProto, inputs: dict) -> list:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)


def assert_matches_ort(model, outputs: dict, inputs: dict, rtol=1e-4, atol=1e-4):
    ref = ort_run(model, inputs)
    got = list(outputs.values())
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)
