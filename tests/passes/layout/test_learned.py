"""The learned (XGBoost) cost model of layout variants (passes/layout/learned.py)."""

from __future__ import annotations

import numpy as np

from fluidml_tvm.passes.layout.learned import (
    features,
    heldout_rank_correlation,
    within_shape_rank_correlation,
)
from fluidml_tvm.passes.layout.variants import variant_key


def test_learned_model_ranks_held_out_variants():
    """Synthetic timings that depend on size and on the streaming dim being innermost."""
    rng = np.random.default_rng(0)
    keys, secs = [], []
    perms = [(0, 1, 2), (0, 2, 1)]
    for m in (8, 16, 32, 64, 128):
        for k in (16, 64, 256):
            for la in perms:
                for lo in perms:
                    key = variant_key("matmul", (1, m, k), (1, k, 32), (1, m, 32), la,
                                      (0, 1, 2), lo)
                    f = features(key)
                    t = 2**f[1] * 1e-11 * (1 + 0.5 * (1 - f[4])) * rng.uniform(0.95, 1.05)
                    keys.append(key)
                    secs.append(t)
    rho, n = heldout_rank_correlation(keys, secs)
    assert n >= 10 and rho > 0.8
    rho, shapes = within_shape_rank_correlation(keys, secs)
    assert shapes == 15 and rho > 0.5
