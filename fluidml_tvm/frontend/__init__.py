"""ONNX import that a user with a real exported model can rely on.

Steps of :func:`import_onnx`, each with a one-line :class:`FluidMLError` on bad input:

1. :func:`load_model` reads the file (missing, not ONNX, truncated, invalid: clear errors).
2. :func:`freeze_inputs` (``--freeze-inputs``) makes inputs fixed to a value constants, and
   :func:`fold_frozen` folds the graph with onnxscript (``If`` on them, the shape logic behind).
3. :func:`check_supported` lists *all* operators TVM's importer lacks, with counts, at once.
4. :func:`input_specs` fixes every graph input's shape (``--input-shapes``); a dynamic dimension
   without a given shape names the input and shows the flag to pass.
5. :func:`fold_shapes` folds the ``Shape -> Gather -> Concat -> Reshape`` subgraphs that exporters
   emit, with onnxsim, once the input shapes are fixed.
6. :func:`expand_rnns` rewrites LSTM and GRU nodes into plain ops unrolled over the (static)
   sequence length: TVM's importer has no converter for them (:mod:`.rnn`).
7. :func:`to_relax` converts with ``tvm.relax.frontend.onnx.from_onnx``; a failure in it is one
   line naming the ONNX node, and what TVM prints meanwhile is kept for ``FLUIDML_TVM_DEBUG=1``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .folding import fold_shapes, needs_folding, with_input_shapes
from .freeze import fold_frozen, freeze_inputs, parse_input_values
from .importer import captured_output, check_supported, failing_node, to_relax, unsupported_ops
from .inputs import TensorSpec, graph_inputs, input_specs, parse_input_shapes
from .loading import load_model, model_opset
from .rnn import expand_rnns


def output_names(proto) -> list[str]:
    return [o.name for o in proto.graph.output]


@dataclass
class ImportedModel:
    mod: object  # tvm.IRModule
    inputs: list
    outputs: list
    folding: str
    onnx_model: object

    def weight_bytes(self) -> int:
        """Bytes of the model's initializers (its weights)."""
        return weight_bytes(self.onnx_model)


def weight_bytes(proto) -> int:
    """Bytes of an ONNX model's initializers (data type sizes from ONNX's own table)."""
    from onnx import helper

    total = 0
    for t in proto.graph.initializer:
        n = 1
        for d in t.dims:
            n *= int(d)
        try:
            total += n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except (KeyError, TypeError, ValueError):  # an undefined or string tensor
            continue
    return total


def import_onnx(model, input_shapes: dict | None = None,
                input_values: dict | None = None) -> ImportedModel:
    """A path or ModelProto in, a Relax module with static input shapes out.

    ``input_values`` (``{name: value}`` or the ``--freeze-inputs`` string) fixes inputs to values
    at compile time: they are no longer inputs of the compiled model."""
    proto = load_model(model)
    notes = []
    if isinstance(input_values, str):
        input_values = parse_input_values(input_values)
    if input_values:
        proto, input_shapes = freeze_inputs(proto, input_values, input_shapes)
        specs = input_specs(proto, input_shapes, quiet=True)  # the notices come once, below
        proto, note = fold_frozen(with_input_shapes(proto, specs), list(input_values))
        notes.append(note)
    check_supported(proto)
    specs = input_specs(proto, input_shapes)
    folded, how = fold_shapes(proto, specs)
    notes.append(how)
    folded, expanded = expand_rnns(folded, model_opset(folded))
    if expanded:
        notes.append(expanded)
    check_supported(folded)
    mod = to_relax(folded, specs)
    outputs = _output_specs(mod, output_names(proto))
    return ImportedModel(mod, specs, outputs, "; ".join(notes), folded)


def _output_specs(mod, names: list[str]) -> list[TensorSpec]:
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if hasattr(ret, "fields") else [ret]
    out = []
    for i, sinfo in enumerate(fields):
        name = names[i] if i < len(names) else f"output_{i}"
        shape = tuple(int(d) for d in sinfo.shape.values) if sinfo.shape is not None else ()
        out.append(TensorSpec(name, shape, str(sinfo.dtype)))
    return out


__all__ = [
    "ImportedModel", "TensorSpec", "captured_output", "check_supported", "expand_rnns",
    "failing_node", "fold_frozen", "fold_shapes", "freeze_inputs", "graph_inputs",
    "import_onnx", "input_specs", "load_model", "model_opset", "needs_folding", "output_names",
    "parse_input_shapes", "parse_input_values", "to_relax", "unsupported_ops", "weight_bytes",
    "with_input_shapes",
]
