"""Graph helpers of the LSTM/GRU expansion: what the graph knows (static types, constants) and an
emitter of new nodes with unique names and shared constants, in the forms the model's opset
accepts."""

from __future__ import annotations

import numpy as np


def describe(node) -> str:
    if node.name:
        return f"node '{node.name}'"
    out = next((o for o in node.output if o), None)
    return "unnamed node" + (f" (output '{out}')" if out else "")


def value_types(proto) -> dict:
    """``{name: (elem_type, [dim or None, ...] or None)}`` from ONNX shape inference."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # best effort: what the model declares
        inferred = proto
    graph = inferred.graph
    out = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        dims = None
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out[vi.name] = (tt.elem_type or None, dims)
    for init in graph.initializer:
        out[init.name] = (init.data_type, list(init.dims))
    return out


def constant_values(proto) -> dict:
    """``{name: numpy array}`` of the main graph's initializers and Constant node outputs."""
    from onnx import helper, numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            value = helper.get_attribute_value(attr)
            if attr.name == "value":
                out[node.output[0]] = numpy_helper.to_array(value)
            elif attr.name in ("value_int", "value_ints", "value_float", "value_floats"):
                out[node.output[0]] = np.asarray(value)
    return out


# Ops the emitter computes with numpy when all their inputs are constants (the slices and
# transposes of constant weights, the bias sums): TVM's FoldConstant would build and run one
# kernel for each, seconds for a few hundred.
_FOLD = {"Transpose": lambda a, perm: np.transpose(a, perm), "Add": lambda a, b: a + b}


class Emitter:
    """Collects new nodes and initializers; every name starts with ``prefix/`` and is unique.
    ``known`` maps constant names to their values: ops on them are computed here."""

    def __init__(self, opset: int, prefix: str, taken: set, dtype, known: dict | None = None):
        self.opset, self.prefix, self.taken, self.dtype = opset, prefix, taken, dtype
        self.nodes, self.inits, self._consts = [], [], {}
        self.known = known if known is not None else {}

    def fresh(self, hint: str) -> str:
        base = f"{self.prefix}/{hint}"
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name

    def op(self, op_type: str, inputs, hint: str, out: str | None = None, **attrs) -> str:
        from onnx import helper

        if out is None and op_type in _FOLD and all(i in self.known for i in inputs):
            return self.const(np.ascontiguousarray(
                _FOLD[op_type](*[self.known[i] for i in inputs], **attrs)), hint)
        out = out or self.fresh(hint)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.fresh(
            f"{hint}/{op_type}"), **attrs))
        return out

    def const(self, array: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh(hint)
            self.inits.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
            self.known[name] = array
        return self._consts[key]

    def ints(self, values) -> str:
        return self.const(np.asarray(values, np.int64), "shape")

    def slice(self, x: str, axis: int, start: int, end: int, hint: str) -> str:
        if x in self.known:
            return self.const(np.ascontiguousarray(
                np.take(self.known[x], np.arange(start, end), axis=axis)), hint)
        if self.opset >= 10:
            return self.op("Slice", [x, self.ints([start]), self.ints([end]), self.ints([axis])],
                           hint)
        return self.op("Slice", [x], hint, starts=[start], ends=[end], axes=[axis])

    def concat(self, items: list, axis: int, hint: str, out: str | None = None) -> str:
        if len(items) == 1:
            return self.op("Identity", items, hint, out=out) if out else items[0]
        return self.op("Concat", items, hint, out=out, axis=axis)
