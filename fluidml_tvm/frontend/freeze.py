"""Frozen inputs (``--freeze-inputs "sr:16000 flag:1"``): an input fixed to a value at compile time.

:func:`freeze_inputs` turns each frozen graph input into a constant initializer (dtype and shape
from the graph input) and removes it from the graph inputs; :func:`fold_frozen` then
constant-folds the graph with onnxscript's optimizer, which also folds ``If`` nodes whose condition
became constant (inlining the branch taken) and the shape logic behind them, before TVM's importer
sees the graph. onnxsim (which folds the shape subgraphs later) is not enough here: it fails on an
``If`` nested in a branch that reads the branch's own values ("Nodes in a graph must be
topologically sorted"), and on branch outputs declared without a shape.

Errors are one line: unknown input name, unparsable value, a value of the wrong shape or dtype.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from ..errors import FluidMLError, option, option_item
from ..errors import names as names_of
from .inputs import graph_inputs

log = logging.getLogger("fluidml_tvm")



def _flag() -> str:
    return option("input_values")  # --freeze-inputs on the command line


def _item(name: str) -> str:
    return option_item("input_values", name)
_LIST_ITEM = re.compile(r"\s*([^\s\[\]]+?)\s*:\s*\[([^\]]*)\]\s*")
_SCALAR_ITEM = re.compile(r"\s*(\S+):([^\s:\[\]]+)(?=\s|$)\s*")


def parse_input_values(text: str | None) -> dict:
    """Parse ``"sr:16000 flag:1 scale:[0.5,2]"`` into ``{name: numpy array}`` (tvmc-like syntax:
    ``NAME:VALUE`` or ``NAME:[V1,V2,...]``, separated by spaces; a name may contain ``:``)."""
    if text is None or not str(text).strip():
        return {}
    text = str(text)
    out, pos = {}, 0
    while pos < len(text):
        m = _LIST_ITEM.match(text, pos) or _SCALAR_ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise FluidMLError(
                f"malformed {_flag()} {text!r} near {text[pos:pos + 20]!r}; expected NAME:VALUE or "
                f"NAME:[V1,V2,...] separated by spaces, e.g. \"sr:16000 flag:1\""
            )
        name, raw = m.group(1), m.group(2).strip()
        if name in out:
            raise FluidMLError(f"{_flag()} gives {name!r} twice")
        items = [t.strip() for t in raw.split(",")] if m.re is _LIST_ITEM else [raw]
        if m.re is _LIST_ITEM and raw == "":
            items = []
        try:
            values = [_number(t) for t in items]
        except ValueError:
            shown = f"[{raw}]" if m.re is _LIST_ITEM else raw
            raise FluidMLError(
                f"{_item(name)}: cannot parse {shown!r} as a number or a list of numbers"
            ) from None
        out[name] = np.array(values if m.re is _LIST_ITEM else values[0])
        pos = m.end()
    return out


def _number(token: str):
    low = token.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(token, 10)
    except ValueError:
        return float(token)  # raises ValueError for anything else


def freeze_inputs(proto, values: dict, input_shapes: dict | None = None):
    """A copy of ``proto`` in which each input named in ``values`` is a constant initializer.

    Returns ``(model, input_shapes)``: ``input_shapes`` without the frozen inputs (a shape given
    for a frozen input only checks the value's shape).
    """
    import onnx
    from onnx import numpy_helper

    inputs = {vi.name: vi for vi in graph_inputs(proto)}
    unknown = [n for n in values if n not in inputs]
    if unknown:
        raise FluidMLError(
            f"{_flag()} names {names_of(map(repr, unknown))}, which the model does not have; its "
            f"inputs are: {names_of(inputs)}"
        )
    shapes = dict(input_shapes or {})
    frozen = onnx.ModelProto()
    frozen.CopyFrom(proto)
    for name, value in values.items():
        array = _as_input_value(name, value, inputs[name], shapes.pop(name, None))
        frozen.graph.initializer.append(numpy_helper.from_array(array, name))
    kept = [vi for vi in frozen.graph.input if vi.name not in values]
    del frozen.graph.input[:]
    frozen.graph.input.extend(kept)
    return frozen, shapes


def _as_input_value(name: str, value, vi, given_shape) -> np.ndarray:
    import onnx

    tensor_type = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise FluidMLError(f"{_item(name)}: the input is not a tensor")
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    try:
        array = np.asarray(value)
    except Exception:
        array = np.asarray(None)
    if array.dtype.kind not in "biuf":
        raise FluidMLError(f"{_item(name)}: {value!r} is not a number or a list of numbers")
    array = _cast(name, array, dtype)
    if given_shape is not None:
        declared = list(given_shape)
    elif tensor_type.HasField("shape"):
        declared = [d.dim_value if d.HasField("dim_value") else None
                    for d in tensor_type.shape.dim]
    else:
        return array  # the model does not say: the value decides
    if len(declared) == array.ndim and all(
            d is None or d == s for d, s in zip(declared, array.shape)):
        return array
    if all(d is not None for d in declared) and array.size == int(np.prod(declared)) \
            and array.ndim <= 1:
        return array.reshape(declared)  # 5 for a [1] input, [1,2,3,4] for a [2,2] one
    want = "[" + ",".join("?" if d is None else str(d) for d in declared) + "]"
    raise FluidMLError(
        f"{_item(name)}: a value of shape {list(array.shape)} ({array.size} element(s)) does "
        f"not fit the input's shape {want}"
    )


def _cast(name: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    shown = array.tolist() if array.size <= 8 else f"{array.size} values"
    if dtype.kind == "b":
        if not np.all((array == 0) | (array == 1)):
            raise FluidMLError(f"{_item(name)}: {shown} is not a valid bool value (0/1)")
    elif dtype.kind in "iu":
        if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
            raise FluidMLError(f"{_item(name)}: {shown} is not a valid {dtype} value")
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise FluidMLError(f"{_item(name)}: {shown} is out of range for {dtype}")
    elif dtype.kind not in "fc":
        raise FluidMLError(f"{_item(name)}: inputs of dtype {dtype} cannot be frozen")
    return array.astype(dtype)


def fold_frozen(proto, frozen_names) -> tuple:
    """Constant-fold ``proto`` with onnxscript's optimizer (``If`` on constants included) and
    drop what no output needs. Returns ``(model, note)``; the note shows the frozen values."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer
             if t.name in set(frozen_names)}
    frozen_names = [_shown(n, inits.get(n)) for n in frozen_names]
    try:
        from onnxscript import optimizer
    except ImportError:
        raise FluidMLError(f"{_flag()} needs the onnxscript package: pip install onnxscript")
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    before = _count(model.graph)
    try:
        optimizer.fold_constants(model, onnx_shape_inference=True)
        optimizer.remove_unused_nodes(model)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.warning("onnxscript could not fold the frozen inputs (%s); importing unfolded", reason)
        return proto, f"froze {', '.join(frozen_names)} (folding failed: {reason})"
    after = _count(model.graph)
    ifs = f", If {before[1]} -> {after[1]}" if before[1] else ""
    note = (f"froze {', '.join(frozen_names)}; onnxscript folded {before[0]} -> {after[0]} "
            f"nodes{ifs}")
    return model, note


def _shown(name: str, value) -> str:
    if value is None:
        return name
    return f"{name}={value.tolist()}" if value.size <= 8 else f"{name}=<{value.size} values>"


def _count(graph) -> tuple:
    return len(graph.node), sum(1 for n in graph.node if n.op_type == "If")
