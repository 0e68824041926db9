"""Models and helpers shared by test_cross.py and test_rpc.py."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# fp32 kernels compiled by TVM for another CPU (or run remotely) vs ONNX Runtime on this host:
# different summation orders and vectorization, same math. Outputs are O(1).
RTOL = 1e-4
ATOL = 1e-4


def tiny_conv(seed: int = 0, channels: int = 8, classes: int = 10) -> onnx.ModelProto:
    """x[1,3,16,16] -> Conv 3x3 -> Relu -> depthwise Conv 3x3 s2 -> Clip(0,6) -> MaxPool
    -> GlobalAveragePool -> Flatten -> Gemm(transB) -> y[1,classes]: a small CNN, compiles in
    seconds. ``channels=64, classes=32`` makes two weights of >= 4 KiB (externalizable)."""
    rng = np.random.default_rng(seed)
    c, k = channels, classes

    def w(name, *shape, scale=None):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        arr = rng.standard_normal(shape) * (scale or np.sqrt(2.0 / fan_in))
        return numpy_helper.from_array(arr.astype("float32"), name)

    inits = [w("w1", c, 3, 3, 3), w("b1", c, scale=0.1), w("w2", c, 1, 3, 3),
             w("b2", c, scale=0.1), w("w3", k, c), w("b3", k, scale=0.1)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2],
                         group=c),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1),
    ]
    inits += [numpy_helper.from_array(np.array(0.0, "float32"), "lo"),
              numpy_helper.from_array(np.array(6.0, "float32"), "hi")]
    graph = helper.make_graph(
        nodes, "tiny_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tiny_conv_inputs(seed: int = 0) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype("float32")}


def ort_outputs(model: onnx.ModelProto, inputs: dict) -> dict:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


def assert_close_to_ort(model: onnx.ModelProto, outputs: dict, inputs: dict) -> float:
    """Every output equals ONNX Runtime's within RTOL/ATOL; returns the max abs difference."""
    ref = ort_outputs(model, inputs)
    assert list(outputs) == list(ref), (list(outputs), list(ref))
    worst = 0.0
    for name, want in ref.items():
        got = outputs[name]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)
        worst = max(worst, float(np.max(np.abs(got - want))))
    return worst


def e_machine(path: str) -> int:
    """The ELF header's e_machine, read directly (183: aarch64, 62: x86-64)."""
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
