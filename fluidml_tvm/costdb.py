"""The on-disk measurement database (sqlite3) shared by the schedule and layout stages.

One row per measured candidate, keyed by (target, rule, workload, config): ``workload`` is the
kernel's structural hash plus its shape string, so a kernel that appears again - in the same model,
another model or another process - is looked up instead of measured. ``best`` answers the fastest
known candidate of a workload; the second compile of a model measures nothing.

Loaded machines: a measurement carries the share of the machine other processes took while it
ran (``load``, from :class:`fluidml_tvm.schedules.measure.LoadProbe`). A choice made from loaded
measurements is stored as *provisional* (``noisy``). It is used like any other; only a compile
with ``fluidml.retune=1`` (``--retune``) measures it again, within its budget, until a quiet
measurement settles it or it has been measured :data:`REMEASURE_ATTEMPTS` times. A config's
stored time is the better of its measurements (a quiet one beats a loaded one, else the faster:
load only ever slows a kernel down), so re-tuning converges on the real times.

A choice the tune budget left to the analytic model is stored too (``analytic``), so the next
compile of the model decides the same without measuring; a compile that re-tunes, or has no
budget limit (``fluidml-tvm tune``), measures it.

Every read and write of a workload is noted in the active tuning session
(:meth:`fluidml_tvm.tuning.TuneSession.use`): what a compile used is what
``--save-tuning-records`` exports (:mod:`fluidml_tvm.records`, which also imports through
:meth:`CostDB.rows` and :meth:`CostDB.put`).
"""

from __future__ import annotations

import contextvars
import json
import os
import sqlite3
import threading
import time

from . import tuning

# A provisional (loaded-machine) choice is re-measured (--retune) this many times before it is
# final.
REMEASURE_ATTEMPTS = 3
# Others' share of the CPU above which a measurement counts as loaded (see schedules.measure).
NOISY_LOAD = 0.15



# Where a target's kernels are timed when it is not this host: ``MEASURED_ON.get()(target)`` is
# the boards' identity ("board=KEY/MACHINE/CPU/threads=N") or None, set by
# fluidml_tvm.measure_remote while a compile measures on boards. It takes the place of this
# host's TVM_NUM_THREADS in the key.
MEASURED_ON: contextvars.ContextVar = contextvars.ContextVar("fluidml_measured_on", default=None)


def target_key(target, cpu_key: str | None = None) -> str:
    """The database's key of a target as measured now: the target, the CPU facts the schedules
    see (``CPUInfo.key()``, schedule rules only) and ``TVM_NUM_THREADS`` - or the identity of
    the boards that measure it (:data:`MEASURED_ON`)."""
    board = MEASURED_ON.get()
    where = (board(target) if board is not None else None) or \
        f"threads={os.environ.get('TVM_NUM_THREADS', 'default')}"
    return f"{target}|{cpu_key}|{where}" if cpu_key else f"{target}|{where}"


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
            _add_column(self._conn, "measurements", "load", "REAL NOT NULL DEFAULT 0")
            _add_column(self._conn, "choices", "noisy", "INTEGER NOT NULL DEFAULT 0")
            _add_column(self._conn, "choices", "attempts", "INTEGER NOT NULL DEFAULT 1")
            _add_column(self._conn, "choices", "analytic", "INTEGER NOT NULL DEFAULT 0")

    # -- writes ------------------------------------------------------------------------------
    def record(self, target: str, rule: str, workload: str, config: dict, seconds: float,
               flops: float = 0.0, threads: int = 0, load: float = 0.0) -> None:
        """Store a measurement; an earlier one of the same config is kept when it is better
        (quiet where the new one is loaded, else faster)."""
        key = (target, rule, workload, _dump(config))
        _use("measurements", target, rule, workload)
        with self._lock, self._conn:
            old = self._conn.execute(
                "SELECT seconds, load FROM measurements WHERE target=? AND rule=? AND workload=?"
                " AND config=?", key,
            ).fetchone()
            if old is not None and _rank(old[0], old[1]) <= _rank(seconds, load):
                return
            self._conn.execute(
                "INSERT OR REPLACE INTO measurements"
                " (target, rule, workload, config, seconds, flops, threads, created, load)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (*key, float(seconds), float(flops), int(threads), time.time(), float(load)),
            )

    def choose(self, target: str, rule: str, workload: str, config: dict, seconds: float,
               trials: int, noisy: bool = False, analytic: bool = False) -> None:
        """Store the chosen config; ``noisy``: chosen from loaded measurements (provisional);
        ``analytic``: the model's choice, the tune budget having been spent (measured later by
        a compile that re-tunes or has no budget limit)."""
        _use("choices", target, rule, workload)
        with self._lock, self._conn:
            old = self._conn.execute(
                "SELECT attempts, analytic FROM choices WHERE target=? AND rule=? AND workload=?",
                (target, rule, workload),
            ).fetchone()
            attempts = (old[0] + 1) if old is not None and not old[1] else 1
            self._conn.execute(
                "INSERT OR REPLACE INTO choices (target, rule, workload, config, seconds, trials,"
                " created, noisy, attempts, analytic) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (target, rule, workload, _dump(config), float(seconds), int(trials), time.time(),
                 int(bool(noisy)), attempts, int(bool(analytic))),
            )

    # -- reads -------------------------------------------------------------------------------
    def best(self, target: str, rule: str, workload: str,
             provisional: bool = False) -> tuple[dict, float] | None:
        """The chosen config of a workload and its time, or None when never measured - or when
        the choice is provisional (made on a loaded machine, fewer than
        :data:`REMEASURE_ATTEMPTS` attempts) and ``provisional`` is False."""
        row = self.choice(target, rule, workload)
        if row is None or (row["provisional"] and not provisional):
            return None
        return row["config"], row["seconds"]

    def choice(self, target: str, rule: str, workload: str) -> dict | None:
        """The stored choice with its bookkeeping: config, seconds, trials, noisy, attempts,
        analytic, provisional (noisy or analytic: measured again by a compile with
        ``fluidml.retune``)."""
        _use("choices", target, rule, workload)
        with self._lock:
            row = self._conn.execute(
                "SELECT config, seconds, trials, noisy, attempts, analytic FROM choices"
                " WHERE target=? AND rule=? AND workload=?",
                (target, rule, workload),
            ).fetchone()
        if row is None:
            return None
        return {
            "config": json.loads(row[0]), "seconds": row[1], "trials": row[2],
            "noisy": bool(row[3]), "attempts": row[4], "analytic": bool(row[5]),
            "provisional": (bool(row[3]) and row[4] < REMEASURE_ATTEMPTS) or bool(row[5]),
        }

    def measured(self, target: str, rule: str, workload: str,
                 with_load: bool = False) -> dict[str, float]:
        """All measured configs of a workload: ``{config json: seconds}`` (``with_load``:
        ``{config json: (seconds, load)}``)."""
        _use("measurements", target, rule, workload)
        with self._lock:
            rows = self._conn.execute(
                "SELECT config, seconds, load FROM measurements"
                " WHERE target=? AND rule=? AND workload=?",
                (target, rule, workload),
            ).fetchall()
        return {c: ((s, ld) if with_load else s) for c, s, ld in rows}

    # -- tuning records (fluidml_tvm.records) -----------------------------------------------
    def rows(self, table: str, target: str, rule: str, workload: str) -> list[dict]:
        """Every row of ``table`` (``choices`` or ``measurements``) of one workload, as dicts."""
        cols = _COLUMNS[table]
        with self._lock:
            found = self._conn.execute(
                f"SELECT {', '.join(cols)} FROM {table} WHERE target=? AND rule=? AND workload=?",
                (target, rule, workload),
            ).fetchall()
        return [dict(zip(cols, r)) for r in found]

    def put(self, table: str, row: dict) -> bool:
        """Store an imported row unless the database knows better: a measurement through
        :meth:`record` (the better of the two), a choice where there is none or a worse one
        (measured on a quiet machine > on a loaded one > the analytic model's). Returns whether
        it was stored."""
        config = json.loads(row["config"]) if isinstance(row["config"], str) else row["config"]
        if table == "measurements":
            self.record(row["target"], row["rule"], row["workload"], config, row["seconds"],
                        row.get("flops", 0.0), row.get("threads", 0), row.get("load", 0.0))
            return True
        old = self.choice(row["target"], row["rule"], row["workload"])
        rank = _choice_rank(row)
        if old is not None and _choice_rank(old) <= rank:
            return False
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO choices (target, rule, workload, config, seconds, trials,"
                " created, noisy, attempts, analytic) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (row["target"], row["rule"], row["workload"], _dump(config),
                 float(row["seconds"]), int(row.get("trials", 0)),
                 float(row.get("created", time.time())), int(bool(row.get("noisy", 0))),
                 int(row.get("attempts", 1)), int(bool(row.get("analytic", 0)))),
            )
        return True

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]

    def close(self) -> None:
        self._conn.close()


_COLUMNS = {
    "choices": ("target", "rule", "workload", "config", "seconds", "trials", "created", "noisy",
                "attempts", "analytic"),
    "measurements": ("target", "rule", "workload", "config", "seconds", "flops", "threads",
                     "created", "load"),
}


def _use(table: str, target: str, rule: str, workload: str) -> None:
    session = tuning.current()
    if session is not None:
        session.use(table, target, rule, workload)


def _choice_rank(row: dict) -> int:
    """Order of choices of one workload: measured quietly, measured loaded, analytic."""
    return 2 if row.get("analytic") else int(bool(row.get("noisy")))


def _rank(seconds: float, load: float) -> tuple:
    """Order of measurements of one config: quiet before loaded, then faster."""
    return (float(load) > NOISY_LOAD, float(seconds))


def _add_column(conn, table: str, column: str, decl: str) -> None:
    """Schema upgrade of a cache written by an earlier version (sqlite has no IF NOT EXISTS)."""
    cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]
    if column not in cols:
        try:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        except sqlite3.OperationalError as err:  # another process added it meanwhile
            if "duplicate column" not in str(err):
                raise


def _dump(config: dict) -> str:
    return json.dumps(config, sort_keys=True)
