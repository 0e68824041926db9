"""Step 1: read an ONNX file (missing, not ONNX, truncated, invalid: one-line errors)."""

from __future__ import annotations

import logging
import os

from ..errors import FluidMLError

log = logging.getLogger("fluidml_tvm")


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
