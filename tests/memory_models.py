"""Small ONNX models built with ``onnx.helper`` for the memory-planner tests and benchmark.

Each builder returns an ``onnx.ModelProto`` with fixed shapes and seeded random weights.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper, numpy_helper

from fluidml_tvm.options import Options

OPSET = 17


class _Graph:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, arr: np.ndarray, base: str = "w") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def weight(self, *shape, scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        scale = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        return self.const((self.rng.standard_normal(shape) * scale).astype("float32"))

    def op(self, op_type: str, inputs: list, **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def model(self, name, inputs, outputs) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
            self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 8
        return m


def mlp(batch: int = 4, dims=(16, 32, 64, 8), seed: int = 0) -> onnx.ModelProto:
    """MatMul/Add/Relu layers; the last layer has no Relu."""
    g = _Graph(seed)
    x = "x"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        x = g.op("Add", [g.op("MatMul", [x, g.weight(a, b)]), g.weight(b, scale=0.1)])
        if i < len(dims) - 2:
            x = g.op("Relu", [x])
    g.nodes[-1].output[0] = "y"
    return g.model("mlp", [("x", [batch, dims[0]])], ["y"])


def conv_block(g: _Graph, x: str, cin: int, cout: int) -> str:
    w = g.weight(cout, cin, 3, 3)
    b = g.weight(cout, scale=0.1)
    return g.op("Relu", [g.op("Conv", [x, w, b], pads=[1, 1, 1, 1], kernel_shape=[3, 3])])


def small_convnet(size: int = 16, seed: int = 0) -> onnx.ModelProto:
    """conv-relu, pool, conv-relu, pool, flatten, gemm."""
    g = _Graph(seed)
    x = conv_block(g, "x", 3, 8)
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = conv_block(g, x, 8, 16)
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.op("Flatten", [x], axis=1)
    feat = 16 * (size // 4) ** 2
    y = g.op("Gemm", [x, g.weight(10, feat), g.weight(10, scale=0.1)], transB=1)
    g.nodes[-1].output[0] = "y"
    del y
    return g.model("convnet", [("x", [1, 3, size, size])], ["y"])


def branchy(size: int = 8, ch: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Residual blocks with two branches each, joined by adds; two graph outputs."""
    g = _Graph(seed)
    x = conv_block(g, "x", 3, ch)
    for _ in range(3):
        a = conv_block(g, x, ch, ch)
        a = conv_block(g, a, ch, ch)
        b = g.op("Sigmoid", [conv_block(g, x, ch, ch)])
        x = g.op("Add", [g.op("Add", [a, b]), x])
    side = g.op("Mul", [x, x])
    g.nodes[-1].output[0] = "side"
    y = g.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
    g.nodes[-1].output[0] = "y"
    del side, y
    return g.model("branchy", [("x", [1, 3, size, size])], ["y", "side"])


def fire(size: int = 10, cin: int = 8, squeeze: int = 4, expand: int = 8, blocks: int = 2,
         seed: int = 0) -> onnx.ModelProto:
    """SqueezeNet fire modules: a 1x1 squeeze, 1x1 and 3x3 expands joined by a channel concat."""
    g = _Graph(seed)
    x = "x"
    for _ in range(blocks):
        s = g.op("Relu", [g.op("Conv", [x, g.weight(squeeze, cin, 1, 1)], kernel_shape=[1, 1])])
        e1 = g.op("Relu", [g.op("Conv", [s, g.weight(expand, squeeze, 1, 1)],
                                kernel_shape=[1, 1])])
        e3 = conv_block(g, s, squeeze, expand)
        x, cin = g.op("Concat", [e1, e3], axis=1), 2 * expand
    g.op("Conv", [x, g.weight(4, cin, 1, 1)], kernel_shape=[1, 1])
    g.nodes[-1].output[0] = "y"
    return g.model("fire", [("x", [1, 8, size, size])], ["y"])


def concat_of(shape, axis: int, with_input: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Two 1x1 convolutions of ``x`` (and ``x`` itself with ``with_input``) concatenated along
    ``axis``, then a 1x1 convolution (kernels FuseOps keeps apart from the concat)."""
    g = _Graph(seed)
    c = shape[1]
    a = g.op("Relu", [g.op("Conv", ["x", g.weight(c, c, 1, 1)], kernel_shape=[1, 1])])
    b = g.op("Conv", ["x", g.weight(c, c, 1, 1)], kernel_shape=[1, 1])
    cat = g.op("Concat", [a, b] + (["x"] if with_input else []), axis=axis)
    cout = c * (2 + with_input) if axis == 1 else c
    g.op("Conv", [cat, g.weight(4, cout, 1, 1)], kernel_shape=[1, 1])
    g.nodes[-1].output[0] = "y"
    return g.model("concat", [("x", list(shape))], ["y"])


def dense_block(size: int = 8, ch: int = 16, layers: int = 3, seed: int = 0) -> onnx.ModelProto:
    """DenseNet-style: each layer's features concatenated to all before (chained concats)."""
    g = _Graph(seed)
    x, c = "x", ch
    for _ in range(layers):
        y = conv_block(g, x, c, ch)
        x, c = g.op("Concat", [x if x != "x" else g.op("Relu", ["x"]), y], axis=1), c + ch
    g.op("Conv", [x, g.weight(4, c, 1, 1)], kernel_shape=[1, 1])
    g.nodes[-1].output[0] = "y"
    return g.model("dense", [("x", [1, ch, size, size])], ["y"])


def pointwise_residual(size: int = 12, ch: int = 16, seed: int = 0) -> onnx.ModelProto:
    """r = relu(1x1 conv(x)); s = 1x1 conv(relu(1x1 conv(r))) + r; y = 1x1 conv(s): the kernel
    of s (a 1x1 conv with the residual add, on a map of enough positions for the position-vector
    kernel) may write s over r, which dies there."""
    g = _Graph(seed)

    def conv(x):
        return g.op("Conv", [x, g.weight(ch, ch, 1, 1)], kernel_shape=[1, 1])

    r = g.op("Relu", [conv("x")])
    h = g.op("Relu", [conv(r)])
    conv(g.op("Add", [conv(h), r]))  # the sum is an intermediate (the output is not planned)
    g.nodes[-1].output[0] = "y"
    return g.model("pointwise_residual", [("x", [1, ch, size, size])], ["y"])


def _layernorm(g: _Graph, x: str, hidden: int) -> str:
    scale = g.const(
        np.ones(hidden, "float32") + 0.01 * g.rng.standard_normal(hidden).astype("float32")
    )
    bias = g.const(0.01 * g.rng.standard_normal(hidden).astype("float32"))
    return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)


def _shape(g: _Graph, shape) -> str:
    return g.const(np.array(shape, dtype="int64"), "shape")


def bert_like(
    layers: int = 2, seq: int = 16, hidden: int = 64, heads: int = 4, ffn: int = 256, seed: int = 0
) -> onnx.ModelProto:
    """A stack of post-LN transformer encoder layers (self-attention + GELU FFN)."""
    g = _Graph(seed)
    hd = hidden // heads
    x = "x"
    for _ in range(layers):

        def proj(inp, n_out):
            return g.op(
                "Add", [g.op("MatMul", [inp, g.weight(hidden, n_out)]), g.weight(n_out, scale=0.02)]
            )

        def split_heads(t, perm):
            t = g.op("Reshape", [t, _shape(g, [1, seq, heads, hd])])
            return g.op("Transpose", [t], perm=perm)

        q = split_heads(proj(x, hidden), [0, 2, 1, 3])
        k = split_heads(proj(x, hidden), [0, 2, 3, 1])
        v = split_heads(proj(x, hidden), [0, 2, 1, 3])
        s = g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.array(1.0 / np.sqrt(hd), "float32"))])
        p = g.op("Softmax", [s], axis=-1)
        c = g.op("Transpose", [g.op("MatMul", [p, v])], perm=[0, 2, 1, 3])
        c = g.op("Reshape", [c, _shape(g, [1, seq, hidden])])
        x = _layernorm(g, g.op("Add", [proj(c, hidden), x]), hidden)
        h = g.op("Add", [g.op("MatMul", [x, g.weight(hidden, ffn)]), g.weight(ffn, scale=0.02)])
        erf = g.op("Erf", [g.op("Mul", [h, g.const(np.array(1 / np.sqrt(2), "float32"))])])
        h = g.op(
            "Mul",
            [
                g.op("Mul", [h, g.op("Add", [erf, g.const(np.array(1.0, "float32"))])]),
                g.const(np.array(0.5, "float32")),
            ],
        )
        f = g.op("Add", [g.op("MatMul", [h, g.weight(ffn, hidden)]), g.weight(hidden, scale=0.02)])
        x = _layernorm(g, g.op("Add", [f, x]), hidden)
    g.nodes[-1].output[0] = "y"
    return g.model("bert_like", [("x", [1, seq, hidden])], ["y"])


VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg_like(
    size: int = 32,
    cfg=(8, "M", 16, "M", 32, 32, "M"),
    classes: int = 10,
    fc: int = 64,
    seed: int = 0,
) -> onnx.ModelProto:
    """VGG-style conv stack (3x3 conv+ReLU, 2x2 max-pool) and a two-layer classifier."""
    g = _Graph(seed)
    x, c, s = "x", 3, size
    for v in cfg:
        if v == "M":
            x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
            s //= 2
        else:
            x = conv_block(g, x, c, v)
            c = v
    x = g.op("Flatten", [x], axis=1)
    x = g.op(
        "Relu", [g.op("Gemm", [x, g.weight(fc, c * s * s), g.weight(fc, scale=0.1)], transB=1)]
    )
    g.op("Gemm", [x, g.weight(classes, fc), g.weight(classes, scale=0.1)], transB=1)
    g.nodes[-1].output[0] = "y"
    return g.model("vgg_like", [("x", [1, 3, size, size])], ["y"])


def two_branches(width: int = 256, seed: int = 0) -> onnx.ModelProto:
    """Two wide branches listed breadth-first (a1, b1, a2, b2): the listed order keeps both wide
    tensors alive at once, a depth-first order only one."""
    g = _Graph(seed)
    a1 = g.op("Relu", [g.op("MatMul", ["x", g.weight(16, width)])])
    b1 = g.op("Sigmoid", [g.op("MatMul", ["x", g.weight(16, width)])])
    a2 = g.op("MatMul", [a1, g.weight(width, 8)])
    b2 = g.op("MatMul", [b1, g.weight(width, 8)])
    g.op("Add", [a2, b2])
    g.nodes[-1].output[0] = "y"
    return g.model("two_branches", [("x", [4, 16])], ["y"])


def split_topk(seed: int = 0) -> onnx.ModelProto:
    """Multi-output kernels: Split into three, a gated sum, TopK (values and int64 indices)."""
    g = _Graph(seed)
    h = g.op("MatMul", ["x", g.weight(16, 96)])
    sizes = g.const(np.array([32, 32, 32], "int64"), "split")
    g.nodes.append(helper.make_node("Split", [h, sizes], ["sa", "sb", "sc"], axis=1))
    y = g.op("Add", [g.op("Mul", [g.op("Tanh", ["sa"]), g.op("Sigmoid", ["sb"])]), "sc"])
    g.op("TopK", [y, g.const(np.array([4], "int64"), "k")], axis=1)
    g.nodes[-1].output[:] = ["y", "idx"]
    return g.model("split_topk", [("x", [4, 16])], ["y"])


# What the planner tests compile with: a plain CPU target, the memory stage without the others.
TARGET = tvm.target.Target({"kind": "llvm"})
OPTS = Options(schedule=False, layout=False, verify=True)
MODELS = {
    "mlp": mlp,
    "convnet": small_convnet,
    "branchy": branchy,
    "bert_like": bert_like,
    "vgg_like": vgg_like,
    "two_branches": two_branches,
    "split_topk": split_topk,
}
