"""The real architectures that the onnx package ships (``onnx/backend/test/data/light``).

Their weights are ``ConstantOfShape`` constants, so their stored outputs prove only structure. For
numerics, :func:`with_random_weights` swaps every such constant for a seeded random tensor scaled
so activations stay O(1) through the network (He-style for conv/Gemm weights, positive BN
variances), and the tests compare with ONNX Runtime.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def light_models() -> dict:
    paths = sorted(glob.glob(os.path.join(LIGHT_DIR, "light_*.onnx")))
    return {os.path.basename(p)[6:-5]: p for p in paths if not p.endswith("_output_0.pb")}


def _value(role: str, shape, rng) -> np.ndarray:
    shape = tuple(int(d) for d in shape)
    if role == "conv_w":
        fan_in = int(np.prod(shape[1:])) or 1
        return rng.normal(0, np.sqrt(2.0 / fan_in), shape)
    if role.startswith("gemm_w"):
        fan_in = shape[1] if role == "gemm_w_t" else shape[0]
        return rng.normal(0, np.sqrt(1.0 / max(fan_in, 1)), shape)
    if role in ("bn_scale", "mul", "bn_var"):
        return rng.uniform(0.5, 1.5, shape)
    return rng.normal(0, 0.1, shape)  # biases, BN shift/mean, additive constants


def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` whose ConstantOfShape weights are seeded random tensors."""
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consumers = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    keep, new_inits = [], []
    for node in g.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            keep.append(node)
            continue
        role = "other"
        for user, idx in consumers.get(node.output[0], []):
            if user.op_type == "Conv":
                role = "conv_w" if idx == 1 else "bias"
            elif user.op_type == "Gemm" and idx == 1:
                trans_b = any(a.name == "transB" and a.i for a in user.attribute)
                role = "gemm_w_t" if trans_b else "gemm_w"
            elif user.op_type == "BatchNormalization":
                role = {1: "bn_scale", 2: "bias", 3: "bias", 4: "bn_var"}.get(idx, "other")
            elif user.op_type == "Mul":
                role = "mul"
        dtype = np.float32
        for a in node.attribute:
            if a.name == "value":
                dtype = numpy_helper.to_array(a.t).dtype
        value = _value(role, inits[node.input[0]], rng).astype(dtype)
        new_inits.append(numpy_helper.from_array(value, node.output[0]))
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input}
    unused = [t for t in g.initializer if t.name not in used and t.name.endswith("__SHAPE")]
    for t in unused:
        g.initializer.remove(t)
    gone = {t.name for t in unused}
    for vi in [i for i in g.input if i.name in gone]:
        g.input.remove(vi)
    # Random weights saturate the final Softmax into a one-hot vector that proves little: expose
    # its input (the logits) as a second output, so the comparison sees real numbers.
    for node in g.node:
        if node.op_type == "Softmax" and node.output[0] in {o.name for o in g.output}:
            elem = onnx.TensorProto.FLOAT
            g.output.append(onnx.helper.make_tensor_value_info(node.input[0], elem, None))
    return out
