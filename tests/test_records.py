"""Tuning records (records.py, --tuning-records): what a compile used, exported as JSON lines and
imported into another cache - the same kernel choices with nothing measured; records of another
target, CPU, thread count or TVM version ignored with a notice; a warm compile measures nothing;
a tiny budget finishes and says what it left to the analytic model."""

from __future__ import annotations

import json
import time

import pytest

import fluidml_tvm
from fluidml_tvm import records
from fluidml_tvm.costdb import CostDB
from fluidml_tvm.errors import FluidMLError
from fluidml_tvm.options import Options
from fluidml_tvm.tools import zoo

KEY = '{"kind":"llvm","mcpu":"x"}|avx512-512x32|threads=2'
LAYOUT_KEY = '{"kind":"llvm","mcpu":"x"}|threads=2'


def _db_with_entries(path):
    db = CostDB(str(path))
    db.choose(KEY, "matmul", "abc:m64", {"mr": 4}, 1e-4, 3)
    db.record(KEY, "matmul", "abc:m64", {"mr": 4}, 1e-4, 1e6)
    db.record(LAYOUT_KEY, "layout", "matmul:1,2", {"variant": "matmul:1,2", "attempt": 0}, 2e-5)
    db.choose(KEY, "conv2d", "def:f8", {"mr": 2}, 0.0, 0, analytic=True)
    return db


def test_export_writes_the_used_entries_and_load_reads_them(tmp_path):
    db = _db_with_entries(tmp_path / "a")
    used = {("choices", KEY, "matmul", "abc:m64"), ("measurements", LAYOUT_KEY, "layout",
                                                     "matmul:1,2"),
            ("choices", KEY, "conv2d", "def:f8")}
    path = tmp_path / "r.jsonl"
    assert records.export(str(path), db, used) == 3  # the matmul's choice, not its timings
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    mm = next(r for r in recs if r["rule"] == "matmul")
    assert mm["table"] == "choices" and mm["config"] == {"mr": 4} and mm["seconds"] == 1e-4
    assert mm["threads"] == "2" and mm["cpu"] == "avx512-512x32" and mm["tvm"]
    assert mm["target_str"] == '{"kind":"llvm","mcpu":"x"}' and mm["host_cpu"]
    fresh = CostDB(str(tmp_path / "b"))
    taken, notices = records.load(str(path), fresh, {KEY, LAYOUT_KEY})
    assert taken == 3 and notices == []
    assert fresh.choice(KEY, "matmul", "abc:m64")["config"] == {"mr": 4}
    assert fresh.choice(KEY, "conv2d", "def:f8")["analytic"]
    assert fresh.measured(LAYOUT_KEY, "layout", "matmul:1,2")
    # a measured choice beats an imported analytic one, never the other way round
    db.choose(KEY, "conv2d", "def:f8", {"mr": 8}, 1e-4, 3)
    records.export(str(path), db, used)
    assert records.load(str(path), fresh, {KEY, LAYOUT_KEY})[0] >= 1
    assert fresh.choice(KEY, "conv2d", "def:f8")["config"] == {"mr": 8}
    taken, _ = records.load(str(path), CostDB(str(tmp_path / "c")), {KEY, LAYOUT_KEY})
    assert taken == 3


def test_records_for_another_target_threads_or_tvm_are_ignored_with_a_notice(tmp_path):
    db = _db_with_entries(tmp_path / "a")
    path = tmp_path / "r.jsonl"
    records.export(str(path), db, {("choices", KEY, "matmul", "abc:m64")})
    (rec,) = [json.loads(line) for line in path.read_text().splitlines()]
    other = [dict(rec, target=KEY.replace("threads=2", "threads=4")),
             dict(rec, target=KEY.replace("avx512-512x32", "avx2-256x16")),
             dict(rec, tvm="0.19.0"),
             dict(rec, host_cpu="Another CPU 9000")]
    path.write_text("".join(json.dumps(r) + "\n" for r in other))
    fresh = CostDB(str(tmp_path / "b"))
    taken, notices = records.load(str(path), fresh, {KEY, LAYOUT_KEY})
    assert taken == 1  # only the one from another host CPU with the same target key
    text = "\n".join(notices)
    assert "1 of 4 records ignored: measured for threads 4 (this compile: 2)" in text
    assert "measured for CPU features avx2-256x16 (this compile: avx512-512x32)" in text
    assert "measured with another TVM version" in text
    assert "Another CPU 9000" in text and "used" in text
    path.write_text("not json\n")
    with pytest.raises(FluidMLError, match="r.jsonl:1: not a fluidml-tvm tuning record"):
        records.load(str(path), fresh, {KEY})


def _schedule_configs(compiled) -> dict:
    return {d.subject: d.data["config"] for d in compiled.decisions["schedule"] if d.subject}


def _measured(compiled) -> int:
    """Candidates and variants timed by the compile (its tuning session's account)."""
    return sum(m["candidates"] for m in compiled.tuning["measuring"].values())


def test_records_round_trip_gives_the_same_choices_without_measuring(tmp_path):
    """tvmc's flow: a cold compile measures (no budget limit, layout plans checked) and saves
    its records; a compile with a fresh cache imports them and measures nothing."""
    model, _ = zoo.resolve("zoo:gpt-neox:tiny")
    path = str(tmp_path / "records.jsonl")
    cold = fluidml_tvm.compile(model, options=Options(
        cache_dir=str(tmp_path / "team"), tune_budget=-1, layout_verify=True),
        save_tuning_records=path)
    assert cold.tuning["measuring"]["schedule"]["candidates"] > 0
    assert cold.tuning["measuring"]["layout"]["candidates"] > 0
    # (its kernels' choices may come from the cache already: a layout variant's own schedule
    # choice, or the first build's when the plan's check returns the build without it)
    assert any(d.data.get("source") in ("measured", "cached") for d in cold.decisions["schedule"])
    fresh = fluidml_tvm.compile(model, options=Options(
        cache_dir=str(tmp_path / "ci"), layout_verify=True), tuning_records=path)
    assert _measured(fresh) == 0 and fresh.tuning["measuring"] == {}
    assert all(d.data.get("measured", 0) == 0 for d in fresh.decisions["schedule"])
    assert _schedule_configs(fresh) == _schedule_configs(cold)
    # the layout plan: the cold compile's end-to-end check decided it, the import knows it
    def applied(compiled):
        return any(d.choice == "applied" for d in compiled.decisions.get("layout", []))

    checked = cold.decisions.get("layout_verify")
    kept = checked[0].choice == "kept" if checked else applied(cold)
    assert applied(fresh) == kept and "layout check" not in fresh.timing
    notes = [d.reason for d in fresh.decisions["schedule"] if not d.subject]
    assert any(n.startswith("tuning records:") and "entries read" in n for n in notes)


def test_warm_compile_measures_nothing_and_a_tiny_budget_finishes(tmp_path, monkeypatch):
    model, _ = zoo.resolve("zoo:gpt-neox:tiny")
    # each schedule measurement made to take 0.4 s longer: on a quiet fast host a 1 s budget
    # could otherwise cover every kernel of this tiny model, and nothing would be left to it
    from fluidml_tvm.schedules import choose

    real = choose.measure_funcs

    def slow(*args, **kwargs):
        time.sleep(0.4)
        return real(*args, **kwargs)

    monkeypatch.setattr(choose, "measure_funcs", slow)
    opts = Options(cache_dir=str(tmp_path / "c"), tune_budget=1)
    cold = fluidml_tvm.compile(model, options=opts)
    budget = [d for d in cold.decisions["schedule"] if d.data.get("source") == "budget"]
    assert budget and all("tune budget" in d.reason for d in budget)
    assert cold.tuning["spent_s"] <= 1.0 + max(
        (m["seconds"] for m in cold.tuning["measuring"].values()), default=0.0)
    assert "decided by the analytic model (budget)" in cold.report()
    warm = fluidml_tvm.compile(model, options=Options(cache_dir=str(tmp_path / "c")))
    assert _measured(warm) == 0 and _schedule_configs(warm) == _schedule_configs(cold)


def test_saving_to_a_team_file_keeps_the_other_models_records(tmp_path):
    db = _db_with_entries(tmp_path / "a")
    path = tmp_path / "team.jsonl"
    records.export(str(path), db, {("choices", KEY, "matmul", "abc:m64")})  # model 1
    db.choose(KEY, "matmul", "abc:m64", {"mr": 8}, 0.5e-4, 3)  # re-tuned since
    records.export(str(path), db, {("choices", KEY, "conv2d", "def:f8"),  # model 2
                                   ("choices", KEY, "matmul", "abc:m64")})
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted((r["rule"], json.dumps(r["config"])) for r in recs) == [
        ("conv2d", '{"mr": 2}'), ("matmul", '{"mr": 8}')]
