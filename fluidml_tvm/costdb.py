"""The on-disk measurement database (sqlite3) shared by the schedule and layout stages.

One row per measured candidate, keyed by (target, rule, workload, config): ``workload`` is the
kernel's structural hash plus its shape string, so a kernel that appears again - in the same model,
another model or another process - is looked up instead of measured. ``best`` answers the fastest
known candidate of a workload; the second compile of a model measures nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    target   TEXT NOT NULL,
    rule     TEXT NOT NULL,
    workload TEXT NOT NULL,
    config   TEXT NOT NULL,
    seconds  REAL NOT NULL,
    flops    REAL NOT NULL DEFAULT 0,
    threads  INTEGER NOT NULL DEFAULT 0,
    created  REAL NOT NULL,
    PRIMARY KEY (target, rule, workload, config)
);
CREATE TABLE IF NOT EXISTS choices (
    target   TEXT NOT NULL,
    rule     TEXT NOT NULL,
    workload TEXT NOT NULL,
    config   TEXT NOT NULL,
    seconds  REAL NOT NULL,
    trials   INTEGER NOT NULL,
    created  REAL NOT NULL,
    PRIMARY KEY (target, rule, workload)
);
"""


class CostDB:
    """A small sqlite database of kernel measurements; safe to share between processes."""

    FILENAME = "costs.sqlite"

    def __init__(self, cache_dir: str):
        os.makedirs(cache_dir, exist_ok=True)
        self.path = os.path.join(cache_dir, self.FILENAME)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        with self._conn:
            self._conn.executescript(_SCHEMA)

    # -- writes ------------------------------------------------------------------------------
    def record(self, target: str, rule: str, workload: str, config: dict, seconds: float,
               flops: float = 0.0, threads: int = 0) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO measurements VALUES (?,?,?,?,?,?,?,?)",
                (target, rule, workload, _dump(config), float(seconds), float(flops),
                 int(threads), time.time()),
            )

    def choose(self, target: str, rule: str, workload: str, config: dict, seconds: float,
               trials: int) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO choices VALUES (?,?,?,?,?,?,?)",
                (target, rule, workload, _dump(config), float(seconds), int(trials), time.time()),
            )

    # -- reads -------------------------------------------------------------------------------
    def best(self, target: str, rule: str, workload: str) -> tuple[dict, float] | None:
        """The chosen config of a workload and its time, or None when never measured."""
        with self._lock:
            row = self._conn.execute(
                "SELECT config, seconds FROM choices WHERE target=? AND rule=? AND workload=?",
                (target, rule, workload),
            ).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def measured(self, target: str, rule: str, workload: str) -> dict[str, float]:
        """All measured configs of a workload: ``{config json: seconds}``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT config, seconds FROM measurements WHERE target=? AND rule=? AND workload=?",
                (target, rule, workload),
            ).fetchall()
        return {c: s for c, s in rows}

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]

    def close(self) -> None:
        self._conn.close()


def _dump(config: dict) -> str:
    return json.dumps(config, sort_keys=True)
