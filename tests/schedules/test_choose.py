"""choose.py, the measuring/cache policy: a cached final choice is taken without measuring, a
second compile measures nothing, a loaded measurement stays provisional until a quiet one (or
REMEASURE_ATTEMPTS compiles), small kernels take the analytic first candidate."""

from __future__ import annotations

import pytest

from fluidml_tvm.costdb import REMEASURE_ATTEMPTS, CostDB, target_key
from fluidml_tvm.schedules import choose as choose_mod
from fluidml_tvm.schedules import cpu_info
from fluidml_tvm.schedules.choose import MEASURE_MIN_FLOPS, Choice, choose
from fluidml_tvm.schedules.measure import Timing

from .models import TARGET, conv_model, gemm_model, matmul_func, set_load
from .models import schedule as run_schedule

CANDS = [{"t": 1}, {"t": 2}, {"t": 3}]


def _no_measuring(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("measured")

    monkeypatch.setattr(choose_mod, "measure_funcs", fail)


def _fake_timings(monkeypatch, seconds, load=0.0):
    """measure_funcs -> candidate i takes seconds[i] (by the built PrimFunc's position)."""
    calls = []

    def fake(funcs, target, min_repeat_ms=40, repeat=3, extra_rounds=None):
        calls.append(len(funcs))
        return [Timing(seconds[f], load, int(load == 0.0), repeat) for f in funcs]

    monkeypatch.setattr(choose_mod, "measure_funcs", fake)
    return calls


def test_cached_final_choice_is_taken_without_measuring(tmp_path, monkeypatch):
    _no_measuring(monkeypatch)
    func = matmul_func(64, 64, 64)
    cpu = cpu_info(TARGET)
    db = CostDB(str(tmp_path))
    first = choose("k", func, "matmul", "w", CANDS, lambda c: c["t"], 1e9, TARGET, cpu, db)
    assert first == Choice(CANDS[0])  # nothing cached, measuring not allowed: the first
    # the key the policy uses: structural hash of the kernel + the rule's workload string
    import tvm_ffi

    wl = f"{tvm_ffi.structural_hash(func) & 0xFFFFFFFFFFFF:012x}:w"
    db.choose(target_key(TARGET, cpu.key()), "matmul", wl, CANDS[2], 2e-3, 3, noisy=False)
    got = choose("k", func, "matmul", "w", CANDS, lambda c: c["t"], 1e9, TARGET, cpu, db,
                 measure=True)
    assert got == Choice(CANDS[2], 0, 2e-3, "")
    assert got.how(4e6) == "(cached), 2.0 GFLOP/s"


def test_measures_confirms_and_records_the_fastest(tmp_path, monkeypatch):
    calls = _fake_timings(monkeypatch, {1: 3e-3, 2: 1e-3, 3: 2e-3})
    func = matmul_func(64, 64, 64)
    cpu = cpu_info(TARGET)
    db = CostDB(str(tmp_path))
    got = choose("k", func, "matmul", "w", CANDS, lambda c: c["t"], 1e9, TARGET, cpu, db,
                 measure=True)
    assert got.config == {"t": 2} and got.measured == 3 and got.seconds == 1e-3
    assert got.how(1e9).startswith("(measured), 1000.0 GFLOP/s")
    assert calls == [3, 3]  # all candidates, then the best CONFIRM_TOP again
    assert db.count() == 3
    _no_measuring(monkeypatch)
    again = choose("k", func, "matmul", "w", CANDS, lambda c: c["t"], 1e9, TARGET, cpu, db,
                   measure=True)
    assert again == Choice({"t": 2}, 0, 1e-3, "")


def test_small_kernel_or_one_candidate_takes_the_first(monkeypatch):
    _no_measuring(monkeypatch)
    cpu = cpu_info(TARGET)
    func = matmul_func(16, 16, 16)
    small = choose("k", func, "r", "w", CANDS, None, MEASURE_MIN_FLOPS - 1, TARGET, cpu,
                   measure=True)
    one = choose("k", func, "r", "w", CANDS[:1], None, 1e12, TARGET, cpu, measure=True)
    assert small == one == Choice(CANDS[0])
    assert small.how(1e6) == "(analytic)"


def test_a_candidate_that_fails_to_build_is_left_out(monkeypatch):
    _fake_timings(monkeypatch, {1: 3e-3, 3: 2e-3})

    def build(c):
        if c["t"] == 2:
            raise ValueError("not this one")
        return c["t"]

    got = choose("k", matmul_func(64, 64, 64), "r", "w", CANDS, build, 1e9, TARGET,
                 cpu_info(TARGET), measure=True)
    assert got.config == {"t": 3} and got.measured == 2


# ---- through the stage: the cache across compiles ---------------------------------------------
@pytest.mark.parametrize("rule", ["matmul", "conv2d"])
def test_second_compile_measures_nothing(tmp_path, rule, monkeypatch):
    set_load(monkeypatch, 0.0)  # a quiet machine (a loaded one re-measures: next test)
    # both above the measuring threshold (2*64^3 FLOPs)
    if rule == "matmul":
        model = gemm_model(M=64, N=64, K=128, trans_b=0)
    else:
        model = conv_model(C=16, H=16, W=16, O=32)
    _, dec = run_schedule(model, tmp_path, trials=3)
    (first,) = [d for d in dec.values() if d.choice == rule]
    assert first.data["measured"] >= 2 and first.data["seconds"] > 0
    n = CostDB(str(tmp_path)).count()
    assert n == first.data["measured"]
    _, dec2 = run_schedule(model, tmp_path, trials=3)
    (second,) = [d for d in dec2.values() if d.choice == rule]
    assert second.data["measured"] == 0 and "cached" in second.reason
    assert second.data["config"] == first.data["config"]
    assert CostDB(str(tmp_path)).count() == n


def test_loaded_measurement_is_provisional_and_remeasured(tmp_path, monkeypatch):
    """A choice measured while other processes took the CPU is re-measured by the next
    compiles (at most REMEASURE_ATTEMPTS times in all); a quiet measurement settles it."""
    model = gemm_model(M=64, N=64, K=128, trans_b=0)
    set_load(monkeypatch, 0.6)
    measured = []
    for _ in range(REMEASURE_ATTEMPTS + 1):
        _, dec = run_schedule(model, tmp_path, trials=3)
        (d,) = [d for d in dec.values() if d.choice == "matmul"]
        measured.append(d.data["measured"])
        assert "loaded machine" in d.reason
    assert all(m >= 2 for m in measured[:REMEASURE_ATTEMPTS]) and measured[-1] == 0
    # a loaded measurement never replaces a quiet one of the same config; a quiet one settles
    db = CostDB(str(tmp_path / "q"))
    db.record("t", "r", "w", {"a": 1}, 1.0, load=0.0)
    db.record("t", "r", "w", {"a": 1}, 0.5, load=0.9)
    assert db.measured("t", "r", "w", with_load=True) == {'{"a": 1}': (1.0, 0.0)}
    db.choose("t", "r", "w", {"a": 1}, 1.0, 1, noisy=True)
    assert db.best("t", "r", "w") is None and db.best("t", "r", "w", provisional=True)
    db.choose("t", "r", "w", {"a": 1}, 1.0, 1, noisy=False)
    assert db.best("t", "r", "w") == ({"a": 1}, 1.0)
