"""The measurement database (costdb.py): keys, better-of records, provisional choices."""

from __future__ import annotations

from fluidml_tvm import costdb
from fluidml_tvm.costdb import REMEASURE_ATTEMPTS, CostDB


def test_target_key_names_the_threads(monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert costdb.target_key("llvm") == "llvm|threads=3"
    assert costdb.target_key("llvm", "avx2-256x16") == "llvm|avx2-256x16|threads=3"
    monkeypatch.delenv("TVM_NUM_THREADS")
    assert costdb.target_key("llvm") == "llvm|threads=default"


def test_a_quiet_measurement_beats_a_loaded_one(tmp_path):
    db = CostDB(str(tmp_path))
    db.record("t", "matmul", "w", {"mr": 4}, 2.0, load=0.0)
    db.record("t", "matmul", "w", {"mr": 4}, 1.0, load=0.9)  # faster but loaded: not kept
    assert db.measured("t", "matmul", "w", with_load=True) == {'{"mr": 4}': (2.0, 0.0)}
    db.record("t", "matmul", "w", {"mr": 4}, 1.5, load=0.0)  # quiet and faster: kept
    assert db.measured("t", "matmul", "w") == {'{"mr": 4}': 1.5}


def test_provisional_choice_until_quiet_or_attempts(tmp_path):
    db = CostDB(str(tmp_path))
    for k in range(REMEASURE_ATTEMPTS):
        db.choose("t", "conv2d", "w", {"mr": 2}, 1.0, trials=3, noisy=True)
        c = db.choice("t", "conv2d", "w")
        assert c["config"] == {"mr": 2} and c["noisy"]
        assert c["provisional"] == (k + 1 < REMEASURE_ATTEMPTS)
    db.choose("t", "conv2d", "w2", {"mr": 4}, 1.0, trials=3)
    assert not db.choice("t", "conv2d", "w2")["provisional"]
