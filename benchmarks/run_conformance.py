"""ONNX's own backend conformance cases through FluidML (fluidml=1) and stock TVM (fluidml=0).

    python benchmarks/run_conformance.py                      # every case, both pipelines
    python benchmarks/run_conformance.py --filter nonmax      # cases whose name matches a regex
    nice -n 19 python benchmarks/run_conformance.py --resume  # go on after an interrupted run

Cases nobody here wrote: the 1,884 single-operator node cases the onnx package generates
(``onnx.backend.test.case.node.collect_testcases``, written once as model.onnx + test_data_set_0
under ``--data``), the ones it ships under ``onnx/backend/test/data/{pytorch-converted,
pytorch-operator,simple}`` and its ``light`` CNNs (expected outputs shipped, inputs made as onnx's
runner makes them). Each case is compiled with ``fluidml.cost=analytic`` (correctness is tested,
not speed) through the public API (``fluidml_tvm.compile(...).load().run(...)``), in a worker
process with a per-case timeout, so a crash or a hang costs one case, and classified:

- ``pass``: outputs match at the case's tolerances (rtol 1e-3, atol 1e-7 unless its data.json
  says otherwise), compared by onnx's own ``Runner.assert_similar_outputs`` (shape, dtype, values);
- ``wrong``: it ran and an output differs (values, shape, dtype or count);
- ``compile_error``: a one-line ``FluidMLError`` (unsupported operator, non-tensor input, TVM
  refused the graph), phase compile or run;
- ``error``: any other exception (a bug: what the CLI calls an internal error);
- ``crash``: the worker process died (signal, abort); ``timeout``: no answer within ``--timeout``.

Writes ``benchmarks/results/<date>-conformance.md`` and ``.json``: counts per pipeline, and every
case FluidML breaks that stock TVM passes, with its resolution (:data:`FIXES`, :data:`EXPLAINED`);
with ``--baseline`` (an earlier run's results.jsonl) also the cases broken there and fixed since.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from conformance_cases import (  # noqa: E402 - beside this script
    PIPELINES,
    STATUSES,
    collect,
    default_data_dir,
    run_case,
)

__all__ = ["PIPELINES", "STATUSES", "collect", "default_data_dir", "main", "run_case",
           "summarize"]

# What broke FluidML where stock TVM passed, recognized by the failure's message: (commit of the
# fix, regex on the detail, what was wrong). Each fix has a test of its own besides these cases.
FIXES = [
    ("61c76b1", r"Buffer T_gather is used before its definition",
     "schedules/common.inline_all inlined a buffer an opaque block (legalized "
     "NonMaxSuppression) still wrote undeclared"),
    ("0793856", r"uint16.*bfloat16x|if_then_else can only take scalar condition",
     "vectorized stores of bf16/fp8 buffers, which TVM emulates element by element: such "
     "kernels are left to TVM"),
    ("5bcedc7", r"unknown intrinsic .*tirx\.(cosh|sinh)",
     "cosh/sinh vectorized: TVM lowers them only as scalar libm calls; such kernels are left "
     "to TVM"),
    ("c12e432", r"Cannot find a block with the name: root",
     "fuse_conv_pool's pool analysis asked a PrimFunc without blocks (legalized MaxUnpool, "
     "Slice, Unsqueeze, ScatterElements) for its root block"),
]
# Cases FluidML still breaks, with the reason they are left: (regex on the case name, reason).
EXPLAINED: list[tuple[str, str]] = []


# ---- the cases ----------------------------------------------------------------------------------


def worker_main(pipeline: str) -> int:
    """Read cases (JSON lines) on stdin, answer on the original stdout; fd 1 itself goes to
    stderr, so what TVM prints cannot corrupt the answers."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        case = json.loads(line)
        print(f"=== {case['name']} ({pipeline})", file=sys.stderr, flush=True)
        answers.write(json.dumps(run_case(case, pipeline)) + "\n")
    return 0


class Worker:
    """A worker process for one pipeline, restarted after a crash, a timeout or ``recycle`` cases
    (TVM's process state grows with every compile)."""

    def __init__(self, pipeline: str, log_path: str, env: dict, recycle: int = 150):
        self.pipeline, self.log_path, self.env, self.recycle = pipeline, log_path, env, recycle
        self.proc, self.done, self.buf = None, 0, b""

    def _start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", self.pipeline],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=self.env,
            start_new_session=True)
        self.done, self.buf = 0, b""

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, 9)
                except ProcessLookupError:
                    pass
            self.proc.wait()
            self.log.close()
        self.proc = None

    def _readline(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return b""
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def _log_tail(self, n: int = 3) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(self.log_path) - 4000))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()
                     if ln.strip() and not ln.startswith("===")]
        return " | ".join(lines[-n:])[-300:]

    def run(self, case: dict, timeout: float) -> dict:
        if self.proc is None or self.done >= self.recycle:
            self.stop()
            self._start()
        t0 = time.perf_counter()
        try:
            self.proc.stdin.write((json.dumps(case) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._readline(timeout)
        self.done += 1
        if line:
            return json.loads(line)
        seconds = round(time.perf_counter() - t0, 2)
        if line is None:
            self.stop()
            return {"status": "timeout", "phase": "", "seconds": seconds,
                    "detail": f"no answer in {timeout:.0f} s"}
        code = self.proc.wait()
        self.log.flush()
        tail = self._log_tail()
        self.stop()
        return {"status": "crash", "phase": "", "seconds": seconds,
                "detail": f"worker died (exit {code}): {tail}"}


# ---- the run and its report ---------------------------------------------------------------------
def git_describe(path: str = ROOT) -> str:
    try:
        return subprocess.run(["git", "-C", path, "describe", "--always", "--dirty=+dirty"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_all(cases, pipelines, timeout, results_path, log=print, redo_broken=False) -> dict:
    """Run every case on every pipeline (results appended to ``results_path`` as they come, and
    cases already there skipped: an interrupted run resumes; ``redo_broken`` runs again the
    cases FluidML broke where stock TVM passed, e.g. after a fix)."""
    done = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            for line in f:
                r = json.loads(line)
                done[(r["name"], r["pipeline"])] = r
    if redo_broken:
        again = {n for n, _ in done if _broken(done, n)}
        done = {k: v for k, v in done.items() if k[0] not in again}
    env = dict(os.environ)
    env.setdefault("TVM_NUM_THREADS", "2")
    env.setdefault("FLUIDML_TVM_CACHE", tempfile.mkdtemp(prefix="fluidml-conformance-cache-"))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    base = os.path.splitext(results_path)[0]
    workers = {p: Worker(p, f"{base}.{p}.log", env) for p in pipelines}
    commit = git_describe()
    t0 = time.time()
    try:
        with open(results_path, "a") as out:
            for i, case in enumerate(cases):
                for p in pipelines:
                    if (case["name"], p) in done:
                        continue
                    r = workers[p].run(case, timeout * (4 if case["kind"] == "light" else 1))
                    r.update(name=case["name"], kind=case["kind"], pipeline=p, commit=commit)
                    done[(case["name"], p)] = r
                    out.write(json.dumps(r) + "\n")
                    out.flush()
                if (i + 1) % 25 == 0 or i + 1 == len(cases):
                    log(f"[conformance] {i + 1}/{len(cases)} cases, {time.time() - t0:.0f} s: "
                        + "; ".join(f"{p} " + ", ".join(
                            f"{k} {v}" for k, v in sorted(Counter(
                                r["status"] for (n, q), r in done.items() if q == p).items()))
                            for p in pipelines))
    finally:
        for w in workers.values():
            w.stop()
    names = {c["name"] for c in cases}
    return {k: v for k, v in done.items() if k[0] in names}


def _resolution(name: str, detail: str) -> str:
    for commit, pattern, what in FIXES:
        if re.search(pattern, detail):
            return f"fixed in {commit}: {what}"
    for pattern, why in EXPLAINED:
        if re.search(pattern, name):
            return f"left: {why}"
    return "UNEXPLAINED"


def load_results(path: str) -> dict:
    """``{(name, pipeline): result}`` of a results.jsonl."""
    out = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            out[(r["name"], r["pipeline"])] = r
    return out


def _broken(results: dict, name: str) -> bool:
    f, s = results.get((name, "fluidml")), results.get((name, "stock"))
    return bool(f and s and s["status"] == "pass" and f["status"] != "pass")


def _diverged(results: dict, name: str) -> bool:
    """FluidML fails where stock TVM passes, or fails differently from it."""
    f, s = results.get((name, "fluidml")), results.get((name, "stock"))
    return bool(f and s and f["status"] != "pass" and f["status"] != s["status"])


def summarize(cases, results: dict, meta: dict, baseline: dict | None = None):
    """(markdown, JSON-able dict) of a run; ``baseline``: an earlier run's results, whose
    broken cases that pass now are listed with their fix."""
    pipelines = sorted({p for _, p in results}, key=list(PIPELINES).index)
    counts = {p: Counter(r["status"] for (_, q), r in results.items() if q == p)
              for p in pipelines}
    both = {"fluidml", "stock"} <= set(pipelines)
    broken = [c for c in cases if both and _broken(results, c["name"])]
    pairs = Counter()
    examples: dict = {}
    for c in cases:
        f, s = results.get((c["name"], "fluidml")), results.get((c["name"], "stock"))
        if both and f and s and f["status"] != s["status"]:
            pairs[(f["status"], s["status"])] += 1
            examples.setdefault((f["status"], s["status"]), []).append(c["name"])
    commits = Counter(r.get("commit", "?") for r in results.values())
    md = ["# ONNX backend conformance: FluidML (fluidml=1) vs stock TVM (fluidml=0)", "",
          f"{meta['date']}; report written at commit {meta['commit']} (results by commit: "
          + ", ".join(f"{c} {n}" for c, n in commits.most_common())
          + f"); onnx {meta['onnx']}, TVM {meta['tvm']}; "
          f"host {meta['cpu']}, {meta['cores']} cores, TVM_NUM_THREADS={meta['threads']}; "
          f"load average {meta['load_before']} before, {meta['load_after']} after "
          "(a shared machine: times are not measurements).", "",
          f"Options: fluidml `{' '.join(PIPELINES['fluidml'])}`, stock `"
          f"{' '.join(PIPELINES['stock'])}`; per-case timeout {meta['timeout']} s "
          "(x4 for the light CNNs). Cases: "
          + ", ".join(f"{k} {v}" for k, v in Counter(c["kind"] for c in cases).items())
          + f" ({len(cases)} in all). Each case runs through the public API "
          "(compile -> load -> run) and is compared by onnx's own Runner.assert_similar_outputs "
          "at the case's tolerances (rtol 1e-3, atol 1e-7 unless its data.json says otherwise); "
          "compile_error is a one-line FluidMLError, error any other exception.", "",
          "| pipeline | " + " | ".join(STATUSES) + " |", "|---|" + "---|" * len(STATUSES)]
    for p in pipelines:
        md.append(f"| {p} | " + " | ".join(str(counts[p].get(s, 0)) for s in STATUSES) + " |")
    md += ["", f"## Cases FluidML breaks that stock TVM passes: {len(broken)}", ""]
    rows = []
    for c in broken:
        f = results[(c["name"], "fluidml")]
        rows.append({"name": c["name"], "status": f["status"], "phase": f["phase"],
                     "detail": f["detail"], "resolution": _resolution(c["name"], f["detail"])})
    if rows:
        md += ["| case | fluidml | detail | resolution |", "|---|---|---|---|"]
        md += [f"| {r['name']} | {r['status']} ({r['phase']}) | {r['detail'].replace('|', '/')} "
               f"| {r['resolution']} |" for r in rows]
    fixed = []
    if baseline:
        was = sorted(n for n, p in baseline if p == "fluidml" and _diverged(baseline, n))
        names = {c["name"] for c in cases}
        for n in was:
            if n in names and not _diverged(results, n):
                b = baseline[(n, "fluidml")]
                fixed.append({"name": n, "was": f"{b['status']} ({b['phase']})",
                              "stock_then": baseline[(n, "stock")]["status"],
                              "detail": b["detail"], "now": results[(n, "fluidml")]["status"],
                              "stock_now": results[(n, "stock")]["status"],
                              "resolution": _resolution(n, b["detail"])})
        base_commit = Counter(r.get("commit", "?") for r in baseline.values()).most_common(1)
        then = {p: Counter(r["status"] for (_, q), r in baseline.items() if q == p)
                for p in pipelines}
        md += ["", f"## Fixed since the baseline run (commit {base_commit[0][0]}): {len(fixed)}",
               "", "Its counts: " + "; ".join(
                   f"{p} " + ", ".join(f"{k} {then[p].get(k, 0)}" for k in STATUSES)
                   for p in pipelines) + ".",
               "", "Cases where FluidML failed differently from stock TVM then (stock passing "
               "or not) and now gives stock's status or passes.", "",
               "| case | fluidml then | stock then | fluidml now | stock now | fix |",
               "|---|---|---|---|---|---|"]
        md += [f"| {r['name']} | {r['was']} | {r['stock_then']} | {r['now']} | {r['stock_now']} "
               f"| {r['resolution']} |" for r in fixed]
    if pairs:
        md += ["", "## Where the two pipelines differ (fluidml status, stock status)", "",
               "| fluidml | stock | cases | e.g. |", "|---|---|---|---|"]
        for (fs, ss), n in pairs.most_common():
            ex = examples[(fs, ss)]
            md.append(f"| {fs} | {ss} | {n} | {', '.join(ex[:4])}"
                      f"{', ...' if len(ex) > 4 else ''} |")
    cases_json = {}
    for c in cases:
        entry = {"kind": c["kind"]}
        for p in pipelines:
            r = results.get((c["name"], p))
            if r is not None:
                entry.setdefault("ops", r.get("ops"))
                entry[p] = {k: r[k] for k in ("status", "phase", "detail", "seconds", "commit")
                            if k in r and (k != "detail" or r[k])}
        cases_json[c["name"]] = entry
    data = {"meta": meta, "counts": {p: dict(c) for p, c in counts.items()},
            "broken_by_fluidml": rows, "fixed_since_baseline": fixed, "cases": cases_json}
    return "\n".join(md) + "\n", data


def host_meta(timeout: float) -> dict:
    import onnx

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       "")
    except OSError:
        pass
    try:
        from importlib.metadata import version

        tvm_version = version("apache-tvm")
    except Exception:  # noqa: BLE001
        tvm_version = "unknown"
    return {"date": datetime.date.today().isoformat(), "commit": git_describe(),
            "onnx": onnx.__version__, "tvm": tvm_version, "cpu": cpu, "cores": os.cpu_count(),
            "threads": os.environ.get("TVM_NUM_THREADS", "2"), "timeout": timeout,
            "load_before": f"{os.getloadavg()[0]:.2f}"}


def _lines(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help="where the generated cases go (default: "
                   "~/.cache/fluidml-tvm/onnx-VERSION-backend-cases)")
    p.add_argument("--filter", default=None, help="only cases whose name matches this regex")
    p.add_argument("--pipelines", default="fluidml,stock")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per case and pipeline")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--name", default=None, help="file stem (default: DATE-conformance)")
    p.add_argument("--work", default=None, help="where results.jsonl and the worker logs go "
                   "(default: ~/.cache/fluidml-tvm/conformance/STEM)")
    p.add_argument("--resume", action="store_true",
                   help="keep the results of an earlier run with the same stem")
    p.add_argument("--baseline", default=None,
                   help="an earlier run's results.jsonl: list its broken cases fixed since")
    p.add_argument("--redo-broken", action="store_true",
                   help="with --resume: run again the cases FluidML broke and stock TVM passed")
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    pipelines = [x for x in args.pipelines.split(",") if x]
    cases = collect(args.data or default_data_dir())
    if args.filter:
        cases = [c for c in cases if re.search(args.filter, c["name"])]
    stem = args.name or f"{datetime.date.today().isoformat()}-conformance"
    os.makedirs(args.out, exist_ok=True)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    work = args.work or os.path.join(cache, "fluidml-tvm", "conformance", stem)
    os.makedirs(work, exist_ok=True)
    results_path = os.path.join(work, "results.jsonl")
    if not args.resume and os.path.exists(results_path):
        os.remove(results_path)
    meta = host_meta(args.timeout)
    meta_path = os.path.join(work, "meta.json")  # the load around the runs, kept for --resume
    stored = {}
    if args.resume and os.path.exists(meta_path):
        with open(meta_path) as f:
            stored = json.load(f)
    done_before = _lines(results_path)
    results = run_all(cases, pipelines, args.timeout, results_path,
                      log=lambda m: print(m, file=sys.stderr, flush=True),
                      redo_broken=args.redo_broken)
    ran = _lines(results_path) > done_before
    meta["load_before"] = stored.get("load_before", meta["load_before"])
    meta["load_after"] = f"{os.getloadavg()[0]:.2f}" if ran or not stored \
        else stored["load_after"]
    with open(meta_path, "w") as f:
        json.dump({k: meta[k] for k in ("load_before", "load_after")}, f)
    baseline = load_results(args.baseline) if args.baseline else None
    md, data = summarize(cases, results, meta, baseline)
    cases_text = ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in data.pop("cases")
                            .items())
    head = json.dumps(data, indent=1)  # ends with "\n}"; one line per case after it
    json_text = head[:-2] + ',\n "cases": {\n' + cases_text + "\n}}\n"
    json.loads(json_text)
    for ext, text in (("md", md), ("json", json_text)):
        with open(os.path.join(args.out, f"{stem}.{ext}"), "w") as f:
            f.write(text)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
