"""Whole-process peak RSS of ``fluidml-tvm run`` against ONNX Runtime, on every zoo model.

    python benchmarks/bench_rss.py                       # all zoo models at full size + BERT-small
    python benchmarks/bench_rss.py --models bert-small,mobilenet --rounds 3

Each model is compiled once with FluidML's pipeline (in its own process; by default with
``fluidml.cost=analytic`` and ``fluidml.layout_verify=0``: schedules do not change what a process
holds, and measuring every kernel of six full models takes an hour on two cores; ``--measured``
keeps the defaults). Then, in interleaved rounds, one fresh process per engine runs the model as
a user does (:mod:`fluidml_tvm.tools.bench.rss`): ``fluidml-tvm run LIB --inputs IN.npz --repeat
3`` and an ONNX Runtime session run 4 times; the peak is the child's ``ru_maxrss``. The largest
peak over the rounds is reported (RSS is nearly deterministic; the rounds show its spread).

BERT-small is the zoo's BERT builder at 4 layers, hidden 256, 4 heads, FFN 1024, seq 128, vocab
30522 (the shape of the torch-exported BERT-small of issue #16).
"""

import argparse
import datetime
import json
import os
import socket
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import helper

from fluidml_tvm.tools import zoo
from fluidml_tvm.tools.bench import rss
from fluidml_tvm.tools.bench.suite import _spawn
from fluidml_tvm.tools.zoo.graph import Graph
from fluidml_tvm.tools.zoo.transformers import TransformerConfig, build_bert

HERE = os.path.dirname(os.path.abspath(__file__))
BERT_SMALL = TransformerConfig(4, 256, 4, 1024, 128, 30522, 512)


def bert_small(seed: int = 0) -> onnx.ModelProto:
    g = Graph(seed)
    inputs, outputs, ranges = build_bert(g, BERT_SMALL, False)
    graph = helper.make_graph(g.nodes, "bert_small", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", zoo.OPSET)],
                              ir_version=zoo.IR_VERSION)
    helper.set_model_props(model, {f"fluidml.zoo.range.{k}": f"{lo},{hi}"
                                   for k, (lo, hi) in ranges.items()})
    return model


def prepare(name: str, workdir: str, compile_flags: list, log) -> dict:
    model = bert_small() if name == "bert-small" else zoo.build(name, size="full", seed=0)
    path = os.path.join(workdir, f"{name}.onnx")
    onnx.save(model, path)
    npz = os.path.join(workdir, f"{name}.npz")
    np.savez(npz, **zoo.random_inputs(model, seed=0))
    lib = os.path.join(workdir, f"{name}.so")
    t0 = time.time()
    _spawn("compile", {"engine": "fluidml", "model": path, "lib": lib, "threads": 2,
                       "pass_config": compile_flags}, workdir, f"{name}.compile", 7200)
    log(f"  {name}: compiled in {time.time() - t0:.0f} s")
    return {"model": path, "npz": npz, "lib": lib}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="bert-small," + ",".join(zoo.MODELS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--measured", action="store_true",
                   help="compile with the default measured costs (slow)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--name", default=f"{datetime.date.today().isoformat()}-rss")
    args = p.parse_args(argv)
    flags = [] if args.measured else ["fluidml.cost=analytic", "fluidml.layout_verify=0"]
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    with tempfile.TemporaryDirectory(prefix="fluidml-rss-") as work:
        for name in [m for m in args.models.split(",") if m]:
            log(f"[rss] {name}")
            files = prepare(name, work, flags, log)
            peaks = {"fluidml": [], "ort": []}
            for r in range(args.rounds):
                for engine in (("fluidml", "ort") if r % 2 == 0 else ("ort", "fluidml")):
                    lib = files["lib"] if engine == "fluidml" else None
                    peaks[engine].append(rss.measure(engine, files["model"], lib, files["npz"],
                                                     args.threads, 3))
            row = {"model": name, "fluidml_mib": [x / 2**20 for x in peaks["fluidml"]],
                   "ort_mib": [x / 2**20 for x in peaks["ort"]]}
            row["ratio"] = max(peaks["fluidml"]) / max(peaks["ort"])
            rows.append(row)
            log(f"  {name}: fluidml {max(row['fluidml_mib']):.1f} MiB, ORT "
                f"{max(row['ort_mib']):.1f} MiB ({row['ratio']:.2f}x)")
    info = {"host": socket.gethostname(), "cores": os.cpu_count(), "threads": args.threads,
            "rounds": args.rounds, "compile_flags": flags,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, args.name + ".json"), "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=2)
    lines = [f"Peak RSS of `fluidml-tvm run` vs ONNX Runtime ({info['date']}, {info['cores']} "
             f"cores, {args.threads} threads, max of {args.rounds} rounds; compile flags: "
             f"{' '.join(flags) or 'defaults'})", "",
             "| model | fluidml-tvm run MiB | ONNX Runtime MiB | fluidml/ORT |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {max(r['fluidml_mib']):.1f} "
                     f"({min(r['fluidml_mib']):.1f}-{max(r['fluidml_mib']):.1f}) | "
                     f"{max(r['ort_mib']):.1f} ({min(r['ort_mib']):.1f}-"
                     f"{max(r['ort_mib']):.1f}) | {r['ratio']:.2f}x |")
    with open(os.path.join(args.out, args.name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
