"""Run the whole zoo through the benchmark suite and write benchmarks/results/<date>-<host>.*

    python benchmarks/run_zoo.py                 # full-size models (the committed results)
    python benchmarks/run_zoo.py --size tiny     # the tiny configurations (what CI runs)

Each model is measured on fluidml, stock TVM and ONNX Runtime; see benchmarks/README.md.
"""

import argparse
import os
import sys
import time

from fluidml_tvm.tools import bench, zoo

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="full", choices=["tiny", "full"])
    p.add_argument("--models", default=",".join(zoo.MODELS),
                   help="comma-separated zoo names (default: all)")
    p.add_argument("--engines", default=",".join(bench.ENGINES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget", type=float, default=10.0,
                   help="seconds of timed runs per process (stock TVM gets fewer samples)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    models = [f"zoo:{m}:{args.size}" for m in args.models.split(",") if m]
    engines = [e for e in args.engines.split(",") if e]
    t0 = time.time()
    result = bench.run_suite(models, engines, args.threads, args.repeat, args.rounds,
                             args.budget, outdir=args.out, stem=args.name,
                             log=lambda m: print(m, file=sys.stderr, flush=True))
    with open(result["files"][1]) as f:
        print(f.read())
    print(f"wrote {', '.join(result['files'])} in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
