"""choose.py, the measuring/cache policy: a cached final choice is taken without measuring, a
second compile measures nothing, the race stops at a clear winner and re-times close ones, a
bounded budget times the first few candidates, a loaded measurement is used as it is and
re-measured only on --retune (until a quiet one, or REMEASURE_ATTEMPTS), small kernels take the
analytic first candidate."""

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
    wl = choose_mod.key(func, "w")
    db.choose(target_key(TARGET, cpu.key()), "matmul", wl, CANDS[2], 2e-3, 3, noisy=False)
    got = choose("k", func, "matmul", "w", CANDS, lambda c: c["t"], 1e9, TARGET, cpu, db,
                 measure=True)
    assert got == Choice(CANDS[2], 0, 2e-3, "")
    assert got.how(4e6) == "(cached), 2.0 GFLOP/s"


def test_measures_in_one_module_and_records_the_fastest(tmp_path, monkeypatch):
    seen = []

    def fake(funcs, target, min_repeat_ms=40, repeat=3, extra_rounds=None):
        seen.append((list(funcs), min_repeat_ms, repeat, extra_rounds))
        table = {1: 3e-3, 2: 1e-3, 3: 2e-3}
        return [Timing(table[f], 0.0, repeat, repeat) for f in funcs]

    monkeypatch.setattr(choose_mod, "measure_funcs", fake)
    func = matmul_func(64, 64, 64)
    cpu = cpu_info(TARGET)
    db = CostDB(str(tmp_path))
    got = choose("k", func, "matmul", "w", CANDS, lambda c: c["t"], 1e9, TARGET, cpu, db,
                 measure=True)
    assert got.config == {"t": 2} and got.measured == 3 and got.seconds == 1e-3
    assert got.source == "measured" and got.rank == 1
    assert got.how(1e9).startswith("(measured), 1000.0 GFLOP/s")
    # one build of all candidates, ROUNDS interleaved rounds, one more when loaded
    assert seen == [([1, 2, 3], choose_mod.ROUND_MS, choose_mod.ROUNDS, 1)]
    assert db.count() == 3
    _no_measuring(monkeypatch)
    again = choose("k", func, "matmul", "w", CANDS, lambda c: c["t"], 1e9, TARGET, cpu, db,
                   measure=True)
    assert again == Choice({"t": 2}, 0, 1e-3, "") and again.source == "cached"


def test_a_bounded_budget_times_only_the_first_few(tmp_path, monkeypatch):
    """Within a bounded budget the rule's first TIME_TOP candidates are timed; unbounded, all;
    a budget that cannot afford the measurement leaves the analytic first, marked budget."""
    from fluidml_tvm.tuning import TuneSession

    calls = _fake_timings(monkeypatch, {i: 1e-3 * (10 - i) for i in range(10)})
    cands = [{"t": i} for i in range(8)]
    cpu = cpu_info(TARGET)
    args = ("k", matmul_func(64, 64, 64), "matmul", "w", cands, lambda c: c["t"], 1e9, TARGET,
            cpu)
    got = choose(*args, measure=True, session=TuneSession(60))
    assert calls[0] == choose_mod.TIME_TOP and got.config == {"t": choose_mod.TIME_TOP - 1}
    got = choose(*args, measure=True, session=TuneSession(-1))
    assert calls[-1] == 8 and got.config == {"t": 7}
    n = len(calls)
    poor = choose(*args, measure=True, session=TuneSession(0))
    assert len(calls) == n and poor == Choice({"t": 0}) and poor.source == "budget"
    assert poor.how(1e9) == "(analytic: tune budget spent)"


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
    set_load(monkeypatch, 0.0)  # a quiet machine (a loaded one: the last test)
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


def test_loaded_measurement_is_provisional_and_remeasured_only_on_retune(tmp_path, monkeypatch):
    """A choice measured while other processes took the CPU is used as it is by the next
    compiles (a warm compile measures nothing); with fluidml.retune it is measured again, at
    most REMEASURE_ATTEMPTS times in all; a quiet measurement settles it."""
    model = gemm_model(M=64, N=64, K=128, trans_b=0)
    set_load(monkeypatch, 0.6)

    def matmul_decision(**options):
        _, dec = run_schedule(model, tmp_path, trials=3, **options)
        (d,) = [d for d in dec.values() if d.choice == "matmul"]
        assert "loaded machine" in d.reason
        return d

    first = matmul_decision()
    assert first.data["measured"] >= 2 and "--retune" in first.reason
    warm = matmul_decision()
    assert warm.data["measured"] == 0 and warm.data["source"] == "cached"
    measured = [matmul_decision(retune=True).data["measured"]
                for _ in range(REMEASURE_ATTEMPTS)]
    assert all(m >= 2 for m in measured[: REMEASURE_ATTEMPTS - 1]) and measured[-1] == 0
    # a loaded measurement never replaces a quiet one of the same config; a quiet one settles
    db = CostDB(str(tmp_path / "q"))
    db.record("t", "r", "w", {"a": 1}, 1.0, load=0.0)
    db.record("t", "r", "w", {"a": 1}, 0.5, load=0.9)
    assert db.measured("t", "r", "w", with_load=True) == {'{"a": 1}': (1.0, 0.0)}
    db.choose("t", "r", "w", {"a": 1}, 1.0, 1, noisy=True)
    assert db.best("t", "r", "w") is None and db.best("t", "r", "w", provisional=True)
    db.choose("t", "r", "w", {"a": 1}, 1.0, 1, noisy=False)
    assert db.best("t", "r", "w") == ({"a": 1}, 1.0)
