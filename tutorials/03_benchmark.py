"""Tutorial 3: measure FluidML against stock TVM and ONNX Runtime on a small zoo model.

Run it:  python tutorials/03_benchmark.py

The same instrument, from a shell (see benchmarks/README.md for the method):

    fluidml-tvm benchmark zoo:bert:tiny --engines fluidml,tvm,ort --rounds 3
    python benchmarks/run_zoo.py            # the whole zoo at full size

Each engine runs in its own fresh process with the same thread count; the rounds are interleaved;
latency medians, compile times, planned and measured activation memory, peak RSS and the max abs
difference from ONNX Runtime come back as one row per engine, and the ratios per model.
"""

import json
import tempfile

from fluidml_tvm.tools import bench

outdir = tempfile.mkdtemp(prefix="fluidml-bench-tutorial-")
result = bench.run_suite(["zoo:bert:tiny"], engines=("fluidml", "tvm", "ort"), threads=2,
                         repeat=5, rounds=2, budget=5.0, outdir=outdir, stem="bert_tiny")

# The markdown table (also written to bert_tiny.md) ...
with open(result["files"][1]) as f:
    print(f.read())

# ... and the raw numbers, for your own analysis.
row = result["rows"][0]
for engine, m in row["engines"].items():
    print(f"{engine:8s} median {m['median_ms']:.3f} ms over {m['samples']} runs, "
          f"peak RSS {m['peak_rss_bytes'] / 1e6:.1f} MB, "
          f"max |diff| vs ORT {m['max_abs_diff_vs_ort']:.1e}")
    assert m["max_abs_diff_vs_ort"] < 1e-3, f"{engine} disagrees with ONNX Runtime"
print("ratios:", json.dumps({k: round(v, 3) for k, v in row["ratios"].items()}))
print("files:", *result["files"], sep="\n  ")
