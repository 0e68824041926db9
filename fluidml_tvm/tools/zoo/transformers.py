"""BERT (encoder) and GPT-NeoX (decoder) as torch.onnx exports them, with random weights."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from .graph import Graph, value_info

INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class TransformerConfig:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    seq: int
    vocab: int
    max_positions: int
    type_vocab: int = 2
    rotary_pct: float = 0.25


BERT_CONFIGS = {
    "full": TransformerConfig(12, 768, 12, 3072, 128, 30522, 512),
    "tiny": TransformerConfig(2, 64, 4, 128, 16, 512, 64),
}
NEOX_CONFIGS = {
    "full": TransformerConfig(6, 512, 8, 2048, 128, 50304, 2048),
    "tiny": TransformerConfig(2, 64, 4, 256, 16, 512, 64),
}


# --------------------------------------------------------------------------------------------
# BERT
# --------------------------------------------------------------------------------------------


def build_bert(g: Graph, cfg: TransformerConfig, dynamic: bool):
    H, nh = cfg.hidden, cfg.heads
    D = H // nh
    B, S = ("batch", "sequence") if dynamic else (1, cfg.seq)
    inputs = [
        value_info("input_ids", TensorProto.INT64, [B, S]),
        value_info("attention_mask", TensorProto.INT64, [B, S]),
        value_info("token_type_ids", TensorProto.INT64, [B, S]),
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
        value_info("last_hidden_state", TensorProto.FLOAT, [B, S, H]),
        value_info("pooler_output", TensorProto.FLOAT, [B, H]),
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


def build_gpt_neox(g: Graph, cfg: TransformerConfig, dynamic: bool):
    H, nh = cfg.hidden, cfg.heads
    D = H // nh
    rot = int(D * cfg.rotary_pct)
    B, S = ("batch", "sequence") if dynamic else (1, cfg.seq)
    inputs = [value_info("input_ids", TensorProto.INT64, [B, S])]
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
    return inputs, [value_info("logits", TensorProto.FLOAT, [B, S, cfg.vocab])], ranges

