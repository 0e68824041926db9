"""Step 2: the static shape and dtype of every graph input (``--input-shapes``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import FluidMLError
from ..errors import names as names_of


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


_SHAPE_ITEM = re.compile(r"\s*([^\s\[\]]+?)\s*:\s*\[\s*([^\]]*)\]\s*")


def parse_input_shapes(text: str | None) -> dict:
    """Parse tvmc's ``--input-shapes`` syntax: ``"name:[1,3,224,224] other:[1,128]"``."""
    if text is None or not str(text).strip():
        return {}
    text = str(text)
    out, pos = {}, 0
    while pos < len(text):
        m = _SHAPE_ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise FluidMLError(
                f"malformed --input-shapes {text!r} near {text[pos:pos + 20]!r}; expected "
                "NAME:[d0,d1,...] separated by spaces, e.g. \"input_ids:[1,128] mask:[1,128]\""
            )
        name, dims = m.group(1), m.group(2).strip()
        try:
            shape = [int(d) for d in dims.split(",")] if dims else []
        except ValueError:
            raise FluidMLError(
                f"malformed --input-shapes for {name!r}: dims must be integers, got [{dims}]"
            ) from None
        if any(d <= 0 for d in shape):
            raise FluidMLError(f"--input-shapes {name}: dims must be positive, got {shape}")
        if name in out:
            raise FluidMLError(f"--input-shapes gives {name!r} twice")
        out[name] = shape
        pos = m.end()
    return out


def graph_inputs(proto):
    """Real graph inputs (initializers listed as inputs by old exporters are excluded)."""
    inits = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def _elem_dtype(value_info) -> str:
    import onnx

    elem = value_info.type.tensor_type.elem_type
    return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)))


def input_specs(proto, input_shapes: dict | None = None) -> list[TensorSpec]:
    """The fully static shape and dtype of every graph input, or a clear error."""
    input_shapes = dict(input_shapes or {})
    inputs = graph_inputs(proto)
    names = [i.name for i in inputs]
    unknown = [n for n in input_shapes if n not in names]
    if unknown:
        raise FluidMLError(
            f"--input-shapes names {names_of(map(repr, unknown))}, which the model does not "
            f"have; its inputs are: {names_of(names)}"
        )
    specs = []
    for vi in inputs:
        if not vi.type.HasField("tensor_type"):
            raise FluidMLError(f"input {vi.name!r} is not a tensor; only tensors are supported")
        dims = vi.type.tensor_type.shape.dim
        declared = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        if vi.name in input_shapes:
            given = input_shapes[vi.name]
            if len(given) != len(declared):
                raise FluidMLError(
                    f"--input-shapes {vi.name}:{given} has rank {len(given)}, the model declares "
                    f"rank {len(declared)} {_fmt(declared)}"
                )
            for g, d in zip(given, declared):
                if isinstance(d, int) and d > 0 and g != d:
                    raise FluidMLError(
                        f"--input-shapes {vi.name}:{given} contradicts the model's static shape "
                        f"{_fmt(declared)}"
                    )
            shape = tuple(given)
        else:
            if any(not isinstance(d, int) or d <= 0 for d in declared):
                example = ",".join(
                    str(d) if isinstance(d, int) and d > 0 else "N" for d in declared
                )
                raise FluidMLError(
                    f"input {vi.name!r} has dynamic dims {_fmt(declared)}; fix them with "
                    f"--input-shapes \"{vi.name}:[{example}]\" (N: the size you will run with)"
                )
            shape = tuple(declared)
        specs.append(TensorSpec(vi.name, shape, _elem_dtype(vi)))
    return specs


def _fmt(dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"
