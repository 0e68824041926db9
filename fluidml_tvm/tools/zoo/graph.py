"""The ONNX graph builder every zoo model is written with (:mod:`onnx.helper`, opset 17).

:class:`Graph` collects nodes and initializers, hands out unique tensor names, draws seeded
weights, and writes the patterns exporters emit (``nn.Linear`` as ``MatMul+Add`` or
``Gemm(transB=1)``, GELU as the ``Erf`` formula, torch's dynamic-shape ``Shape -> Gather``
chains).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Graph:
    """Collects nodes and initializers; hands out unique tensor names.

    With ``dry=True`` no weight data is generated (initializers are omitted): the builder only
    counts parameters, which makes ``zoo.param_count`` of a full model cheap.
    """

    def __init__(self, seed: int, dry: bool = False):
        self.rng = np.random.default_rng(seed)
        self.dry = dry
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.params = 0
        self._names: dict[str, int] = {}
        self._consts: dict[tuple, str] = {}

    def name(self, base: str) -> str:
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    # initializers ---------------------------------------------------------------------------
    def param(self, name: str, shape, std: float = 0.02, mean: float = 0.0) -> str:
        """A trainable weight drawn from N(mean, std), counted by ``zoo.param_count``."""
        shape = tuple(int(s) for s in shape)
        self.params += int(np.prod(shape))
        name = self.name(name)
        if not self.dry:
            arr = self.rng.standard_normal(shape, dtype=np.float32)
            arr *= np.float32(std)
            if mean:
                arr += np.float32(mean)
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def buffer(self, name: str, array: np.ndarray) -> str:
        """A constant that is not a trainable parameter (running stats, masks, rotary tables)."""
        name = self.name(name)
        if not self.dry:
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def running_var(self, name: str, channels: int) -> str:
        name = self.name(name)
        if not self.dry:
            arr = self.rng.uniform(0.5, 1.5, size=channels).astype(np.float32)
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def const(self, value, dtype=np.int64) -> str:
        """A small constant (shape, axes, scalar), shared between nodes that use the same value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.name("const")
            self.inits.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    # nodes ----------------------------------------------------------------------------------
    def op(self, op_type: str, inputs, name: str | None = None, outputs: int = 1, **attrs):
        outs = [self.name(f"{name or op_type.lower()}_out") for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outs, name=self.name(name or op_type), **attrs)
        )
        return outs[0] if outputs == 1 else outs

    def rename_last(self, output: str) -> str:
        """Give the last node's (not yet consumed) output a public name, e.g. a graph output."""
        self.nodes[-1].output[0] = output
        return output

    # patterns -------------------------------------------------------------------------------
    def linear_matmul(self, x: str, n_in: int, n_out: int, prefix: str, bias: bool = True,
                      std: float = 0.02) -> str:
        """``MatMul(x, W[in, out]) + b``: how torch exports a 3-D ``nn.Linear``."""
        w = self.param(f"{prefix}.weight", (n_in, n_out), std)
        y = self.op("MatMul", [x, w], name=f"{prefix}/MatMul")
        if bias:
            b = self.param(f"{prefix}.bias", (n_out,), std)
            y = self.op("Add", [y, b], name=f"{prefix}/Add")
        return y

    def gemm(self, x: str, n_in: int, n_out: int, prefix: str) -> str:
        """``Gemm(x, W[out, in], b, transB=1)``: how torch exports a 2-D ``nn.Linear``."""
        w = self.param(f"{prefix}.weight", (n_out, n_in), math.sqrt(2.0 / n_in))
        b = self.param(f"{prefix}.bias", (n_out,), 0.01)
        return self.op("Gemm", [x, w, b], name=f"{prefix}/Gemm", transB=1)

    def layer_norm(self, x: str, dim: int, prefix: str, eps: float = 1e-12) -> str:
        g = self.param(f"{prefix}.weight", (dim,), 0.05, mean=1.0)
        b = self.param(f"{prefix}.bias", (dim,), 0.05)
        return self.op("LayerNormalization", [x, g, b], name=f"{prefix}/LayerNorm", axis=-1,
                       epsilon=eps)

    def gelu(self, x: str, prefix: str) -> str:
        """``x * 0.5 * (1 + erf(x / sqrt(2)))`` as torch exports ``F.gelu`` at opset < 20."""
        d = self.op("Div", [x, self.const(math.sqrt(2.0), np.float32)], name=f"{prefix}/Div")
        e = self.op("Erf", [d], name=f"{prefix}/Erf")
        a = self.op("Add", [e, self.const(1.0, np.float32)], name=f"{prefix}/Add")
        m = self.op("Mul", [x, a], name=f"{prefix}/Mul")
        return self.op("Mul", [m, self.const(0.5, np.float32)], name=f"{prefix}/Mul_1")

    def conv(self, x: str, c_in: int, c_out: int, k: int, prefix: str, stride: int = 1,
             pad: int | None = None, group: int = 1, bias: bool = True) -> str:
        pad = k // 2 if pad is None else pad
        fan_in = c_in // group * k * k
        w = self.param(f"{prefix}.weight", (c_out, c_in // group, k, k), math.sqrt(2.0 / fan_in))
        ins = [x, w]
        if bias:
            ins.append(self.param(f"{prefix}.bias", (c_out,), 0.01))
        return self.op("Conv", ins, name=f"{prefix}/Conv", kernel_shape=[k, k],
                       strides=[stride, stride], pads=[pad] * 4, group=group, dilations=[1, 1])

    def batch_norm(self, x: str, c: int, prefix: str, gamma: float = 1.0) -> str:
        g = self.param(f"{prefix}.weight", (c,), 0.1 * gamma, mean=gamma)
        b = self.param(f"{prefix}.bias", (c,), 0.1)
        mean = self.buffer(f"{prefix}.running_mean",
                           (self.rng.standard_normal(c) * 0.1).astype(np.float32))
        var = self.running_var(f"{prefix}.running_var", c)
        return self.op("BatchNormalization", [x, g, b, mean, var], name=f"{prefix}/BN",
                       epsilon=1e-5, momentum=0.9)

    # dynamic-shape helpers (torch.onnx style) -----------------------------------------------
    def dim(self, x: str, axis: int, prefix: str) -> str:
        """``Unsqueeze(Gather(Shape(x), axis), [0])``: one dim of ``x`` as a 1-element tensor."""
        s = self.op("Shape", [x], name=f"{prefix}/Shape")
        g = self.op("Gather", [s, self.const(axis)], name=f"{prefix}/Gather", axis=0)
        return self.op("Unsqueeze", [g, self.const([0])], name=f"{prefix}/Unsqueeze")

    def shape_of(self, parts, prefix: str) -> str:
        """``Concat`` of run-time dims (tensor names) and constant dims (ints) into a shape."""
        ins = [p if isinstance(p, str) else self.const([p]) for p in parts]
        return self.op("Concat", ins, name=f"{prefix}/Concat", axis=0)


def value_info(name: str, elem_type: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))

