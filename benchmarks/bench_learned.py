"""How well the learned layout cost model ranks kernel variants it was not trained on (issue 5).

Reads every measured layout variant (matmul, conv, transpose kernels in each layout) in the
measurement cache for this host's target and thread count, and reports

* Spearman's rank correlation between XGBoost's predictions and the measurements on a random 30%
  held out (3 seeds), and
* leave-one-shape-out: for each kernel shape with >= 4 measured layout variants, the model
  trained on every other shape ranks that shape's variants (what the DP needs).

    python benchmarks/bench_learned.py [--cache DIR] [--threads 2]

The cache is filled by compiling models with ``fluidml.cost=measured`` (e.g. by
``benchmarks/bench_layout.py``). Prints one markdown paragraph.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from fluidml_tvm import targets
from fluidml_tvm.costdb import CostDB
from fluidml_tvm.options import default_cache_dir
from fluidml_tvm.passes.layout.learned import (
    cached_rows,
    heldout_rank_correlation,
    within_shape_rank_correlation,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", default=default_cache_dir())
    p.add_argument("--threads", default=os.environ.get("TVM_NUM_THREADS", "2"))
    args = p.parse_args(argv)
    path = os.path.join(args.cache, "costs.sqlite")
    if not os.path.exists(path):
        print(f"error: no measurement cache at {path} (compile a model first)", file=sys.stderr)
        return 1
    tgt, _ = targets.resolve("x86")
    rows = cached_rows(CostDB(args.cache), f"{tgt}|threads={args.threads}")
    if len(rows) < 20:
        print(f"error: only {len(rows)} measured layout variants for {tgt} with "
              f"{args.threads} threads (need 20)", file=sys.stderr)
        return 1
    keys, secs = list(rows), list(rows.values())
    kinds = {}
    for k in keys:
        kinds[k.split(":", 1)[0]] = kinds.get(k.split(":", 1)[0], 0) + 1
    held = [heldout_rank_correlation(keys, secs, seed=s) for s in (0, 1, 2)]
    rho_shape, shapes = within_shape_rank_correlation(keys, secs)
    print(f"Learned layout cost model (XGBoost on {len(keys)} measured variants: "
          + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + f"; target {tgt}, "
          f"{args.threads} threads): Spearman rank correlation on a random 30% held out "
          + ", ".join(f"{r:.2f}" for r, _ in held)
          + f" (3 seeds, {held[0][1]} variants each, median "
          f"{statistics.median(r for r, _ in held):.2f}); leaving one kernel shape out and "
          f"ranking its layout variants: median {rho_shape:.2f} over {shapes} shapes.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
