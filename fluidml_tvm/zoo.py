"""A model zoo of ONNX files with seeded random weights, built without torch and without downloads.

Every model is written node by node with :mod:`onnx.helper` (opset 17), in the shape that real
exporters (``torch.onnx``) emit, so that the compiler sees the same patterns it will meet in the
wild: BERT's attention as ``MatMul+Add -> Reshape [B,S,H,D] -> Transpose``, GELU as the ``Erf``
formula, ReLU6 as ``Clip``, ``Linear`` as ``Gemm(transB=1)``.

=============  ===================================================================================
name           model
=============  ===================================================================================
``bert``       BERT encoder (base: 12 layers, hidden 768, 12 heads, FFN 3072, seq 128, vocab 30522)
``gpt-neox``   GPT-NeoX decoder (small = Pythia-70M: 6 layers, hidden 512, 8 heads, seq 128)
``vgg11``      VGG-11 at 224x224 (classifier 25088 -> 4096 -> 4096 -> 1000)
``vgg16``      VGG-16 at 224x224
``resnet50``   ResNet-50 v1.5 at 224x224, bottleneck blocks, explicit ``BatchNormalization``
``mobilenet``  MobileNetV2 at 224x224, depthwise convs (``group=C``), ReLU6 as ``Clip``
=============  ===================================================================================

Each has ``size="full"`` (the real architecture, whose :func:`param_count` matches the published
one) and ``size="tiny"`` (same graph structure, narrow and short: runs in milliseconds, for tests).
``bert`` and ``gpt-neox`` also take ``dynamic=True``: batch and sequence become symbolic dims and
every Reshape target is computed at run time with ``Shape -> Gather -> Unsqueeze -> Concat``, as
torch exports with ``dynamic_axes`` do; they test shape folding (stock TVM 0.27's importer folds
these chains itself when it is given the input shapes).

Batch normalization is kept as ``BatchNormalization`` nodes (with random running statistics)
instead of being folded into the convolution. Exporters differ here (``torch.onnx`` in eval mode
usually folds it, ``training=TrainingMode.PRESERVE`` keeps it); explicit nodes leave the folding to
the compiler under test. The last BN of each ResNet bottleneck has a small scale (0.2) so that the
residual stream stays O(1) without trained statistics.

Weights are drawn from ``numpy.random.default_rng(seed)`` with the usual initialisation scales
(BERT/GPT: N(0, 0.02); convolutions and FC layers: He normal), so activations stay O(1) through
the whole network and outputs can be compared at tight tolerances.

Examples
--------
>>> from fluidml_tvm import zoo
>>> model = zoo.build("bert", size="tiny", seed=0)
>>> feeds = zoo.random_inputs(model, seed=0)
>>> model, description = zoo.resolve("zoo:vgg11:tiny")
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; every ONNX Runtime >= 1.10 loads it
INT64_MAX = np.iinfo(np.int64).max
_PROTOBUF_LIMIT = 2**31 - 1

MODELS: dict[str, str] = {
    "bert": "BERT encoder: token+position+segment embeddings, LayerNorm, multi-head attention "
    "(exporter Reshape/Transpose pattern), Erf GELU FFN, pooler",
    "gpt-neox": "GPT-NeoX decoder: rotary embeddings on a fraction of each head, parallel "
    "attention + MLP residual, causal mask, Erf GELU, LM head",
    "vgg11": "VGG-11: 8 conv3x3+ReLU, 5 MaxPool, 3 FC layers (4096 wide) with ReLU",
    "vgg16": "VGG-16: 13 conv3x3+ReLU, 5 MaxPool, 3 FC layers (4096 wide) with ReLU",
    "resnet50": "ResNet-50 v1.5: bottleneck blocks [3,4,6,3], BatchNormalization nodes, "
    "global average pool, FC",
    "mobilenet": "MobileNetV2: inverted residual blocks, depthwise conv (group=C) + pointwise, "
    "BatchNormalization, ReLU6 as Clip",
}
SIZES = ("tiny", "full")
DYNAMIC_MODELS = ("bert", "gpt-neox")
_ALIASES = {"gpt_neox": "gpt-neox", "gptneox": "gpt-neox", "mobilenetv2": "mobilenet",
            "mobilenet_v2": "mobilenet", "resnet": "resnet50"}

_META_NAME = "fluidml.zoo.name"
_META_SIZE = "fluidml.zoo.size"
_META_RANGE = "fluidml.zoo.range."  # + input name -> "low,high" for integer inputs


# --------------------------------------------------------------------------------------------
# Graph builder
# --------------------------------------------------------------------------------------------


class _Graph:
    """Collects nodes and initializers; hands out unique tensor names.

    With ``dry=True`` no weight data is generated (initializers are omitted): the builder only
    counts parameters, which makes :func:`param_count` of a full model cheap.
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
        """A trainable weight drawn from N(mean, std), counted by :func:`param_count`."""
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


def _value_info(name: str, elem_type: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))


# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TransformerConfig:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    seq: int
    vocab: int
    max_positions: int
    type_vocab: int = 2
    rotary_pct: float = 0.25


_BERT = {
    "full": _TransformerConfig(12, 768, 12, 3072, 128, 30522, 512),
    "tiny": _TransformerConfig(2, 64, 4, 128, 16, 512, 64),
}
_NEOX = {
    "full": _TransformerConfig(6, 512, 8, 2048, 128, 50304, 2048),
    "tiny": _TransformerConfig(2, 64, 4, 256, 16, 512, 64),
}
_VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}
# image size, channel divisor, FC width, classes
_CNN = {"full": (224, 1, 4096, 1000), "tiny": (32, 16, 64, 10)}


# --------------------------------------------------------------------------------------------
# BERT
# --------------------------------------------------------------------------------------------


def _bert(g: _Graph, cfg: _TransformerConfig, dynamic: bool):
    H, nh = cfg.hidden, cfg.heads
    D = H // nh
    B, S = ("batch", "sequence") if dynamic else (1, cfg.seq)
    inputs = [
        _value_info("input_ids", TensorProto.INT64, [B, S]),
        _value_info("attention_mask", TensorProto.INT64, [B, S]),
        _value_info("token_type_ids", TensorProto.INT64, [B, S]),
    ]
    ranges = {"input_ids": (0, cfg.vocab), "attention_mask": (0, 2),
              "token_type_ids": (0, cfg.type_vocab)}

    # embeddings
    word = g.param("embeddings.word_embeddings.weight", (cfg.vocab, H))
    pos = g.param("embeddings.position_embeddings.weight", (cfg.max_positions, H))
    typ = g.param("embeddings.token_type_embeddings.weight", (cfg.type_vocab, H))
    if dynamic:
        # position_ids = self.position_ids[:, :seq_len] (a registered buffer of max_positions)
        buf = g.buffer("embeddings.position_ids",
                       np.arange(cfg.max_positions, dtype=np.int64)[None])
        seq = g.dim("input_ids", 1, "embeddings/seq")
        pos_ids = g.op("Slice", [buf, g.const([0]), seq, g.const([1])], name="embeddings/Slice")
    else:
        pos_ids = g.buffer("embeddings.position_ids", np.arange(cfg.seq, dtype=np.int64)[None])
    e = g.op("Gather", [word, "input_ids"], name="embeddings/word/Gather", axis=0)
    t = g.op("Gather", [typ, "token_type_ids"], name="embeddings/token_type/Gather", axis=0)
    e = g.op("Add", [e, t], name="embeddings/Add")
    p = g.op("Gather", [pos, pos_ids], name="embeddings/position/Gather", axis=0)
    e = g.op("Add", [e, p], name="embeddings/Add_1")
    x = g.layer_norm(e, H, "embeddings.LayerNorm")

    # extended attention mask: (1 - mask[:, None, None, :]) * -10000
    m = g.op("Unsqueeze", ["attention_mask", g.const([1, 2])], name="mask/Unsqueeze")
    m = g.op("Cast", [m], name="mask/Cast", to=TensorProto.FLOAT)
    m = g.op("Sub", [g.const(1.0, np.float32), m], name="mask/Sub")
    mask = g.op("Mul", [m, g.const(-10000.0, np.float32)], name="mask/Mul")

    scale = g.const(math.sqrt(D), np.float32)
    for i in range(cfg.layers):
        pre = f"encoder.layer.{i}"
        if dynamic:
            b_dim = g.dim(x, 0, f"{pre}/attention/batch")
            s_dim = g.dim(x, 1, f"{pre}/attention/seq")
            heads_shape = g.shape_of([b_dim, s_dim, nh, D], f"{pre}/attention/heads")
            merged_shape = g.shape_of([b_dim, s_dim, H], f"{pre}/attention/merge")
        else:
            heads_shape = g.const([1, cfg.seq, nh, D])
            merged_shape = g.const([1, cfg.seq, H])
        qkv = {}
        for n, perm in (("query", [0, 2, 1, 3]), ("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3])):
            y = g.linear_matmul(x, H, H, f"{pre}.attention.self.{n}")
            y = g.op("Reshape", [y, heads_shape], name=f"{pre}/attention/{n}/Reshape")
            qkv[n] = g.op("Transpose", [y], name=f"{pre}/attention/{n}/Transpose", perm=perm)
        s = g.op("MatMul", [qkv["query"], qkv["key"]], name=f"{pre}/attention/MatMul")
        s = g.op("Div", [s, scale], name=f"{pre}/attention/Div")
        s = g.op("Add", [s, mask], name=f"{pre}/attention/Add")
        s = g.op("Softmax", [s], name=f"{pre}/attention/Softmax", axis=-1)
        c = g.op("MatMul", [s, qkv["value"]], name=f"{pre}/attention/MatMul_1")
        c = g.op("Transpose", [c], name=f"{pre}/attention/Transpose", perm=[0, 2, 1, 3])
        c = g.op("Reshape", [c, merged_shape], name=f"{pre}/attention/Reshape")
        a = g.linear_matmul(c, H, H, f"{pre}.attention.output.dense")
        a = g.op("Add", [a, x], name=f"{pre}/attention/output/Add")
        x = g.layer_norm(a, H, f"{pre}.attention.output.LayerNorm")
        f = g.linear_matmul(x, H, cfg.intermediate, f"{pre}.intermediate.dense")
        f = g.gelu(f, f"{pre}/intermediate/gelu")
        f = g.linear_matmul(f, cfg.intermediate, H, f"{pre}.output.dense")
        f = g.op("Add", [f, x], name=f"{pre}/output/Add")
        x = g.layer_norm(f, H, f"{pre}.output.LayerNorm")

    g.rename_last("last_hidden_state")
    first = g.op("Gather", ["last_hidden_state", g.const(0)], name="pooler/Gather", axis=1)
    g.gemm(first, H, H, "pooler.dense")
    g.op("Tanh", [g.nodes[-1].output[0]], name="pooler/Tanh")
    g.rename_last("pooler_output")
    outputs = [
        _value_info("last_hidden_state", TensorProto.FLOAT, [B, S, H]),
        _value_info("pooler_output", TensorProto.FLOAT, [B, H]),
    ]
    return inputs, outputs, ranges


# --------------------------------------------------------------------------------------------
# GPT-NeoX
# --------------------------------------------------------------------------------------------


def _rotary_tables(rot: int, positions: int):
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, rot, 2, dtype=np.float64) / rot))
    freqs = np.outer(np.arange(positions, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return (np.cos(emb)[None, None].astype(np.float32),
            np.sin(emb)[None, None].astype(np.float32))


def _gpt_neox(g: _Graph, cfg: _TransformerConfig, dynamic: bool):
    H, nh = cfg.hidden, cfg.heads
    D = H // nh
    rot = int(D * cfg.rotary_pct)
    B, S = ("batch", "sequence") if dynamic else (1, cfg.seq)
    inputs = [_value_info("input_ids", TensorProto.INT64, [B, S])]
    ranges = {"input_ids": (0, cfg.vocab)}

    x = g.op("Gather", [g.param("gpt_neox.embed_in.weight", (cfg.vocab, H)), "input_ids"],
             name="embed_in/Gather", axis=0)
    cos_t, sin_t = _rotary_tables(rot, cfg.max_positions if dynamic else cfg.seq)
    cos = g.buffer("rotary_emb.cos_cached", cos_t)
    sin = g.buffer("rotary_emb.sin_cached", sin_t)
    n_pos = cfg.max_positions if dynamic else cfg.seq
    causal = g.buffer("attention.bias", np.tril(np.ones((n_pos, n_pos), dtype=bool))[None, None])
    if dynamic:
        seq = g.dim("input_ids", 1, "rotary/seq")
        cos = g.op("Slice", [cos, g.const([0]), seq, g.const([2])], name="rotary/cos/Slice")
        sin = g.op("Slice", [sin, g.const([0]), seq, g.const([2])], name="rotary/sin/Slice")
        ends = g.op("Concat", [seq, seq], name="causal/Concat", axis=0)
        causal = g.op("Slice", [causal, g.const([0, 0]), ends, g.const([2, 3])],
                      name="causal/Slice")
    neg = g.const(np.finfo(np.float32).min, np.float32)
    scale = g.const(math.sqrt(D), np.float32)

    def rotate(t: str, prefix: str) -> str:
        """``cat(t_rot * cos + rotate_half(t_rot) * sin, t_pass)`` on the last axis."""
        t_rot = g.op("Slice", [t, g.const([0]), g.const([rot]), g.const([3])],
                     name=f"{prefix}/Slice")
        t_pass = g.op("Slice", [t, g.const([rot]), g.const([INT64_MAX]), g.const([3])],
                      name=f"{prefix}/Slice_1")
        x1 = g.op("Slice", [t_rot, g.const([0]), g.const([rot // 2]), g.const([3])],
                  name=f"{prefix}/Slice_2")
        x2 = g.op("Slice", [t_rot, g.const([rot // 2]), g.const([INT64_MAX]), g.const([3])],
                  name=f"{prefix}/Slice_3")
        half = g.op("Concat", [g.op("Neg", [x2], name=f"{prefix}/Neg"), x1],
                    name=f"{prefix}/Concat", axis=-1)
        a = g.op("Mul", [t_rot, cos], name=f"{prefix}/Mul")
        b = g.op("Mul", [half, sin], name=f"{prefix}/Mul_1")
        emb = g.op("Add", [a, b], name=f"{prefix}/Add")
        return g.op("Concat", [emb, t_pass], name=f"{prefix}/Concat_1", axis=-1)

    for i in range(cfg.layers):
        pre = f"gpt_neox.layers.{i}"
        ln1 = g.layer_norm(x, H, f"{pre}.input_layernorm", eps=1e-5)
        ln2 = g.layer_norm(x, H, f"{pre}.post_attention_layernorm", eps=1e-5)
        # attention: fused QKV, view(B, S, nh, 3D), split, permute to [B, nh, S, D]
        qkv = g.linear_matmul(ln1, H, 3 * H, f"{pre}.attention.query_key_value")
        if dynamic:
            b_dim = g.dim(qkv, 0, f"{pre}/attention/batch")
            s_dim = g.dim(qkv, 1, f"{pre}/attention/seq")
            qkv_shape = g.shape_of([b_dim, s_dim, nh, 3 * D], f"{pre}/attention/qkv")
            merged_shape = g.shape_of([b_dim, s_dim, H], f"{pre}/attention/merge")
        else:
            qkv_shape = g.const([1, cfg.seq, nh, 3 * D])
            merged_shape = g.const([1, cfg.seq, H])
        qkv = g.op("Reshape", [qkv, qkv_shape], name=f"{pre}/attention/Reshape")
        parts = []
        for j, n in enumerate(("query", "key", "value")):
            end = (j + 1) * D if j < 2 else INT64_MAX
            t = g.op("Slice", [qkv, g.const([j * D]), g.const([end]), g.const([3])],
                     name=f"{pre}/attention/{n}/Slice")
            parts.append(g.op("Transpose", [t], name=f"{pre}/attention/{n}/Transpose",
                              perm=[0, 2, 1, 3]))
        q = rotate(parts[0], f"{pre}/attention/rotary_q")
        k = rotate(parts[1], f"{pre}/attention/rotary_k")
        kt = g.op("Transpose", [k], name=f"{pre}/attention/key/Transpose_1", perm=[0, 1, 3, 2])
        s = g.op("MatMul", [q, kt], name=f"{pre}/attention/MatMul")
        s = g.op("Div", [s, scale], name=f"{pre}/attention/Div")
        s = g.op("Where", [causal, s, neg], name=f"{pre}/attention/Where")
        s = g.op("Softmax", [s], name=f"{pre}/attention/Softmax", axis=-1)
        c = g.op("MatMul", [s, parts[2]], name=f"{pre}/attention/MatMul_1")
        c = g.op("Transpose", [c], name=f"{pre}/attention/Transpose", perm=[0, 2, 1, 3])
        c = g.op("Reshape", [c, merged_shape], name=f"{pre}/attention/Reshape_1")
        attn = g.linear_matmul(c, H, H, f"{pre}.attention.dense")
        # MLP on the second LayerNorm of the same input (use_parallel_residual)
        f = g.linear_matmul(ln2, H, cfg.intermediate, f"{pre}.mlp.dense_h_to_4h")
        f = g.gelu(f, f"{pre}/mlp/gelu")
        f = g.linear_matmul(f, cfg.intermediate, H, f"{pre}.mlp.dense_4h_to_h")
        x = g.op("Add", [g.op("Add", [x, attn], name=f"{pre}/Add"), f], name=f"{pre}/Add_1")

    x = g.layer_norm(x, H, "gpt_neox.final_layer_norm", eps=1e-5)
    g.linear_matmul(x, H, cfg.vocab, "embed_out", bias=False)
    g.rename_last("logits")
    return inputs, [_value_info("logits", TensorProto.FLOAT, [B, S, cfg.vocab])], ranges


# --------------------------------------------------------------------------------------------
# CNNs
# --------------------------------------------------------------------------------------------


def _image_input(size: str):
    hw = _CNN[size][0]
    return [_value_info("input", TensorProto.FLOAT, [1, 3, hw, hw])]


def _classifier_output(g: _Graph, classes: int):
    g.rename_last("output")
    return [_value_info("output", TensorProto.FLOAT, [1, classes])]


def _vgg(name: str):
    def build(g: _Graph, size: str):
        hw, div, fc, classes = _CNN[size]
        x, c = "input", 3
        for i, v in enumerate(_VGG_CFG[name]):
            if v == "M":
                x = g.op("MaxPool", [x], name=f"features.{i}/MaxPool", kernel_shape=[2, 2],
                         strides=[2, 2])
                continue
            x = g.conv(x, c, v // div, 3, f"features.{i}")
            x = g.op("Relu", [x], name=f"features.{i}/Relu")
            c = v // div
        # torchvision's AdaptiveAvgPool2d((7, 7)) is the identity at 224x224 and is folded away
        x = g.op("Flatten", [x], name="Flatten", axis=1)
        spatial = hw // 32
        x = g.gemm(x, c * spatial * spatial, fc, "classifier.0")
        x = g.op("Relu", [x], name="classifier.1/Relu")
        x = g.gemm(x, fc, fc, "classifier.3")
        x = g.op("Relu", [x], name="classifier.4/Relu")
        g.gemm(x, fc, classes, "classifier.6")
        return _image_input(size), _classifier_output(g, classes), {}

    return build


def _conv_bn(g: _Graph, x: str, c_in: int, c_out: int, k: int, prefix: str, stride: int = 1,
             group: int = 1, act: str | None = "relu", gamma: float = 1.0) -> str:
    x = g.conv(x, c_in, c_out, k, f"{prefix}.conv", stride=stride, group=group, bias=False)
    x = g.batch_norm(x, c_out, f"{prefix}.bn", gamma)
    if act == "relu":
        x = g.op("Relu", [x], name=f"{prefix}/Relu")
    elif act == "relu6":
        x = g.op("Clip", [x, g.const(0.0, np.float32), g.const(6.0, np.float32)],
                 name=f"{prefix}/Clip")
    return x


def _resnet50(g: _Graph, size: str):
    _, div, _, classes = _CNN[size]
    # tiny: one identity-shortcut block and one strided downsample block, as in every stage
    blocks = [3, 4, 6, 3] if size == "full" else [2, 1]
    width = 64 // div
    x = _conv_bn(g, "input", 3, width, 7, "stem", stride=2)
    x = g.op("MaxPool", [x], name="maxpool/MaxPool", kernel_shape=[3, 3], strides=[2, 2],
             pads=[1, 1, 1, 1])
    c_in = width
    for li, n in enumerate(blocks):
        planes = (64 << li) // div
        for bi in range(n):
            pre = f"layer{li + 1}.{bi}"
            stride = 2 if (bi == 0 and li > 0) else 1
            y = _conv_bn(g, x, c_in, planes, 1, f"{pre}.1")
            y = _conv_bn(g, y, planes, planes, 3, f"{pre}.2", stride=stride)
            # a small last-BN scale keeps the residual stream O(1) through 16 blocks (the
            # random running statistics do not normalise like trained ones would)
            y = _conv_bn(g, y, planes, planes * 4, 1, f"{pre}.3", act=None, gamma=0.2)
            if bi == 0:
                x = _conv_bn(g, x, c_in, planes * 4, 1, f"{pre}.downsample", stride=stride,
                             act=None)
            x = g.op("Relu", [g.op("Add", [y, x], name=f"{pre}/Add")], name=f"{pre}/Relu")
            c_in = planes * 4
    x = g.op("GlobalAveragePool", [x], name="avgpool/GlobalAveragePool")
    x = g.op("Flatten", [x], name="Flatten", axis=1)
    g.gemm(x, c_in, classes, "fc")
    return _image_input(size), _classifier_output(g, classes), {}


def _mobilenet(g: _Graph, size: str):
    classes = _CNN[size][3]
    # (expansion t, channels c, repeats n, stride s) as in the MobileNetV2 paper
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]
    width = 1.0
    if size == "tiny":  # a quarter of the width, first three stages: every kind of block once
        width, cfg = 0.25, [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 2)]

    def ch(c: float) -> int:  # torchvision's _make_divisible(c * width, 8)
        c = c * width
        v = max(8, int(c + 4) // 8 * 8)
        return v + 8 if v < 0.9 * c else v

    c_in = ch(32)
    x = _conv_bn(g, "input", 3, c_in, 3, "features.0", stride=2, act="relu6")
    idx = 1
    for t, c, n, s in cfg:
        c_out = ch(c)
        for r in range(n):
            pre = f"features.{idx}"
            hidden = c_in * t
            y = x
            if t != 1:
                y = _conv_bn(g, y, c_in, hidden, 1, f"{pre}.expand", act="relu6")
            y = _conv_bn(g, y, hidden, hidden, 3, f"{pre}.dw", stride=s if r == 0 else 1,
                         group=hidden, act="relu6")
            y = _conv_bn(g, y, hidden, c_out, 1, f"{pre}.project", act=None)
            if (s if r == 0 else 1) == 1 and c_in == c_out:  # torchvision's use_res_connect
                y = g.op("Add", [x, y], name=f"{pre}/Add")
            x, c_in = y, c_out
            idx += 1
    last = 1280 if size == "full" else ch(1280)
    x = _conv_bn(g, x, c_in, last, 1, f"features.{idx}", act="relu6")
    x = g.op("GlobalAveragePool", [x], name="GlobalAveragePool")
    x = g.op("Flatten", [x], name="Flatten", axis=1)
    g.gemm(x, last, classes, "classifier.1")
    return _image_input(size), _classifier_output(g, classes), {}


_CNN_BUILDERS: dict[str, Callable] = {
    "vgg11": _vgg("vgg11"),
    "vgg16": _vgg("vgg16"),
    "resnet50": _resnet50,
    "mobilenet": _mobilenet,
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(MODELS)}")
    return key


def _check_args(name: str, size: str, dynamic: bool) -> str:
    name = _canonical(name)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; use one of {SIZES}")
    if dynamic and name not in DYNAMIC_MODELS:
        raise ValueError(f"dynamic=True is only available for {DYNAMIC_MODELS}, not {name!r}")
    return name


def _run_builder(g: _Graph, name: str, size: str, dynamic: bool):
    if name == "bert":
        return _bert(g, _BERT[size], dynamic)
    if name == "gpt-neox":
        return _gpt_neox(g, _NEOX[size], dynamic)
    return _CNN_BUILDERS[name](g, size)


def describe(name: str, size: str = "tiny", dynamic: bool = False) -> str:
    """A one-line description of a configuration, with its sizes and parameter count."""
    name = _check_args(name, size, dynamic)
    if name in ("bert", "gpt-neox"):
        c = (_BERT if name == "bert" else _NEOX)[size]
        shape = "[batch, sequence]" if dynamic else f"[1, {c.seq}]"
        detail = (f"{c.layers} layers, hidden {c.hidden}, {c.heads} heads, FFN {c.intermediate}, "
                  f"vocab {c.vocab}, input {shape}")
    else:
        hw = _CNN[size][0]
        detail = f"input [1, 3, {hw}, {hw}], {_CNN[size][3]} classes"
    params = param_count(name, size)
    return f"{name} ({size}{', dynamic' if dynamic else ''}): {detail}, {params / 1e6:.2f}M params"


def param_count(name: str, size: str = "full") -> int:
    """Number of trainable parameters, counted without generating any weight.

    Constants that are not trainable (BatchNorm running statistics, position ids, rotary tables,
    masks, shapes) are not counted, so the numbers match the published ones (torchvision,
    Hugging Face): BERT-base 109,482,240 (with pooler), Pythia-70M 70,426,624, VGG-11 132,863,336,
    VGG-16 138,357,544, ResNet-50 25,557,032, MobileNetV2 3,504,872.
    """
    name = _check_args(name, size, False)
    g = _Graph(0, dry=True)
    _run_builder(g, name, size, False)
    return g.params


def build(name: str, size: str = "tiny", seed: int = 0, dynamic: bool = False) -> onnx.ModelProto:
    """Build a zoo model as an ``onnx.ModelProto`` with seeded random weights.

    Parameters
    ----------
    name
        One of :data:`MODELS` (``bert``, ``gpt-neox``, ``vgg11``, ``vgg16``, ``resnet50``,
        ``mobilenet``).
    size
        ``"tiny"`` (for tests) or ``"full"`` (the real architecture).
    seed
        Seed of the weight generator; equal seeds give byte-identical models.
    dynamic
        ``bert`` and ``gpt-neox`` only: symbolic ``batch`` and ``sequence`` dims, Reshape targets
        computed at run time (``Shape -> Gather -> Unsqueeze -> Concat``).

    Returns
    -------
    onnx.ModelProto
        Opset 17, IR version 8, with ``metadata_props`` naming the model and the valid range of
        each integer input (read by :func:`random_inputs`).
    """
    name = _check_args(name, size, dynamic)
    g = _Graph(seed)
    inputs, outputs, ranges = _run_builder(g, name, size, dynamic)
    graph = helper.make_graph(g.nodes, f"{name}_{size}", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fluidml_tvm.zoo", ir_version=IR_VERSION)
    model.doc_string = describe(name, size, dynamic)
    meta = {_META_NAME: name, _META_SIZE: size, "fluidml.zoo.seed": str(seed),
            "fluidml.zoo.dynamic": str(int(dynamic))}
    meta.update({_META_RANGE + k: f"{lo},{hi}" for k, (lo, hi) in ranges.items()})
    helper.set_model_props(model, meta)
    return model


def save(name: str, path: str, size: str = "tiny", seed: int = 0, dynamic: bool = False) -> str:
    """Build a zoo model and write it to ``path``; returns ``path``.

    One self-contained file: the largest model here (VGG-16, ~553 MB) is far below protobuf's 2 GB
    limit. Should a model ever exceed it, the weights go to ``path + ".data"`` (external data).
    """
    model = build(name, size=size, seed=seed, dynamic=dynamic)
    if model.ByteSize() >= _PROTOBUF_LIMIT:
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=os.path.basename(path) + ".data")
    else:
        onnx.save(model, path)
    return path


def _graph_inputs(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _static_shape(inp: onnx.ValueInfoProto) -> list[int]:
    dims = []
    for d in inp.type.tensor_type.shape.dim:
        if not d.HasField("dim_value"):
            raise ValueError(f"input {inp.name!r} has a symbolic dim {d.dim_param or '?'!r}; "
                             "give its shape explicitly")
        dims.append(d.dim_value)
    return dims


def input_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """``{input name: shape}`` of a model whose inputs have static shapes.

    Raises
    ------
    ValueError
        If an input has a symbolic (``dim_param``) or unknown dim; pass shapes explicitly then.
    """
    return {inp.name: _static_shape(inp) for inp in _graph_inputs(model)}


def random_inputs(model_or_name, seed: int = 0, size: str = "tiny",
                  shapes: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs for a model (a ``ModelProto`` or a zoo name, built at ``size``).

    Floating inputs are standard normal. Integer inputs are uniform in the range the zoo recorded
    in the model's metadata (token ids below the vocabulary size, token types 0/1), or in [0, 2)
    for a model from elsewhere. An input named ``attention_mask`` is all ones except the last
    quarter of each sequence (padding), so masking is exercised.

    Parameters
    ----------
    shapes
        Shapes of inputs with symbolic dims (required for ``dynamic=True`` models), e.g.
        ``{"input_ids": [1, 24], "attention_mask": [1, 24], "token_type_ids": [1, 24]}``.
    """
    if isinstance(model_or_name, str):  # the inputs of a dry build: no weights generated
        g = _Graph(0, dry=True)
        inputs, _, ranges = _run_builder(g, _check_args(model_or_name, size, False), size, False)
        props = {_META_RANGE + k: f"{lo},{hi}" for k, (lo, hi) in ranges.items()}
    else:
        inputs = _graph_inputs(model_or_name)
        props = {p.key: p.value for p in model_or_name.metadata_props}
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in inputs:
        if shapes and inp.name in shapes:
            shape = [int(s) for s in shapes[inp.name]]
        else:
            shape = _static_shape(inp)
        dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif inp.name == "attention_mask":
            mask = np.ones(shape, dtype=dtype)
            if shape and shape[-1] >= 4:
                mask[..., shape[-1] - shape[-1] // 4:] = 0
            feeds[inp.name] = mask
        else:
            lo, hi = (int(v) for v in props.get(_META_RANGE + inp.name, "0,2").split(","))
            feeds[inp.name] = rng.integers(lo, hi, size=shape).astype(dtype)
    return feeds


def resolve(spec: str, seed: int = 0):
    """Resolve a model spec ``zoo:NAME[:SIZE][:dynamic]`` to ``(onnx.ModelProto, description)``.

    ``SIZE`` defaults to ``full`` (the benchmark's case); ``zoo:bert:tiny`` is the test config.

    Examples
    --------
    >>> model, desc = resolve("zoo:gpt-neox:tiny")
    """
    if not spec.startswith("zoo:"):
        raise ValueError(f"not a zoo spec: {spec!r} (expected zoo:NAME[:tiny|full][:dynamic])")
    parts = spec[4:].split(":")
    name, size, dynamic = parts[0], "full", False
    for p in parts[1:]:
        if p in SIZES:
            size = p
        elif p == "dynamic":
            dynamic = True
        else:
            raise ValueError(f"bad zoo spec {spec!r}: unknown option {p!r}")
    model = build(name, size=size, seed=seed, dynamic=dynamic)
    return model, model.doc_string


def is_zoo_spec(spec) -> bool:
    """Whether ``spec`` is a ``zoo:...`` string (as opposed to a path or a ModelProto)."""
    return isinstance(spec, str) and spec.startswith("zoo:")


__all__ = [
    "DYNAMIC_MODELS",
    "MODELS",
    "SIZES",
    "build",
    "describe",
    "input_shapes",
    "is_zoo_spec",
    "param_count",
    "random_inputs",
    "resolve",
    "save",
]
