"""Tiny ONNX models of the kernels no register tile divides (issue 13): convolutions of any
channel count, groups, stride, dilation; squeeze-and-excitation gates; transposed
convolutions; matmuls of any M/N/K, over 4-D activations and between activations. Each
returns ``(model, feeds)``; the tests compile it, compare with ONNX Runtime and read the
schedule decisions."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from ..models import onnx_model


def _rng(seed):
    return np.random.default_rng(seed)


def _x(name, shape, seed):
    return {name: _rng(seed + 100).standard_normal(shape).astype(np.float32)}


def conv(C=8, O=16, H=9, W=9, k=3, stride=1, pad=1, group=1, dilation=1, act="Relu",  # noqa: E741
         seed=0):
    """Conv (+bias, +activation) on ``[1, C, H, W]``."""
    rng = _rng(seed)
    w = (rng.standard_normal((O, C // group, k, k)) * 0.2).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    ek = dilation * (k - 1) + 1
    OH, OW = (H + 2 * pad - ek) // stride + 1, (W + 2 * pad - ek) // stride + 1
    n = [h.make_node("Conv", ["x", "w", "b"], ["c" if act else "y"], kernel_shape=[k, k],
                     strides=[stride] * 2, pads=[pad] * 4, group=group, dilations=[dilation] * 2)]
    if act:
        n.append(h.make_node(act, ["c"], ["y"]))
    m = onnx_model(n, [h.make_tensor_value_info("x", TP.FLOAT, [1, C, H, W])],
                   [h.make_tensor_value_info("y", TP.FLOAT, [1, O, OH, OW])],
                   [nh.from_array(w, "w"), nh.from_array(b, "b")])
    return m, _x("x", [1, C, H, W], seed)


def se_block(C=24, R=8, H=7, W=7, seed=0):
    """Squeeze-and-excitation: global pool, 1x1 conv C -> R + ReLU, 1x1 conv R -> C +
    HardSigmoid, the gate multiplied into the feature map (MobileNetV3's form)."""
    rng = _rng(seed)
    init = [nh.from_array((rng.standard_normal((R, C, 1, 1)) * 0.3).astype(np.float32), "w1"),
            nh.from_array(rng.standard_normal(R).astype(np.float32), "b1"),
            nh.from_array((rng.standard_normal((C, R, 1, 1)) * 0.3).astype(np.float32), "w2"),
            nh.from_array(rng.standard_normal(C).astype(np.float32), "b2")]
    n = [h.make_node("GlobalAveragePool", ["x"], ["p"]),
         h.make_node("Conv", ["p", "w1", "b1"], ["r0"], kernel_shape=[1, 1]),
         h.make_node("Relu", ["r0"], ["r1"]),
         h.make_node("Conv", ["r1", "w2", "b2"], ["e0"], kernel_shape=[1, 1]),
         h.make_node("HardSigmoid", ["e0"], ["g"], alpha=1 / 6, beta=0.5),
         h.make_node("Mul", ["x", "g"], ["y"])]
    m = onnx_model(n, [h.make_tensor_value_info("x", TP.FLOAT, [1, C, H, W])],
                   [h.make_tensor_value_info("y", TP.FLOAT, [1, C, H, W])], init)
    return m, _x("x", [1, C, H, W], seed)


def conv_transpose(C=8, O=6, H=5, W=5, k=2, stride=2, pad=0, out_pad=0, group=1, bias=True,  # noqa: E741
                   act="Relu", seed=0):
    """ConvTranspose (+bias, +activation) on ``[1, C, H, W]``."""
    rng = _rng(seed)
    w = (rng.standard_normal((C, O // group, k, k)) * 0.2).astype(np.float32)
    OH = (H - 1) * stride - 2 * pad + k + out_pad
    OW = (W - 1) * stride - 2 * pad + k + out_pad
    ins = ["x", "w"] + (["b"] if bias else [])
    init = [nh.from_array(w, "w")]
    if bias:
        init.append(nh.from_array(rng.standard_normal(O).astype(np.float32), "b"))
    n = [h.make_node("ConvTranspose", ins, ["c" if act else "y"], kernel_shape=[k, k],
                     strides=[stride] * 2, pads=[pad] * 4, output_padding=[out_pad] * 2,
                     group=group)]
    if act:
        n.append(h.make_node(act, ["c"], ["y"]))
    m = onnx_model(n, [h.make_tensor_value_info("x", TP.FLOAT, [1, C, H, W])],
                   [h.make_tensor_value_info("y", TP.FLOAT, [1, O, OH, OW])], init)
    return m, _x("x", [1, C, H, W], seed)


def matmul(M=7, N=13, K=5, bias=True, lead=(), seed=0):
    """``x [*lead, M, K] @ W [K, N]`` (+bias): a dense layer; ``lead`` = (H,) or (1, H) makes
    the activation 3-D/4-D (ConvNeXt's channels-last MLP: several row axes)."""
    rng = _rng(seed)
    init = [nh.from_array((rng.standard_normal((K, N)) * 0.2).astype(np.float32), "w")]
    n = [h.make_node("MatMul", ["x", "w"], ["m" if bias else "y"])]
    if bias:
        init.append(nh.from_array(rng.standard_normal(N).astype(np.float32), "b"))
        n.append(h.make_node("Add", ["m", "b"], ["y"]))
    xs = [*lead, M, K]
    m = onnx_model(n, [h.make_tensor_value_info("x", TP.FLOAT, xs)],
                   [h.make_tensor_value_info("y", TP.FLOAT, [*lead, M, N])], init)
    return m, _x("x", xs, seed)


def attention_scores(B=2, M=13, N=13, K=8, seed=0):
    """``a [B, M, K] @ b [B, K, N]`` of two activations (attention's Q @ K^T), scaled."""
    n = [h.make_node("MatMul", ["a", "b"], ["s"]),
         h.make_node("Mul", ["s", "c"], ["y"])]
    init = [nh.from_array(np.array(0.125, np.float32), "c")]
    m = onnx_model(n, [h.make_tensor_value_info("a", TP.FLOAT, [B, M, K]),
                       h.make_tensor_value_info("b", TP.FLOAT, [B, K, N])],
                   [h.make_tensor_value_info("y", TP.FLOAT, [B, M, N])], init)
    feeds = {**_x("a", [B, M, K], seed), **_x("b", [B, K, N], seed + 1)}
    return m, feeds
