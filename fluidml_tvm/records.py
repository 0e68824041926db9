"""Tuning records: the measurement-database entries a compile used, as JSON lines a team ships
(tvmc's ``--tuning-records``).

:func:`export` writes, for every workload the compile read or wrote
(:attr:`fluidml_tvm.tuning.TuneSession.used`), its stored choice (schedule rules) or its
measurements (layout variants, layout-plan checks), one JSON object per line::

    {"format": "fluidml-tvm-records", "version": 1, "table": "choices", "target": "<cache key>",
     "target_str": "llvm -keys=cpu -mcpu=znver4", "cpu": "avx512-512x32", "threads": "2",
     "host_cpu": "AMD EPYC 9R14", "tvm": "0.27.0.post1", "rule": "matmul",
     "workload": "<structural hash>:<shape>", "config": {...}, "seconds": 1.2e-4, ...}

:func:`load` reads such a file into the database of a compile: only records measured for the
same target, CPU facts and thread count (the database's target key) and the same TVM version are
taken; the others are ignored with a notice that says how they differ. A record from another host
CPU with the same target key is used, and the notice says so.
"""

from __future__ import annotations

import json
import os
import platform
import re

from .errors import FluidMLError

FORMAT = "fluidml-tvm-records"
VERSION = 1


def host_cpu() -> str:
    """This machine's CPU model name (``/proc/cpuinfo``), else the platform's word for it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tvm_version() -> str:
    import tvm

    return str(tvm.__version__)


def split_key(key: str) -> dict:
    """``target|cpu|threads=N`` (schedule rules) or ``target|threads=N`` (layout) -> fields."""
    head, _, threads = key.rpartition("|threads=")
    target, cpu = head, ""
    parts = head.rsplit("|", 1)
    if len(parts) == 2 and re.fullmatch(r"[a-z0-9]+-\d+x\d+", parts[1]):
        target, cpu = parts
    return {"target_str": target, "cpu": cpu, "threads": threads}


def entries(db, used) -> list[dict]:
    """The records of the workloads in ``used`` (``(table, target, rule, workload)``): the choice
    where a workload has one, else its measurements."""
    out = []
    seen = set()
    for _table, target, rule, workload in sorted(used):
        ident = (target, rule, workload)
        if ident in seen:
            continue
        choice = db.rows("choices", target, rule, workload)
        rows = choice or db.rows("measurements", target, rule, workload)
        if not rows:
            continue
        seen.add(ident)
        kind = "choices" if choice else "measurements"
        for row in rows:
            out.append(_record(kind, row))
    return out


def _record(table: str, row: dict) -> dict:
    rec = {k: v for k, v in row.items() if k != "threads"}  # (a column nothing fills)
    rec.update({"format": FORMAT, "version": VERSION, "table": table})
    rec.update(split_key(row["target"]))
    rec.update({"host_cpu": host_cpu(), "tvm": tvm_version()})
    rec["config"] = json.loads(row["config"])
    return rec


def export(path: str, db, used) -> int:
    """Write the records of ``used`` to ``path`` (JSON lines, replaced atomically); the records
    an existing file holds for other workloads are kept (one team file, many models). Returns
    how many records this compile wrote."""
    recs = entries(db, used)
    mine = {(r["target"], r["rule"], r["workload"]) for r in recs}
    kept = []
    if os.path.exists(path):
        kept = [r for r in read(path) if (r["target"], r["rule"], r["workload"]) not in mine]
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in kept + recs:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return len(recs)


def read(path: str) -> list[dict]:
    """The records of a file; a line that is not a record is a :class:`FluidMLError` naming it."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                if not isinstance(rec, dict) or rec.get("format") != FORMAT:
                    raise FluidMLError(f"{path}:{n}: not a fluidml-tvm tuning record")
                out.append(rec)
    except OSError as err:
        raise FluidMLError(f"cannot read tuning records {path}: {err.strerror}") from None
    return out


def load(path: str, db, target_keys: set[str]) -> tuple[int, list[str]]:
    """Import the records of ``path`` whose target key is one of ``target_keys`` (this
    compile's) and whose TVM version is this one. Returns ``(records imported, notices)``."""
    recs = read(path)
    here_tvm, here_cpu = tvm_version(), host_cpu()
    taken, stale, other, cpus = 0, 0, {}, set()
    for rec in recs:
        if rec.get("tvm") != here_tvm:
            stale += 1
            continue
        if rec["target"] not in target_keys:
            why = _difference(rec, target_keys)
            other[why] = other.get(why, 0) + 1
            continue
        if rec.get("host_cpu") and rec["host_cpu"] != here_cpu:
            cpus.add(rec["host_cpu"])
        table = rec.get("table")
        if table not in ("choices", "measurements"):
            raise FluidMLError(f"{path}: a record of unknown table {table!r}")
        if db.put(table, rec):
            taken += 1
    notices = []
    if stale:
        notices.append(f"{stale} of {len(recs)} records ignored: measured with another TVM "
                       f"version (this is {here_tvm})")
    for why, n in sorted(other.items()):
        notices.append(f"{n} of {len(recs)} records ignored: {why}")
    if cpus:
        notices.append(f"records measured on {', '.join(sorted(cpus))} (this host: {here_cpu}) "
                       "with the same target, CPU features and threads: used")
    return taken, notices


def _difference(rec: dict, target_keys: set[str]) -> str:
    """Why a record's target key matches none of this compile's, in words."""
    mine = [split_key(k) for k in target_keys]
    theirs = split_key(rec["target"])
    for field, word in (("threads", "threads"), ("cpu", "CPU features"),
                        ("target_str", "target")):
        ours = sorted({m[field] for m in mine if m[field] or field != "cpu"})
        if theirs[field] not in ours and (theirs[field] or field != "cpu"):
            return (f"measured for {word} {theirs[field] or '-'} (this compile: "
                    f"{', '.join(ours) or '-'})")
    return f"measured for {rec['target']}"
