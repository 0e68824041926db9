"""ONNX import that a user with a real exported model can rely on.

Steps, each with a one-line :class:`FluidMLError` on bad input:

1. :func:`load_model` reads the file (missing, not ONNX, truncated, invalid: clear errors).
2. :func:`input_specs` fixes every graph input's shape (``--input-shapes``); a dynamic dimension
   without a given shape names the input and shows the flag to pass.
3. :func:`check_supported` lists *all* operators TVM's importer lacks, with counts, at once.
4. :func:`fold_shapes` folds the ``Shape -> Gather -> Concat -> Reshape`` subgraphs that exporters
   emit, with onnxsim (constant folding through ONNX Runtime plus ONNX shape inference): once the
   input shapes are fixed they are constants (TVM's importer folds simple chains itself but fails
   on others with "Reshape requires the input new shape to be Shape").
5. :func:`to_relax` converts with ``tvm.relax.frontend.onnx.from_onnx``.
"""

from __future__ import annotations

import collections
import logging
import os
import re
from dataclasses import dataclass

import numpy as np

from .errors import FluidMLError
from .errors import names as names_of

log = logging.getLogger("fluidml_tvm")

# Operators that TVM's importer handles outside its converter map.
_DIRECT_OPS = {"If", "Constant"}
_SHAPE_OPS = {"Shape", "Size"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


# ---- 1. loading -----------------------------------------------------------------------------
def load_model(model):
    """Load an ONNX model from a path (or pass a ``ModelProto`` through), with clear errors."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        _check_model(model, "<in-memory model>")
        return model
    path = os.fspath(model)
    if not os.path.exists(path):
        raise FluidMLError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise FluidMLError(f"model path is a directory, expected an .onnx file: {path}")
    if os.path.getsize(path) == 0:
        raise FluidMLError(f"model file is empty: {path}")
    try:
        proto = onnx.load(path)
    except Exception as err:  # DecodeError, missing external data, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FluidMLError(
            f"cannot read {path} as an ONNX model (not ONNX, or truncated): {reason}"
        ) from None
    _check_model(proto, path)
    return proto


def _check_model(proto, where: str) -> None:
    import onnx

    if proto.ir_version == 0 or not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise FluidMLError(f"{where} is not an ONNX model (no graph, or an empty one)")
    if proto.ir_version < 3:
        raise FluidMLError(f"{where}: ONNX IR version {proto.ir_version} is too old (need >= 3)")
    opset = model_opset(proto)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise FluidMLError(
            f"{where}: opset {opset} is newer than this onnx package knows ({newest}); "
            "re-export the model with an older opset or upgrade onnx"
        )
    # onnx's checker is stricter than the runtimes (e.g. it wants a shape on every output):
    # its complaints are worth a warning, not a refusal.
    try:
        if proto.ByteSize() < 2**31 - 1:
            onnx.checker.check_model(proto)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.warning("%s: onnx.checker: %s", where, reason)


def model_opset(proto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


# ---- 2. input shapes --------------------------------------------------------------------------
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


# ---- 3. operator support ---------------------------------------------------------------------
def unsupported_ops(proto) -> collections.Counter:
    """``{op_type: count}`` of the nodes TVM's ONNX importer has no converter for."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    convert_map = _get_convert_map()
    missing = collections.Counter()
    for node in proto.graph.node:
        if node.op_type not in convert_map and node.op_type not in _DIRECT_OPS:
            key = node.op_type
            if node.domain not in ("", "ai.onnx"):
                key = f"{node.domain}.{key}"
            missing[key] += 1
    return missing


def check_supported(proto) -> None:
    missing = unsupported_ops(proto)
    if missing:
        listing = ", ".join(f"{op} x{n}" for op, n in sorted(missing.items()))
        raise FluidMLError(
            f"{len(missing)} operator type(s) not supported by TVM's ONNX importer: {listing}"
        )


# ---- 4. shape folding ------------------------------------------------------------------------
def needs_folding(proto) -> bool:
    """Whether the graph has run-time shape computation or dynamic inputs to fold."""
    if any(n.op_type in _SHAPE_OPS for n in proto.graph.node):
        return True
    for vi in graph_inputs(proto):
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                return True
    return False


def fold_shapes(proto, specs: list[TensorSpec]):
    """Fix the input shapes in the graph and constant-fold shape subgraphs (onnxsim)."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    by_name = {s.name: s for s in specs}
    for vi in fixed.graph.input:
        if vi.name in by_name:
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in by_name[vi.name].shape:
                shape.dim.add().dim_value = int(d)
    if not needs_folding(proto):
        return fixed, "no shape subgraphs to fold"
    # onnxsim needs a shape on every output; exporters sometimes leave it out: infer it.
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed)
        by_out = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for out in fixed.graph.output:
            if not out.type.tensor_type.HasField("shape") and out.name in by_out:
                src = by_out[out.name].type.tensor_type
                if src.HasField("shape"):
                    out.type.tensor_type.shape.CopyFrom(src.shape)
    except Exception as err:  # shape inference is best effort here
        log.debug("shape inference before folding failed: %s", err)
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(
            fixed, check_n=0, overwrite_input_shapes={s.name: list(s.shape) for s in specs}
        )
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.warning("onnxsim could not fold shape subgraphs (%s); importing as is", reason)
        return fixed, f"onnxsim failed: {reason}"
    before, after = len(fixed.graph.node), len(simplified.graph.node)
    return simplified, f"onnxsim folded shape subgraphs: {before} -> {after} nodes"


# ---- 5. conversion ---------------------------------------------------------------------------
def to_relax(proto, specs: list[TensorSpec]):
    """Convert to a Relax ``IRModule`` (``main`` takes the inputs in ``specs`` order)."""
    import warnings

    from tvm.relax.frontend.onnx import from_onnx

    shape_dict = {s.name: list(s.shape) for s in specs}
    dtype_dict = {s.name: s.dtype for s in specs}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return from_onnx(proto, shape_dict=shape_dict, dtype_dict=dtype_dict)
    except Exception as err:
        text = str(err).strip()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        reason = lines[-1] if lines else type(err).__name__
        raise FluidMLError(f"TVM's ONNX importer failed: {type(err).__name__}: {reason}") from None


def output_names(proto) -> list[str]:
    return [o.name for o in proto.graph.output]


@dataclass
class ImportedModel:
    mod: object  # tvm.IRModule
    inputs: list
    outputs: list
    folding: str
    onnx_model: object


def import_onnx(model, input_shapes: dict | None = None) -> ImportedModel:
    """Steps 1-5: a path or ModelProto in, a Relax module with static input shapes out."""
    proto = load_model(model)
    check_supported(proto)
    specs = input_specs(proto, input_shapes)
    folded, how = fold_shapes(proto, specs)
    check_supported(folded)
    mod = to_relax(folded, specs)
    outputs = _output_specs(mod, output_names(proto))
    return ImportedModel(mod, specs, outputs, how, folded)


def _output_specs(mod, names: list[str]) -> list[TensorSpec]:
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if hasattr(ret, "fields") else [ret]
    out = []
    for i, sinfo in enumerate(fields):
        name = names[i] if i < len(names) else f"output_{i}"
        shape = tuple(int(d) for d in sinfo.shape.values) if sinfo.shape is not None else ()
        out.append(TensorSpec(name, shape, str(sinfo.dtype)))
    return out
