"""Step 4: fold the shape subgraphs of exported models once the input shapes are fixed.

``fold_shapes`` folds the ``Shape -> Gather -> Concat -> Reshape`` subgraphs that exporters emit
with onnxsim (constant folding through ONNX Runtime plus ONNX shape inference): once the input
shapes are fixed they are constants (TVM's importer folds simple chains itself but fails on others
with "Reshape requires the input new shape to be Shape").
"""

from __future__ import annotations

import logging

from .inputs import TensorSpec, graph_inputs

log = logging.getLogger("fluidml_tvm")

_SHAPE_OPS = {"Shape", "Size"}


def needs_folding(proto) -> bool:
    """Whether the graph has run-time shape computation or dynamic inputs to fold."""
    if any(n.op_type in _SHAPE_OPS for n in proto.graph.node):
        return True
    for vi in graph_inputs(proto):
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                return True
    return False


def with_input_shapes(proto, specs: list[TensorSpec]):
    """A copy of ``proto`` whose graph inputs declare the static shapes of ``specs``."""
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
    return fixed


def fold_shapes(proto, specs: list[TensorSpec]):
    """Fix the input shapes in the graph and constant-fold shape subgraphs (onnxsim)."""
    import onnx

    fixed = with_input_shapes(proto, specs)
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
