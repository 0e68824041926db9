"""tune.py, the schedule stage's measuring within the tune budget: kernels measured in the order
of their modelled run time until the budget is spent, the rest analytic and remembered (a warm
compile measures nothing, --retune or no limit measures them), identical kernels decided once -
in one module and across models whose names differ."""

from __future__ import annotations

import time

import numpy as np
import tvm
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from fluidml_tvm.options import Options
from fluidml_tvm.schedules import FluidMLSchedule
from fluidml_tvm.schedules import choose as choose_mod
from fluidml_tvm.schedules.measure import Timing

from .models import TARGET, fused, onnx_model, set_load, two_input_matmul
from .models import schedule as run_schedule


def _fake_measuring(monkeypatch, sleep=0.0):
    """measure_funcs -> every candidate 1 ms (the first fastest), after ``sleep`` seconds;
    returns the list of calls (candidates per call)."""
    calls = []

    def fake(funcs, target, min_repeat_ms=40, repeat=3, extra_rounds=None):
        calls.append(len(funcs))
        time.sleep(sleep)
        return [Timing(1e-3 * (1 + 0.1 * i), 0.0, repeat, repeat) for i in range(len(funcs))]

    monkeypatch.setattr(choose_mod, "measure_funcs", fake)
    return calls


def chain(sizes, names=("x", "w", "y"), seed=0):
    """x[64, K0] @ W0 @ W1 ...: one matmul kernel per (K, N) in ``sizes``, distinct shapes."""
    rng = np.random.default_rng(seed)
    x, w, y = names
    nodes, init, prev = [], [], x
    for i, (k, n) in enumerate(sizes):
        init.append(nh.from_array(rng.standard_normal((k, n)).astype(np.float32), f"{w}{i}"))
        out = y if i == len(sizes) - 1 else f"{y}_t{i}"
        nodes.append(h.make_node("MatMul", [prev, f"{w}{i}"], [out], name=f"{w}_mm{i}"))
        prev = out
    return onnx_model(nodes, [h.make_tensor_value_info(x, TP.FLOAT, [64, sizes[0][0]])],
                      [h.make_tensor_value_info(y, TP.FLOAT, [64, sizes[-1][1]])], init)


SIZES = [(128, 64), (64, 256), (256, 128)]  # 1 M, 2 M, 4 M FLOPs: the last is the biggest


def _matmuls(dec):
    return {k: d for k, d in dec.items() if d.choice == "matmul"}


def test_budget_measures_the_biggest_kernels_first_and_leaves_the_rest(tmp_path, monkeypatch):
    set_load(monkeypatch, 0.0)
    calls = _fake_measuring(monkeypatch, sleep=0.6)
    model = chain(SIZES)
    _, dec = run_schedule(model, tmp_path, trials=2, tune_budget=1)
    mm = _matmuls(dec)
    assert len(mm) == 3 and calls == [2]  # one measurement fit in the budget
    (measured,) = [d for d in mm.values() if d.data["source"] == "measured"]
    assert "256x128" in measured.reason or "k256" in measured.reason  # the biggest kernel
    rest = [d for d in mm.values() if d is not measured]
    assert all(d.data["source"] == "budget" and d.data["measured"] == 0 for d in rest)
    assert all("(analytic: tune budget spent)" in d.reason for d in rest)
    # the next compile decides the same without measuring (the budget's choices remembered)
    calls.clear()
    _, warm = run_schedule(model, tmp_path, trials=2, tune_budget=1)
    assert calls == [] and {k: d.data["config"] for k, d in _matmuls(warm).items()} == {
        k: d.data["config"] for k, d in mm.items()}
    assert sum(d.data["source"] == "budget" for d in _matmuls(warm).values()) == 2
    # --retune (or no budget limit) measures what the budget left
    _, again = run_schedule(model, tmp_path, trials=2, tune_budget=-1)
    assert calls == [2, 2]
    assert all(d.data["source"] in ("measured", "cached") for d in _matmuls(again).values())


def test_identical_kernels_are_measured_once_in_a_module(tmp_path, monkeypatch):
    set_load(monkeypatch, 0.0)
    calls = _fake_measuring(monkeypatch)
    # a batch matmul of two activations: its arguments are no constants, called or not
    mod = fused(two_input_matmul(B=2, M=64, N=64, K=64, trans_b=False))
    (gv,) = [g for g, f in mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and "matmul" in g.name_hint]
    mod["another_copy"] = mod[gv]  # the same kernel under another name
    p = FluidMLSchedule(TARGET, Options(tune_trials=3, cache_dir=str(tmp_path)))
    with TARGET:
        p(mod)
    mm = [d for d in p.decisions if d.choice == "matmul"]
    assert len(mm) == 2 and calls == [3]
    assert sorted(d.data["measured"] for d in mm) == [0, 3]
    assert mm[0].data["config"] == mm[1].data["config"]
    assert sum("decided once" in d.reason for d in mm) == 1


def test_same_kernel_in_another_model_is_not_measured_again(tmp_path, monkeypatch):
    """Names (inputs, weights, nodes, kernels) differ, shapes and dtypes do not: the cache key
    is the kernel's structure, so the second model measures nothing."""
    set_load(monkeypatch, 0.0)
    calls = _fake_measuring(monkeypatch)
    _, first = run_schedule(chain(SIZES[:2]), tmp_path, trials=2, tune_budget=-1)
    assert calls == [2, 2]
    other = chain(SIZES[:2], names=("input_ids", "weight", "logits"), seed=5)
    _, second = run_schedule(other, tmp_path, trials=2, tune_budget=-1)
    assert calls == [2, 2]
    assert all(d.data["source"] == "cached" for d in _matmuls(second).values())
    assert sorted(d.data["config"]["mr"] for d in _matmuls(second).values()) == sorted(
        d.data["config"]["mr"] for d in _matmuls(first).values())
