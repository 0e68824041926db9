"""Tutorial 1: an ONNX file in, a compiled library out, checked against ONNX Runtime.

Run it:  python tutorials/01_compile_and_run.py

1. write a small BERT encoder as an ONNX file (fluidml_tvm.tools.zoo makes one with random weights);
2. compile it twice: with the FluidML pipeline (fluidml=1) and with stock TVM (fluidml=0);
3. export each as a shared library plus its metadata, load it back, run it;
4. compare the outputs with ONNX Runtime, and time both libraries.

The same from a shell:

    fluidml-tvm compile bert_tiny.onnx --target x86 -o bert_tiny.so
    fluidml-tvm run bert_tiny.so --print-time --repeat 20
"""

import os
import tempfile

import numpy as np
import onnxruntime as ort

import fluidml_tvm
from fluidml_tvm.tools import zoo

workdir = tempfile.mkdtemp(prefix="fluidml-tutorial-")
onnx_path = os.path.join(workdir, "bert_tiny.onnx")

# 1. An ONNX file. Your own exported model goes here instead.
zoo.save("bert", onnx_path, size="tiny", seed=0)
model = zoo.build("bert", size="tiny", seed=0)
inputs = zoo.random_inputs(model, seed=0)
print("model inputs:", {k: (v.shape, str(v.dtype)) for k, v in inputs.items()})

# Reference outputs from ONNX Runtime.
reference = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(None, inputs)

times = {}
for flag in ("fluidml=1", "fluidml=0"):
    # 2. Compile. pass_config takes tvmc-style KEY=VALUE items; fluidml=0 is stock TVM.
    compiled = fluidml_tvm.compile(onnx_path, target="x86", pass_config=[flag])
    # 3. Export (library + metadata json beside it), load, run.
    lib_path = compiled.export(os.path.join(workdir, f"bert_tiny_{flag[-1]}.so"))
    loaded = fluidml_tvm.load(lib_path)
    outputs = loaded.run(inputs)
    # 4. Compare with ONNX Runtime.
    for (name, got), ref in zip(outputs.items(), reference):
        err = float(np.abs(got - ref).max())
        print(f"[{flag}] {name}: shape {got.shape}, max |tvm - ort| = {err:.2e}")
        assert err < 1e-4, f"{name} differs from ONNX Runtime by {err}"
    times[flag] = float(np.median(loaded.time(inputs, repeat=10)))
    print(f"[{flag}] planned activation memory: {compiled.planned_memory} bytes; "
          f"median latency {times[flag] * 1e3:.3f} ms ({loaded.num_threads} threads)")

print(f"fluidml / stock TVM latency ratio: {times['fluidml=1'] / times['fluidml=0']:.2f}")
print("tutorial finished OK; files in", workdir)
