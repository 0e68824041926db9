"""Tutorial 2: FluidML's layout passes inside your own TVM pipeline.

Run it:  python tutorials/02_fluidml_passes_in_your_pipeline.py

fluidml-tvm's passes are ordinary TVM passes; you do not need ``fluidml_tvm.compile``:

1. import an ONNX model with TVM's own frontend (here a tiny BERT from fluidml_tvm.tools.zoo);
2. write a pipeline by hand as a ``tvm.transform.Sequential``: TVM's legalization and fusion, with
   ``FluidMLLayout`` before them (it must run before FoldConstant/LegalizeOps, on high-level ops);
3. read the layout report (every decision has its reason) and count the transpose kernels left;
4. build with ``tvm.compile(..., relax_pipeline=...)`` and check against ONNX Runtime;
5. layouts flow through slices, concats and elementwise ops: GPT-NeoX's rotary embedding.
"""

import numpy as np
import onnxruntime as ort
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from fluidml_tvm.options import Options
from fluidml_tvm.passes.layout import FluidMLLayout, report
from fluidml_tvm.passes.layout.graph import transpose_kernels
from fluidml_tvm.tools import zoo

# 1. An ONNX model, imported by stock TVM (static shapes).
model = zoo.build("bert", size="tiny", seed=0)
inputs = zoo.random_inputs(model, seed=0)
shapes = {k: list(v.shape) for k, v in inputs.items()}
mod = from_onnx(model, shape_dict=shapes, keep_params_in_input=False)
reference = ort.InferenceSession(model.SerializeToString()).run(None, inputs)

# 2. A hand-written pipeline. cost="analytic" needs no measurements (bytes moved, kernel launches,
# strided reads); "measured" times every layout variant of a kernel with the FluidML schedules.
target = tvm.target.Target({"kind": "llvm"})
layout = FluidMLLayout(target, Options(cost="analytic"))
fuse = [
    relax.transform.LegalizeOps(),
    relax.transform.AnnotateTIROpPattern(),
    relax.transform.FoldConstant(),
    relax.transform.FuseOps(),
    relax.transform.FuseTIR(),
]


def fused(with_layout: bool) -> tvm.IRModule:
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(([layout] if with_layout else []) + fuse)(mod)


# 3. What the pass decided, and what it bought: transpose kernels at run time.
before, after = transpose_kernels(fused(False)), transpose_kernels(fused(True))
print(report(layout))
print(f"transpose kernels: {before['calls']} calls before -> {after['calls']} after")
assert after["calls"] < before["calls"]

# 4. A full pipeline for tvm.compile: the layout pass, then TVM's default CPU pipeline.
pipeline = tvm.transform.Sequential([layout, relax.get_default_pipeline(target)])
executable = tvm.compile(mod, target=target, relax_pipeline=pipeline)
vm = relax.VirtualMachine(executable, tvm.cpu())
args = [tvm.runtime.tensor(inputs[k]) for k in shapes]
result = vm["main"](*args)
outputs = [result[i].numpy() for i in range(len(reference))]
for got, ref in zip(outputs, reference):
    err = float(np.abs(got - ref).max())
    print(f"output {got.shape}: max |tvm - ort| = {err:.2e}")
    assert err < 1e-4

# 5. Layouts flow through strided_slice / concat / softmax / layer_norm with their axes remapped,
# and a whole web of such ops moves at once: GPT-NeoX's rotary embedding (slices, a negation,
# concats and products between the head transpose and the attention matmul) stays in the
# projection's [B, S, H, D] order, so of its five permute_dims per layer only K -> K^T is left.
# explicit_transforms=False is what the fluidml pipeline runs: only layouts kernels absorb.
neox = from_onnx(zoo.build("gpt-neox", size="tiny", seed=0), keep_params_in_input=False)


def permutes(m: tvm.IRModule) -> int:
    op = tvm.ir.Op.get("relax.permute_dims")
    found = []
    relax.analysis.post_order_visit(m["main"], lambda e: found.append(e) if isinstance(
        e, relax.Call) and e.op.same_as(op) else None)
    return len(found)


flow = FluidMLLayout(target, Options(cost="analytic"), explicit_transforms=False)
with target:
    neox_after = flow(neox)
print(f"GPT-NeoX tiny: permute_dims {permutes(neox)} -> {permutes(neox_after)}")
assert permutes(neox_after) < permutes(neox)
print("OK")
