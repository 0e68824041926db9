"""Step 2: the static shape and dtype of every graph input (``--input-shapes``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import FluidMLError, notice, option, option_item, shapes_example
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
    opt = option("input_shapes")
    while pos < len(text):
        m = _SHAPE_ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise FluidMLError(
                f"malformed {opt} {text!r} near {text[pos:pos + 20]!r}; expected "
                "NAME:[d0,d1,...] separated by spaces, e.g. \"input_ids:[1,128] mask:[1,128]\""
            )
        name, dims = m.group(1), m.group(2).strip()
        try:
            shape = [int(d) for d in dims.split(",")] if dims else []
        except ValueError:
            raise FluidMLError(
                f"malformed {opt} for {name!r}: dims must be integers, got [{dims}]"
            ) from None
        if any(d <= 0 for d in shape):
            raise FluidMLError(f"{option_item('input_shapes', name)}: dims must be positive, "
                               f"got {shape}")
        if name in out:
            raise FluidMLError(f"{opt} gives {name!r} twice")
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


def _declared(vi) -> list:
    """Each dim of a graph input: its size, its ``dim_param`` name, or ``"?"``."""
    dims = vi.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def _known_dims(inputs, input_shapes: dict) -> dict:
    """``{dim_param: (size, input)}`` from the given shapes; a dim_param given two sizes is an
    error (the model declares those dims equal)."""
    known = {}
    for vi in inputs:
        given = input_shapes.get(vi.name)
        if given is None or not vi.type.HasField("tensor_type"):
            continue
        for g, d in zip(given, _declared(vi)):
            if isinstance(d, str) and d != "?":
                if d in known and known[d][0] != g:
                    raise FluidMLError(
                        f"{option('input_shapes')} gives dim {d!r} two sizes: {known[d][0]} "
                        f"({known[d][1]}) and {g} ({vi.name}); the model declares them equal"
                    )
                known.setdefault(d, (g, vi.name))
    return known


def input_specs(proto, input_shapes: dict | None = None, quiet: bool = False) -> list[TensorSpec]:
    """The fully static shape and dtype of every graph input, or a clear error.

    A dynamic dim of an input not given in ``input_shapes`` takes the size given for another
    input's dim of the same ``dim_param`` (``input_ids:[1,128]`` fixes ``attention_mask``'s
    ``[batch, seq]`` too), with a notice (unless ``quiet``)."""
    input_shapes = dict(input_shapes or {})
    inputs = graph_inputs(proto)
    names = [i.name for i in inputs]
    opt = option("input_shapes")
    unknown = [n for n in input_shapes if n not in names]
    if unknown:
        raise FluidMLError(
            f"{opt} names {names_of(map(repr, unknown))}, which the model does not "
            f"have; its inputs are: {names_of(names)}"
        )
    for name, given in input_shapes.items():
        if any(not isinstance(d, (int, np.integer)) or d <= 0 for d in given):
            raise FluidMLError(f"{option_item('input_shapes', name)}: dims must be positive "
                               f"integers, got {list(given)}")
    known = _known_dims(inputs, input_shapes)
    specs = []
    for vi in inputs:
        if not vi.type.HasField("tensor_type"):
            raise FluidMLError(f"input {vi.name!r} is not a tensor; only tensors are supported")
        declared = _declared(vi)
        if vi.name in input_shapes:
            given = [int(g) for g in input_shapes[vi.name]]
            item = f"{option_item('input_shapes', vi.name)}={_fmt(given)}"
            if len(given) != len(declared):
                raise FluidMLError(
                    f"{item} has rank {len(given)}, the model declares rank {len(declared)} "
                    f"{_fmt(declared)}"
                )
            for g, d in zip(given, declared):
                if isinstance(d, int) and d > 0 and g != d:
                    raise FluidMLError(
                        f"{item} contradicts the model's static shape {_fmt(declared)}"
                    )
            shape = tuple(given)
        else:
            inferred = [known[d][0] if isinstance(d, str) and d in known else d
                        for d in declared]
            if any(not isinstance(d, int) or d <= 0 for d in inferred):
                example = [d if isinstance(d, int) and d > 0 else "N" for d in inferred]
                raise FluidMLError(
                    f"input {vi.name!r} has dynamic dims {_fmt(declared)}; fix them with "
                    f"{shapes_example({vi.name: example})} (N: the size you will run with)"
                )
            if inferred != declared and not quiet:
                sources = sorted({known[d][1] for d in declared if isinstance(d, str)})
                notice(f"input {vi.name} {_fmt(declared)}: shape {_fmt(inferred)} inferred "
                       f"from {', '.join(sources)} (same dim names)")
            shape = tuple(inferred)
        specs.append(TensorSpec(vi.name, shape, _elem_dtype(vi)))
    return specs


def _fmt(dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"
