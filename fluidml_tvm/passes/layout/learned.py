"""Learned layout costs: an XGBoost model of kernel time trained on the measured variants.

FluidML profiles every (kernel, layouts) variant, which grows with r! per operand. Here the
variants already in the cost cache (:class:`fluidml_tvm.costdb.CostDB`, rule ``layout``, written
by :class:`~.layout_measure.MeasuredCost`) train a regressor of log(seconds) on shape and layout
features; :class:`LearnedCost` measures nothing when the cache holds enough rows and predicts the
missing variants. :func:`heldout_rank_correlation` reports how well it ranks variants it did not
see (Spearman's rho on a held-out split).
"""

from __future__ import annotations

import math

import numpy as np

from .measure import MeasuredCost

MIN_ROWS = 16


def features(key: str) -> list[float]:
    """Numeric features of a variant key (``matmul:``, ``conv:``, ``transpose:``,
    ``rtranspose:``/``transposer:`` - a transpose fused with a reshape before/after it)."""
    kind, rest = key.split(":", 1)
    parts = [tuple(int(x) for x in p.split(",") if x != "") for p in rest.split("|")]
    if kind == "matmul":
        a, b, o, la, lb, lo = parts[:6]
        const_b = 1.0 if len(parts) > 6 and 1 in parts[6] else 0.0
        k = a[-1]
        size = float(np.prod(o))
        inner = []
        for shape, lay, stream in ((a, la, len(a) - 1), (b, lb, len(b) - 1), (o, lo, len(o) - 1)):
            nonunit = [d for d in lay if shape[d] != 1]
            inner.append(1.0 if nonunit and nonunit[-1] == stream else 0.0)
            inner.append(float(shape[nonunit[-1]]) if nonunit else 1.0)
        return [1.0, math.log2(size * k), math.log2(size), math.log2(k), *inner, const_b]
    if kind == "conv":  # data, weight, strides, padding, dilation, in layout, out layout
        x, w, strides = parts[0], parts[1], parts[2]
        lin, lout = parts[5], parts[6]
        out = float(w[0]) * x[2] * x[3] / max(1, strides[0] * strides[1])
        red = float(w[1] * w[2] * w[3])
        nhwc_in = 1.0 if lin != tuple(range(4)) else 0.0
        nhwc_out = 1.0 if lout != tuple(range(4)) else 0.0
        return [2.0, math.log2(out * red), math.log2(out), math.log2(red), nhwc_in,
                float(x[1]), nhwc_out, float(w[0]), 0, 0, 0]
    if kind == "rtranspose":  # source shape, reshaped shape, permutation
        parts = parts[1:]
    shape, q = parts[:2]
    nonunit = [d for d in q if shape[d] != 1]
    last_moves = 1.0 if nonunit and nonunit[-1] != max(nonunit) else 0.0
    n = float(np.prod(shape))
    return [0.0, math.log2(n), math.log2(n), 0.0, last_moves, float(shape[-1]), 0, 0, 0, 0, 0]


def fit(keys: list[str], seconds: list[float]):
    import xgboost as xgb

    data = xgb.DMatrix(np.array([features(k) for k in keys]), label=np.log(np.array(seconds)))
    params = {"max_depth": 4, "eta": 0.1, "nthread": 1, "objective": "reg:squarederror"}
    return xgb.train(params, data, num_boost_round=200)


def predict(model, keys: list[str]) -> list[float]:
    import xgboost as xgb

    data = xgb.DMatrix(np.array([features(k) for k in keys]))
    return [float(x) for x in np.exp(model.predict(data))]


def _ranks(x) -> np.ndarray:
    return np.argsort(np.argsort(np.asarray(x))).astype(float)


def heldout_rank_correlation(keys, seconds, test_fraction=0.3, seed=0) -> tuple[float, int]:
    """Spearman's rho between predicted and measured times on a random held-out split."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(keys))
    n_test = max(2, int(len(keys) * test_fraction))
    test, train = idx[:n_test], idx[n_test:]
    model = fit([keys[i] for i in train], [seconds[i] for i in train])
    pred = predict(model, [keys[i] for i in test])
    rho = float(np.corrcoef(_ranks(pred), _ranks([seconds[i] for i in test]))[0, 1])
    return rho, n_test


def _shape_of(key: str) -> str:
    """The variant key without its layouts (same kernel shape, any layout)."""
    kind, rest = key.split(":", 1)
    parts = rest.split("|")
    keep = parts[:3] + parts[6:] if kind == "matmul" else parts[:1]
    return kind + ":" + "|".join(keep)


def within_shape_rank_correlation(keys, seconds, min_variants: int = 4) -> tuple[float, int]:
    """Leave-one-shape-out: for each kernel shape with >= ``min_variants`` layout variants, train
    on every other shape and rank that shape's variants (what the DP needs: which layout is
    fastest for a kernel never measured). Returns the median Spearman's rho and the shape count.
    """
    times = dict(zip(keys, seconds))
    groups: dict[str, list] = {}
    for k in keys:
        groups.setdefault(_shape_of(k), []).append(k)
    rhos = []
    for shape, ks in groups.items():
        if len(ks) < min_variants:
            continue
        train = [k for k in keys if _shape_of(k) != shape]
        pred = predict(fit(train, [times[k] for k in train]), ks)
        rho = np.corrcoef(_ranks(pred), _ranks([times[k] for k in ks]))[0, 1]
        if np.isfinite(rho):
            rhos.append(float(rho))
    return (float(np.median(rhos)) if rhos else float("nan")), len(rhos)


class LearnedCost(MeasuredCost):
    """Measured where cached, predicted elsewhere (measures only while the cache is too small)."""

    name = "learned"

    def prepare(self, g, cands) -> int:
        rows = self._rows()
        if len(rows) < MIN_ROWS:
            return super().prepare(g, cands)
        model = fit(list(rows), list(rows.values()))
        missing = [k for k in self.variants(g, cands) if k not in self.table]
        for k in missing:
            self.table[k] = rows[k] if k in rows else None
        todo = [k for k in missing if self.table[k] is None]
        for k, t in zip(todo, predict(model, todo) if todo else []):
            self.table[k] = t
        return 0

    def _rows(self) -> dict:
        return cached_rows(self.db, self.tkey)


def cached_rows(db, tkey: str) -> dict:
    """``{variant key: seconds}`` of every layout variant in the cache for ``tkey``."""
    if db is None:
        return {}
    import sqlite3

    conn = sqlite3.connect(db.path, timeout=30)  # read-only use of the shared cache file
    try:
        rows = conn.execute(
            "SELECT workload, MIN(seconds) FROM measurements WHERE target=? AND rule=?"
            " GROUP BY workload", (tkey, "layout")).fetchall()
    finally:
        conn.close()
    return dict(rows)
